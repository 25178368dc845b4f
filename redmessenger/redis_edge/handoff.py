"""
The changes of the nodes, in order between them (docs/scale-out.md, *Changes of
the nodes, in order*): what a node did for a user before a change must land
before what the user's new owner does after it.  The nodes handing users on say
so once their writes landed (``barrier``, through the inbox), and the new owner
holds the messages after the change until each has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed

from redmessenger.core.hub import Hub
from redmessenger.logs import make_logger
from redmessenger.redis_edge.nodes import NodesChange

#: Seconds a node holds the messages after a change of the nodes for the word of those handing it users.
BARRIER_TIMEOUT = 2.0
#: Words of changes not held for yet (they may come before the change itself) kept at most.
EARLY_BARRIERS = 100


class Outbox(Protocol):
    """The way to the other nodes' inboxes (redis_edge/peers.PeerLink)."""

    def send(self, node: str, kind: bytes, **fields: bytes | str) -> None: ...

    def flush(self) -> Deferred[None]: ...


class Handoffs:
    """One node's part in the order of the changes: the words it owes, and the messages it holds for words owed to it."""

    log = make_logger()

    def __init__(self, node: str, hub: Hub, outbox: Outbox, clock: Any) -> None:
        self.node = node
        self._hub = hub
        self._outbox = outbox
        self._clock = clock
        #: Changes this node holds the messages for: who has not said its writes landed yet.
        self._holds: dict[int, tuple[set[str], Any, Any]] = {}
        #: Such words come before this node heard the change: by change, who said so.
        self._early: dict[int, set[str]] = {}
        #: Fired once this node, leaving, has told the others its last writes landed; and whether it has.
        self._gone: list[Deferred[None]] = []
        self._told = False
        #: Changes after which this node went on without every word it waited for (BARRIER_TIMEOUT).
        self.timed_out = 0
        #: Fires once this node's intake reader has no read under way (what it read is routed): the durable intake's
        #: reader moves with the nodes too, and what the old one read must reach the new owners before its word.
        self.reader_quiet: Callable[[], Deferred[None]] = lambda: succeed(None)
        #: Called when the last hold is let go (the new intake reader starts reading then).
        self.on_released: Callable[[], object] = lambda: None

    def changed(self, change: NodesChange) -> None:
        """
        What a node did for a user before a change must land before what its new
        owner does after it: queue writes and deliveries.  The nodes handing users
        on (all but the newcomer when one joins: rendezvous hashing moves users to
        it only; the one leaving when one leaves) say so (``barrier``) once their
        writes landed, and the new owner holds the messages that follow the change
        until each has, or for BARRIER_TIMEOUT seconds (one that died says nothing).
        """
        me = self.node
        give_to: list[str] = []
        expect: set[str] = set()
        if change.joined:
            if change.node == me:
                self._told = False
                expect = {node for node in change.nodes if node != me}
            elif change.node in change.nodes:
                give_to = [change.node]
        if change.left:
            if change.node == me:
                give_to = [node for node in change.nodes if node != me]
            else:
                expect = {change.node}
        leaving = change.left and change.node == me
        if give_to or leaving:
            epoch = str(change.epoch).encode("ascii")

            def landed(_: object) -> Deferred[None] | None:
                for node in give_to:
                    self._outbox.send(node, b"barrier", e=epoch)
                written = self._outbox.flush()
                if leaving:
                    return written.addBoth(self._left)
                return None

            # what the intake reader read before it saw the change goes first (forwarded to the new owners), then
            # the queue writes land, then the word
            self.reader_quiet().addBoth(lambda _: self._hub.written()).addBoth(landed)
        expect -= self._early.pop(change.epoch, set())
        if expect:
            timer = self._clock.callLater(BARRIER_TIMEOUT, self._no_barrier, change.epoch)
            self._holds[change.epoch] = (expect, self._hub.hold(), timer)

    def barrier(self, node: str, epoch: int) -> None:
        """``node`` says its writes before the change ``epoch`` landed."""
        held = self._holds.get(epoch)
        if held is None:
            self._early.setdefault(epoch, set()).add(node)
            while len(self._early) > EARLY_BARRIERS:
                del self._early[min(self._early)]
            return
        waiting, release, timer = held
        waiting.discard(node)
        if not waiting:
            del self._holds[epoch]
            timer.cancel()
            release()
            if not self._holds:
                self.on_released()

    def _no_barrier(self, epoch: int) -> None:
        waiting, release, _ = self._holds.pop(epoch)
        self.timed_out += 1
        self.log.warn(
            "No word from {nodes} {timeout}s after the change {epoch} of the nodes; going on (a node that died says nothing)",
            nodes=", ".join(sorted(waiting)),
            timeout=BARRIER_TIMEOUT,
            epoch=epoch,
        )
        release()
        if not self._holds:
            self.on_released()

    @property
    def holding(self) -> bool:
        """Whether this node holds messages for another node's word (its intake reader does not read meanwhile)."""
        return bool(self._holds)

    def gone(self, timeout: float) -> Deferred[None]:
        """After this node left the list: fires once it told the others its last writes landed (at most ``timeout``)."""
        waiter: Deferred[None] = Deferred()
        if self._told:  # heard and told before the leave's reply came back
            waiter.callback(None)
            return waiter
        self._gone.append(waiter)
        waiter.addTimeout(timeout, self._clock)
        return waiter.addErrback(lambda _: None)

    def _left(self, _: object) -> None:
        self._told = True
        waiters, self._gone = self._gone, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    def stop(self) -> None:
        """Hold nothing any more."""
        holds, self._holds = self._holds, {}
        for _, release, timer in holds.values():
            timer.cancel()
            release()
