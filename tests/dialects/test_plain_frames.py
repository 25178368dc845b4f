"""The version-1 session's frames and acknowledgements (pure logic)."""

from __future__ import annotations

import pytest

from redmessenger.dialects.plain import frames
from redmessenger.dialects.plain.acks import AckLedger
from redmessenger.model.envelope import Message
from redmessenger.model.errors import ClientError, CloseCode


def test_a_hello_and_an_ack_parse() -> None:
    hello = frames.parse_frame('{"type":"hello","v":1,"uid":"user1","key":"k"}')
    assert isinstance(hello, frames.Hello) and hello.identifier.uid == "user1" and hello.identifier.key == "k"
    assert frames.parse_frame('{"type":"hello","v":1,"uid":"user1"}').identifier.key is None  # type: ignore[union-attr]
    assert frames.parse_frame('{"type":"ack","id":"run.7"}') == frames.Ack("run.7")


def test_only_a_json_object_opens_a_session() -> None:
    assert frames.is_session_frame('{"type":"hello"}')
    assert not frames.is_session_frame("user1:key")
    assert not frames.is_session_frame("")


def test_the_message_frame_is_the_envelope_with_its_type_first() -> None:
    import json

    message = Message("rm.users.u", 5, "hi", "run.1")
    payload = frames.message_frame_payload(message, True)
    assert payload.startswith(b'{"type":"message","id":"run.1",')
    assert json.loads(payload) == {"type": "message", **json.loads(message.envelope_json(True))}


@pytest.mark.parametrize("text", ["[]", '"hello"', "1", "{", "null", '{"type":"ack","id":7}', '{"type":"hello","v":"1","uid":"u"}'])
def test_what_is_not_allowed_is_a_bad_frame(text: str) -> None:
    with pytest.raises(ClientError) as refused:
        frames.parse_frame(text)
    assert refused.value.code is CloseCode.BAD_FRAME


def test_fields_a_later_version_may_add_are_ignored() -> None:
    hello = frames.parse_frame('{"type":"hello","v":1,"uid":"u","pkey":"p","extra":[1,2]}')
    assert isinstance(hello, frames.Hello) and hello.identifier.uid == "u"


def test_acks_are_cumulative_and_wake_who_waits() -> None:
    ledger = AckLedger()
    for i in range(5):
        ledger.written(f"m{i}")
    first, last = [], []
    ledger.confirm().addCallback(first.append)
    ledger.written("m5")
    ledger.confirm().addCallback(last.append)
    assert not ledger.ack("unknown")
    assert ledger.ack("m2") and ledger.unacknowledged == 3 and first == []
    assert ledger.ack("m4") and first == [True] and last == []
    assert not ledger.ack("m3"), "acknowledged already"
    assert ledger.ack("m5") and last == [True] and ledger.unacknowledged == 0
    done = []
    ledger.confirm().addCallback(done.append)
    assert done == [True], "nothing pending: confirmed at once"


def test_a_socket_gone_fails_who_waits() -> None:
    ledger = AckLedger()
    ledger.written("m0")
    waited = []
    ledger.confirm().addCallback(waited.append)
    ledger.fail()
    assert waited == [False]


def test_two_messages_with_one_id_on_a_socket_are_both_confirmed_by_its_ack() -> None:
    """Two byte-identical queue entries share their derived id: acking it must not fail (it raised KeyError)."""
    ledger = AckLedger()
    ledger.written("h-same")
    ledger.written("h-same")
    ledger.written("later")
    waited = []
    ledger.confirm().addCallback(waited.append)
    assert ledger.ack("h-same") and ledger.unacknowledged == 1
    assert not ledger.ack("h-same"), "both confirmed already"
    assert ledger.ack("later") and waited == [True]


def test_a_long_run_of_acks_keeps_the_ledger_small() -> None:
    ledger = AckLedger()
    for i in range(1000):
        ledger.written(f"m{i}")
        assert ledger.ack(f"m{i}")
    assert ledger.unacknowledged == 0 and len(ledger._pending) < 64 and not ledger._seq_of


def test_the_compact_ack_is_read_without_json_and_anything_else_is_left_to_the_parser() -> None:
    assert frames.compact_ack(b'{"type":"ack","id":"3f9a0c1b2e.41"}') == "3f9a0c1b2e.41"
    assert frames.compact_ack(b'{"type":"ack","id":"1700000000000-0"}') == "1700000000000-0"
    for other in (
        b'{"type": "ack", "id": "x"}',  # spaces: parse_frame reads it
        b'{"type":"ack","id":"a\\"b"}',
        b'{"type":"ack","id":"a\\\\b"}',
        b'{"type":"ack","id":""}',
        b'{"type":"ack","id":"' + b"x" * 65 + b'"}',
        b'{"type":"ack","id":"\xc3\xa9"}',
        b'{"type":"ack","id":"a\x01"}',
        b'{"type":"ack","id":"x","more":1}',
    ):
        assert frames.compact_ack(other) is None, other
    assert frames.parse_frame('{"type":"ack","id":"a\\"b"}') == frames.Ack('a"b'), "what the compact reader leaves, the parser reads"
