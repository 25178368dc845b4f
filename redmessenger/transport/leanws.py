"""
The hot path of the server's WebSockets, shared by both dialects (plain and Engine.IO).

Autobahn does the handshakes, the close handshake, every client frame but a
pong, and permessage-deflate when it is configured.  What a busy daemon does
most is cheaper done here, measured by ``bench/`` (docs/performance.md):

- A message's text frame is built once and written as bytes to every socket:
  Autobahn's ``sendData`` formats a debug log line per call, debug on or off.
- Writes wait until the end of the reactor turn and leave in one ``send()``
  per socket (:class:`Corks`, :func:`send_now`): Twisted's write path costs two
  ``epoll_ctl`` calls, one more epoll event and its bookkeeping per socket and
  turn, more than the delivery itself when a message fans out to thousands.
- Pongs, nearly all a client sends once identified, are read without
  Autobahn's frame machinery (~20 µs each).
- An idle socket keeps little: Autobahn's 29 protocol options are read from
  the factory instead of being copied (and pretty-printed for a debug line) on
  every connection, the raw handshake is dropped once open, the send queue is
  a list and the byte counters are shared, and :func:`upgrade_to_websocket`
  lets go of the HTTP request: 14.8 KB of server memory per idle identified
  socket became 7.5 KB (bench case d, 10,000 sockets).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.tcp import Server
from twisted.web.server import Request

from redmessenger.logs import make_logger

log = make_logger()

#: FIN + ping opcode, unmasked, 8 bytes of payload (a token).
_PING_HEADER = b"\x89\x08"
#: A client's pong to it: 2 header bytes, a 4-byte mask, the token.
_PONG_LENGTH = 14


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame (RFC 6455 §5.2), as a server sends it."""
    length = len(payload)
    if length <= 125:
        return bytes((0x81, length)) + payload
    if length <= 0xFFFF:
        return bytes((0x81, 126)) + length.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + length.to_bytes(8, "big") + payload


#: send_now reads these attributes of Twisted's TCP transport, which are not
#: public API: if an upgrade renames one, every write takes the ordinary path.
_SERVER_INTERNALS = ("TLS", "dataBuffer", "_tempDataLen", "disconnecting", "_writeDisconnected", "writeSomeData")
#: Whether they are all there: None until the first TCP transport is seen.
_direct_send: bool | None = None


def has_server_internals(transport: Any) -> bool:
    """Whether ``transport`` (a ``tcp.Server``) has every attribute send_now reads; checked once."""
    global _direct_send
    if _direct_send is None:
        missing = [name for name in _SERVER_INTERNALS if not hasattr(transport, name)]
        _direct_send = not missing
        if missing:
            log.warn("Twisted's TCP transport lacks {missing}: writes take the ordinary path", missing=missing)
    return _direct_send


def send_now(transport: Any, data: bytes) -> None:
    """
    ``transport.write(data)``, but sent at once when nothing is buffered before
    it, as libuv's ``uv_try_write`` does for Node.js: no epoll_ctl, no waiting
    for the next reactor turn.  What the kernel does not take is buffered by
    Twisted as usual, so order and back pressure are unchanged.
    """
    if (
        type(transport) is not Server  # TLS, or a test's transport: the ordinary path
        or not has_server_internals(transport)
        or transport.TLS
        or transport.dataBuffer
        or transport._tempDataLen
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
    ):
        transport.write(data)
        return
    sent = transport.writeSomeData(data)
    if type(sent) is int:  # else an exception: the connection is lost, and Twisted's write path finds out
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


class OpenSockets(set[Any]):
    """
    A factory's WebSockets whose handshake completed and that have not closed
    yet; at shutdown, tells when the last one is gone.
    """

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[Deferred[None]] = []

    def closed(self, socket: Any) -> None:
        self.discard(socket)
        if not self:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_empty(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self:
            self._waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter


class Corks:
    """The sockets with frames waiting for the end of this reactor turn; one timed call sends them all."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._sockets: list[LeanServerProtocol] = []
        self._call: IDelayedCall | None = None

    def add(self, socket: LeanServerProtocol) -> None:
        self._sockets.append(socket)
        if self._call is None:
            self._call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._call = None
        sockets, self._sockets = self._sockets, []
        for socket in sockets:
            try:
                socket.flush()
            except Exception:
                log.failure("Writing to a WebSocket failed")


class _FactoryOption:
    """
    An Autobahn protocol option, read from the factory.  Autobahn copies its
    options onto every connection unless the protocol has them already: found
    here on the class, they cost a connection nothing.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type) -> Any:
        if instance is None:
            return self
        return getattr(instance.factory, self.name)


