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


def close_reason(text: str) -> bytes:
    """``text`` as a close frame's reason: cut to fit, never in the middle of a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= MAX_CLOSE_REASON:
        return encoded
    return encoded[:120].decode("utf-8", "ignore").encode("utf-8") + b"..."
