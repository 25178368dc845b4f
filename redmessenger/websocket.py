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
4. Mistakes close the socket with a code and a reason (:class:`~redmessenger.errors.CloseCode`).
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from .logs import make_logger
from twisted.python.failure import Failure

from .dispatcher import Dispatcher
from .envelope import Message
from .errors import ClientError, CloseCode
from .presence import Attachment

_AWAITING_ID, _VERIFYING, _IDENTIFIED = range(3)


def close_reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8 (RFC 6455 §5.5)."""
    encoded = text.encode("utf-8")
    if len(encoded) <= 123:
        return text
    return encoded[:120].decode("utf-8", "ignore") + "..."


class PlainWebSocketProtocol(WebSocketServerProtocol):
    """One client socket speaking the plain dialect; a MessageSink for the dispatcher."""

    _log = make_logger()
    factory: PlainWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self._stage = _AWAITING_ID
        self._attachment: Attachment | None = None
        self._identify_timer: IDelayedCall | None = None
        self._peer_text = "?"

    # -- MessageSink ---------------------------------------------------------------

    @property
    def client_address(self) -> str:
        return self._peer_text

    @property
    def writable(self) -> bool:
        return self.state == self.STATE_OPEN

    def send_message(self, message: Message, bubble: bool) -> bool:
        if self.state != self.STATE_OPEN:
            return False
        # Framed once per message and bubble value, shared by every socket.
        frame = message.encoded(("ws", bubble), lambda: self.factory.frame(message, bubble))
        self.sendPreparedMessage(frame)
        return True

    # -- Autobahn callbacks ----------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:
        from autobahn.websocket.types import ConnectionDeny

        peer = self.transport.getPeer()
        self._peer_text = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        if request.path != self.factory.route:
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, f"no WebSocket at {request.path}")

    def onOpen(self) -> None:
        self.factory.sockets.add(self)
        self._log.info(
            "New connection {peer} on {listen}! Waiting for ID...", peer=self._peer_text, listen=self.factory.listen_label
        )
        self._identify_timer = self.factory.clock.callLater(self.factory.identify_timeout, self._identify_timed_out)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            if isBinary:
                raise ClientError(CloseCode.UNSUPPORTED_DATA, "binary frames are not accepted; send the identifier as text")
            if self._stage != _AWAITING_ID:
                raise ClientError(CloseCode.ALREADY_IDENTIFIED, "this socket has sent its identifier already")
        except ClientError as e:
            self._refuse(e)
            return
        self._stage = _VERIFYING
        self._cancel_timer()
        # Autobahn has validated the frame as UTF-8 already.
        d = ensureDeferred(self.factory.dispatcher.identify(self, payload.decode("utf-8")))
        d.addCallbacks(self._identified, self._identify_failed)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.sockets.discard(self)
        self._cancel_timer()
        if self._attachment is not None:
            self.factory.dispatcher.detach(self._attachment)
            self._attachment = None

    # -- identification ------------------------------------------------------------

    def _identified(self, attachment: Attachment | None) -> None:
        if attachment is None:  # closed while the key was being checked
            return
        self._stage = _IDENTIFIED
        self._attachment = attachment
        if not self.writable:  # closed in the meantime; onClose has run already
            self.factory.dispatcher.detach(attachment)
            self._attachment = None

    def _identify_failed(self, failure: Failure) -> None:
        if failure.check(ClientError):
            self._refuse(failure.value)
            return
        self._log.failure("Identifying {peer} failed", failure, peer=self._peer_text)
        self._refuse(ClientError(CloseCode.TRY_AGAIN_LATER, "internal error; try again later"))

    def _identify_timed_out(self) -> None:
        self._identify_timer = None
        self._refuse(
            ClientError(CloseCode.IDENTIFY_TIMEOUT, f"no identifier within {self.factory.identify_timeout:g} seconds")
        )

    def _refuse(self, error: ClientError) -> None:
        """The one place a client mistake becomes a close frame."""
        self._log.info("Closing {peer}: {error}", peer=self._peer_text, error=str(error))
        self.factory.dispatcher.refused(error.code)
        self._cancel_timer()
        if self.state in (self.STATE_OPEN, self.STATE_CONNECTING):
            self.sendClose(int(error.code), close_reason(error.reason))

    def _cancel_timer(self) -> None:
        if self._identify_timer is not None and self._identify_timer.active():
            self._identify_timer.cancel()
        self._identify_timer = None


class PlainWebSocketFactory(WebSocketServerFactory):
    """Builds plain-dialect sockets; holds what they share."""

    protocol = PlainWebSocketProtocol

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        clock: IReactorTime,
        route: str,
        identify_timeout: float,
        listen_label: str,
        **options: Any,
    ) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.clock = clock
        self.route = route
        self.identify_timeout = identify_timeout
        self.listen_label = listen_label
        #: Sockets whose handshake completed and that have not closed yet.
        self.sockets: set[PlainWebSocketProtocol] = set()
        self.setProtocolOptions(**options)

    def frame(self, message: Message, bubble: bool) -> Any:
        return self.prepareMessage(message.envelope_json(bubble), isBinary=False)

    def close_all(self, code: CloseCode, reason: str) -> None:
        """Close every open socket (at shutdown, so that clients reconnect elsewhere)."""
        for socket in list(self.sockets):
            socket.sendClose(int(code), reason)
