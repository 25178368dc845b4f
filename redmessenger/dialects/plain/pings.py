"""
The plain dialect's WebSocket pings (docs/protocol.md): what confirms the
frames of a legacy socket, and what keeps every plain socket alive.

A ping carries 8 random bytes; a pong with the same bytes shows the client has
read every frame sent before that ping (and the pings before it), and confirms
what they carried.  A pong the client sends unasked, or with other bytes,
confirms nothing.  Every ``ping_interval`` (one loop for every socket, in the
factory) a socket that stopped answering is dropped and an idle one is pinged.
Version-1 sessions are confirmed by their acks (acks.py): their pings only keep
them alive.

A close we start (:meth:`Pings.close_with`) is preceded by a ping: its pong is
what shows a legacy client read everything it was sent (:attr:`Pings.read_before_close`).
A clean close handshake does not: a client that started its own close as ours
left (a browser whose page calls ``close()``) answers our close frame all the
same, and has discarded the frames that reached it after its ``close()``
(browsers drop a message that arrives once the socket is closing).  It does not
answer the ping (Chromium, Autobahn and Node's ``ws`` answer pings only while
open), so what it was sent goes back to the queue: at worst twice, never lost.

:class:`Pings` is a base of :class:`~redmessenger.dialects.plain.websocket.PlainWebSocketProtocol`
(under passing.py's :class:`~redmessenger.dialects.plain.passing.Passing`), not an object it holds: a pong read by the fast path (transport/fastpath.py)
costs one call, :meth:`Pings.pong_received`.
"""

from __future__ import annotations

from secrets import randbits
from typing import TYPE_CHECKING, TypeAlias

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from redmessenger.transport.fastpath import LeanServerProtocol

if TYPE_CHECKING:
    from redmessenger.dialects.plain.websocket import PlainWebSocketFactory

#: A ping sent and not answered yet: (token, sent at, waiter: None for a keep-alive ping).
Ping: TypeAlias = tuple[int, float, Deferred[bool] | None]


class Pings(LeanServerProtocol):
    """A plain socket's pings: sent to confirm (``confirm``) or to keep it alive, and their pongs."""

    _log: Logger
    factory: PlainWebSocketFactory
    _peer_text: str
    #: On its way to another process (passing.py, the class over this one): pinged no more.
    _held: list[tuple[bytes, bool]] | None
    #: The ping sent right before our close frame, and whether the client answered it (class defaults: an idle
    #: socket carries neither).
    _close_ping: int | None = None
    read_before_close = False

    def __init__(self) -> None:
        super().__init__()
        # Pings sent and not answered yet, oldest first: (token, sent at, waiter).
        # A list: rarely more than two, and an empty deque costs 760 bytes a socket.
        self._pings: list[Ping] = []
        #: When the last ping the client answered was sent (keep_alive spares a socket that answered lately).
        self._answered_at = 0.0

    def _send_ping(self, waiter: Deferred[bool] | None) -> None:
        # A token the client cannot guess: only a client that read the ping (and so every frame before it)
        # can answer it, and only such an answer confirms what those frames carried.
        token = randbits(64)
        self._pings.append((token, self.factory.clock.seconds(), waiter))
        self.send_ping_token(token)

    def pong_received(self, token: int) -> None:
        pings = self._pings
        for answered, (sent, _, _) in enumerate(pings, 1):
            if sent == token:
                break
        else:
            return  # not an answer to a ping of ours (RFC 6455 lets a client send pongs unasked): it confirms nothing
        # The pings before it were read too: a client may answer only the latest of several (RFC 6455, 5.5.3).
        self._pings = pings[answered:]
        if token == self._close_ping:  # the last ping it will get: everything before our close frame was read
            self.read_before_close = True
        for _, self._answered_at, waiter in pings[:answered]:
            if waiter is not None:
                waiter.callback(True)

    def close_with(self, code: int, reason: str) -> None:
        """Start the close handshake, behind a ping whose pong shows the client read every frame before it."""
        if self.state == self.STATE_OPEN and self._held is None:
            self._send_ping(None)
            self._close_ping = self._pings[-1][0]
        super().close_with(code, reason)

    def keep_alive(self, now: float) -> None:
        """Called every ping_interval: ping an idle socket, drop one that stopped answering."""
        if self.state != self.STATE_OPEN or self._held is not None:
            return  # (on its way to another process: not a byte more from this one)
        if self._pings and now - self._pings[0][1] >= self.factory.ping_interval:
            self._log.info("Dropping {peer}: no pong for {seconds:.0f}s", peer=self._peer_text, seconds=now - self._pings[0][1])
            self.dropConnection(abort=True)
        elif not self._pings and now - self._answered_at >= self.factory.ping_interval:
            # Not for a socket whose confirmations showed it alive lately: under
            # load that was every socket, pinged all in one turn (and their
            # pongs in the next ones), a 50 ms stall every ping_interval.
            self._send_ping(None)

    def _fail_pings(self) -> None:
        pings, self._pings = self._pings, []
        for _, _, waiter in pings:
            if waiter is not None:
                waiter.callback(False)
