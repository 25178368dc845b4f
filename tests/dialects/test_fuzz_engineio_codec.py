"""
Fuzz tests of the Engine.IO and Socket.IO codecs (what clients send: packets,
polling payloads of both revisions, JSONP posts, Socket.IO packets) against
encoders written here after engine.io-parser and socket.io-parser, and the
round trips of what the server sends.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redmessenger.dialects.engineio.codec import (
    BinaryNotSupported,
    EncodedPacket,
    Packet,
    PacketType,
    ProtocolError,
    decode_packet,
    decode_payload,
    encode_payload,
    jsonp_unescape,
    jsonp_wrap,
    utf16_length,
)
from redmessenger.dialects.socketio.codec import SIOPacket, SIOProtocolError, SIOType, decode_sio, encode_sio

from ..fuzzing import awkward_chars, deep_json, fuzz, fuzzed_text, json_values, mangled

# -- what engine.io-parser writes (the client side), independently ---------------------------------


def js_length(text: str) -> int:
    """JavaScript's String.length: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def client_payload_v3(packets: list[str]) -> str:
    """engine.io-parser 2's encodePayload (text): ``<String.length>:<packet>`` each."""
    return "".join(f"{js_length(p)}:{p}" for p in packets)


def client_payload_v4(packets: list[str]) -> str:
    """engine.io-parser 4's encodePayload: the packets joined by the record separator."""
    return "\x1e".join(packets)


def jsonp_client_escape(data: str) -> str:
    """engine.io-client 3's JSONP form: ``\\n`` (backslash, n) doubled, then newlines written as ``\\n``."""
    return data.replace("\\n", "\\\n").replace("\n", "\\n")


def decode_binary_payload_v3(body: bytes) -> list[str]:
    """engine.io-parser 2's decodePayloadAsBinary, for string packets: 0x00, length digits as bytes, 0xFF, UTF-8."""
    packets, position = [], 0
    while position < len(body):
        assert body[position] == 0x00, "a string packet"
        end = body.index(0xFF, position)
        length = int("".join(str(digit) for digit in body[position + 1 : end]))
        packets.append(body[end + 1 : end + 1 + length].decode("utf-8"))
        position = end + 1 + length
    return packets


# -- strategies --------------------------------------------------------------------------------

packet_types = st.sampled_from("0123456")
#: An Engine.IO packet as a client writes it: a type digit, then data (a Socket.IO packet, a probe, text).
client_packets = st.builds(
    lambda kind, data: kind + data,
    packet_types,
    st.sampled_from(["", "probe", '0/rm,', '2/rm,["identifier","user1"]']) | st.text(max_size=20) | st.lists(awkward_chars, max_size=8).map("".join),
)
#: Digit runs at the bounds that matter: 9 (the v3 length prefix's limit), 15 (an ack id's), 4300 (int()'s).
long_digits = st.sampled_from([9, 10, 15, 16, 4300, 4301, 5000]).map(lambda n: "1" * n)


@st.composite
def v3_payloads(draw: Any) -> str:
    packets = draw(st.lists(client_packets, max_size=4))
    text = client_payload_v3(packets)
    edit = draw(st.sampled_from(["none", "none", "length", "mangle"]))
    if edit == "length" and packets:  # a wrong length prefix
        return re.sub(r"^\d+", lambda m: str(int(m.group()) + draw(st.integers(-3, 3))), text, count=1)
    if edit == "mangle":
        return draw(mangled(st.just(text)))
    return text


@st.composite
def v4_payloads(draw: Any) -> str:
    text = client_payload_v4(draw(st.lists(client_packets, min_size=1, max_size=4)))
    return draw(mangled(st.just(text))) if draw(st.booleans()) else text


# -- decoding what clients send ---------------------------------------------------------------


@fuzz(400)
@given(fuzzed_text(client_packets) | st.just("b4AAA") | long_digits)
def test_decode_packet_reads_a_packet_or_raises_protocol_error(text: str) -> None:
    try:
        packet = decode_packet(text)
    except BinaryNotSupported:
        assert text.startswith("b")
        return
    except ProtocolError:
        assert not text or text[0] not in "0123456b", "a packet refused, or a binary one refused as garbage"
        return
    assert packet == Packet(PacketType(int(text[0])), text[1:])


