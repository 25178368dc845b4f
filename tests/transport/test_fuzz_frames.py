"""
Fuzz tests of the fast path's frame readers (redmessenger.transport.frames):
on any bytes they return None (Autobahn reads them) or exactly what an
independent RFC 6455 decoder (tests/fuzzing.py) reads, and what the server
writes decodes back to what it meant.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from redmessenger.transport.frames import (
    MAX_CLOSE_REASON,
    close_reason,
    ping_frame,
    read_pongs,
    read_small_frames,
    text_frame,
)

from ..fuzzing import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, Frame, decode_frames, encode_frame, fuzz, masks


def expected_small_frames(data: bytes) -> list[tuple[int, bytes]] | None:
    """read_small_frames' contract: whole, final, masked text or pong frames of at most 125 bytes (7-bit length), and nothing else."""
    frames, rest = decode_frames(data)
    if rest or not frames:
        return None
    if all(
        f.fin and not f.rsv and f.opcode in (TEXT, PONG) and f.masked and f.length_bits == 7 for f in frames
    ):
        return [(f.opcode, f.payload) for f in frames]
    return None


def expected_pongs(data: bytes) -> list[int] | None:
    """read_pongs' contract: nothing but whole masked pongs carrying 8 bytes (a token), in the 7-bit length form."""
    small = expected_small_frames(data)
    if small is None or not all(opcode == PONG and len(payload) == 8 for opcode, payload in small):
        return None
    return [int.from_bytes(payload, "big") for _, payload in small]


#: One thing wrong with a frame at a time, or nothing (most often).
DEFECTS = ["none"] * 6 + ["not final", "rsv1", "rsv2", "rsv3", "unmasked", "length16", "length64"]


@st.composite
def frame(draw: Any) -> bytes:
    """Mostly what the fast path takes (masked pongs and small texts), and every way of being something else."""
    opcode = draw(st.sampled_from([TEXT, PONG, PONG]) | st.sampled_from([CONTINUATION, BINARY, CLOSE, PING, 3, 0xB, 0xF]))
    size = draw(st.sampled_from([0, 1, 8, 8, 124, 125, 126, 127, 200]) | st.integers(0, 130))
    payload = draw(st.binary(min_size=size, max_size=size))
    defect = draw(st.sampled_from(DEFECTS))
    if defect == "unmasked":  # and 4 bytes more, which a reader that does not check the mask bit takes for the mask
        return encode_frame(opcode, payload, mask=None) + draw(masks)
    return encode_frame(
        opcode,
        payload,
        fin=defect != "not final",
        rsv={"rsv1": 4, "rsv2": 2, "rsv3": 1}.get(defect, 0),
        mask=draw(masks),
        length_bits={"length16": 16, "length64": 64}.get(defect) if size <= 125 else None,
    )


@st.composite
def pong(draw: Any) -> bytes:
    """A client's pong to one of our pings (14 bytes), often with one thing wrong, or 14 bytes that start like one."""
    defect = draw(st.sampled_from(DEFECTS + ["payload", "noise"]))
    if defect == "noise":
        return b"\x8a" + draw(st.binary(min_size=13, max_size=13))
    if defect == "unmasked":  # 4 bytes more, which a reader that does not check the mask bit takes for the mask
        return encode_frame(PONG, draw(st.binary(min_size=8, max_size=8)), mask=None) + draw(masks)
    size = draw(st.sampled_from([7, 9])) if defect == "payload" else 8
    return encode_frame(
        PONG,
        draw(st.binary(min_size=size, max_size=size)),
        fin=defect != "not final",
        rsv={"rsv1": 4, "rsv2": 2, "rsv3": 1}.get(defect, 0),
        mask=draw(masks),
        length_bits={"length16": 16, "length64": 64}.get(defect),
    )


@st.composite
def reads(draw: Any) -> bytes:
    """What one dataReceived may bring: a few frames (pongs, often), maybe cut short, maybe followed or preceded by noise."""
    data = b"".join(draw(st.lists(pong() | frame(), max_size=5) | st.lists(pong(), min_size=1, max_size=4)))
    edit = draw(st.sampled_from(["none", "none", "none", "cut", "cut one", "append", "prepend", "flip"]))
    if edit == "cut" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif edit == "cut one":
        data = data[:-1]
    elif edit == "append":
        data += draw(st.binary(min_size=1, max_size=10))
    elif edit == "prepend":
        data = draw(st.binary(min_size=1, max_size=3)) + data
    elif edit == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ 1 << draw(st.integers(0, 7))]) + data[at + 1 :]
    return data


@fuzz(600)
@given(reads() | st.binary(max_size=40))
def test_read_small_frames_reads_exactly_what_the_rfc_says_or_leaves_it_to_autobahn(data: bytes) -> None:
    assert read_small_frames(data) == expected_small_frames(data)


@fuzz(600)
@given(reads() | st.binary(max_size=40))
def test_read_pongs_reads_exactly_whole_pongs_or_leaves_them_to_autobahn(data: bytes) -> None:
    assert read_pongs(data) == expected_pongs(data)


@fuzz(100)
@given(
    # lengths at the bounds of each length form; large ones a pattern repeated (Hypothesis draws at most a few kB)
    st.builds(
        lambda n, pattern: (pattern * n)[:n],
        st.sampled_from([0, 125, 126, 127, 65535, 65536, 70_000]),
        st.binary(min_size=1, max_size=8),
    )
    | st.binary()
)
def test_a_text_frame_decodes_to_its_payload(payload: bytes) -> None:
    frames, rest = decode_frames(text_frame(payload))
    bits = 7 if len(payload) <= 125 else 16 if len(payload) <= 0xFFFF else 64
    assert (frames, rest) == ([Frame(True, 0, TEXT, False, bits, payload)], b"")


@fuzz(100)
@given(st.integers(0, 2**64 - 1))
def test_a_ping_carries_its_token(token: int) -> None:
    assert decode_frames(ping_frame(token)) == ([Frame(True, 0, PING, False, 7, struct.pack(">Q", token))], b"")


@fuzz(300)
@given(st.text() | st.text(min_size=30, max_size=130))
def test_a_close_reason_fits_a_close_frame_and_never_cuts_a_character(text: str) -> None:
    reason = close_reason(text)
    assert len(reason) <= MAX_CLOSE_REASON
    decoded = reason.decode("utf-8")  # never a character cut in two
    encoded = text.encode("utf-8")
    if len(encoded) <= MAX_CLOSE_REASON:
        assert reason == encoded
    else:
        assert decoded.endswith("...") and text.startswith(decoded[:-3])
