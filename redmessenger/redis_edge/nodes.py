"""
The daemons sharing this Redis (docs/scale-out.md, step 1): each renews its
entry in ``rm:nodes`` every ``interval`` seconds, listed for ``ttl`` seconds, and
reads the live list in the same script call.  A clean stop leaves the list at
once; a killed daemon drops out when its entry expires.

Nothing acts on the list yet but operators (status, /health, /metrics): the
owners of users come next (core/ownership.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from redmessenger.logs import make_logger
from redmessenger.model.keyspace import NODES_KEY, NODES_SOCKETS_KEY
from redmessenger.redis_edge.commands import RedisCommands
from redmessenger.redis_edge.errors import translated
from redmessenger.redis_edge.scripts import HEARTBEAT


class NodeRegistry:
    """This daemon's heartbeat, and the live nodes as of the last one."""

    log = make_logger()

    def __init__(
        self,
        commands: RedisCommands,
        clock: IReactorTime,
        node_id: str,
        *,
        connected: Callable[[], bool] = lambda: True,
        sockets: Callable[[], int] = lambda: 0,
        on_change: Callable[[list[str]], object] = lambda nodes: None,
        interval: float = 1.0,
        ttl: float = 10.0,
    ) -> None:
        self._commands = commands
        self._clock = clock
        #: Whether the command connection is up: txredisapi keeps commands while it is not.
        self._connected = connected
        #: This daemon's open sockets, told with each heartbeat.
        self._sockets = sockets
        #: Told the live nodes whenever they change (the owners of users move: redis_edge/peers.py).
        self._on_change = on_change
        self.node_id = node_id
        self._ttl = ttl
        self._loop = LoopingCall(self.beat)
        self._loop.clock = clock
        self._interval = interval
        #: The live nodes (this one among them once a heartbeat landed), sorted, and their open sockets.
        self.nodes: list[str] = []
        self.sockets: dict[str, int] = {}
        #: A heartbeat is on its way: while Redis is away, beats are not piled up behind it.
        self._beating = False

    def start(self) -> None:
        self._loop.start(self._interval, now=True)

    def beat(self) -> Deferred[None]:
        if self._beating or not self._connected():
            return succeed(None)
        self._beating = True
        d = translated(
            self._commands.eval(HEARTBEAT, [NODES_KEY, NODES_SOCKETS_KEY], [self.node_id, self._ttl, "beat", self._sockets()])
        )
        d.addCallbacks(self._listed, self._failed)
        d.addBoth(self._beaten)
        return d

    def _beaten(self, result: None) -> None:
        self._beating = False

    def _listed(self, reply: Any) -> None:
        names, counts = (reply[0] or [], reply[1] or []) if reply else ([], [])
        named = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
        self.sockets = {node: _count(count) for node, count in zip(named, counts)}
        nodes = sorted(named)
        if nodes != self.nodes:
            joined, left = set(nodes) - set(self.nodes), set(self.nodes) - set(nodes)
            self.log.info(
                "Nodes on this Redis: {count} ({nodes}){joined}{left}",
                count=len(nodes),
                nodes=", ".join(nodes),
                joined=f"; joined: {', '.join(sorted(joined))}" if joined and self.nodes else "",
                left=f"; left: {', '.join(sorted(left))}" if left else "",
            )
            self.nodes = nodes
            self._on_change(nodes)

    def _failed(self, failure: Any) -> None:
        self.log.debug("Heartbeat not written ({why}); next one in {interval}s", why=failure.getErrorMessage(), interval=self._interval)

    def stop(self) -> Deferred[None]:
        """Stop beating and leave the list (best effort: a node that cannot reach Redis expires from it)."""
        if self._loop.running:
            self._loop.stop()
        if not self._connected():
            return succeed(None)
        d = translated(self._commands.eval(HEARTBEAT, [NODES_KEY, NODES_SOCKETS_KEY], [self.node_id, self._ttl, "leave", 0]))
        d.addTimeout(2.0, self._clock)
        d.addErrback(lambda failure: None)
        return d.addCallback(lambda _: None)


def _count(value: Any) -> int:
    """A socket count as the hash holds it (bytes of digits), 0 for anything else."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return int(text) if text.isdigit() else 0
