"""
What the fuzz tests (``test_fuzz_*.py``) share: one deterministic Hypothesis
profile, strategies that mix valid structure with noise, an independent
WebSocket frame codec (RFC 6455 §5.2, written from the RFC, not from
``redmessenger.transport.frames``) and a watch on the log for errors.

Determinism: every fuzz test runs with ``derandomize=True`` and no example
database, so CI sees the same examples on every run; ``max_examples`` keeps
each test to a few seconds.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: Scales every fuzz test's number of examples (e.g. ``REDMESSENGER_FUZZ_SCALE=20`` for a long local run).
SCALE = float(os.environ.get("REDMESSENGER_FUZZ_SCALE", "1"))


def fuzz(max_examples: int) -> settings:
    """The suite's profile: the same examples on every run, no database, no deadline (CI machines are shared)."""
    return settings(
        max_examples=max(1, int(max_examples * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )


# -- text and JSON ------------------------------------------------------------------------------

UID_ALPHABET = "ABCXYZabcxyz0189_-.@"
#: uids, valid, and at the bounds of the grammar's length (1-128)
uids = st.text(UID_ALPHABET, min_size=1, max_size=12) | st.sampled_from([0, 1, 127, 128, 129]).flatmap(
    lambda n: st.text(UID_ALPHABET, min_size=n, max_size=n)
)
#: Characters that make parsers stumble: separators, line ends, quotes, escapes, non-ASCII, astral, controls.
awkward_chars = st.sampled_from(list(':{}[],"\\\n\r\t %\x00\x1e\x7f\u00e9\u20ac\u2028\U0001d11e\ufffd0123456789bn-/?#&='))
awkward_text = st.lists(awkward_chars | st.characters(), max_size=30).map("".join)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def deep_json(draw: Any) -> str:
    """JSON nested deeper than any parser's stack, balanced or not: arrays, objects, mixed."""
    # Around the recursion limit: the daemon's (1000), and the one Hypothesis sets while a test runs (about 2000
    # more than the depth it was called at); within a 4096-byte frame (max_frame_bytes' default) or beyond.
    depth = draw(st.sampled_from([600, 1000, 2500, 4000, 4000, 100_000]) | st.integers(1, 4000))
    kind = draw(st.sampled_from(["array", "object", "mixed"]))
    if kind == "array":
        opening, closing = "[" * depth, "]" * depth
    elif kind == "object":
        opening, closing = '{"a":' * depth, "}" * depth
    else:  # an object first, as a session frame starts, then 3 bytes a level
        opening, closing = '{"a":[' * (depth // 2), "]}" * (depth // 2)
    return opening + draw(st.sampled_from(["1", '"x"', ""])) + (closing if draw(st.booleans()) else "")


def json_text(value: Any, draw: Any) -> str:
    """``value`` as JSON, compact or spaced, ASCII-escaped or not."""
    return json.dumps(
        value,
        ensure_ascii=draw(st.booleans()),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])),
    )


@st.composite
def mangled(draw: Any, valid: st.SearchStrategy[str]) -> str:
    """A valid text with a few edits: cut short, characters inserted, replaced or removed."""
    text = draw(valid)
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["cut", "insert", "replace", "delete"]))
        position = draw(st.integers(0, len(text)))
        if edit == "cut":
            text = text[:position]
        elif edit == "insert":
            text = text[:position] + draw(awkward_text) + text[position:]
        elif edit == "replace" and position < len(text):
            text = text[:position] + draw(awkward_chars) + text[position + 1 :]
        elif edit == "delete":
            text = text[:position] + text[position + 1 :]
    return text


