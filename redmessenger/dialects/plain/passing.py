"""
A plain socket passed to another daemon process on this host, the owner of its
user (pass_sockets; docs/scale-out.md): the dialect's side of transport/passing.py.

At its identifier the session asks the socket to go (``ClientLink.pass_to``).
It goes only as it is: the bytes it read all kept (``read_so_far``, from the
handshake on; the factory starts keeping them when passing is on), not adopted
itself, its frames written raw (the fast path on, no compression), nothing
waiting to be written, plain TCP, and no ping unanswered (its pong would
reach the owner, and answer the owner's own ping).
Otherwise :meth:`Passing.pass_to` says None and the socket is served here.

While it is on its way, this process reads nothing more from it, and what it
read behind the identifier is the owner's to read again: the frames are held,
pings left unanswered, a close asked for meanwhile (at shutdown) put off, and
keep-alive leaves it alone (pings.py).  Passed (or sent and not answered), this
process lets go of its copy without a word to the client; declined, the socket
stays: the held frames are read and the close made, as if it had never been
asked to go.

:class:`Passing` is a base of :class:`~redmessenger.dialects.plain.websocket.PlainWebSocketProtocol`,
over :class:`~redmessenger.dialects.plain.pings.Pings` (a socket is not passed with a ping unanswered).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from redmessenger.core.sessions import ClientSession
from redmessenger.dialects.plain.pings import Pings
from redmessenger.transport.passing import Outcome, let_go, passable

if TYPE_CHECKING:
    from redmessenger.dialects.plain.websocket import PlainWebSocketFactory


class Passing(Pings):
    """A plain socket's way to another process: :meth:`pass_to`, and what it holds meanwhile."""

    factory: PlainWebSocketFactory
    _session: ClientSession | None
    #: While the connection is on its way to another process (pass_to): the frames read meanwhile, and a
    #: close asked for meanwhile (made if the connection stays).
    _held: list[tuple[bytes, bool]] | None = None
    _close_asked: tuple[int, str] | None = None

    def pass_to(self, node: str) -> Deferred[bool] | None:
        received, self.read_so_far = self.read_so_far, None
        factory = self.factory
        sender = factory.sender
        run = factory.run_of(node) if sender is not None else None
        if (
            sender is None or run is None or received is None or self.adopted or not self.raw_frames
            or self._corked is not None or self._pings or not passable(self.transport)
        ):  # fmt: skip
            return None  # (a ping unanswered: its pong would reach the owner, and answer the owner's own ping)
        tcp: Any = self.transport
        tcp.stopReading()  # what the client sends next, the owner reads
        self._held = []
        went: Deferred[bool] = Deferred()
        sender.send(run, self.transport, bytes(received)).addCallback(self._sent, went)
        return went

    def _sent(self, outcome: Outcome, went: Deferred[bool]) -> None:
        held, self._held = self._held or [], None
        if outcome is Outcome.REFUSED:
            went.callback(False)  # served here: the identifier, then the frames that came with it
            for payload, is_binary in held:
                self.onMessage(payload, is_binary)
            if self._close_asked is not None:
                self.close_with(*self._close_asked)
            tcp: Any = self.transport
            if tcp is not None and tcp.connected:
                tcp.startReading()
            return
        went.callback(True)
        session, self._session = self._session, None  # nothing more to say for it: the owner says it
        if session is not None:
            session.closed()
        if self.transport is not None:
            let_go(self.transport)

    def close_with(self, code: int, reason: str) -> None:
        if self._held is None:
            super().close_with(code, reason)
        else:  # on its way to another process, which will answer for it; if it stays, closed then
            self._close_asked = (code, reason)

    def onPing(self, payload: bytes) -> None:
        if self._held is None:  # else read behind the identifier: the owner reads it again, and answers it
            super().onPing(payload)
