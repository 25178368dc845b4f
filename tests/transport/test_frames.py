"""WebSocket framing as the server writes and reads it (RFC 6455 §5)."""

from __future__ import annotations

import struct

from redmessenger.transport.frames import close_reason, ping_frame, read_pongs, text_frame


def masked_pong(token: int, mask: bytes = b"\x11\x22\x33\x44") -> bytes:
    payload = struct.pack(">Q", token)
    return b"\x8a\x88" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_text_frame_lengths() -> None:
    assert text_frame(b"x") == b"\x81\x01x"
    assert text_frame(b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert text_frame(b"x" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")


def test_a_ping_carries_its_token() -> None:
    assert ping_frame(7) == b"\x89\x08" + (7).to_bytes(8, "big")


def test_whole_pongs_are_read_and_anything_else_is_not() -> None:
    assert read_pongs(masked_pong(5) + masked_pong(2**40, b"\xff\x00\xff\x00")) == [5, 2**40]
    assert read_pongs(b"") is None
    assert read_pongs(masked_pong(5)[:-1]) is None, "a partial pong is Autobahn's to reassemble"
    text = b"\x81\x88" + b"\x00" * 12
    assert read_pongs(text) is None, "a 14-byte text frame is not a pong"


def test_close_reason_is_cut_to_123_bytes_between_characters() -> None:
    reason = close_reason("é" * 100)
    assert len(reason) <= 123
    assert reason.endswith(b"...")
    reason.decode("utf-8")  # whole characters only
    assert close_reason("short") == b"short"
    assert close_reason("€" * 41) == ("€" * 41).encode(), "exactly 123 bytes fit"


def masked(opcode: int, payload: bytes, mask: bytes = b"\x0a\x0b\x0c\x0d") -> bytes:
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_small_text_and_pong_frames_are_read_whole() -> None:
    from redmessenger.transport.frames import PONG, TEXT, read_small_frames

    data = masked(TEXT, b"3") + masked(PONG, (7).to_bytes(8, "big")) + masked(TEXT, "é€".encode()) + masked(TEXT, b"")
    assert read_small_frames(data) == [(TEXT, b"3"), (PONG, (7).to_bytes(8, "big")), (TEXT, "é€".encode()), (TEXT, b"")]
    assert read_small_frames(masked(TEXT, b"x" * 125)) == [(TEXT, b"x" * 125)]


def test_anything_else_is_left_to_autobahn() -> None:
    from redmessenger.transport.frames import TEXT, read_small_frames

    whole = masked(TEXT, b"3")
    assert read_small_frames(b"") is None
    assert read_small_frames(whole[:-1]) is None, "a partial frame"
    assert read_small_frames(whole + whole[:3]) is None, "a whole frame and the start of the next"
    assert read_small_frames(b"\x01\x81" + whole[2:]) is None, "not FIN: a fragment"
    assert read_small_frames(b"\x82\x81" + whole[2:]) is None, "binary"
    assert read_small_frames(b"\x88\x80" + b"\x00" * 4) is None, "close"
    assert read_small_frames(b"\x81\x01" + b"3") is None, "unmasked"
    assert read_small_frames(b"\xc1\x81" + whole[2:]) is None, "a reserved bit (permessage-deflate) set"
    assert read_small_frames(b"\x81\xfe\x00\x7e" + b"\x00" * 130) is None, "longer than 125"