def fuzzed_text(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Mostly valid (three in seven), some of it edited, some deep JSON, some noise."""
    return st.one_of(valid, valid, valid, mangled(valid), deep_json(), awkward_text, st.text())


# -- WebSocket frames (RFC 6455 §5.2), an independent codec -------------------------------------

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


@dataclass(frozen=True)
class Frame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    #: How the length was written: 7 (in the second byte), 16 or 64 (an extended length).
    length_bits: int
    payload: bytes


def encode_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x37\xfa\x21\x3d",
    length_bits: int | None = None,
) -> bytes:
    """A frame as a client writes it (masked unless ``mask`` is None), with the length in the form asked for."""
    length = len(payload)
    if length_bits is None:
        length_bits = 7 if length <= 125 else 16 if length <= 0xFFFF else 64
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0xF])
    mask_bit = 0x80 if mask is not None else 0
    if length_bits == 7:
        head += bytes([mask_bit | length])
    elif length_bits == 16:
        head += bytes([mask_bit | 126]) + struct.pack(">H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", length)
    if mask is None:
        return head + payload
    return head + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


def decode_frames(data: bytes) -> tuple[list[Frame], bytes]:
    """Every whole frame at the start of ``data``, unmasked, and what follows them (an incomplete frame)."""
    frames = []
    position = 0
    while True:
        if len(data) - position < 2:
            break
        first, second = data[position], data[position + 1]
        length, cursor, length_bits = second & 0x7F, position + 2, 7
        if length == 126:
            if len(data) < cursor + 2:
                break
            length, cursor, length_bits = struct.unpack(">H", data[cursor : cursor + 2])[0], cursor + 2, 16
        elif length == 127:
            if len(data) < cursor + 8:
                break
            length, cursor, length_bits = struct.unpack(">Q", data[cursor : cursor + 8])[0], cursor + 8, 64
        masked = bool(second & 0x80)
        mask = b""
        if masked:
            if len(data) < cursor + 4:
                break
            mask, cursor = data[cursor : cursor + 4], cursor + 4
        if len(data) < cursor + length:
            break
        payload = data[cursor : cursor + length]
        if masked:
            payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        frames.append(Frame(bool(first & 0x80), first >> 4 & 7, first & 0xF, masked, length_bits, payload))
        position = cursor + length
    return frames, data[position:]


def close_code(frame: Frame) -> int | None:
    """A close frame's status code (None when it has none)."""
    return struct.unpack(">H", frame.payload[:2])[0] if len(frame.payload) >= 2 else None


masks = st.binary(min_size=4, max_size=4)


@st.composite
def client_frames(draw: Any, texts: st.SearchStrategy[str]) -> bytes:
    """
    One thing a client may send: a valid frame (text from ``texts``, binary,
    ping, pong, close), a fragmented message, or a frame that breaks RFC 6455
    (unmasked, reserved bits, unknown opcode, invalid UTF-8, a bad close, lengths
    written long), or plain noise.
    """
    mask = draw(masks)
    kind = draw(
        st.sampled_from(
            ["text"] * 8 + ["binary", "ping", "pong", "close", "fragments", "broken", "noise"]
        )
    )
    if kind == "text":
        return encode_frame(TEXT, draw(texts).encode("utf-8", "surrogatepass"), mask=mask)
    if kind == "binary":
        return encode_frame(BINARY, draw(st.binary(max_size=40)), mask=mask)
    if kind == "ping":
        return encode_frame(PING, draw(st.binary(max_size=125)), mask=mask)
    if kind == "pong":
        return encode_frame(PONG, draw(st.binary(min_size=8, max_size=8) | st.binary(max_size=20)), mask=mask)
    if kind == "close":
        code = draw(st.none() | st.sampled_from([1000, 1001, 1002, 1005, 1006, 1011, 1015, 999, 2999, 3000, 4000, 4999, 5000]))
        body = b"" if code is None else struct.pack(">H", code) + draw(st.binary(max_size=10) | st.just(b"bye"))
        return encode_frame(CLOSE, body, mask=mask)
    if kind == "fragments":
        text = draw(texts).encode("utf-8", "surrogatepass")
        cut = draw(st.integers(0, len(text)))
        between = encode_frame(PING, b"x", mask=mask) if draw(st.booleans()) else b""
        return (
            encode_frame(TEXT, text[:cut], fin=False, mask=mask)
            + between
            + encode_frame(CONTINUATION, text[cut:], mask=mask)
        )
    if kind == "broken":
        payload = draw(texts).encode("utf-8", "surrogatepass")[:200]
        variant = draw(st.sampled_from(["unmasked", "rsv", "opcode", "utf8", "long-length", "control-fragment", "continuation", "big"]))
        if variant == "unmasked":
            return encode_frame(TEXT, payload, mask=None)
        if variant == "rsv":
            return encode_frame(TEXT, payload, rsv=draw(st.integers(1, 7)), mask=mask)
        if variant == "opcode":
            return encode_frame(draw(st.sampled_from([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])), payload, mask=mask)
        if variant == "utf8":
            return encode_frame(TEXT, payload + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])), mask=mask)
        if variant == "long-length":
            return encode_frame(TEXT, payload, length_bits=draw(st.sampled_from([16, 64])), mask=mask)
        if variant == "control-fragment":
            return encode_frame(PING, payload[:10], fin=False, mask=mask)
        if variant == "continuation":
            return encode_frame(CONTINUATION, payload, mask=mask)
        return encode_frame(TEXT, b"x" * draw(st.sampled_from([4097, 70_000])), mask=mask)
    return draw(st.binary(min_size=1, max_size=30))


