"""
The Socket.IO dialect (SPEC §4): the seeds' browser client, unchanged.

Protocol (also in ``docs/protocol.md``), on top of Engine.IO (:mod:`redmessenger.dialects.engineio.session`):

- Socket.IO protocol 5 over Engine.IO 4 (``socket.io-client`` 3.x and 4.x,
  python-socketio 5), and protocol 4 over Engine.IO 3 (``socket.io-client`` 1.x
  and 2.x, the Node.js RedMessenger's generation).
- The namespace is ``rm_route``: ``io("http://host:8080/rm")``.  Protocol 5: the
  client sends ``40/rm,`` and the server answers ``40/rm,{"sid":"..."}``.
  Protocol 4: the server connects every client to ``/`` at once (``40``), the client
  asks for ``40/rm,`` and the server answers ``40/rm,``.  Any other namespace is
  refused: ``44/ns,{"message":"Invalid namespace"}`` (protocol 5) or
  ``44/ns,"Invalid namespace"`` (protocol 4).
- ``socket.emit('identifier', 'uid:key')`` (``42/rm,["identifier","uid:key"]``)
  identifies the socket with the rules of the plain dialect; with an ack id the
  server acknowledges success with ``[{"uid": uid}]``.  Then each envelope arrives
  as ``socket.on('message', envelope)`` (``42/rm,["message",{...}]``): the user's
  queue first, then live messages.
- Mistakes (a bad identifier or key, no identifier within ``identify_timeout``, a
  second identifier, binary data) are reported the way each protocol reports
  errors, with ``{"code": 4401, "name": "BAD_KEY", "message": "..."}``
  (:class:`~redmessenger.model.errors.CloseCode`): protocol 5 as an ``error`` event
  (``42/rm,["error",{...}]``), protocol 4 as an ERROR packet (``44/rm,{...}``),
  which the client emits as ``error`` too.  Then the server disconnects the
  namespace (``41/rm,``: the client does not reconnect) and ends the session.
  ``TRY_AGAIN_LATER`` (Redis unreachable) ends the session without the disconnect
  packet, so that the client reconnects by itself after its back-off.
- Other events are ignored.

Delivery (SPEC §3.4) is the dispatcher's: it keeps every message until the
session confirms the client received it (:meth:`Session.confirm`: the next poll,
the upgrade, a WebSocket pong).  Envelopes still buffered for a polling client that
vanished were never confirmed, so they are delivered again or stay queued.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from redmessenger.daemon.config import Config
from redmessenger.core.dispatcher import Dispatcher
from redmessenger.dialects.engineio.session import EngineServer, EngineSettings, Session
from redmessenger.dialects.engineio.codec import EncodedPacket, PacketType
from redmessenger.dialects.engineio.transports import EngineIOResource, EngineIOWebSocketFactory
from redmessenger.model.envelope import Message
from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.core.admission import ConnectionLimit, OriginPolicy
from redmessenger.logs import make_logger
from redmessenger.core.presence import Attachment

# -- the Socket.IO packet codec --------------------------------------------------------------


class SIOType(IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4  # called ERROR in protocol 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


_NO_DATA: Any = object()


@dataclass(frozen=True)
class SIOPacket:
    type: SIOType
    nsp: str = "/"
    data: Any = _NO_DATA
    id: int | None = None
    attachments: int = 0


class SIOProtocolError(ValueError):
    """Not a Socket.IO packet."""


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_sio(packet: SIOPacket) -> str:
    """``<type>[<attachments>-][<nsp>,][<id>][<json>]``, the namespace only if not ``/``."""
    parts = [str(int(packet.type))]
    if packet.type in (SIOType.BINARY_EVENT, SIOType.BINARY_ACK):
        parts.append(f"{packet.attachments}-")
    if packet.nsp != "/":
        parts.append(packet.nsp + ",")
    if packet.id is not None:
        parts.append(str(packet.id))
    if packet.data is not _NO_DATA:
        parts.append(_dumps(packet.data))
    return "".join(parts)


def decode_sio(text: str) -> SIOPacket:
    """A packet as the client's socket.io-parser writes it (a query after the namespace is dropped)."""
    if not text or not ("0" <= text[0] <= "6"):
        raise SIOProtocolError("unknown packet type")
    kind = SIOType(int(text[0]))
    position, end = 1, len(text)
    attachments = 0
    if kind in (SIOType.BINARY_EVENT, SIOType.BINARY_ACK):
        dash = text.find("-", position)
        digits = text[position:dash] if dash >= 0 else ""
        if not digits.isascii() or not digits.isdigit():
            raise SIOProtocolError("binary packet without an attachment count")
        attachments, position = int(digits), dash + 1
    nsp = "/"
    if position < end and text[position] == "/":
        comma = text.find(",", position)
        stop = comma if comma >= 0 else end
        nsp = text[position:stop].split("?", 1)[0]
        position = stop + 1 if comma >= 0 else end
    start = position
    while position < end and text[position].isascii() and text[position].isdigit():
        position += 1
    ack_id = int(text[start:position]) if position > start and position - start <= 15 else None
    if position - start > 15:
        raise SIOProtocolError("acknowledgement id too long")
    data: Any = _NO_DATA
    if position < end:
        try:
            data = json.loads(text[position:])
        except ValueError:
            raise SIOProtocolError("payload is not JSON") from None
    return SIOPacket(kind, nsp, data, ack_id, attachments)


