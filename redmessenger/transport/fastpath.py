"""
The hot path of the server's WebSockets, shared by both dialects, and the only
module that reads Twisted's and Autobahn's internals.

Autobahn does the handshakes, the close handshake, every client frame but a
pong, and permessage-deflate when it is configured.  What a busy daemon does
most is cheaper done here, measured by ``bench/`` (docs/performance.md):

- A message's text frame is built once and written as bytes to every socket:
  Autobahn's ``sendData`` formats a debug log line per call, debug on or off.
- Writes wait until the end of the reactor turn (:class:`~redmessenger.transport.sockets.Corks`)
  and leave in one ``send()`` per socket, sent at once when nothing is
  buffered before them (:func:`send_now`).
- Pongs, nearly all a client sends once identified, are read without
  Autobahn's frame machinery (~20 µs each).
- An idle socket keeps little: Autobahn's 29 protocol options are read from
  the factory instead of being copied onto every connection, the raw handshake
  is dropped once open, the send queue is a list and the byte counters are
  shared, and :func:`upgrade_to_websocket` lets go of the HTTP request: 14.8 KB
  of server memory per idle identified socket became 7.5 KB (bench case d).

None of this is public API.  :func:`~redmessenger.transport.selftest.self_test` runs at start, in memory, over
everything the fast path relies on; if any of it is missing after an upgrade
of Twisted or Autobahn, :func:`disable` switches the fast path off as a whole
and every socket uses Autobahn's and Twisted's public API (slower, same
behaviour).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats
from twisted.internet.tcp import Server
from twisted.web.server import Request

from redmessenger.logs import make_logger
from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.transport.frames import (
    PONG,
    close_reason,
    ping_frame,
    read_pongs,
    read_small_frames,
)
from redmessenger.transport.passing import MAX_PASSED_BYTES

log = make_logger(__name__)


class _Switch:
    """Whether the fast path is on; :func:`disable` turns it off for every socket at once."""

    enabled = True
    #: Why it was switched off, for operators.
    reason: str | None = None


SWITCH = _Switch()

#: send_now and unsent_bytes read these attributes of Twisted's TCP transport.
_SERVER_INTERNALS = ("TLS", "dataBuffer", "offset", "_tempDataLen", "disconnecting", "_writeDisconnected", "socket")

#: Bytes written to a socket and not yet taken by the kernel past which a client that sends something is closed
#: as too slow (4413): it asks for more (pongs, replies) than it reads.  Set per factory (``max_unsent_bytes``)
#: above the sockets' ``max_pending_bytes``, so that a client that merely reads slowly meets that limit first.
DEFAULT_MAX_UNSENT_BYTES = 9 * 1024 * 1024


def send_now(transport: Any, data: bytes) -> None:
    """
    ``transport.write(data)``, but sent at once when nothing is buffered before
    it, as libuv's ``uv_try_write`` does for Node.js: no epoll_ctl, no waiting
    for the next reactor turn.  What the kernel does not take is buffered by
    Twisted as usual, so order and back pressure are unchanged.
    """
    if (
        not SWITCH.enabled
        or type(transport) is not Server  # TLS, or a test's transport: the ordinary path
        or transport.TLS
        or transport.dataBuffer
        or transport._tempDataLen
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
    ):
        transport.write(data)
        return
    try:
        # The socket's send() itself, not Twisted's writeSomeData: no memoryview of a frame, no untilConcludes
        # (Python retries a send() an interrupt cut short, PEP 475): two calls fewer per message at steady rates.
        sent = transport.socket.send(data)
    except OSError:
        # Nothing taken (EAGAIN, ENOBUFS), or the connection is lost: Twisted's write path buffers it, or finds out.
        transport.write(data)
        return
    if sent != len(data):
        transport.write(data[sent:])


def unsent_bytes(transport: Any) -> int:
    """
    What Twisted holds of a socket's writes because the kernel's buffer is
    full (for TLS, of the TCP transport under it); 0 for any other transport.
    """
    if type(transport) is not Server:
        transport = getattr(transport, "transport", None)  # TLS: the TCP transport it writes to
        if type(transport) is not Server:
            return 0
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def backed_up_error(unsent: int) -> ClientError:
    """What a client is told when it sends while ``unsent`` bytes written to it wait unread (LeanServerProtocol.backed_up)."""
    return ClientError(CloseCode.TOO_SLOW, f"too slow: it sends while {unsent} bytes sent to it wait unread")


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
    The base of both dialects' sockets: Autobahn's protocol with the fast paths
    above while :data:`SWITCH` is on.  Its factory has a ``corks`` attribute (a
    :class:`~redmessenger.transport.sockets.Corks`); subclasses implement
    :meth:`pong_received`.
    """

    CONFIG_ATTRS: list[str] = []  # read from the factory: see _FactoryOption
    #: The bytes read so far, while a subclass keeps them (set to a bytearray): the connection may go to
    #: another process with them (transport/passing.py).  None once it cannot (too many, or identified).
    read_so_far: bytearray | None = None
    #: Adopted from another process (transport/passing.py): its handshake was answered there.
    adopted = False
    #: Adopted and the handshake's answer not yet met: it is not written a second time.
    _answered_elsewhere = False

    def __init__(self) -> None:
        super().__init__()
        #: Frames written this reactor turn, sent together at its end.
        self._corked: list[bytes] | None = None

    def adopt(self, read_elsewhere: bytes) -> None:
        """
        This connection was passed from another process on this host, with the
        bytes it had read: read them again (the handshake, then frames).
        """
        self.adopted = self._answered_elsewhere = True
        # The client was told no extension by the process that answered its handshake: none here either.
        self.perMessageCompressionAccept = _no_extension
        self.dataReceived(read_elsewhere)

    @property
    def raw_frames(self) -> bool:
        """Whether frames can be written as prepared bytes (fast path on, no permessage-deflate, nothing queued by Autobahn)."""
        return SWITCH.enabled and self._perMessageCompress is None and not self.send_queue

    def write_frame(self, frame: bytes) -> None:
        """Write a complete frame (see :func:`~redmessenger.transport.frames.text_frame`); only when :attr:`raw_frames`."""
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
        if self._answered_elsewhere:
            # The first write is the handshake's answer: the client has it from the process that passed the
            # connection (a refusal is not written into an open WebSocket either: transport/passing.py closes it).
            self._answered_elsewhere = False
            return
        # Autobahn's own frames (close, pong, handshake) go after ours.
        if self._corked is not None:
            self.flush()
        super().sendData(data, sync, chopsize)

    def send_ping_token(self, token: int) -> None:
        """A ping carrying ``token`` (8 bytes); the pong brings it back to :meth:`pong_received`."""
        if self.raw_frames:
            self.write_frame(ping_frame(token))
        else:
            self.sendPing(struct.pack(">Q", token))

    def pong_received(self, token: int) -> None:
        """A pong to one of our pings (or an unsolicited one with an 8-byte payload)."""
        raise NotImplementedError

    def close_with(self, code: int, reason: str) -> None:
        """
        Start the close handshake.  sendCloseFrame, not sendClose: Autobahn's
        sendClose refuses the standard codes (1001, 1003, 1013) we need.
        """
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(int(code), close_reason(reason), isReply=False)

    def small_text(self, payload: bytes) -> None:
        """A small text frame read by the fast path, one :meth:`takes_small_text` accepted."""
        raise NotImplementedError

    def dataReceived(self, data: bytes) -> None:
        unsent = unsent_bytes(self.transport)
        if unsent and unsent > getattr(self.factory, "max_unsent_bytes", DEFAULT_MAX_UNSENT_BYTES):
            # It sends (pings, requests, forged pongs) and does not read what that made us write: left
            # alone, it would grow the daemon's memory as fast as it can send.
            self.backed_up(unsent)
            return
        read_so_far = self.read_so_far
        if read_so_far is not None:
            read_so_far += data
            if len(read_so_far) > MAX_PASSED_BYTES:
                self.read_so_far = None
        # Whole pongs (and small texts a subclass takes) read here; anything
        # else, or Autobahn midway through a frame: Autobahn's way.
        if (
            SWITCH.enabled
            and self.state == self.STATE_OPEN
            and not self.data
            and self.current_frame is None
            and not self.inside_message  # a frame between the fragments of a message is a 1002: Autobahn says so
        ):
            tokens = read_pongs(data)
            if tokens is not None:
                for token in tokens:
                    self.pong_received(token)
                return
            frames = read_small_frames(data)
            if frames is not None and all(opcode == PONG or self.takes_small_text(payload) for opcode, payload in frames):
                for opcode, payload in frames:
                    if opcode == PONG:
                        if len(payload) == 8:
                            self.pong_received(int.from_bytes(payload, "big"))
                    else:
                        self.small_text(payload)
                return
        super().dataReceived(data)

    def backed_up(self, unsent: int) -> None:
        """
        The client sent something while more than ``max_unsent_bytes`` written to it wait unread: closed as too
        slow (4413), what it sent is not read.  If it is already closing, its connection is dropped at once.
        """
        if self.state != self.STATE_OPEN:
            self.dropConnection(abort=True)
            return
        error = backed_up_error(unsent)
        log.info("Closing {peer}: {error}", peer=self.peer, error=error)
        self.close_with(error.code, error.reason)

    def takes_small_text(self, payload: bytes) -> bool:
        """Whether :meth:`small_text` handles this payload (checked for a whole read before any is handled)."""
        return False

    def onPong(self, payload: bytes) -> None:
        if len(payload) == 8:
            self.pong_received(struct.unpack(">Q", payload)[0])

    def _connectionMade(self) -> None:
        super()._connectionMade()
        if SWITCH.enabled:
            # What Autobahn gives each connection and an idle one never needs in
            # its own copy: a deque for frames queued behind a synchronous send
            # (760 bytes empty, and always empty here) and byte counters nothing reads.
            self.send_queue = _SendQueue()  # type: ignore[assignment]
            self.trafficStats = _SHARED_TRAFFIC_STATS

    def _onOpen(self) -> None:
        if SWITCH.enabled:
            # Autobahn keeps the raw handshake (request, response, parsed headers)
            # for the socket's lifetime; nothing reads it after the handshake.
            self.http_request_data = self.http_response_data = None  # type: ignore[assignment]
            self.http_headers = {}
            self.http_status_line = self.http_request_uri = self.http_request_host = self._wskey = None  # type: ignore[assignment]
            self.http_request_params = _NO_PARAMS  # type: ignore[assignment]
            self.websocket_protocols = self.websocket_extensions = ()  # type: ignore[assignment]
        super()._onOpen()

    def _onMessage(self, payload: bytes, isBinary: bool) -> None:
        if SWITCH.enabled:
            # The unmasking state of the message's last frame, kept until the next frame otherwise.
            self.current_frame_masker = None
        super()._onMessage(payload, isBinary)


