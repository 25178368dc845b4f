"""WebSocket framing as the server needs it (RFC 6455 §5), with no I/O."""

from __future__ import annotations

import struct

#: FIN + ping opcode, unmasked, 8 bytes of payload (a token).
PING_HEADER = b"\x89\x08"
#: A client's pong to such a ping: 2 header bytes, a 4-byte mask, the token.
PONG_LENGTH = 14
#: A close frame's reason: at most 123 bytes of UTF-8.
MAX_CLOSE_REASON = 123


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame, as a server sends it."""
    length = len(payload)
    if length <= 125:
        return bytes((0x81, length)) + payload
    if length <= 0xFFFF:
        return bytes((0x81, 126)) + length.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + length.to_bytes(8, "big") + payload


def ping_frame(token: int) -> bytes:
    """A ping carrying ``token`` (8 bytes), which the client's pong brings back."""
    return PING_HEADER + struct.pack(">Q", token)


def read_pongs(data: bytes) -> list[int] | None:
    """
    The tokens of ``data`` if it is nothing but whole masked pongs to
    :func:`ping_frame` pings (what a client sends most, once identified); else None.
    """
    length = len(data)
    if not length or length % PONG_LENGTH:
        return None
    tokens = []
    for start in range(0, length, PONG_LENGTH):
        if data[start] != 0x8A or data[start + 1] != 0x88:  # FIN + pong, masked, 8 bytes
            return None
        mask = int.from_bytes(data[start + 2 : start + 6], "big")
        tokens.append(int.from_bytes(data[start + 6 : start + PONG_LENGTH], "big") ^ (mask << 32 | mask))
    return tokens


#: Opcodes of the frames :func:`read_small_frames` reads.
TEXT, PONG = 0x1, 0xA


def read_small_frames(data: bytes) -> list[tuple[int, bytes]] | None:
    """
    ``data`` as (opcode, unmasked payload) pairs if it is nothing but whole,
    unfragmented, masked text or pong frames of at most 125 bytes each (what a
    client sends most once identified: pongs, Engine.IO's ``3``, acks); else None,
    for Autobahn to read.  Text payloads are not checked for UTF-8 here.
    """
    frames = []
    end = len(data)
    position = 0
    while position < end:
        if end - position < 6:
            return None
        first, second = data[position], data[position + 1]
        opcode = first & 0x0F
        length = second & 0x7F
        if first & 0xF0 != 0x80 or opcode not in (TEXT, PONG) or not second & 0x80 or length > 125:
            return None
        start = position + 6
        stop = start + length
        if stop > end:
            return None
        mask = data[position + 2 : start]
        if length:
            repeated = (mask * (length // 4 + 1))[:length]
            payload = (int.from_bytes(data[start:stop], "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
        else:
            payload = b""
        frames.append((opcode, payload))
        position = stop
    return frames if frames else None


def close_reason(text: str) -> bytes:
    """``text`` as a close frame's reason: cut to fit, never in the middle of a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= MAX_CLOSE_REASON:
        return encoded
    return encoded[:120].decode("utf-8", "ignore").encode("utf-8") + b"..."