def packet_key(nsp: str, bubble: bool) -> tuple[str, str, bool]:
    """The key of a message packet in the message's encoding cache; the packet is built from the key's parts alone."""
    return ("socket.io", nsp, bubble)


def message_packet(message: Message, nsp: str, bubble: bool) -> EncodedPacket:
    """
    ``42<nsp>,["message",<envelope>]`` as an Engine.IO message packet, built once per
    message, namespace and bubble value from the envelope JSON the plain dialect
    sends too, and shared by every session (its WebSocket frame too, see
    :attr:`EncodedPacket.frame`).
    """
    key = packet_key(nsp, bubble)
    return message.encoded(key, _build_message_packet, message, key)


def _build_message_packet(message: Message, key: tuple[str, str, bool]) -> EncodedPacket:
    _, nsp, bubble = key
    prefix = "42" + (nsp + "," if nsp != "/" else "")
    return EncodedPacket(prefix + '["message",' + message.envelope_json(bubble).decode("utf-8") + "]")


def _packet(packet: SIOPacket) -> EncodedPacket:
    return EncodedPacket.of(PacketType.MESSAGE, encode_sio(packet))


# -- one client ------------------------------------------------------------------------------

_AWAITING_ID, _VERIFYING, _IDENTIFIED, _REFUSED = range(4)

#: Errors after which the client should come back by itself (its reconnection back-off).
_RETRYABLE = frozenset({CloseCode.TRY_AGAIN_LATER, CloseCode.GOING_AWAY})


