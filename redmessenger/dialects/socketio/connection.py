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
  ``TRY_AGAIN_LATER`` (Redis unreachable) and ``TOO_SLOW`` end the session without
  the disconnect packet, so that the client reconnects by itself after its back-off.
- Version 1 (docs/protocol.md, *Channels*): ``socket.emit('hello', {"v": 1, "pkey": ..., "uid": ...}, ack)``
  instead of the identifier (``uid`` optional: channels only), then ``subscribe``,
  ``unsubscribe`` and ``publish`` events with an object and an ack, answered with
  the plain dialect's reply fields (``{"ok": true, "mode": ...}`` or ``{"ok": false, "error": {...}}``).
- Other events are ignored.

Delivery (SPEC §3.4) is the core's: it keeps every message until the
session confirms the client received it (:meth:`Session.confirm`: the next poll,
the upgrade, a WebSocket pong).  Envelopes still buffered for a polling client that
vanished were never confirmed, so they are delivered again or stay queued.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from redmessenger.core.sessions import ClientSession
from redmessenger.dialects.engineio.session import Session
from redmessenger.dialects.socketio.codec import (
    SIOPacket,
    SIOProtocolError,
    SIOType,
    build_message_packet,
    decode_sio,
    engine_packet,
)
from redmessenger.logs import make_logger, worth_a_line
from redmessenger.model.channels import REQUESTS
from redmessenger.model.envelope import Message
from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.model.identity import parse_hello
from redmessenger.transport.fastpath import backed_up_error

if TYPE_CHECKING:
    from redmessenger.dialects.socketio.server import SocketIOServer

#: Errors after which the client should come back by itself (its reconnection back-off): a client closed as
#: too slow reconnects and gets what it missed from the queue, as after any transient close.
_RETRYABLE = frozenset({CloseCode.TRY_AGAIN_LATER, CloseCode.GOING_AWAY, CloseCode.TOO_SLOW})


