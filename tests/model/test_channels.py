"""
model.channels: the application's answer and a client's publish as they travel
through Redis, read back exactly, and anything else refused with one error type.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redmessenger.model.channels import (
    Answer,
    BadAnswer,
    BadClientPublish,
    Mode,
    Sender,
    SubscriptionRequest,
    answer_json,
    client_publish_json,
    parse_answer,
    parse_client_publish,
)

from ..fuzzing import fuzz


@pytest.mark.parametrize(
    "raw, expected",
    [
        ('{"id":"r.1","permit":"read_only"}', Answer("r.1", Mode.READ_ONLY)),
        ('{"id":"r.1","permit":"write_only"}', Answer("r.1", Mode.WRITE_ONLY)),
        ('{"id":"r.1","permit":true}', Answer("r.1", Mode.READ_WRITE)),
        ('{"id":"r.1","deny":"members only"}', Answer("r.1", None, "members only")),
        ('{"id":"r.1","deny":true}', Answer("r.1", None, "denied")),
        ('{"id":"r.1","deny":"' + "x" * 500 + '"}', Answer("r.1", None, "x" * 200)),
        ('{"id":"r.1","deny":"no","permit":"read_write"}', Answer("r.1", None, "no")),
    ],
)
def test_answers_are_read_as_the_protocol_says(raw: str, expected: Answer) -> None:
    assert parse_answer(raw.encode()) == expected


@pytest.mark.parametrize(
    "raw",
    [b"", b"permit", b"[]", b'{"permit":"read_write"}', b'{"id":"","permit":true}', b'{"id":"r","permit":"admin"}',
     b'{"id":"r"}', b'{"id":"r","permit":false}', b'{"id":5,"permit":true}', b"\xff\xfe", b"[" * 100000],
)  # fmt: skip
def test_anything_else_on_the_answers_channel_is_a_bad_answer(raw: bytes) -> None:
    with pytest.raises(BadAnswer):
        parse_answer(raw)


@pytest.mark.parametrize("mode", [*Mode, None])
def test_an_answer_written_by_answer_json_reads_back(mode: Mode | None) -> None:
    assert parse_answer(answer_json("r.9", mode, "why")) == Answer("r.9", mode, "" if mode else "why")


@fuzz(200)
@given(st.text(max_size=20), st.none() | st.text(max_size=20), st.text(max_size=200))
def test_a_client_publish_reads_back_with_its_sender(client_id: str, uid: str | None, payload: str) -> None:
    raw = client_publish_json(Sender(client_id or "c", uid), payload)
    assert parse_client_publish(raw) == (Sender(client_id or "c", uid), payload)


@fuzz(300)
@given(st.binary(max_size=60) | st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                                                st.sampled_from(["client_id", "uid", "payload", "id", "permit", "deny", "x"]),
                                                inner, max_size=4)).map(lambda v: json.dumps(v).encode()))  # fmt: skip
def test_any_bytes_are_read_or_refused_with_the_one_error(raw: bytes) -> None:
    try:
        parse_client_publish(raw)
    except BadClientPublish:
        pass
    try:
        parse_answer(raw)
    except BadAnswer:
        pass


def test_a_request_is_a_flat_list_of_the_seven_fields_with_empty_strings_for_what_is_absent() -> None:
    request = SubscriptionRequest("r.1", "room", None, "c.1", None, "rm.answers.x", 1234)
    fields = request.fields()
    assert dict(zip(fields[::2], fields[1::2])) == {
        "id": "r.1", "channel": "room", "client_auth": "", "client_id": "c.1", "uid": "", "reply_to": "rm.answers.x",
        "deadline": "1234",
    }  # fmt: skip
