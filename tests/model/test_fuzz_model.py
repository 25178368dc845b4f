"""
Fuzz tests of the model's parsers of what others send: a client's identifier,
the queue entries other programs (and the Node.js RedMessenger) leave in Redis,
and JavaScript's decodeURI, each against an oracle written here.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redmessenger.model.envelope import (
    Message,
    UnreadableEntry,
    URIError,
    decode_uri,
    entry_id,
    message_from_entry,
)
from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.model.identity import Identifier, parse_identifier

from ..fuzzing import awkward_text, deep_json, fuzz, fuzzed_text, json_text, json_values, mangled, uids

# -- identifiers -------------------------------------------------------------------------------


def expected_identifier(text: str) -> Identifier | None:
    """docs/protocol.md, step 2: one trailing \\n or \\r\\n dropped, split at the first ':', the uid 1-128 of [A-Za-z0-9_.@-]."""
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    uid, colon, key = text.partition(":")
    if not (1 <= len(uid) <= 128 and all(c.isascii() and (c.isalnum() or c in "_.@-") for c in uid)):
        return None
    return Identifier(uid, key or None)


@st.composite
def identifiers(draw: Any) -> str:
    uid = draw(uids | awkward_text)
    key = draw(st.none() | st.text(max_size=20) | awkward_text)
    end = draw(st.sampled_from(["", "", "\n", "\r\n", "\n\n", "\r\n\r\n", " ", "\r"]))
    return uid + ("" if key is None else ":" + key) + end


@fuzz(300)
@given(fuzzed_text(identifiers()))
def test_parse_identifier_agrees_with_the_documented_grammar(text: str) -> None:
    expected = expected_identifier(text)
    try:
        parsed = parse_identifier(text)
    except ClientError as e:
        assert e.code is CloseCode.INVALID_IDENTIFIER
        assert expected is None, f"refused a valid identifier: {e}"
        return
    assert parsed == expected
    assert ":" not in parsed.uid and "\n" not in parsed.uid


# -- decodeURI ---------------------------------------------------------------------------------

# ECMAScript's encodeURI leaves these as they are (uriReserved, uriUnescaped and '#').
_ENCODE_URI_KEEPS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'();/?:@&=+$,#")
_DECODE_URI_KEEPS = frozenset(";/?:@&=+$,#")
_HEX = frozenset("0123456789abcdefABCDEF")


def encode_uri(text: str) -> str:
    """JavaScript's encodeURI (what the Node.js RedMessenger stored); text without lone surrogates."""
    return "".join(c if c in _ENCODE_URI_KEEPS else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in text)


def reference_decode_uri(text: str) -> str:
    """
    JavaScript's decodeURI, after ECMA-262's Decode(string, reservedSet) step by
    step: one escape at a time, not the whole run at once as the daemon does it.
    """
    out: list[str] = []
    k, n = 0, len(text)

    def octet(at: int) -> int:
        if at + 3 > n or text[at] != "%" or not set(text[at + 1 : at + 3]) <= _HEX:
            raise URIError("bad escape")
        return int(text[at + 1 : at + 3], 16)

    while k < n:
        c = text[k]
        if c != "%":
            out.append(c)
            k += 1
            continue
        start = k
        b = octet(k)
        k += 3
        if b < 0x80:
            char = chr(b)
            out.append(text[start:k] if char in _DECODE_URI_KEEPS else char)
            continue
        count = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 0
        if not count:
            raise URIError("bad leading octet")
        octets = [b]
        for _ in range(count - 1):
            following = octet(k)
            if following & 0xC0 != 0x80:
                raise URIError("bad continuation octet")
            octets.append(following)
            k += 3
        try:
            out.append(bytes(octets).decode("utf-8"))  # rejects overlong forms, surrogates, > U+10FFFF
        except UnicodeDecodeError:
            raise URIError("not UTF-8") from None
    return "".join(out)


def _reference(text: str) -> str | type[URIError]:
    try:
        return reference_decode_uri(text)
    except URIError:
        return URIError


#: %XX escapes, in either case: any octet, often one of the reserved characters decodeURI leaves escaped
escapes = st.builds(
    lambda b, upper: f"%{b:02X}" if upper else f"%{b:02x}",
    st.integers(0, 255) | st.sampled_from([ord(c) for c in _DECODE_URI_KEEPS]),
    st.booleans(),
)
uri_text = st.lists(
    escapes | st.sampled_from(["%", "%4", "%zz", "%%", "a", "€", ";", "#"]) | st.characters(), max_size=20
).map("".join) | st.lists(escapes, min_size=1, max_size=6).map("".join)


@fuzz(600)
@given(st.one_of(uri_text, st.text().map(encode_uri), mangled(st.text().map(encode_uri)), st.text()))
def test_decode_uri_is_javascripts_decodeuri(text: str) -> None:
    expected = _reference(text)
    try:
        decoded = decode_uri(text)
    except URIError:
        assert expected is URIError, f"decodeURI accepts {text!r}"
        return
    assert decoded == expected


@fuzz(300)
@given(st.text())
def test_decode_uri_undoes_encode_uri(text: str) -> None:
    assert decode_uri(encode_uri(text)) == text


# -- queue entries -----------------------------------------------------------------------------