class _SendQueue(list[Any]):
    """Autobahn's send queue as a list: the few methods it uses, a tenth of an empty deque's size."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


_SHARED_TRAFFIC_STATS = TrafficStats()
_NO_PARAMS: Mapping[str, list[str]] = MappingProxyType({})


def _no_extension(offers: Any) -> None:
    """Autobahn's ``perMessageCompressionAccept`` for an adopted socket: no offer accepted."""
    return None


def _install_factory_options(install: bool) -> None:
    # Autobahn copies the options named in CONFIG_ATTRS onto each connection: none while they are read from the factory.
    LeanServerProtocol.CONFIG_ATTRS = [] if install else list(WebSocketServerProtocol.CONFIG_ATTRS)
    for option in WebSocketServerProtocol.CONFIG_ATTRS:
        if install:
            setattr(LeanServerProtocol, option, _FactoryOption(option))
        elif isinstance(LeanServerProtocol.__dict__.get(option), _FactoryOption):
            delattr(LeanServerProtocol, option)


_install_factory_options(True)


def upgrade_to_websocket(resource: WebSocketResource, request: Request) -> bytes | int:
    """
    Hand the request's connection to a WebSocket protocol, and let go of the
    HTTP side: Autobahn takes the transport over but leaves the HTTPChannel
    registered as its producer, which kept the channel, the never-finished
    Request, their headers and buffers alive (several KB and ~30 objects for
    the garbage collector to walk) for as long as the WebSocket was open.
    """
    channel = request.channel
    transport = getattr(channel, "transport", None)
    rendered: bytes | int = resource.render(request)
    if transport is not None and getattr(transport, "producer", None) is channel:
        transport.unregisterProducer()
    return rendered


# -- the switch --------------------------------------------------------------------


def disable(reason: str) -> None:
    """Switch the fast path off for every socket: Autobahn's and Twisted's public API from now on."""
    if SWITCH.enabled:
        log.warn("WebSocket fast path off ({reason}): using Autobahn's public API, slower", reason=reason)
    SWITCH.enabled = False
    SWITCH.reason = reason
    _install_factory_options(False)


def enable() -> None:
    """Switch the fast path back on (tests run both ways)."""
    SWITCH.enabled = True
    SWITCH.reason = None
    _install_factory_options(True)
