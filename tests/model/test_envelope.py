"""Messages and queue entries: encodings built once, decodeURI as JavaScript has it."""

from __future__ import annotations

import json

import pytest

from redmessenger.model.envelope import (
    ENVELOPE_OVERHEAD,
    Message,
    UnreadableEntry,
    URIError,
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
    message = Message("rm.users.u", 12, "007", "run.1")
    first = message.envelope_json(True)
    assert message.envelope_json(True) is first
    assert json.loads(first) == {"id": "run.1", "source": "rm.users.u", "timestamp": 12, "bubble": True, "payload": "007"}
    assert json.loads(message.envelope_json(False))["bubble"] is False
    assert message.queue_entry() is message.queue_entry()


@pytest.mark.parametrize("payload", ["plain text", "\x01" * 1000, "é" * 1000, "😀" * 1000, 'quote " and \\ back'])
def test_a_message_weighs_at_least_what_its_frame_carries(payload: str) -> None:
    """The budget (max_pending_bytes) counts bytes sent: escapes and UTF-8 included (a control character is six)."""
    message = Message("rm.users.u", 1, payload, "id-1")
    carried = len(message.envelope_json(True))
    assert carried <= message.weight <= carried + ENVELOPE_OVERHEAD


def test_queue_entries_round_trip_and_keep_source_and_timestamp() -> None:
    message = Message("rm.channels.cats", 1438480701712, "100% %20 ☕", "run.2")
    again, problem = message_from_entry(message.queue_entry())
    assert (again.id, again.source, again.timestamp, again.payload) == (message.id, message.source, message.timestamp, message.payload)
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


def test_ids_of_one_run_are_distinct_and_two_runs_never_share_one() -> None:
    from redmessenger.model.envelope import MessageIds

    first, second = MessageIds(), MessageIds()
    ids = [first.next() for _ in range(1000)] + [second.next() for _ in range(1000)]
    assert len(set(ids)) == 2000
    assert all(len(i) <= 64 and i.isascii() for i in ids)
    assert first.next() == f"{first.run}.1001"


def test_an_entry_without_an_id_gets_the_same_one_each_time_it_is_read() -> None:
    node_era = json.dumps({"source": "rm.users.u", "timestamp": 1, "bubble": True, "payload": "hi"}).encode()
    (a, _), (b, _) = message_from_entry(node_era), message_from_entry(node_era)
    assert a.id == b.id and a.id.startswith("h-")
    other = json.dumps({"source": "rm.users.u", "timestamp": 2, "bubble": True, "payload": "hi"}).encode()
    assert message_from_entry(other)[0].id != a.id
    from redmessenger.model.envelope import message_from_unreadable

    assert message_from_unreadable(b"garbage", "rm.users.u", 5).id == message_from_unreadable(b"garbage", "rm.users.u", 9).id


@pytest.mark.parametrize("bad", [None, 7, "", "x" * 65, "é"])
def test_an_entry_whose_id_is_not_one_gets_a_derived_id(bad: object) -> None:
    raw = json.dumps({"v": 1, "id": bad, "source": "rm.users.u", "timestamp": 1, "payload": "p"}).encode()
    assert message_from_entry(raw)[0].id.startswith("h-")


@pytest.mark.parametrize("payload", ["", "007", 'q"uote\\back\nline\t\u2028', "€ 𝄞 \x00\x1f", "</script>"])
@pytest.mark.parametrize("sender", [None, "alice"])
def test_encodings_are_what_json_dumps_gives_byte_for_byte(payload: str, sender: str | None) -> None:
    from redmessenger.model.channels import Sender

    message = Message("rm.users.u", 1438480701712, payload, "run.3", Sender("c1", sender) if sender else None)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    extra = {"sender": {"client_id": "c1", "uid": sender}} if sender else {}
    entry = {"v": 1, "id": "run.3", "source": "rm.users.u", "timestamp": 1438480701712, "payload": payload} | extra
    envelope = {"id": "run.3", "source": "rm.users.u", "timestamp": 1438480701712, "bubble": True, "payload": payload}
    assert message.queue_entry() == dumps(entry).encode("utf-8")
    assert message.envelope_json(True) == dumps(envelope | extra).encode("utf-8")