class SocketIOConnection:
    """
    A Socket.IO client on one Engine.IO session, connected to the ``rm_route``
    namespace: the Engine.IO session's handler, and the ClientLink of its client session.
    """

    log = make_logger()

    def __init__(self, session: Session, owner: SocketIOServer) -> None:
        self._session = session
        self._owner = owner
        #: Socket.IO protocol revision: 4 over Engine.IO 3, 5 over Engine.IO 4.
        self.protocol = 5 if session.version >= 4 else 4
        #: Connected to the namespace, and not refused (a refused client cannot connect again).
        self._connected = False
        #: Packets the layer above had written were dropped unsent (abandon): the client did not receive all.
        self._dropped = False
        self._client = ClientSession(owner.hub, self, owner.clock, owner.identify_timeout)
        #: The acknowledgement id of the identifier event, answered once it is accepted.
        self._ack: int | None = None
        #: After a refusal: ends the session if the client has not confirmed the report in time.
        self._report_timer: IDelayedCall | None = None
        # The peer alone does not tell sessions apart: long-polling requests of several
        # sessions share a browser's keep-alive connections, hence one host:port.
        self._address = f"{session.peer} (Socket.IO session {session.sid})"

    # -- ClientLink ------------------------------------------------------------------------------

    @property
    def client_address(self) -> str:
        """The Engine.IO handshake's ``host:port`` and the session id, for logs."""
        return self._address

    @property
    def acknowledges(self) -> bool:
        return False

    @property
    def writable(self) -> bool:
        return self._connected and self._session.is_open

    def send_message(self, message: Message, bubble: bool) -> bool:
        # Once per delivery, so message_packet inlined; the session checks its own state.
        if not self._connected:
            return False
        key = self._owner.packet_keys[bubble]
        return self._session.send(message.encoded(key, build_message_packet, message, key))

    def confirm(self) -> Deferred[bool]:
        return self._session.confirm()

    def abandon(self, error: ClientError) -> None:
        # What waits for a polling client's next GET goes (the core has taken those messages back), then the
        # report: a WebSocket closes right behind it; a polling client gets it with its next GET, and the close
        # packet with the one after, as after any refusal.  The client reconnects (TOO_SLOW is retryable).
        # A refusal under way had its report, and so its end, dropped with the rest: ended at once.
        refused = self._client.refused
        if self._session.drop_buffered():
            self._dropped = True  # written, as the layer above sees it, and never sent: not all received
        self._client.refuse(error)
        if refused or self._session.transport == "websocket":
            self._session.abort(error.code.name.lower(), code=int(error.code))

    def accepted(self, uid: str | None) -> None:
        if self._ack is not None:
            self._send(SIOPacket(SIOType.ACK, self._owner.namespace, [{"uid": uid}], self._ack))

    def pass_to(self, node: str) -> None:
        # An Engine.IO session spans requests and connections: it stays, relayed to its owner.
        return None

    def refuse(self, error: ClientError) -> None:
        """A client mistake as Socket.IO packets: the report, then the end."""
        nsp = self._owner.namespace
        if not self._connected:
            # Never connected to the namespace: nobody to report to.
            self._session.close("connect timeout" if error.code is CloseCode.IDENTIFY_TIMEOUT else error.code.name.lower())
            return
        report = {"code": int(error.code), "name": error.code.name, "message": error.reason}
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
        # ended it already, as it does after a server disconnect).  A client that does
        # not show it (an Engine.IO 3 client that answers no WebSocket ping, while its
        # own pings keep the session) is given ``ping_timeout`` seconds, as the close
        # packet of a polling session waits for its next GET: then the session ends anyway.
        reason = error.code.name.lower()
        session = self._session
        session.confirm().addCallback(self._end_after_report, reason)
        if session.is_open and self._report_timer is None:
            self._report_timer = self._owner.clock.callLater(self._owner.engine.settings.ping_timeout, session.close, reason)

    def _end_after_report(self, received: bool, reason: str) -> None:
        self._cancel_report_timer()
        if received:
            self._session.close(reason)

    def _cancel_report_timer(self) -> None:
        timer, self._report_timer = self._report_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- SessionHandler --------------------------------------------------------------------------

    def on_open(self) -> None:
        owner = self._owner
        self._client.opened(
            owner.listen_label,
            dialect="socket.io",
            transport=self._session.transport,
            eio=self._session.version,
            sid=self._session.sid,
        )
        if self.protocol == 4:
            # Protocol 4: the server connects every client to "/" at once.
            self._send(SIOPacket(SIOType.CONNECT))
            if owner.namespace == "/":
                self._connected = True

    def on_message(self, data: str) -> None:
        try:
            packet = decode_sio(data)
        except SIOProtocolError as e:
            self.log.info("{peer}: not a Socket.IO packet ({why}); closing", peer=self._address, why=str(e))
            self._session.abort("protocol error", code=1002)
            return
        try:
            self._on_packet(packet)
        except Exception:
            self.log.failure("Handling a Socket.IO packet from {peer} failed", peer=self._address)
            self._session.abort("internal error", code=1011)

    def on_backed_up(self, unread: int) -> None:
        # As the core gives up a socket too slow: what it did not confirm goes elsewhere now, then abandon().
        error = backed_up_error(unread)
        attachment = self._client.attachment
        if attachment is not None:
            self._owner.hub.abandon(attachment, error)
        else:
            self.abandon(error)

    def on_close(self, reason: str) -> None:
        self._connected = False
        self._cancel_report_timer()
        self._client.closed(received_all=self._session.all_confirmed and not self._dropped)

    # -- packets ---------------------------------------------------------------------------------

    def _on_packet(self, packet: SIOPacket) -> None:
        namespace = self._owner.namespace
        kind = packet.type
        if kind is SIOType.CONNECT:
            self._on_connect(packet.nsp)
        elif packet.nsp != namespace or not self._connected:
            self.log.debug(
                "{peer}: ignoring a {type} packet for {nsp}", peer=self._address, type=kind.name, nsp=packet.nsp
            )
        elif kind is SIOType.EVENT:
            self._on_event(packet)
        elif kind is SIOType.DISCONNECT:
            self._connected = False
            self._session.close("client disconnect")
        elif kind in (SIOType.BINARY_EVENT, SIOType.BINARY_ACK):
            self._client.refuse(
                ClientError(CloseCode.UNSUPPORTED_DATA, "binary data is not accepted; send the identifier as text")
            )

    def _on_connect(self, nsp: str) -> None:
        namespace = self._owner.namespace
        if nsp != namespace:
            if self.protocol == 4 and nsp == "/":
                return  # connected to "/" at the handshake already
            owner = self._owner
            owner.refused_namespaces += 1
            if worth_a_line(owner.refused_namespaces):  # the first, then every 1000th: a flood stays a few lines
                self.log.info(
                    "{peer}: refusing namespace {nsp} ({count} refused so far on this server)",
                    peer=self._address,
                    nsp=nsp[:100],
                    count=owner.refused_namespaces,
                )
            data: Any = {"message": "Invalid namespace"} if self.protocol == 5 else "Invalid namespace"
            self._send(SIOPacket(SIOType.CONNECT_ERROR, nsp, data))
            return
        if self._connected or self._client.refused:
            return
        self._connected = True
        if self.protocol == 5:
            self._send(SIOPacket(SIOType.CONNECT, nsp, {"sid": secrets.token_urlsafe(15)}))
        else:
            self._send(SIOPacket(SIOType.CONNECT, nsp))

    def _on_event(self, packet: SIOPacket) -> None:
        args = packet.data
        if not isinstance(args, list) or not args or not isinstance(args[0], str):
            self.log.info("{peer}: malformed event; closing", peer=self._address)
            self._session.abort("protocol error", code=1002)
            return
        name, data = args[0], args[1] if len(args) > 1 else None
        if name == "identifier":
            if self._client.awaiting_identifier:
                self._ack = packet.id
            self._client.identify(data)
        elif name == "hello":
            # Version 1 (docs/protocol.md, *Channels*): the plain dialect's hello, as an event.
            if self._client.awaiting_identifier:
                self._ack = packet.id
            if not isinstance(data, dict):
                self._client.refuse(ClientError(CloseCode.BAD_FRAME, "hello: expected an object"))
                return
            try:
                hello = parse_hello(data)
            except ClientError as e:
                self._client.refuse(e)
                return
            self._client.hello(hello)
        elif name in REQUESTS:
            # Answered through the event's acknowledgement, if it asked for one.
            fields = data if isinstance(data, dict) else {}
            reply = self._client.request(name, fields)
            if packet.id is not None:
                reply.addCallback(self._reply, packet.id)
        else:
            self.log.debug("{peer}: ignoring event {name!r}", peer=self._address, name=name[:40])

    def _reply(self, fields: dict[str, Any], ack: int) -> None:
        if self._connected and self._session.is_open:
            self._send(SIOPacket(SIOType.ACK, self._owner.namespace, [fields], ack))

    def _send(self, packet: SIOPacket) -> None:
        self._session.send(engine_packet(packet))
