"""
The daemons sharing this Redis (docs/scale-out.md): each renews its entry in
``rm:nodes`` every ``interval`` seconds, listed for ``ttl`` seconds, and reads
the live list in the same script call.  A clean stop leaves the list at once; a
killed daemon drops out when its entry expires.

The owners of users follow the list (redis_edge/peers.py), and every daemon
must change it at the same place among the PUBLISHes, or a message to a user
would be acted on by two owners or by none.  So the script publishes the list
on ``rm.nodes`` whenever it changes, and a daemon takes the list it hears there,
in order with the messages on the same subscription (:meth:`NodeRegistry.heard`).
The list a heartbeat reads is the fallback: a daemon that heard no change while
the heartbeats tell another list for ``grace`` seconds (its subscription was
down when one was published) takes theirs.  A daemon beats only while it is
subscribed: one that cannot hear the PUBLISHes leaves the list when its entry
expires, and its users go to daemons that can.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from redmessenger.logs import make_logger, worth_a_line
from redmessenger.model.keyspace import (
    NODES_CHANNEL,
    NODES_EPOCH_KEY,
    NODES_KEY,
    NODES_RUNS_KEY,
    NODES_SECRET_KEY,
    NODES_SOCKETS_KEY,
)
from redmessenger.redis_edge.commands import RedisCommands
from redmessenger.redis_edge.errors import translated
from redmessenger.redis_edge.scripts import HEARTBEAT


_KEYS = [NODES_KEY, NODES_SOCKETS_KEY, NODES_EPOCH_KEY, NODES_RUNS_KEY, NODES_SECRET_KEY]
#: Seconds before its entry would expire after which a node that hears again is not sure it is still listed.
EXPIRY_MARGIN = 1.0


@dataclass(frozen=True)
class NodesChange:
    """A change of the live nodes as the heartbeat script published it: who joined, left or started again."""

    epoch: int
    #: The node whose heartbeat (or leave) published it; it ``joined`` or ``left`` then, or neither.
    node: str
    joined: bool
    left: bool
    #: listed already under another run: killed and started again before its entry expired
    restarted: bool
    #: The live nodes after the change, sorted.
    nodes: list[str]
    #: The run of ``node`` that published it ("" if not told): sockets of its other runs are gone.
    run: str = ""
    #: The heartbeat script's signature, and what it signed (the script's text, the nodes in its order).
    sig: str = ""
    signed: str = ""
    #: The nodes whose entries had expired, dropped by it (not signed: a copy of a change is a replay, ignored).
    expired: tuple[str, ...] = ()

    def signed_with(self, secret: str) -> bool:
        """Whether the heartbeat script signed this change with ``secret`` (redis_edge/scripts.py, HEARTBEAT)."""
        inner = hashlib.sha1(self.signed.encode("utf-8")).hexdigest()
        expected = hashlib.sha1(secret.encode("utf-8") + inner.encode("ascii")).hexdigest()
        return hmac.compare_digest(expected, self.sig)

    @classmethod
    def parse(cls, payload: bytes) -> NodesChange:
        try:
            raw = json.loads(payload)
        except ValueError:
            raise ValueError("not JSON") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("epoch"), int) or not isinstance(raw.get("node"), str):
            raise ValueError("not a change of the nodes")
        nodes = raw.get("nodes")
        nodes = nodes if isinstance(nodes, list) else []  # cjson writes an empty list as {}
        if not all(isinstance(n, str) for n in nodes):
            raise ValueError("node ids that are not text")
        run = raw["run"] if isinstance(raw.get("run"), str) else ""
        flags = joined, left, restarted = tuple(raw.get(flag) is True for flag in ("joined", "left", "restarted"))
        sig = raw["sig"] if isinstance(raw.get("sig"), str) else ""
        signed = "\n".join((str(raw["epoch"]), raw["node"], run, *("1" if f else "0" for f in flags), ",".join(nodes)))
        expired = raw.get("expired")
        gone = tuple(n for n in expired if isinstance(n, str)) if isinstance(expired, list) else ()
        return cls(raw["epoch"], raw["node"], joined, left, restarted, sorted(nodes), run, sig, signed, gone)


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
        hearing: Callable[[], bool] = lambda: True,
        sockets: Callable[[], int] = lambda: 0,
        on_change: Callable[[list[str], NodesChange | None], object] = lambda nodes, change: None,
        interval: float = 1.0,
        ttl: float = 10.0,
        grace: float = 3.0,
        in_order: Callable[[Callable[[], None]], None] = lambda action: action(),
    ) -> None:
        self._commands = commands
        self._clock = clock
        #: Whether the command connection is up: txredisapi keeps commands while it is not.
        self._connected = connected
        #: Whether the subscription is up: a node beats only while it hears the PUBLISHes (and rm.nodes).
        self._hearing = hearing
        #: This daemon's open sockets, told with each heartbeat.
        self._sockets = sockets
        #: Told the live nodes whenever they change (the owners of users move: redis_edge/peers.py).
        self._on_change = on_change
        self.node_id = node_id
        self._ttl = ttl
        #: This run among the runs of this node id (the heartbeat tells a restart by it).
        self.run = secrets.token_hex(8)
        self._grace = grace
        #: Runs a change of the nodes after the messages published before it (core.hub.Hub.in_order).
        self._in_order = in_order
        #: Since when the heartbeats have told another list than the one taken (None: they agree).
        self._differs_since: float | None = None
        self._loop = LoopingCall(self.beat)
        self._loop.clock = clock
        self._interval = interval
        #: The live nodes as last heard (this one among them once its first heartbeat was), sorted, and
        #: their open sockets as of the last heartbeat.
        self.nodes: list[str] = []
        self.sockets: dict[str, int] = {}
        #: The run of each live node as of the last heartbeat (a socket passed to one goes to that run: transport/passing.py).
        self.runs: dict[str, str] = {}
        #: The last heartbeat failure warned about (the others are logged at debug level).
        self._warned: str | None = None
        #: A heartbeat is on its way: while Redis is away, beats are not piled up behind it.
        self._beating = False
        #: The secret the heartbeat script signs changes with (rm:nodes:secret), as the last heartbeat read it; until
        #: then, the one this daemon offers the script (the first daemon's to beat becomes everybody's).
        self._offered = secrets.token_hex(16)
        self.secret: str | None = None
        #: Messages on rm.nodes not taken: unsigned, signed with another secret, or replayed (an epoch taken already).
        self.unsigned = 0
        #: The epoch of the last signed change taken (a lower or equal one is a replay); 0 again with a new secret.
        self._epoch = 0
        #: The subscription was lost while this node was listed (:meth:`unheard`): whether the others act on its users
        #: meanwhile is not known until a heartbeat begun after this many finds its entry there, or until a change
        #: heard tells (:meth:`_settle`).  None: known.
        self._unsure_since: int | None = None
        #: Heartbeats begun, and when the last one that listed this node was (its entry lasts ``ttl`` from then).
        self._beats = 0
        self._last_listed = float("-inf")
        #: Since when a heartbeat begun since the loss has listed this node anew, its join not heard yet (None: none).
        self._join_unheard: float | None = None
        #: Told when it is unknown whether the others act on this node's users, and when it is known again, in publish
        #: order, whether this node acts on what it kept meanwhile (core.routing.Router.unsure / sure).
        self.on_unsure: Callable[[], None] = lambda: None
        self.on_sure: Callable[[bool], object] = lambda act: None

    def start(self) -> None:
        self._loop.start(self._interval, now=True)

    def beat(self) -> Deferred[None]:
        if self._beating or not self._connected() or not self._hearing():
            return succeed(None)
        self._beating = True
        self._beats += 1
        number, begun = self._beats, self._clock.seconds()
        if self.secret is None:  # read first: the change this heartbeat publishes is signed with it
            d = translated(self._commands.execute_command("MGET", NODES_SECRET_KEY, NODES_EPOCH_KEY))
            d.addCallback(self._read_first)
            d.addCallback(lambda _: self._heartbeat())
        else:
            d = self._heartbeat()
        d.addCallbacks(self._listed, self._failed, callbackArgs=(number, begun))
        d.addBoth(self._beaten)
        return d

    def unheard(self) -> None:
        """
        The subscription was lost (the PUBLISHes published meanwhile are not heard).  If its entry expires before this
        node hears again, the others drop it and act on its users; the PUBLISHes it hears once subscribed again, until
        it knows which, are kept (core.routing.Router.unsure): acted on twice otherwise, here and by the others.
        """
        if not self.listed:
            return
        unsure, self._unsure_since = self._unsure_since, self._beats
        if unsure is None:
            # in publish order: what was heard before the loss, still waiting (behind a group's lookup), is decided
            # as before it
            self._in_order(self.on_unsure)

    def subscribed(self) -> Deferred[None]:
        """
        Hearing rm.nodes (again): sure at once if its entry cannot have expired meanwhile (and no heartbeat listed
        it anew since, its join unheard), or if no other node is known (one alone must not wait on its heartbeat);
        a heartbeat.
        """
        if self._unsure_since is not None:
            lasts = self._join_unheard is None and self._clock.seconds() < self._last_listed + self._ttl - EXPIRY_MARGIN
            if lasts or self.nodes == [self.node_id]:
                self._in_order(lambda: self._settle(True))
        return self.beat()

    def _settle(self, act: bool) -> None:
        """Known again whether the others acted on this node's users while it was unsure (in publish order)."""
        if self._unsure_since is not None:
            self._unsure_since = self._join_unheard = None
            self.on_sure(act)

    def _heartbeat(self) -> Deferred[Any]:
        return translated(
            self._commands.eval(
                HEARTBEAT,
                _KEYS,
                [self.node_id, self._ttl, "beat", self._sockets(), NODES_CHANNEL, self.run, self._offered, self._epoch],
            )
        )

    def _read_first(self, reply: Any) -> None:
        """The secret, and the epoch of the last change: a change heard from now on is a later one."""
        secret, epoch = reply if isinstance(reply, list) and len(reply) == 2 else (None, None)
        self._read_secret(secret)
        if epoch is not None and _text(epoch).isdigit():
            self._epoch = max(self._epoch, int(_text(epoch)))

    def _read_secret(self, secret: Any) -> None:
        if secret and _text(secret) != self.secret:
            if self.secret is not None:
                self._epoch = 0  # another secret: Redis lost its data, and counts the epochs from 1 again
            self.secret = _text(secret)

    def _beaten(self, result: None) -> None:
        self._beating = False

    @property
    def listed(self) -> bool:
        """Whether this node is among the live nodes as last heard: it acts on PUBLISHes to users only then."""
        return self.node_id in self.nodes

    def heard(self, payload: bytes) -> None:
        """A change of the live nodes, published on ``rm.nodes``: taken here, between the messages around it."""
        try:
            change = NodesChange.parse(payload)
        except ValueError as e:
            self.log.warn("Ignoring a message on rm.nodes: {why} ({payload!r})", why=str(e), payload=payload[:200])
            return
        if not change.signed_with(self.secret if self.secret is not None else self._offered) or change.epoch <= self._epoch:
            # Not the heartbeat script's (a publisher's message on rm.nodes), one of its changes published again,
            # or signed with a secret this daemon has not read yet (rm:nodes:secret was lost with a Redis that lost
            # its data): the heartbeats tell the list within ``grace`` seconds either way.
            self.unsigned += 1
            if worth_a_line(self.unsigned):
                self.log.warn(
                    "Ignoring a change of the nodes on rm.nodes not signed by the heartbeat script, or heard before "
                    "({count} so far; epoch {epoch}, from {node!r})",
                    count=self.unsigned,
                    epoch=change.epoch,
                    node=change.node[:100],
                )
            return
        # This node's own join while it thought itself listed, after changes it did not hear: its entry lapsed (its
        # subscription was down, so it did not beat) and the others dropped it meanwhile; taken though the list is
        # the same (its relays attach again).  With no change between, its own heartbeat found its entry expired and
        # listed it again in one step: nobody saw it gone.
        lapsed = change.joined and change.node == self.node_id and self.listed and change.epoch > self._epoch + 1
        self._epoch = change.epoch
        if change.run and change.node in change.nodes:
            self.runs[change.node] = change.run  # before the next heartbeat tells it: a node that joins takes sockets at once
        me = self.node_id
        # Unsure (unheard): this node's own join tells whether the others acted on its users (another node had
        # dropped it, or Redis lost the list) or not (its own heartbeat found its entry expired: nobody saw it gone;
        # or it is alone); a change dropping it tells that what it kept came before (its users were left to it).
        # Decided in a step of its own, so that what it kept is acted on with the owners before the change.
        if self._unsure_since is not None:
            act: bool | None = None
            if change.joined and change.node == me:
                act = me in change.expired or change.nodes == [me]
            elif me in change.expired:
                act = True
            if act is not None:
                self._in_order(lambda: self._settle(bool(act)))
        self._in_order(lambda: self._take(change.nodes, "", change, lapsed))

    def _listed(self, reply: Any, number: int = 0, begun: float = 0.0) -> None:
        if reply and self.node_id in [_text(n) for n in reply[0] or []]:
            self._last_listed = begun
            if self._unsure_since is not None and number > self._unsure_since:
                unheard = self._join_unheard
                if len(reply) > 4 and reply[4]:
                    self._join_unheard = begun if unheard is None else unheard  # listed anew: its join tells
                elif unheard is None or begun - unheard >= self._grace:
                    # begun since the loss, it found this node's entry there: nobody else acted; or its join was not
                    # heard for ``grace`` seconds (not taken: signed with a secret Redis lost): doubles rather than
                    # losses, what it kept may have been acted on by the others too
                    self._in_order(lambda: self._settle(True))
        names, counts = (reply[0] or [], reply[1] or []) if reply else ([], [])
        runs = (reply[2] or []) if reply and len(reply) > 2 else []
        if reply and len(reply) > 3 and reply[3]:
            self._read_secret(reply[3])
        named = [_text(n) for n in names]
        self.sockets = {node: _count(count) for node, count in zip(named, counts)}
        self.runs = {node: _text(run) for node, run in zip(named, runs) if run}
        nodes = sorted(named)
        if nodes == self.nodes:
            self._differs_since = None
            return
        now = self._clock.seconds()
        if self._differs_since is None:
            self._differs_since = now  # the change is on its way on rm.nodes, or was missed
        elif now - self._differs_since >= self._grace:
            self._differs_since = None
            self._in_order(lambda: self._take(nodes, f" (from the heartbeats: none heard on rm.nodes for {self._grace:g}s)", None))

    def _take(self, nodes: list[str], how: str, change: NodesChange | None, lapsed: bool = False) -> None:
        self._differs_since = None
        if change is None:
            self._settle(False)  # (no change heard that tells: the heartbeats' list is taken, the others acted)
        restarted = change is not None and change.restarted
        if nodes == self.nodes and not restarted and not lapsed:
            return
        joined, left = set(nodes) - set(self.nodes), set(self.nodes) - set(nodes)
        if restarted:
            assert change is not None
            how = f"; {change.node} started again (its previous run's sockets are gone){how}"
        if lapsed:
            how = f"; this daemon's entry had expired unheard (the others dropped it): listed again{how}"
        self.log.info(
            "Nodes on this Redis: {count} ({nodes}){joined}{left}{how}",
            count=len(nodes),
            nodes=", ".join(nodes),
            joined=f"; joined: {', '.join(sorted(joined))}" if joined and self.nodes else "",
            left=f"; left: {', '.join(sorted(left))}" if left else "",
            how=how,
        )
        self.nodes = nodes
        self._on_change(nodes, change)

    def _failed(self, failure: Any) -> None:
        why = failure.getErrorMessage()
        if not self.listed and why != self._warned:
            # never listed: it acts on no PUBLISH to users, and /health says so; the log says why, once
            self._warned = why
            self.log.warn("Heartbeat not written ({why}): this daemon is not listed and acts on no PUBLISH to users", why=why)
            return
        self.log.debug("Heartbeat not written ({why}); next one in {interval}s", why=why, interval=self._interval)

    def stop(self) -> Deferred[None]:
        """Stop beating and leave the list (best effort: a node that cannot reach Redis expires from it)."""
        if self._loop.running:
            self._loop.stop()
        if not self._connected():
            return succeed(None)
        d = translated(
            self._commands.eval(
                HEARTBEAT, _KEYS, [self.node_id, self._ttl, "leave", 0, NODES_CHANNEL, self.run, self._offered, self._epoch]
            )
        )
        d.addTimeout(2.0, self._clock)
        d.addErrback(lambda failure: None)
        return d.addCallback(lambda _: None)


def _count(value: Any) -> int:
    """A socket count as the hash holds it (bytes of digits), 0 for anything else."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return int(text) if text.isdigit() else 0


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