@fuzz(400)
@given(
    st.one_of(v3_payloads(), v4_payloads(), fuzzed_text(v3_payloads()), long_digits.map(lambda d: d + ":4x")),
    st.sampled_from([3, 4]),
)
def test_decode_payload_reads_packets_or_raises_protocol_error(text: str, version: int) -> None:
    try:
        packets = decode_payload(version, text)
    except ProtocolError:
        return
    assert all(isinstance(packet, Packet) for packet in packets)
    if version >= 4:
        assert len(packets) == text.count("\x1e") + 1


@fuzz(300)
@given(st.lists(client_packets.filter(lambda p: len(p) > 0), max_size=5))
def test_what_a_client_posts_is_read_back_packet_by_packet(packets: list[str]) -> None:
    """engine.io-parser's payloads, revision 3 (lengths in UTF-16 units) and 4, read as the client wrote them."""
    if packets:
        assert decode_payload(3, client_payload_v3(packets)) == [decode_packet(p) for p in packets]
        # an empty packet ("0:") is skipped, as engine.io-parser skips it
        with_empty = "".join("0:" + f"{js_length(p)}:{p}" for p in packets)
        assert decode_payload(3, with_empty) == [decode_packet(p) for p in packets]
    clean = [p for p in packets if "\x1e" not in p]
    if clean:
        assert decode_payload(4, client_payload_v4(clean)) == [decode_packet(p) for p in clean]


@fuzz(300)
@given(st.text() | st.lists(st.sampled_from(["\\", "n", "\n", "\\n", "\\\\n", "a", '"']), max_size=12).map("".join))
def test_jsonp_unescape_undoes_what_the_client_escapes(data: str) -> None:
    unescaped = jsonp_unescape(jsonp_client_escape(data))
    if "\\\n" in data:  # a backslash before a newline: engine.io's JSONP escaping cannot tell it from an escaped 'n'
        return
    assert unescaped == data


# -- encoding what the server sends: round trips ----------------------------------------------------

server_texts = st.text() | st.lists(awkward_chars, max_size=20).map("".join)


@fuzz(300)
@given(st.lists(server_texts, min_size=1, max_size=5))
def test_a_v4_payload_round_trips(texts: list[str]) -> None:
    texts = [t.replace("\x1e", "") for t in texts]  # the separator never appears in a text packet
    packets = [EncodedPacket(t) for t in texts]
    body = encode_payload(4, packets)
    assert client_payload_v4(texts).encode("utf-8") == body
    assert [p.text for p in packets] == body.decode("utf-8").split("\x1e")


def json_ascii(text: str) -> str:
    """Each non-ASCII character as JSON's \\uXXXX, astral ones as their UTF-16 surrogate pair."""
    out = []
    for char in text:
        code = ord(char)
        if code < 0x80:
            out.append(char)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return "".join(out)


@fuzz(300)
@given(st.lists(server_texts, min_size=1, max_size=5), st.lists(json_values, min_size=1, max_size=3))
def test_a_v3_text_payload_round_trips_as_ascii(texts: list[str], values: list[Any]) -> None:
    """
    Revision 3's text payload: ASCII only, each packet's non-ASCII characters as
    JSON escapes (lengths then the same in bytes and UTF-16 units), so that the
    JSON of a Socket.IO packet reads back as the same value.
    """
    body = encode_payload(3, [EncodedPacket("4" + t) for t in texts])
    assert body.isascii()
    assert [p.data for p in decode_payload(3, body.decode("ascii"))] == [json_ascii(t) for t in texts]
    packets = [EncodedPacket("4" + json.dumps(v, ensure_ascii=False)) for v in values]
    decoded = decode_payload(3, encode_payload(3, packets).decode("ascii"))
    assert [json.loads(p.data) for p in decoded] == values


@fuzz(300)
@given(st.lists(server_texts, min_size=1, max_size=5))
def test_a_v3_binary_payload_round_trips(texts: list[str]) -> None:
    packets = [EncodedPacket("4" + t) for t in texts]
    assert decode_binary_payload_v3(encode_payload(3, packets, binary=True)) == ["4" + t for t in texts]


