"""
How a batch between daemons carries a message (redis_edge/batches.py): its fields in the batch's JSON, read back into
the same message; anything else a batch could hold (another version's, damaged) reads as no message.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from redmessenger.model.channels import Sender
from redmessenger.model.envelope import Message
from redmessenger.redis_edge.batches import fields_of, message_of


def through_json(message: Message) -> Message | None:
    return message_of(json.loads(json.dumps(fields_of(message), ensure_ascii=False)))


@pytest.mark.parametrize("sender", [None, Sender("c-17", "alice"), Sender("c-18", None)])
def test_a_message_comes_back_the_same_with_its_frames(sender: Sender | None) -> None:
    message = Message("rm.channels.room", 1796043000123, 'héllo "you"\n\u2028😀', "r1a2b3.17", sender)
    back = through_json(message)
    assert back is not None
    assert (back.id, back.source, back.timestamp, back.payload, back.sender) == (
        message.id, message.source, message.timestamp, message.payload, message.sender
    )  # fmt: skip
    assert back.queue_entry() == message.queue_entry()
    assert back.envelope_json(True) == message.envelope_json(True)


@pytest.mark.parametrize(
    "fields",
    [
        None, 3, "x", [], ["id", "src", 1], ["id", "src", "1", "p"], ["id", "src", 1.5, "p"], ["id", "src", True, "p"],
        [1, "src", 1, "p"], ["id", None, 1, "p"], ["id", "src", 1, {"p": 1}], ["id", "src", 1, "p", "c"],
        ["id", "src", 1, "p", 7, "u"], ["id", "src", 1, "p", "c", 8], {"id": "x"},
    ],
)  # fmt: skip
def test_anything_else_reads_as_no_message(fields: Any) -> None:
    assert message_of(fields) is None
