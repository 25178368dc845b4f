"""
The plain WebSocket dialect, at ``ws://host:port`` + ``rm_route``.

Protocol (also in ``docs/protocol.md``):

1. The client opens a WebSocket at ``rm_route``.  The handshake is refused with
   HTTP 503 when ``conn_limit`` connections are open and HTTP 403 for an Origin
   not in ``allowed_origins``.
2. Its first text frame is its identifier: ``uid``, ``uid:`` or ``uid:key``
   (the key is required when ``secure_mode`` is on).
3. From then on the server sends one envelope per text frame: first the user's
   queue, oldest first, then live messages.  The client sends nothing more.
4. Mistakes close the socket with a code and a reason (:class:`~redmessenger.model.errors.CloseCode`).
5. The server pings; a client answers with pongs, as every WebSocket client
   does on its own.  A pong confirms the frames sent before its ping: queue
   entries leave Redis only once confirmed.  A client that leaves a ping
   unanswered for ``ping_interval`` seconds is dropped (found within two intervals).

The pings are in ``pings.py``, passing a socket to another daemon process in
``passing.py``: bases of :class:`PlainWebSocketProtocol` (``LeanServerProtocol``
-> ``Pings`` -> ``Passing`` -> it), so that neither adds a call to a message or a pong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from redmessenger.core.admission import ConnectionLimit, OriginPolicy
from redmessenger.core.hub import Hub
from redmessenger.core.sessions import ClientSession
from redmessenger.dialects.plain import frames
from redmessenger.dialects.plain.acks import AckLedger
from redmessenger.dialects.plain.passing import Passing
from redmessenger.logs import make_logger
from redmessenger.model.envelope import Message
from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.transport.fastpath import DEFAULT_MAX_UNSENT_BYTES, backed_up_error
from redmessenger.transport.frames import text_frame
from redmessenger.transport.passing import Sender
from redmessenger.transport.sockets import Corks, OpenSockets, peer_text

#: Message._encodings keys of the plain dialect's frames, by bubble value: legacy, and version 1.
_FRAME_KEYS = {True: ("ws", True), False: ("ws", False)}
_V1_FRAME_KEYS = {True: ("ws1", True), False: ("ws1", False)}


def _frame_of(message: Message, bubble: bool) -> bytes:
    return text_frame(message.envelope_json_uncached(bubble))  # cached as the frame, not twice


def _v1_frame_of(message: Message, bubble: bool) -> bytes:
    return text_frame(frames.message_frame_payload(message, bubble))


class PlainWebSocketProtocol(Passing):
    """One client socket speaking the plain dialect: the ClientLink of its session."""

    _log = make_logger()
    factory: PlainWebSocketFactory
    # Set on the instance only for version-1 sessions: a legacy socket keeps no entry for them.
    #: Protocol version 1 (the first frame was a JSON hello): messages are confirmed by acks, not pings.
    _acks: AckLedger | None = None
    #: Version 1: the uid to welcome, until the welcome is written (before anything else).
    _welcome: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self._session: ClientSession | None = None
        self._peer_text = "?"
        #: A conn_limit slot taken at the handshake, given back in onClose.
        self._holds_slot = False

    # -- ClientLink ------------------------------------------------------------------

    @property
    def client_address(self) -> str:
        return self._peer_text

    @property
    def writable(self) -> bool:
        return self.state == self.STATE_OPEN

    @property
    def acknowledges(self) -> bool:
        return self._acks is not None

    def send_message(self, message: Message, bubble: bool) -> bool:
        if self.state != self.STATE_OPEN:
            return False
        acks = self._acks
        if acks is not None:
            self._send_v1(message, bubble, acks)
            return True
        if self.raw_frames:
            # The hot path: framed once per message and bubble value, shared by
            # every socket, and written without Autobahn (redmessenger.transport.fastpath).
            self.write_frame(message.encoded(_FRAME_KEYS[bubble], _frame_of, message, bubble))
        else:
            # permessage-deflate compresses per socket; Autobahn frames it
            self.sendMessage(message.envelope_json(bubble), isBinary=False)
        return True

    def _send_v1(self, message: Message, bubble: bool, acks: AckLedger) -> None:
        if self._welcome is not None:
            self._send_welcome()
        if self.raw_frames:
            self.write_frame(message.encoded(_V1_FRAME_KEYS[bubble], _v1_frame_of, message, bubble))
        else:
            self.sendMessage(frames.message_frame_payload(message, bubble), isBinary=False)
        acks.written(message.id)

    def _send_welcome(self) -> None:
        uid, self._welcome = self._welcome, None
        if uid is not None and self.state == self.STATE_OPEN:
            self._send_raw(frames.welcome(uid or None))

    def _send_raw(self, payload: bytes) -> None:
        if self.raw_frames:
            self.write_frame(text_frame(payload))
        else:
            self.sendMessage(payload, isBinary=False)

    def confirm(self) -> Deferred[bool]:
        """
        Legacy: a ping; its pong shows the client has read every frame sent
        before it.  Version 1: the client's ack of the last message sent.
        """
        acks = self._acks
        if acks is not None:
            if acks.unacknowledged and self.state == self.STATE_OPEN:
                self._send_raw(frames.SYNC)
            return acks.confirm()
        waiter: Deferred[bool] = Deferred()
        if self.state != self.STATE_OPEN:
            waiter.callback(False)
            return waiter
        self._send_ping(waiter)
        return waiter

    def abandon(self, error: ClientError) -> None:
        if self._session is not None:
            self._session.refuse(error)

    def accepted(self, uid: str | None) -> None:
        self.read_so_far = None
        # The legacy protocol has no answer to an identifier (the queue follows); version 1 welcomes.
        if self._acks is not None:
            self._send_welcome()

    def refuse(self, error: ClientError) -> None:
        self.close_with(error.code, error.reason)

    def backed_up(self, unsent: int) -> None:
        session = self._session
        if session is None or session.refused or self.state != self.STATE_OPEN:
            super().backed_up(unsent)
        else:
            session.refuse(backed_up_error(unsent))  # logged and counted as every refusal, then closed (4413)

    # -- Autobahn callbacks ----------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:
        self._peer_text = peer_text(self.transport)
        if request.path != self.factory.route:
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, f"no WebSocket at {request.path}")
        if not self.factory.origins.allows(request.origin or None):  # Autobahn gives "" for no Origin header
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        # conn_limit counts every dialect together (redmessenger.core.admission)
        if not self.factory.limit.acquire():
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "maximum number of connections reached")
        self._holds_slot = True

    def onOpen(self) -> None:
        factory = self.factory
        factory.sockets.add(self)
        self._session = ClientSession(factory.hub, self, factory.clock, factory.identify_timeout)
        # (adopted: the same connection's "New connection" is in the log of the daemon that passed it)
        self._session.opened(factory.listen_label + (", passed by another daemon" if self.adopted else ""))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self._session
        if session is None:
            return
        if self._held is not None:
            self._held.append((payload, isBinary))
            return
        if isBinary:
            session.refuse(ClientError(CloseCode.UNSUPPORTED_DATA, "binary frames are not accepted; send the identifier as text"))
            return
        # Autobahn has validated the frame as UTF-8 already.
        text = payload.decode("utf-8")
        if self._acks is None and session.awaiting_identifier and frames.is_session_frame(text):
            self._acks = AckLedger()
        if self._acks is not None:
            self._on_frame(session, text)
        else:
            session.identify(text)

    def _on_frame(self, session: ClientSession, text: str) -> None:
        """A frame of a version-1 session."""
        try:
            frame = frames.parse_frame(text)
        except ClientError as e:
            session.refuse(e)
            return
        if isinstance(frame, frames.Hello):
            if session.awaiting_identifier:
                # Welcomed once accepted, before anything else ("" for a session without a uid: "uid": null).
                self._welcome = frame.identifier.uid if frame.identifier is not None else ""
            session.hello(frame)
        elif session.awaiting_identifier:
            session.refuse(ClientError(CloseCode.BAD_FRAME, "the first frame must be a hello"))
        elif isinstance(frame, frames.Ack):
            if self._acks is not None and self._acks.ack(frame.id):
                session.acknowledged(frame.id)
        else:
            # Channel requests (SPEC §7): each gets one reply with its ref; the socket stays.
            session.request(frame.kind, frame.fields).addCallback(self._reply, frame.ref)

    def _reply(self, fields: dict[str, Any], ref: str | int) -> None:
        if self.state == self.STATE_OPEN:
            self._send_raw(frames.reply(ref, fields))

    def takes_small_text(self, payload: bytes) -> bool:
        # Version 1's acks, most of what such a client sends: read without Autobahn's frame machinery.
        return self._acks is not None and self._held is None and payload.startswith(b'{"type":"ack"')

    def small_text(self, payload: bytes) -> None:
        session = self._session
        if session is None:
            return
        message_id = frames.compact_ack(payload)
        if message_id is not None and not session.awaiting_identifier:
            # The common ack, as a client library writes it: no JSON parse.
            acks = self._acks
            if acks is not None and acks.ack(message_id):
                session.acknowledged(message_id)
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            # As Autobahn closes any other text frame that is not UTF-8 (this one was read by the fast path).
            session.refuse(ClientError(CloseCode.INVALID_PAYLOAD, "encountered invalid UTF-8 in a text frame"))
            return
        self._on_frame(session, text)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session, self._session = self._session, None
        if session is not None:
            # One line per connection, as its opening has ("New connection ...").
            if session.uid is None:
                self._log.info("Connection {peer} closed ({code})", peer=self._peer_text, code=code, reason=reason)
            else:
                self._log.info(
                    "Connection {peer} of {uid} closed ({code})",
                    peer=self._peer_text,
                    uid=session.uid,
                    code=code,
                    reason=reason,
                )
            # A close we started, whose ping the client answered: it read every
            # frame sent before our close frame (pings.py says why a clean close
            # handshake alone does not show it).  Not for version 1, where only
            # what the client's code acked counts.
            session.closed(received_all=self.read_before_close and self._acks is None)
        # after closed(): a handover waiting on a pong (or an ack) then finds the socket gone
        self._fail_pings()
        if self._acks is not None:
            self._acks.fail()
        self.factory.sockets.closed(self)
        if self._holds_slot:
            self._holds_slot = False
            self.factory.limit.release()


class PlainWebSocketFactory(WebSocketServerFactory):
    """Builds plain-dialect sockets; holds what they share."""

    protocol = PlainWebSocketProtocol  # type: ignore[assignment]  # Autobahn's factory is not generic over its protocol

    def __init__(
        self,
        *,
        hub: Hub,
        clock: IReactorTime,
        route: str,
        identify_timeout: float,
        listen_label: str,
        ping_interval: float = 25.0,
        allowed_origins: tuple[str, ...] = ("*",),
        limit: ConnectionLimit | None = None,
        corks: Corks | None = None,
        max_unsent_bytes: int = DEFAULT_MAX_UNSENT_BYTES,
        **options: Any,
    ) -> None:
        super().__init__()
        #: A client that sends while more than this written to it waits unread is closed as too slow (4413).
        self.max_unsent_bytes = max_unsent_bytes
        self.hub = hub
        self.clock = clock
        self.route = route
        self.identify_timeout = identify_timeout
        self.listen_label = listen_label
        #: Sockets whose handshake completed and that have not closed yet.
        self.sockets = OpenSockets()
        self.ping_interval = ping_interval
        #: conn_limit, shared with the Socket.IO dialect.
        self.limit = limit if limit is not None else ConnectionLimit(10000)
        self.origins = OriginPolicy(allowed_origins)
        #: Sockets with frames waiting for the end of the reactor turn.
        self.corks = corks if corks is not None else Corks(clock)
        #: Passing sockets to their users' owners on this host (pass_sockets): how, and each node's run.
        self.sender: Sender | None = None
        self.run_of: Callable[[str], str | None] = lambda node: None
        # One loop for every socket rather than a timer each.
        self._keep_alive = LoopingCall(self._ping_all)
        self._keep_alive.clock = clock
        self.setProtocolOptions(**options)

    def pass_sockets(self, sender: Sender, run_of: Callable[[str], str | None]) -> None:
        """Pass a socket whose user a daemon on this host owns to that daemon (transport/passing.py)."""
        self.sender = sender
        self.run_of = run_of

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        if self.sender is not None and isinstance(protocol, PlainWebSocketProtocol):
            protocol.read_so_far = bytearray()  # kept until it is identified
        return protocol

    def start(self) -> None:
        if self.ping_interval > 0:
            self._keep_alive.start(self.ping_interval, now=False)

    def stop(self) -> None:
        if self._keep_alive.running:
            self._keep_alive.stop()

    def _ping_all(self) -> None:
        now = self.clock.seconds()
        for socket in list(self.sockets):
            try:
                socket.keep_alive(now)
            except Exception:
                socket._log.failure("Keep-alive of {peer} failed", peer=socket.client_address)

    def close_all(self, code: CloseCode, reason: str) -> Deferred[None]:
        """
        Close every open socket (at shutdown, so that clients reconnect
        elsewhere); fires when all of them are closed.
        """
        for socket in list(self.sockets):
            socket.close_with(code, reason)
        return self.sockets.when_empty()