sources = st.sampled_from(["rm.users.user1", "rm.channels.cats"]) | st.text(max_size=20)
timestamps = (
    st.integers(0, 2**53)
    | st.integers()
    | st.floats()
    | st.sampled_from([float("inf"), float("-inf"), float("nan"), -0.0, 1.5, 2**64, True, False, None, "1", [1]])
)
ids = st.none() | st.text(min_size=1, max_size=64) | st.text(min_size=65, max_size=70) | st.sampled_from(["", "h-1", "\u00e9", 5])


@st.composite
def entry_objects(draw: Any) -> dict[str, Any]:
    """A queue entry as an object: ours (``"v"``), the Node.js program's (encodeURI'd payload), or half of either."""
    obj: dict[str, Any] = {}
    nodejs = draw(st.booleans())
    payload = draw(st.text(max_size=30) | uri_text)
    fields: dict[str, Any] = {
        "source": draw(sources | json_values),
        "timestamp": draw(timestamps),
        "payload": encode_uri(payload) if nodejs else payload,
        "id": draw(ids),
    }
    if not nodejs:
        fields["v"] = draw(st.sampled_from([1, 2, "1", 0]))
    for name, value in fields.items():
        if draw(st.integers(0, 9)):  # each field present nine times in ten
            obj[name] = value if draw(st.integers(0, 9)) else draw(json_values)
    return obj


@st.composite
def entries(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["object"] * 6 + ["mangled", "deep", "json", "bytes"]))
    if kind == "object":
        return json_text(draw(entry_objects()), draw).encode("utf-8")
    if kind == "mangled":
        valid = entry_objects().map(lambda obj: json.dumps(obj))
        return draw(mangled(valid)).encode("utf-8", "surrogatepass")
    if kind == "deep":
        return draw(deep_json()).encode("utf-8")
    if kind == "json":
        return json.dumps(draw(json_values)).encode("utf-8")
    return draw(st.binary(max_size=40))


@fuzz(400)
@given(entries())
def test_a_queue_entry_is_read_as_the_writer_meant_or_refused_as_unreadable(raw: bytes) -> None:
    try:
        message, problem = message_from_entry(raw)
    except UnreadableEntry:
        return
    obj = json.loads(raw)
    assert message.source == obj["source"]
    assert message.timestamp == int(obj["timestamp"]) and type(message.timestamp) is int
    if obj.get("v") is not None:
        assert message.payload == obj["payload"] and problem is None
    elif problem is None:
        assert message.payload == reference_decode_uri(obj["payload"])
    else:
        assert message.payload == obj["payload"] and _reference(obj["payload"]) is URIError
    given_id = obj.get("id")
    if isinstance(given_id, str) and 0 < len(given_id) <= 64 and given_id.isascii():
        assert message.id == given_id
    else:
        assert message.id == entry_id(raw) and re.fullmatch(r"h-[0-9a-f]{24}", message.id)
    # what the daemon writes of it (its queue entry, its envelope) is valid JSON carrying the same fields
    assert json.loads(message.envelope_json(True))["payload"] == message.payload


@fuzz(400)
@given(
    st.text(max_size=40),
    st.integers(0, 2**63),
    st.text(max_size=200),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64),
)
def test_a_queue_entry_round_trips(source: str, timestamp: int, payload: str, message_id: str) -> None:
    entry = Message(source, timestamp, payload, message_id).queue_entry()
    message, problem = message_from_entry(entry)
    assert problem is None
    assert (message.source, message.timestamp, message.payload, message.id) == (source, timestamp, payload, message_id)
    assert message.queue_entry() == entry


@pytest.mark.parametrize("timestamp", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_an_entry_whose_timestamp_is_not_a_finite_number_is_unreadable(timestamp: str) -> None:
    """Found by the fuzz test above: int() of these raised OverflowError/ValueError, which stopped the user's handover."""
    with pytest.raises(UnreadableEntry):
        message_from_entry(b'{"v":1,"source":"rm.users.u","payload":"p","timestamp":%s}' % timestamp.encode())


def test_an_entry_nested_deeper_than_the_stack_is_unreadable() -> None:
    """Found by the fuzz test above: json.loads raised RecursionError, not UnreadableEntry."""
    with pytest.raises(UnreadableEntry):
        message_from_entry(b"[" * 100_000)


@fuzz(300)
@given(
    st.text(max_size=40),
    st.integers(0, 2**63),
    st.text(max_size=200) | st.lists(st.sampled_from(['"', "\\", "\n", "\x00", "\u2028", "\ud7ff", "\U0001d11e", "é"]), max_size=20).map("".join),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64),
    st.booleans(),
)
def test_an_envelope_is_json_carrying_the_message(source: str, timestamp: int, payload: str, message_id: str, bubble: bool) -> None:
    """The hand-built envelope (docs/protocol.md, *The envelope*) is the JSON of its fields, in their order."""
    from redmessenger.dialects.plain.frames import message_frame_payload

    message = Message(source, timestamp, payload, message_id)
    fields = {"id": message_id, "source": source, "timestamp": timestamp, "bubble": bubble, "payload": payload}
    envelope = message.envelope_json(bubble)
    assert json.loads(envelope) == fields and list(json.loads(envelope)) == list(fields)
    assert envelope == json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert json.loads(message_frame_payload(message, bubble)) == {"type": "message", **fields}