@st.composite
def split(draw: Any, data: bytes) -> list[bytes]:
    """``data`` cut into chunks at random points, as TCP may deliver it."""
    if not data:
        return []
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


# -- the log ------------------------------------------------------------------------------------


@contextmanager
def errors_logged() -> Iterator[list[dict[str, Any]]]:
    """Collects every event logged at error or critical level, or with a failure (a traceback), while open."""
    from twisted.logger import LogLevel, globalLogPublisher

    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError") or event.get("log_level") in (LogLevel.error, LogLevel.critical):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


@contextmanager
def events_logged() -> Iterator[list[dict[str, Any]]]:
    """Collects every event logged while open."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def describe(events: list[dict[str, Any]]) -> str:
    from twisted.logger import formatEvent

    return "; ".join(f"{formatEvent(e)} {e.get('log_failure') or ''}" for e in events)


# -- a WebSocket server protocol in memory ------------------------------------------------------

#: Autobahn's own timers off: an in-memory socket must leave no delayed call in the reactor.
IN_MEMORY_OPTIONS = {
    "openHandshakeTimeout": 0,
    "closeHandshakeTimeout": 0,
    "autoPingInterval": 0,
    "maxFramePayloadSize": 4096,
    "maxMessagePayloadSize": 4096,
    "failByDrop": False,
}


def handshake(path: bytes) -> bytes:
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


class InMemoryWebSocket:
    """
    A server protocol from ``factory`` over a StringTransport, its handshake
    done: bytes in with :meth:`feed`, the server's frames out with :meth:`frames`.
    When the server closes the transport, the connection is lost (as TCP would
    tell it) before the next read.
    """

    def __init__(self, factory: Any, clock: Any, path: bytes) -> None:
        from twisted.internet.address import IPv4Address

        self.clock = clock
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = _TCPLikeTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol.makeConnection(self.transport)
        self.lost = False
        self.protocol.dataReceived(handshake(path))
        self.clock.advance(0)
        response, _, _ = self.transport.value().partition(b"\r\n\r\n")
        self.response = response
        self._start = len(response) + 4

    @property
    def opened(self) -> bool:
        return self.response.startswith(b"HTTP/1.1 101 ")

    @property
    def closing(self) -> bool:
        """Whether the server has sent its close frame."""
        return any(frame.opcode == CLOSE for frame in self.frames()[0])

    def feed(self, chunk: bytes) -> None:
        if self.lost:
            return
        self.protocol.dataReceived(chunk)  # an exception here fails the test
        self.settle()

    def settle(self) -> None:
        """One reactor turn (the corks, the core's work), then the connection lost if the server closed it."""
        self.clock.advance(0)
        if self.transport.disconnecting and not self.lost:
            self.lose()

    def lose(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))
            self.clock.advance(0)

    def frames(self) -> tuple[list[Frame], bytes]:
        """The server's frames so far, and what follows them (should be nothing)."""
        return decode_frames(self.transport.value()[self._start :])


def _tcp_like_transport() -> type:
    from twisted.internet.testing import StringTransport

    class TCPLikeTransport(StringTransport):
        """
        A StringTransport that, like Twisted's TCP transport, lets a protocol
        unregister a producer when none is registered: Autobahn does so each time
        it drops a connection (the daemon's sockets have none: upgrade_to_websocket
        unregistered the HTTP channel).
        """

        def unregisterProducer(self) -> None:
            self.producer = None

    return TCPLikeTransport


_TCPLikeTransport: Any = _tcp_like_transport()
