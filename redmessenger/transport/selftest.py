"""
The fast path's start-up self-test (transport/fastpath.py): everything it reads
of Twisted's and Autobahn's internals, checked in memory; if anything is
missing after an upgrade, the fast path is switched off as a whole and every
socket uses the public APIs (slower, same behaviour).
"""

from __future__ import annotations

import socket
import struct
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.tcp import Server

from redmessenger.transport import fastpath
from redmessenger.transport.frames import text_frame


def self_test(reactor: Any) -> bool:
    """
    Check, in memory, everything the fast path reads of Twisted and Autobahn;
    switch it off (:func:`fastpath.disable`) if anything is missing.  Returns whether it is on.
    """
    if not fastpath.SWITCH.enabled:
        return False
    try:
        _check_twisted(reactor)
        _check_autobahn()
    except Exception as e:
        fastpath.disable(f"self-test: {type(e).__name__}: {e}")
        return False
    return True


class _SelfTestFailed(Exception):
    pass


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise _SelfTestFailed(what)


def _check_twisted(reactor: Any) -> None:
    """A real TCP transport over a socket pair has what fastpath.send_now reads, and fastpath.send_now sends through it."""
    from twisted.internet.protocol import Protocol

    left, right = socket.socketpair()
    transport = None
    try:
        left.setblocking(False)
        transport = Server(left, Protocol(), ("127.0.0.1", 0), cast(Any, None), 0, reactor)
        transport.stopReading()  # the constructor registered it with the reactor
        missing = [name for name in fastpath._SERVER_INTERNALS if not hasattr(transport, name)]
        _require(not missing, f"Twisted's TCP transport lacks {missing}")
        fastpath.send_now(transport, b"self-test")
        _require(not transport.dataBuffer and not transport._tempDataLen, "fastpath.send_now left data in Twisted's buffer")
        right.settimeout(1)
        _require(right.recv(64) == b"self-test", "fastpath.send_now did not reach the socket")
    finally:
        if transport is not None:
            transport.stopReading()
        left.close()
        right.close()


class _Probe(fastpath.LeanServerProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []
        self.tokens: list[int] = []
        self.fast: list[bytes] = []

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append(payload)

    def pong_received(self, token: int) -> None:
        self.tokens.append(token)

    def takes_small_text(self, payload: bytes) -> bool:
        return payload == b"fast"

    def small_text(self, payload: bytes) -> None:
        self.fast.append(payload)


_HANDSHAKE = (
    b"GET /self-test HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _check_autobahn() -> None:
    """A lean socket completes a handshake, writes a frame, reads a pong and a text frame, in memory."""
    from twisted.internet.error import ConnectionDone
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    from redmessenger.transport.sockets import Corks

    clock = Clock()
    factory = WebSocketServerFactory()
    factory.protocol = _Probe
    factory.corks = Corks(clock)  # type: ignore[attr-defined]
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0, maxFramePayloadSize=4096)
    probe = factory.buildProtocol(None)
    _require(isinstance(probe, _Probe), "the factory did not build the probe")
    assert isinstance(probe, _Probe)
    transport = StringTransport()
    probe.makeConnection(transport)
    try:
        _require(getattr(probe, "maxFramePayloadSize", None) == 4096, "protocol options are not read from the factory")
        probe.dataReceived(_HANDSHAKE)
        _require(transport.value().startswith(b"HTTP/1.1 101"), "the handshake was not accepted")
        _require(probe.state == probe.STATE_OPEN, "the socket is not open after the handshake")
        _require(probe.http_request_data is None and isinstance(probe.send_queue, fastpath._SendQueue), "per-socket state was not trimmed")
        transport.clear()
        _require(probe.raw_frames, "raw frames are not possible on a plain socket")
        probe.write_frame(text_frame(b"self-test"))
        clock.advance(0)
        _require(transport.value() == text_frame(b"self-test"), "a corked frame was not written")
        probe.dataReceived(_masked(0xA, struct.pack(">Q", 42)))
        _require(probe.tokens == [42], "a pong was not read by the fast path")
        probe.dataReceived(_masked(0x1, b"hello"))
        _require(probe.received == [b"hello"], "a text frame did not reach onMessage")
        probe.dataReceived(_masked(0xA, struct.pack(">Q", 43)))
        _require(probe.tokens == [42, 43], "a pong after a text frame was not read")
        probe.dataReceived(_masked(0x1, b"fast") + _masked(0xA, struct.pack(">Q", 44)))
        _require(probe.fast == [b"fast"] and probe.tokens == [42, 43, 44], "a small text was not read by the fast path")
        _require(probe.received == [b"hello"], "a text frame the fast path took reached onMessage too")
    finally:
        probe.connectionLost(Failure(ConnectionDone()))
