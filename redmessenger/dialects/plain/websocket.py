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
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from redmessenger.core.dispatcher import Dispatcher
from redmessenger.model.envelope import Message
from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.transport.leanws import Corks, LeanServerProtocol, OpenSockets, text_frame
from redmessenger.core.admission import ConnectionLimit, OriginPolicy
from redmessenger.logs import make_logger
from redmessenger.core.presence import Attachment

_AWAITING_ID, _VERIFYING, _IDENTIFIED = range(3)

#: Message._encodings keys of the plain dialect's frames, by bubble value.
_FRAME_KEYS = {True: ("ws", True), False: ("ws", False)}


def _frame_of(message: Message, bubble: bool) -> bytes:
    return text_frame(message.envelope_json(bubble))


def close_reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8 (RFC 6455 §5.5)."""
    encoded = text.encode("utf-8")
    if len(encoded) <= 123:
        return text
    return encoded[:120].decode("utf-8", "ignore") + "..."


class PlainWebSocketProtocol(LeanServerProtocol):
    """One client socket speaking the plain dialect; a MessageSink for the dispatcher."""

    _log = make_logger()
    factory: PlainWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self._stage = _AWAITING_ID
        self._attachment: Attachment | None = None
        self._identify_timer: IDelayedCall | None = None
        self._peer_text = "?"
        # Pings sent and not answered yet: (sequence number, sent at, waiter).
        # A list: rarely more than two, and an empty deque costs 760 bytes a socket.
        self._pings: list[tuple[int, float, Deferred[bool] | None]] = []
        self._ping_sequence = 0
        #: When the last ping the client answered was sent (keep_alive spares a socket that answered lately).
        self._answered_at = 0.0
        #: A conn_limit slot taken at the handshake, given back in onClose.
        self._holds_slot = False

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
        if self.raw_frames:
            # The hot path: framed once per message and bubble value, shared by
            # every socket, and written without Autobahn (redmessenger.transport.leanws).
            self.write_frame(message.encoded(_FRAME_KEYS[bubble], _frame_of, message, bubble))
        else:
            # permessage-deflate compresses per socket; Autobahn frames it
            self.sendMessage(message.envelope_json(bubble), isBinary=False)
        return True

    def confirm(self) -> Deferred[bool]:
        """A ping; its pong shows the client has read every frame sent before it."""
        waiter: Deferred[bool] = Deferred()
        if self.state != self.STATE_OPEN:
            waiter.callback(False)
            return waiter
        self._send_ping(waiter)
        return waiter

    def _send_ping(self, waiter: Deferred[bool] | None) -> None:
        self._ping_sequence += 1
        self._pings.append((self._ping_sequence, self.factory.clock.seconds(), waiter))
        self.send_ping_token(self._ping_sequence)

    def pong_received(self, sequence: int) -> None:
        pings = self._pings
        while pings and pings[0][0] <= sequence:
            _, self._answered_at, waiter = pings.pop(0)
            if waiter is not None:
                waiter.callback(True)

    def keep_alive(self, now: float) -> None:
        """Called every ping_interval: ping an idle socket, drop one that stopped answering."""
        if self.state != self.STATE_OPEN:
            return
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

    # -- Autobahn callbacks ----------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:
        from autobahn.websocket.types import ConnectionDeny

        peer = self.transport.getPeer()
        self._peer_text = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        if request.path != self.factory.route:
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, f"no WebSocket at {request.path}")
        if not self.factory.origins.allows(request.origin):
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        # conn_limit counts every dialect together (redmessenger.core.admission)
        if not self.factory.limit.acquire():
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "maximum number of connections reached")
        self._holds_slot = True

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
        self._cancel_timer()
        if self._attachment is not None:
            # A clean close we started means the client read every frame sent
            # before our close frame: nothing it was sent is unconfirmed.
            self.factory.dispatcher.detach(self._attachment, received_all=bool(wasClean and self.closedByMe))
            self._attachment = None
        # after detach: a handover waiting on a pong then finds the socket gone
        self._fail_pings()
        self.factory.sockets.closed(self)
        if self._holds_slot:
            self._holds_slot = False
            self.factory.limit.release()

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
        self.close_with(error.code, error.reason)

    def close_with(self, code: CloseCode, reason: str) -> None:
        """
        Start the close handshake.  sendCloseFrame, not sendClose: Autobahn's
        sendClose refuses the standard codes (1001, 1003, 1013) we need.
        """
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(int(code), close_reason(reason).encode("utf-8"), isReply=False)

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
        ping_interval: float = 25.0,
        allowed_origins: tuple[str, ...] = ("*",),
        limit: ConnectionLimit | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.dispatcher = dispatcher
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
        #: Sockets with frames waiting for the end of the reactor turn (redmessenger.transport.leanws).
        self.corks = Corks(clock)
        # One loop for every socket rather than a timer each.
        self._keep_alive = LoopingCall(self._ping_all)
        self._keep_alive.clock = clock
        self.setProtocolOptions(**options)

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

    def frame(self, message: Message, bubble: bool) -> Any:
        return self.prepareMessage(message.envelope_json(bubble), isBinary=False)

    def close_all(self, code: CloseCode, reason: str) -> Deferred[None]:
        """
        Close every open socket (at shutdown, so that clients reconnect
        elsewhere); fires when all of them are closed.
        """
        for socket in list(self.sockets):
            socket.close_with(code, reason)
        return self.sockets.when_empty()