class LeanServerProtocol(WebSocketServerProtocol):
    """
    A WebSocketServerProtocol with the fast paths above.  Its factory has a
    ``corks`` attribute (a :class:`Corks`); subclasses implement :meth:`pong_received`.
    """

    CONFIG_ATTRS: list[str] = []  # read from the factory: see _FactoryOption

    def __init__(self) -> None:
        super().__init__()
        #: Frames written this reactor turn, sent together at its end.
        self._corked: list[bytes] | None = None

    @property
    def raw_frames(self) -> bool:
        """Whether frames can be written as prepared bytes (no permessage-deflate, nothing queued by Autobahn)."""
        return self._perMessageCompress is None and not self.send_queue

    def write_frame(self, frame: bytes) -> None:
        """Write a complete frame (see :func:`text_frame`); only when :attr:`raw_frames`."""
        corked = self._corked
        if corked is None:
            self._corked = [frame]
            self.factory.corks.add(self)
        else:
            corked.append(frame)

    def flush(self) -> None:
        """Send what waits in the cork (the factory's Corks call this at the end of the turn)."""
        corked, self._corked = self._corked, None
        if corked:
            send_now(self.transport, corked[0] if len(corked) == 1 else b"".join(corked))

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Autobahn's own frames (close, pong, handshake) go after ours.
        if self._corked is not None:
            self.flush()
        super().sendData(data, sync, chopsize)

    def send_ping_token(self, token: int) -> None:
        """A ping carrying ``token`` (8 bytes); the pong brings it back to :meth:`pong_received`."""
        if self.raw_frames:
            self.write_frame(_PING_HEADER + struct.pack(">Q", token))
        else:
            self.sendPing(struct.pack(">Q", token))

    def pong_received(self, token: int) -> None:
        """A pong to one of our pings (or an unsolicited one with an 8-byte payload)."""
        raise NotImplementedError

    def dataReceived(self, data: bytes) -> None:
        # Whole pongs read here; anything else, or Autobahn midway through a frame: Autobahn's way.
        length = len(data)
        if length and not length % _PONG_LENGTH and self.state == self.STATE_OPEN and not self.data and self.current_frame is None:
            tokens = []
            for start in range(0, length, _PONG_LENGTH):
                if data[start] != 0x8A or data[start + 1] != 0x88:  # FIN + pong, masked, 8 bytes
                    break
                mask = int.from_bytes(data[start + 2 : start + 6], "big")
                tokens.append(int.from_bytes(data[start + 6 : start + _PONG_LENGTH], "big") ^ (mask << 32 | mask))
            else:
                for token in tokens:
                    self.pong_received(token)
                return
        super().dataReceived(data)

    def onPong(self, payload: bytes) -> None:
        if len(payload) == 8:
            self.pong_received(struct.unpack(">Q", payload)[0])

    def _connectionMade(self) -> None:
        super()._connectionMade()
        # What Autobahn gives each connection and an idle one never needs in
        # its own copy: a deque for frames queued behind a synchronous send
        # (760 bytes empty, and always empty here) and byte counters nothing reads.
        self.send_queue = _SendQueue()
        self.trafficStats = _SHARED_TRAFFIC_STATS

    def _onOpen(self) -> None:
        # Autobahn keeps the raw handshake (request, response, parsed headers)
        # for the socket's lifetime; nothing reads it after the handshake.
        self.http_request_data = self.http_response_data = None
        self.http_headers = {}
        self.http_status_line = self.http_request_uri = self.http_request_host = self._wskey = None
        self.http_request_params = _NO_PARAMS
        self.websocket_protocols = self.websocket_extensions = ()
        super()._onOpen()

    def _onMessage(self, payload: bytes, isBinary: bool) -> None:
        # The unmasking state of the message's last frame, kept until the next frame otherwise.
        self.current_frame_masker = None
        super()._onMessage(payload, isBinary)


class _SendQueue(list):  # type: ignore[type-arg]
    """Autobahn's send queue as a list: the few methods it uses, a tenth of an empty deque's size."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


_SHARED_TRAFFIC_STATS = TrafficStats()
_NO_PARAMS: Mapping[str, list[str]] = MappingProxyType({})


for _option in WebSocketServerProtocol.CONFIG_ATTRS:
    setattr(LeanServerProtocol, _option, _FactoryOption(_option))


def upgrade_to_websocket(resource: WebSocketResource, request: Request) -> bytes | int:
    """
    Hand the request's connection to a WebSocket protocol, and let go of the
    HTTP side: Autobahn takes the transport over but leaves the HTTPChannel
    registered as its producer, which kept the channel, the never-finished
    Request, their headers and buffers alive (several KB and ~30 objects for
    the garbage collector to walk) for as long as the WebSocket was open.
    """
    channel = request.channel
    transport = channel.transport
    rendered: bytes | int = resource.render(request)
    if transport is not None and getattr(transport, "producer", None) is channel:
        transport.unregisterProducer()
    return rendered