@fuzz(200)
@given(st.integers(0, 10**9).map(str), st.lists(server_texts, min_size=1, max_size=3))
def test_a_jsonp_response_is_javascript_that_gives_the_payload_back(index: str, texts: list[str]) -> None:
    payload = encode_payload(3, [EncodedPacket("4" + t) for t in texts])
    wrapped = jsonp_wrap(index, payload).decode("utf-8")
    match = re.fullmatch(r"___eio\[(\d+)\]\((.*)\);", wrapped, re.S)
    assert match is not None and match.group(1) == index
    literal = match.group(2)
    assert "\u2028" not in literal and "\u2029" not in literal  # not allowed raw in a JavaScript string literal
    assert json.loads(literal).encode("utf-8") == payload


def test_utf16_length_counts_what_javascript_counts() -> None:
    for text in ["", "a", "é", "€", "\U0001d11e", "a\U0001d11eb"]:
        assert utf16_length(text) == js_length(text)


# -- Socket.IO packets ------------------------------------------------------------------------

#: Socket.IO data: what each type carries (an event's array, a connect's object, an error's object or string).
sio_data = st.one_of(
    st.lists(json_values, max_size=3),
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    st.text(max_size=10),
)
namespaces = st.sampled_from(["/", "/rm", "/a/b", "/é"]) | st.text(max_size=6).map(
    lambda s: "/" + s.replace(",", "").replace("?", "")
)


@st.composite
def sio_packets(draw: Any) -> SIOPacket:
    kind = draw(st.sampled_from(list(SIOType)))
    has_data = draw(st.booleans()) or kind in (SIOType.EVENT, SIOType.ACK)
    return SIOPacket(
        kind,
        draw(namespaces),
        draw(sio_data) if has_data else SIOPacket.__dataclass_fields__["data"].default,
        draw(st.none() | st.integers(0, 10**15 - 1)),
        draw(st.integers(0, 5)) if kind in (SIOType.BINARY_EVENT, SIOType.BINARY_ACK) else 0,
    )


@fuzz(400)
@given(sio_packets())
def test_a_socketio_packet_round_trips(packet: SIOPacket) -> None:
    assert decode_sio(encode_sio(packet)) == packet


odd_digits = st.sampled_from(["", "x", "1x", "\u0663"]) | long_digits | st.integers(10**15, 10**20).map(str)


@st.composite
def sio_texts(draw: Any) -> str:
    """
    A Socket.IO packet as socket.io-parser writes it, or with one of its parts
    odd: the type, the attachment count, the namespace, the ack id, the data.
    """
    packet = draw(sio_packets())
    odd = draw(st.sampled_from(["none", "type", "attachments", "namespace", "id", "data"]))
    kind = str(int(packet.type)) if odd != "type" else draw(st.sampled_from(["", "7", "x", "-"]))
    if odd == "attachments":  # a binary packet's
        kind = draw(st.sampled_from("56"))
    attachments = ""
    if kind in ("5", "6"):
        attachments = (draw(odd_digits) if odd == "attachments" else str(packet.attachments)) + "-"
    nsp = packet.nsp + "," if packet.nsp != "/" else ""
    if odd == "namespace":
        nsp = draw(st.sampled_from(["/rm?x=1,", "/rm", "/,", "///,", "rm,"]))
    ack_id = draw(odd_digits) if odd == "id" else "" if packet.id is None else str(packet.id)
    data = json.dumps(packet.data) if isinstance(packet.data, (list, dict, str)) else ""
    if odd == "data":
        data = draw(deep_json() | st.sampled_from(["[", "{}x", "-1", "nul", '"\\ud800"']) | st.text(max_size=8))
    return kind + attachments + nsp + ack_id + data


@fuzz(600)
@given(fuzzed_text(sio_texts()))
def test_decode_sio_reads_a_packet_or_raises_sio_protocol_error(text: str) -> None:
    try:
        packet = decode_sio(text)
    except SIOProtocolError:
        return
    assert packet.type == int(text[0])
    assert packet.nsp.startswith("/") and "?" not in packet.nsp  # a query after the namespace is dropped
    assert packet.id is None or 0 <= packet.id < 10**15


@pytest.mark.parametrize("text", ["5" + "1" * 5000 + "-[]", "2/rm," + "[" * 5000])
def test_a_socketio_packet_that_python_cannot_read_is_a_protocol_error(text: str) -> None:
    """Found by the fuzz test above: int() of 5000 digits raised ValueError, json.loads RecursionError."""
    with pytest.raises(SIOProtocolError):
        decode_sio(text)
