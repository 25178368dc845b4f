"""
Engine.IO sessions (protocol revisions 3 and 4): what a client's ``sid`` stands for
while its transports come and go.  Transport-agnostic: the HTTP long-polling and
WebSocket transports live in :mod:`redmessenger.dialects.engineio.transports`, the protocol
as this server speaks it is described in the package, what counts as the client's
receipt of a packet in :mod:`redmessenger.dialects.engineio.receipts`, and the probe of
an upgrade to WebSocket in :mod:`redmessenger.dialects.engineio.upgrade`.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall

from redmessenger.dialects.engineio.codec import (
    CLOSE,
    NOOP,
    PING,
    EncodedPacket,
    Packet,
    PacketType,
    encode_payload,
    open_packet,
)
from redmessenger.dialects.engineio.contract import EngineError, PollRequest, SessionHandler, WebSocketTransport
from redmessenger.dialects.engineio.buffer import PollBuffer
from redmessenger.dialects.engineio.receipts import Receipts
from redmessenger.dialects.engineio.state import State
from redmessenger.dialects.engineio.upgrade import Probe
from redmessenger.logs import make_logger

if TYPE_CHECKING:
    from redmessenger.dialects.engineio.server import EngineServer


#: For the send path: reading an Enum member off its class (``State.OPEN``) costs ~0.13 µs in Python 3.11.
_OPEN = State.OPEN


class Session:
    """One Engine.IO session: buffer, transports, heartbeat timers."""

    log = make_logger()

    def __init__(
        self,
        server: EngineServer,
        sid: str,
        version: int,
        peer: str,
        websocket: WebSocketTransport | None,
        supports_binary: bool = False,
    ) -> None:
        self.server = server
        self.sid = sid
        self.version = version
        self.peer = peer
        #: Revision 3: the client can read binary payloads (XHR2), having sent no ``b64=1`` at its handshake.
        self.supports_binary = supports_binary
        self.state = State.OPEN
        #: Why the session ended (``ping timeout``, ``transport close``, ``client close``...), once it has.
        self.close_reason: str | None = None
        self._clock = server.clock
        self._settings = server.settings
        self._websocket = websocket
        #: A WebSocket probing for an upgrade (redmessenger.dialects.engineio.upgrade).
        self._probe: Probe | None = None
        self._poll: PollRequest | None = None
        #: Packets waiting for a poll (or the upgrade), empty once on a WebSocket; bounded when the client sends.
        self._buffer = PollBuffer()
        #: Revision 3: the count of packets sent up to the last pong; it waits in the buffer while past ``_written``.
        self._pong_at = 0
        #: Packets counted twice: sent (written, or buffered for a poll), and confirmed by the client.
        self._receipts = Receipts()
        #: Revision 4: for each Engine.IO ping sent and not answered yet, the packets sent before it.
        #: The client's JavaScript answers each ping in order, after the packets before it.
        self._pings: deque[int] = deque()
        self._ping_timer: IDelayedCall | None = None
        self._timeout_timer: IDelayedCall | None = None
        self._close_timer: IDelayedCall | None = None
        self._closing_reason = "server close"
        self.handler: SessionHandler = server.handler_factory(self)

    def __repr__(self) -> str:
        return f"<Session {self.sid} EIO={self.version} {self.transport} {self.state.value} {self.peer}>"

    @property
    def transport(self) -> str:
        return "websocket" if self._websocket is not None else "polling"

    @property
    def is_open(self) -> bool:
        return self.state is _OPEN

    @property
    def _written(self) -> int:
        """Packets written to the client (sent ones not waiting in the buffer): what a poll or a pong confirms."""
        return self._receipts.sent - len(self._buffer)

    # -- the layer above ---------------------------------------------------------------

    def start(self) -> None:
        """Send the open packet, start the heartbeat, let the handler speak."""
        upgrades = [] if self._websocket is not None else ["websocket"]
        settings = self._settings
        self._push(
            open_packet(
                self.version, self.sid, upgrades, settings.ping_interval, settings.ping_timeout, settings.max_payload
            )
        )
        if self.version >= 4:
            self._ping_timer = self._clock.callLater(settings.ping_interval, self._ping)
        else:
            self._timeout_timer = self._clock.callLater(settings.ping_interval + settings.ping_timeout, self._timed_out)
        self.handler.on_open()

    def send(self, packet: EncodedPacket) -> bool:
        """
        Send a message packet: written to the WebSocket, or buffered for the next
        poll.  False if the session is ending (the caller keeps the message).

        Every live delivery comes this way: on a WebSocket, one state check here,
        one in the socket's write, one count, and the packet's shared frame goes
        into the socket's cork for this reactor turn.
        """
        if self.state is not _OPEN:
            return False
        return self._push(packet)

    def confirm(self) -> Deferred[bool]:
        """Fires True once the client has received every packet sent so far, False if the session ends first."""
        if self.state is State.CLOSED and not self._receipts.all_confirmed:
            return succeed(False)
        waiter, waits = self._receipts.wait()
        if waits:
            if self._websocket is not None:
                if self.version >= 4:
                    # An Engine.IO ping, which the page's JavaScript answers: a page
                    # frozen in the back/forward cache does not, though its browser
                    # still answers WebSocket pings by itself.
                    self._push_ping()
                else:
                    # Revision 3 has no ping the server sends: a WebSocket ping it is.
                    self._websocket.ping(self._receipts.ping_token(self._written))
        return waiter

    @property
    def all_confirmed(self) -> bool:
        """Whether the client has confirmed every packet sent to it."""
        return self._receipts.all_confirmed

    def close(self, reason: str) -> None:
        """
        End the session on the server's initiative, after the packets already sent:
        a WebSocket is closed behind them; with polling they and a close packet wait
        for the client's next GET (at most ``ping_timeout`` seconds).
        """
        if self.state is not State.OPEN:
            return
        self.state = State.CLOSING
        self._closing_reason = reason
        if self._websocket is not None:
            self._finish(reason, client_gone=False)
            return
        self._push(CLOSE)
        if self.state is State.CLOSING and self._close_timer is None:
            self._close_timer = self._clock.callLater(self._settings.ping_timeout, self._finish, reason, False)

    def abort(self, reason: str, code: int = 1000) -> None:
        """End the session now (shutdown, protocol error): buffered packets are dropped, never confirmed."""
        self._finish(reason, client_gone=False, code=code)

    # -- polling -------------------------------------------------------------------------

    def check_polling(self) -> None:
        """Raise :class:`EngineError` unless polling requests are acceptable now."""
        if self.state is State.CLOSED:
            raise EngineError(400, EngineError.SESSION_UNKNOWN, "Session ID unknown")
        if self._websocket is not None:
            raise EngineError(400, EngineError.BAD_REQUEST, "Bad request: the session was upgraded to WebSocket")

    def poll(self, request: PollRequest) -> None:
        """A GET: answered now if packets wait, else when the next one comes."""
        if self._poll is not None:
            # Two GETs at once break the packet order: the protocol ends the session.
            self.log.info("{peer}: overlapping poll requests; closing session {sid}", peer=self.peer, sid=self.sid)
            self.abort("overlapping polls")
            raise EngineError(400, EngineError.BAD_REQUEST, "Bad request: overlapping poll requests")
        # A client polls again only once it processed the previous response.
        self._receipts.confirm_upto(self._written)
        if self.version < 4:
            # Revision 3 with polling: what keeps the session (posts do not: a client that posts and
            # never polls must not keep its slot, and what is buffered for it, for ever).
            self._reset_timeout()
        self._poll = request
        if self._probe is not None and self._probe.answered:
            # Told to stop polling: this GET only ends the polling transport (engine.io answers it too).
            self.release_poll()
        else:
            self._flush()

    def poll_lost(self, request: PollRequest) -> None:
        """The connection of a pending GET dropped: the client is gone (engine.io does the same)."""
        if self._poll is request:
            self._poll = None
            self._finish("poll connection lost", client_gone=True)

    def receive(self, packets: list[Packet]) -> None:
        """
        Packets from a POST body.  While more than ``max_buffered_bytes`` wait for the
        client's polls, it asks for more than it reads: the handler is told (it ends the
        session as too slow) and the rest of the body is not read.
        """
        limit = self._settings.max_buffered_bytes
        for packet in packets:
            if self.state is State.CLOSED:
                return
            if self._buffer.bytes > limit:
                self.handler.on_backed_up(self._buffer.bytes)  # (logged as a refusal: too slow)
                return
            self._on_packet(packet)

    def drop_buffered(self) -> bool:
        """
        Drop the packets waiting for a poll, unsent (a client too far behind, whose
        messages the layer above has taken back): what waits for their confirmation
        fires False; the pings among them are no longer awaited.  Whether any were.
        """
        dropped = self._buffer.clear()
        if not dropped:
            return False
        self._pong_at = 0
        self._receipts.withdraw(dropped)
        while self._pings and self._pings[-1] > self._receipts.sent:
            self._pings.pop()
        return True

    # -- WebSocket -------------------------------------------------------------------------

    def can_probe(self, version: int) -> bool:
        return self.state is State.OPEN and self._websocket is None and self._probe is None and version == self.version

    def attach_probe(self, websocket: WebSocketTransport) -> bool:
        """A WebSocket opened with this sid: it has ``upgrade_timeout`` seconds to complete the upgrade."""
        if not self.can_probe(self.version):
            return False
        self._probe = Probe(self, websocket, self._clock, self._settings.upgrade_timeout)
        return True

    def websocket_packet(self, websocket: WebSocketTransport, packet: Packet) -> None:
        """A packet from one of this session's WebSockets (the active one or a probe)."""
        if self.state is State.CLOSED:
            return
        if websocket is self._websocket:
            self._on_packet(packet)
        elif self._probe is not None and websocket is self._probe.websocket:
            self._probe.packet(packet)

    def carried_by(self, websocket: WebSocketTransport) -> bool:
        """Whether ``websocket`` is the session's transport (a probe is not, until the upgrade)."""
        return websocket is self._websocket

    def websocket_failed(self, websocket: WebSocketTransport, why: str, code: int) -> None:
        """A WebSocket of this session sent what is not an Engine.IO packet: the session ends, or only the probe."""
        if websocket is self._websocket:
            self.abort("protocol error", code=code)
        elif self._probe is not None and websocket is self._probe.websocket:
            self._probe.fail(why, code)

    def websocket_pong(self, websocket: WebSocketTransport, token: int) -> None:
        """
        A pong: if it answers a :meth:`WebSocketTransport.ping` (its random token), the
        client read everything written before that ping.  Revision 3 only: its browser
        answers it by itself, so a page frozen in the back/forward cache seems to confirm
        (docs/protocol.md); revision 4 confirms with Engine.IO pings.
        """
        if websocket is self._websocket and self.version < 4:
            self._receipts.pong(token)

    def websocket_closed(self, websocket: WebSocketTransport) -> None:
        if websocket is self._websocket:
            self._finish("transport close", client_gone=True)
        elif self._probe is not None and websocket is self._probe.websocket:
            self._probe.cancel()
            self._probe = None

    def probe_ended(self) -> None:
        """The probe is closed without an upgrade: the session goes on polling."""
        self._probe = None

    def upgraded(self, websocket: WebSocketTransport) -> None:
        """The probe completed the upgrade: the WebSocket carries the session from now on."""
        self._probe = None
        self._websocket = websocket
        if self._poll is not None:
            self._answer_poll([NOOP])
        else:
            # The client upgrades only once its last poll is processed.
            self._receipts.confirm_upto(self._written)
        self.log.debug("{peer}: session {sid} upgraded to WebSocket", peer=self.peer, sid=self.sid)
        for packet in self._buffer.take_all():
            websocket.write(packet)
        if self.state is State.CLOSING:
            self._finish(self._closing_reason, client_gone=False)
        elif self._receipts.waiting:
            if self.version >= 4:
                self._push_ping()
            else:
                websocket.ping(self._receipts.ping_token(self._written))

    # -- packets -----------------------------------------------------------------------------

    def _on_packet(self, packet: Packet) -> None:
        if self.version < 4 and self._websocket is not None:
            self._reset_timeout()  # (with polling, the next GET does)
        kind = packet.type
        if kind is PacketType.MESSAGE:
            self.handler.on_message(packet.data)
        elif kind is PacketType.PING:
            if self.version >= 4:
                # The heartbeat is the server's: engine.io ends the session ("invalid heartbeat direction").
                self.log.info("{peer}: a ping from the client in session {sid}; closing it", peer=self.peer, sid=self.sid)
                self.abort("invalid heartbeat direction", code=1002)
            elif self._pong_at <= self._written:
                # Revision 3's heartbeat (the client pings).  At most one pong waits for a poll: it answers them all.
                self._push(EncodedPacket.of(PacketType.PONG, packet.data) if packet.data else _PONG)
                self._pong_at = self._receipts.sent
        elif kind is PacketType.PONG:
            pings = self._pings
            # Only the answer to a ping the client was sent (not one still buffered) shows it is there.
            if self.version >= 4 and pings and pings[0] <= self._written:
                self._receipts.confirm_upto(pings.popleft())
                self._cancel("_timeout_timer")
                if self._ping_timer is None and self.state is not State.CLOSED:
                    self._ping_timer = self._clock.callLater(self._settings.ping_interval, self._ping)
        elif kind is PacketType.CLOSE:
            self._finish("client close", client_gone=True, answer_noop=True)
        elif kind is PacketType.NOOP:
            pass
        else:  # OPEN, or UPGRADE on an established transport: ignored (and logged, a flood as a few lines)
            self.server.misplaced(self, kind.name)

    # -- heartbeat -----------------------------------------------------------------------------

    def _ping(self) -> None:
        self._ping_timer = None
        self._push_ping()
        self._timeout_timer = self._clock.callLater(self._settings.ping_timeout, self._timed_out)

    def _push_ping(self) -> None:
        """Revision 4: a ping (the heartbeat's, or a confirmation's); its pong confirms it and what was sent before it."""
        if self._push(PING):
            self._pings.append(self._receipts.sent)

    def _reset_timeout(self) -> None:
        if self._timeout_timer is not None and self._timeout_timer.active():
            self._timeout_timer.reset(self._settings.ping_interval + self._settings.ping_timeout)

    def _timed_out(self) -> None:
        self._timeout_timer = None
        self._finish("ping timeout", client_gone=True)

    # -- writing -------------------------------------------------------------------------------

    def _push(self, packet: EncodedPacket) -> bool:
        """Any packet, in any state but closed: written to the WebSocket, or buffered and flushed to a waiting poll."""
        websocket = self._websocket
        if websocket is not None:
            if not websocket.write(packet):
                return False
            self._receipts.sent += 1
            return True
        self._buffer.append(packet)
        self._receipts.sent += 1
        self._flush()
        return True

    def _flush(self) -> None:
        """Answer the pending GET with as much of the buffer as one response may carry."""
        if self._poll is None or not self._buffer:
            return
        # revision 3's text payloads carry the packets' ASCII form
        self._answer_poll(self._buffer.take(self._settings.max_poll_bytes, self.version < 4 and not self._poll.binary))
        if self.state is State.CLOSING and not self._buffer:
            self._finish(self._closing_reason, client_gone=False)

    def release_poll(self) -> None:
        """Answer the pending GET now: with what waits in the buffer, or a noop."""
        if self._poll is None:
            return
        if self._buffer:
            self._flush()
        else:
            self._answer_poll([NOOP])

    def _answer_poll(self, packets: list[EncodedPacket]) -> None:
        request, self._poll = self._poll, None
        if request is not None:
            request.answer(encode_payload(self.version, packets, request.binary))

    # -- the end ---------------------------------------------------------------------------------

    def _finish(self, reason: str, client_gone: bool, code: int = 1000, answer_noop: bool = False) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.close_reason = reason
        for name in ("_ping_timer", "_timeout_timer", "_close_timer"):
            self._cancel(name)
        probe = self._probe
        if probe is not None:
            probe.cancel()
        undelivered = self._buffer.clear()
        if self._poll is not None:
            self._answer_poll([NOOP] if answer_noop else [CLOSE])
        for websocket in (self._websocket, probe.websocket if probe is not None else None):
            if websocket is not None:
                websocket.close(code, reason if not client_gone else "")
        self._probe = None
        self.server._forget(self)
        self.log.info(
            "Socket.IO session {sid} of {peer} closed ({reason}, {transport})",
            sid=self.sid,
            peer=self.peer,
            reason=reason,
            transport=self.transport,
            undelivered=undelivered,
        )
        try:
            self.handler.on_close(reason)
        except Exception:
            self.log.failure("The handler of session {sid} failed while closing", sid=self.sid)
        # after on_close: a handover waiting for a confirmation then finds the socket gone
        self._receipts.fail_all()

    def _cancel(self, name: str) -> None:
        timer: IDelayedCall | None = getattr(self, name)
        if timer is not None and timer.active():
            timer.cancel()
        setattr(self, name, None)


_PONG = EncodedPacket.of(PacketType.PONG)
