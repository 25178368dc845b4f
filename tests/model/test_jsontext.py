"""JSON from outside: a lone surrogate escape is refused where it is read, a pair is one character."""

from __future__ import annotations

import json

import pytest

from redmessenger.model.envelope import UnreadableEntry, message_from_entry
from redmessenger.model.jsontext import LoneSurrogate, loads


@pytest.mark.parametrize("text", ['"\\ud800"', '{"a": ["x\\uDFFF"]}', '{"\\udbff": 1}', '"\\ud83d"'])
def test_half_a_surrogate_pair_is_refused_as_text_or_bytes(text: str) -> None:
    with pytest.raises(LoneSurrogate):
        loads(text)
    with pytest.raises(LoneSurrogate):
        loads(text.encode("ascii"))


@pytest.mark.parametrize(
    "text, value",
    [
        ('"\\ud83d\\ude00"', "\U0001f600"),  # a pair: one character
        ('"\\\\ud800"', "\\ud800"),  # an escaped backslash, then letters
        ('{"k": "\\u00e9"}', {"k": "é"}),
    ],
)
def test_pairs_and_look_alikes_are_read_as_json_reads_them(text: str, value: object) -> None:
    assert loads(text) == value == json.loads(text)


def test_a_queue_entry_with_a_lone_surrogate_is_unreadable_not_a_later_crash() -> None:
    """Garbage in a queue is delivered as its bytes (message_from_unreadable): the envelope could not be encoded."""
    with pytest.raises(UnreadableEntry):
        message_from_entry(b'{"source":"rm.users.u1","timestamp":1,"payload":"\\ud800","v":1}')
