"""Messages and queue entries: encodings built once, decodeURI as JavaScript has it."""

from __future__ import annotations

import json

import pytest

from redmessenger.model.envelope import (
    Message,
    URIError,
    UnreadableEntry,
    decode_payload,
    decode_uri,
    message_from_entry,
)

from ..node import run_node

VECTORS = ["Hello%20world", "%23%2F%3Fa%C3%A9", "100%25", "%E2%82%AC%2C", "a%2", "%zz", "%C3", "%F0%9D%84%9E", "plain", "%41%3B"]


def javascript_decode_uri(texts: list[str]) -> list[str | None]:
    """What Node's decodeURI makes of each text (None: it throws URIError)."""
    script = (
        "const out = JSON.parse(process.argv[1]).map(t => { try { return decodeURI(t) } catch (e) { return null } });"
        "console.log(JSON.stringify(out));"
    )
    return json.loads(run_node(script, texts))


def test_decode_uri_matches_javascript() -> None:
    expected = javascript_decode_uri(VECTORS)
    for text, want in zip(VECTORS, expected):
        if want is None:
            with pytest.raises(URIError):
                decode_uri(text)
        else:
            assert decode_uri(text) == want, text


def test_envelope_json_is_built_once_per_bubble_value() -> None:
    message = Message("rm.users.u", 12, "007")
    first = message.envelope_json(True)
    assert message.envelope_json(True) is first
    assert json.loads(first) == {"source": "rm.users.u", "timestamp": 12, "bubble": True, "payload": "007"}
    assert json.loads(message.envelope_json(False))["bubble"] is False
    assert message.queue_entry() is message.queue_entry()


def test_queue_entries_round_trip_and_keep_source_and_timestamp() -> None:
    message = Message("rm.channels.cats", 1438480701712, "100% %20 ☕")
    again, problem = message_from_entry(message.queue_entry())
    assert (again.source, again.timestamp, again.payload) == (message.source, message.timestamp, message.payload)
    assert problem is None


def test_a_node_js_entry_with_a_bad_escape_is_delivered_as_stored_and_says_why() -> None:
    raw = json.dumps({"source": "rm.users.u", "timestamp": 1, "bubble": True, "payload": "100%"}).encode()
    message, problem = message_from_entry(raw)
    assert message.payload == "100%"
    assert problem is not None and "malformed URI escape" in problem


@pytest.mark.parametrize("raw", [b"nope", b"[]", b"{}", b'{"source": "s", "payload": 1, "timestamp": 1}', b'{"source": "s", "payload": "p", "timestamp": true}', b"\xff"])
def test_entries_that_are_not_envelopes_are_reported(raw: bytes) -> None:
    with pytest.raises(UnreadableEntry):
        message_from_entry(raw)


def test_payload_bytes_that_are_not_utf8_are_replaced_not_refused() -> None:
    assert decode_payload(b"a\xffb") == ("a\ufffdb", False)
    assert decode_payload("é".encode()) == ("é", True)