class SocketIOConnection:
    """
    A Socket.IO client on one Engine.IO session, connected to the ``rm_route``
    namespace: the :class:`~redmessenger.core.presence.MessageSink` the dispatcher writes to.
    """

    log = make_logger()

    def __init__(self, session: Session, owner: SocketIOServer) -> None:
        self._session = session
        self._owner = owner
        #: Socket.IO protocol revision: 4 over Engine.IO 3, 5 over Engine.IO 4.
        self.protocol = 5 if session.version >= 4 else 4
        #: Connected to the namespace, and not refused (a refused client cannot connect again).
        self._connected = False
        self._stage = _AWAITING_ID
        self._attachment: Attachment | None = None
        self._timer: IDelayedCall | None = None
        self._ack: int | None = None

    # -- MessageSink ---------------------------------------------------------------------------

    @property
    def client_address(self) -> str:
        return self._session.peer

    @property
    def writable(self) -> bool:
        return self._connected and self._session.is_open

    def send_message(self, message: Message, bubble: bool) -> bool:
        # Once per delivery, so message_packet inlined; the session checks its own state.
        if not self._connected:
            return False
        key = self._owner.packet_keys[bubble]
        return self._session.send(message.encoded(key, _build_message_packet, message, key))

    def confirm(self) -> Deferred[bool]:
        return self._session.confirm()

    # -- SessionHandler --------------------------------------------------------------------------

    def on_open(self) -> None:
        owner = self._owner
        self.log.info(
            "New connection {peer} on {listen}! Waiting for ID...",
            peer=self._session.peer,
            listen=owner.listen_label,
            dialect="socket.io",
            transport=self._session.transport,
            eio=self._session.version,
        )
        if self.protocol == 4:
            # Protocol 4: the server connects every client to "/" at once.
            self._send(SIOPacket(SIOType.CONNECT))
            if owner.namespace == "/":
                self._connected = True
        self._timer = owner.clock.callLater(owner.identify_timeout, self._timed_out)

    def on_message(self, data: str) -> None:
        try:
            packet = decode_sio(data)
        except SIOProtocolError as e:
            self.log.info("{peer}: not a Socket.IO packet ({why}); closing", peer=self._session.peer, why=str(e))
            self._session.abort("protocol error", code=1002)
            return
        try:
            self._on_packet(packet)
        except Exception:
            self.log.failure("Handling a Socket.IO packet from {peer} failed", peer=self._session.peer)
            self._session.abort("internal error", code=1011)

    def on_close(self, reason: str) -> None:
        self._cancel_timer()
        self._connected = False
        attachment, self._attachment = self._attachment, None
        if attachment is not None:
            self._owner.dispatcher.detach(attachment, received_all=self._session.all_confirmed)

    # -- packets ---------------------------------------------------------------------------------

    def _on_packet(self, packet: SIOPacket) -> None:
        namespace = self._owner.namespace
        kind = packet.type
        if kind is SIOType.CONNECT:
            self._on_connect(packet.nsp)
        elif packet.nsp != namespace or not self._connected:
            self.log.debug(
                "{peer}: ignoring a {type} packet for {nsp}", peer=self._session.peer, type=kind.name, nsp=packet.nsp
            )
        elif kind is SIOType.EVENT:
            self._on_event(packet)
        elif kind is SIOType.DISCONNECT:
            self._connected = False
            self._session.close("client disconnect")
        elif kind in (SIOType.BINARY_EVENT, SIOType.BINARY_ACK):
            self._refuse(
                ClientError(CloseCode.UNSUPPORTED_DATA, "binary data is not accepted; send the identifier as text")
            )

    def _on_connect(self, nsp: str) -> None:
        namespace = self._owner.namespace
        if nsp != namespace:
            if self.protocol == 4 and nsp == "/":
                return  # connected to "/" at the handshake already
            self.log.info("{peer}: refusing namespace {nsp}", peer=self._session.peer, nsp=nsp)
            data: Any = {"message": "Invalid namespace"} if self.protocol == 5 else "Invalid namespace"
            self._send(SIOPacket(SIOType.CONNECT_ERROR, nsp, data))
            return
        if self._connected or self._stage == _REFUSED:
            return
        self._connected = True
        if self.protocol == 5:
            self._send(SIOPacket(SIOType.CONNECT, nsp, {"sid": secrets.token_urlsafe(15)}))
        else:
            self._send(SIOPacket(SIOType.CONNECT, nsp))

    def _on_event(self, packet: SIOPacket) -> None:
        args = packet.data
        if not isinstance(args, list) or not args or not isinstance(args[0], str):
            self.log.info("{peer}: malformed event; closing", peer=self._session.peer)
            self._session.abort("protocol error", code=1002)
            return
        if args[0] != "identifier":
            self.log.debug("{peer}: ignoring event {name!r}", peer=self._session.peer, name=args[0][:40])
            return
        if self._stage != _AWAITING_ID:
            self._refuse(ClientError(CloseCode.ALREADY_IDENTIFIED, "this socket has sent its identifier already"))
            return
        identifier = args[1] if len(args) > 1 else None
        if not isinstance(identifier, str):
            self._refuse(ClientError(CloseCode.INVALID_IDENTIFIER, "the identifier must be a string 'uid:key'"))
            return
        self._stage = _VERIFYING
        self._ack = packet.id
        self._cancel_timer()
        d = ensureDeferred(self._owner.dispatcher.identify(self, identifier))
        d.addCallbacks(self._identified, self._identify_failed)
        d.addErrback(lambda f: self.log.failure("After identifying {peer}", f, peer=self._session.peer))

    # -- identification ------------------------------------------------------------------------

    def _identified(self, attachment: Attachment | None) -> None:
        if attachment is None:  # gone while the key was being checked
            return
        if self._stage == _REFUSED or not self._session.is_open:
            # refused or ended meanwhile (on_close has run already)
            self._owner.dispatcher.detach(attachment)
            return
        self._stage = _IDENTIFIED
        self._attachment = attachment
        if self._ack is not None:
            self._send(SIOPacket(SIOType.ACK, self._owner.namespace, [{"uid": attachment.uid}], self._ack))

    def _identify_failed(self, failure: Failure) -> None:
        if isinstance(failure.value, ClientError):
            self._refuse(failure.value)
            return
        self.log.failure("Identifying {peer} failed", failure, peer=self._session.peer)
        self._refuse(ClientError(CloseCode.TRY_AGAIN_LATER, "internal error; try again later"))

    def _timed_out(self) -> None:
        self._timer = None
        if not self._connected:
            self.log.info(
                "{peer}: no connection to {nsp} within {timeout:g}s; closing",
                peer=self._session.peer,
                nsp=self._owner.namespace,
                timeout=self._owner.identify_timeout,
            )
            self._session.close("connect timeout")
            return
        self._refuse(
            ClientError(CloseCode.IDENTIFY_TIMEOUT, f"no identifier within {self._owner.identify_timeout:g} seconds")
        )

    def _refuse(self, error: ClientError) -> None:
        """The one place a client mistake becomes Socket.IO packets: the report, then the end."""
        if self._stage == _REFUSED:
            return
        self._stage = _REFUSED
        self._cancel_timer()
        self.log.info("Closing {peer}: {error}", peer=self._session.peer, error=str(error))
        self._owner.dispatcher.refused(error.code)
        report = {"code": int(error.code), "name": error.code.name, "message": error.reason}
        nsp = self._owner.namespace
        if self._connected:
            if self.protocol == 5:
                self._send(SIOPacket(SIOType.EVENT, nsp, ["error", report]))
            else:
                self._send(SIOPacket(SIOType.CONNECT_ERROR, nsp, report))
            if error.code not in _RETRYABLE:
                self._send(SIOPacket(SIOType.DISCONNECT, nsp))
        self._connected = False
        # Closing the transport at once would overtake the report: clients emit
        # Socket.IO events a tick after the Engine.IO packets they came in.  Once the
        # client has shown it received them, the session ends (if the client has not
        # ended it already, as it does after a server disconnect).
        self._session.confirm().addCallback(self._end_after_report, error.code.name.lower())

    def _end_after_report(self, received: bool, reason: str) -> None:
        if received:
            self._session.close(reason)

    def _send(self, packet: SIOPacket) -> None:
        self._session.send(_packet(packet))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


# -- the server --------------------------------------------------------------------------------


class SocketIOServer:
    """The Socket.IO dialect of one daemon: its Engine.IO sessions and its HTTP resource."""

    log = make_logger()

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        clock: IReactorTime,
        limit: ConnectionLimit,
        namespace: str,
        identify_timeout: float,
        listen_label: str,
        settings: EngineSettings,
        allowed_origins: tuple[str, ...],
        websocket_options: dict[str, Any],
    ) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self.namespace = namespace
        #: The keys of this namespace's message packets in Message's encoding cache, by bubble value.
        self.packet_keys = {bubble: packet_key(namespace, bubble) for bubble in (True, False)}
        self.identify_timeout = identify_timeout
        self.listen_label = listen_label
        self.engine = EngineServer(settings, clock, limit, lambda session: SocketIOConnection(session, self))
        self.websockets = EngineIOWebSocketFactory(self.engine, **websocket_options)
        self.resource = EngineIOResource(self.engine, self.websockets, OriginPolicy(allowed_origins))

    def close_all(self) -> Deferred[None]:
        """
        At shutdown: end every session, so that clients reconnect (elsewhere) and
        what they did not confirm is delivered again or queued; fires once their
        WebSockets have closed.
        """
        if len(self.engine):
            self.log.info("Closing {count} Socket.IO sessions", count=len(self.engine))
        self.engine.close_all("server shutting down")
        return self.websockets.all_closed()


def engine_settings(config: Config) -> EngineSettings:
    """
    The heartbeat follows ``ping_interval`` (a client silent for about two
    intervals is dropped, as on the plain dialect); Engine.IO cannot go without
    one, so ``ping_interval: 0`` means engine.io's own 25 s / 20 s there.
    """
    if config.ping_interval > 0:
        return EngineSettings(
            ping_interval=config.ping_interval, ping_timeout=config.ping_interval, max_payload=config.max_frame_bytes
        )
    return EngineSettings(ping_interval=25.0, ping_timeout=20.0, max_payload=config.max_frame_bytes)


def make_socketio(
    config: Config,
    dispatcher: Dispatcher,
    clock: IReactorTime,
    limit: ConnectionLimit,
    listen_label: str,
    websocket_options: dict[str, Any],
) -> SocketIOServer:
    """The Socket.IO dialect as the configuration describes it; its resource is served at ``/socket.io/``."""
    return SocketIOServer(
        dispatcher=dispatcher,
        clock=clock,
        limit=limit,
        namespace=config.rm_route,
        identify_timeout=config.identify_timeout,
        listen_label=listen_label,
        settings=engine_settings(config),
        allowed_origins=config.allowed_origins,
        websocket_options=websocket_options,
    )
