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
from redmessenger.redis_edge.batches import BatchWriter, fields_of, message_of, read_batch
from redmessenger.redis_edge.relays import Arrivals


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


class Writes:
    """Records the XADDs a BatchWriter makes (the commands' port), answered at once."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> Any:
        from twisted.internet.defer import succeed

        self.calls.append(args)
        return succeed(b"1-0")


def test_each_batch_to_a_node_carries_the_writers_run_and_its_number_and_reads_back_with_them() -> None:
    from twisted.internet.testing import Clock

    writes, clock = Writes(), Clock()
    writer = BatchWriter(writes, "node-a", clock, "r1a2b3")  # type: ignore[arg-type]
    message = Message("rm.users.u", 1, "p", "m-1", None)
    for _ in range(3):
        writer.deliver("node-b", "r9.1", message, True, 7)
        writer.send("node-c", b"attached", s="r9.2")
        clock.advance(0)
    def as_read(call: tuple[Any, ...]) -> Any:
        fields = [str(value).encode("utf-8") for value in call[6:]]
        return read_batch(dict(zip(fields[::2], fields[1::2])))

    assert [(call[1], as_read(call).node, as_read(call).run, as_read(call).number) for call in writes.calls] == [
        (f"rm:nodes:{node}:inbox", "node-a", "r1a2b3", n) for n in (1, 2, 3) for node in ("node-b", "node-c")
    ]


@pytest.mark.parametrize("numbered", ['"s":["r1",0.5]', '"s":[1,2]', '"s":["r1"]', '"s":"r1.2"', ""])
def test_a_batch_without_a_readable_number_reads_as_unnumbered(numbered: str) -> None:
    data = '{"m":[],"x":[]' + ("," + numbered if numbered else "") + "}"
    batch = read_batch({b"k": b"batch", b"n": b"node-a", b"d": data.encode()})
    assert batch is not None and (batch.run, batch.number) == ("", 0)


def test_a_messages_deliveries_in_a_batch_carry_each_sockets_number_beside_it() -> None:
    from twisted.internet.testing import Clock

    writes, clock = Writes(), Clock()
    writer = BatchWriter(writes, "node-a", clock, "r1")  # type: ignore[arg-type]
    one, two = Message("rm.users.u", 1, "p", "m-1", None), Message("rm.channels.g", 1, "q", "m-2", None)
    writer.deliver("node-b", "r9.1", one, True, 4)
    writer.deliver("node-b", "r9.2", two, True, 1)
    writer.deliver("node-b", "r9.3", two, False, 12)
    writer.deliver("node-b", "r9.4", two, True, 2)
    clock.advance(0)
    (call,) = writes.calls
    assert json.loads(call[-1])["x"] == [
        ["D", 0, ["r9.1"], [], [4], []],
        ["D", 1, ["r9.2", "r9.4"], ["r9.3"], [1, 2], [12]],
    ]


def test_what_was_written_to_a_relay_is_kept_until_its_owner_took_the_answer_to_a_request_covering_it() -> None:
    arrivals = Arrivals()

    def write(*ids: str) -> None:
        for message_id in ids:
            arrivals.count += 1
            arrivals.written.append(message_id)
            arrivals.numbers.append(arrivals.count)

    write("a", "b")
    arrivals.asked(1, 2)
    write("c")
    arrivals.count += 1  # a delivery not written (the socket closing)
    arrivals.asked(2, 3)
    arrivals.asked(1, 4)  # asked again: it covers what it covered the first time
    write("d")
    arrivals.answered(0)  # the owner had taken no yes yet
    assert arrivals.written == ["a", "b", "c", "d"]
    arrivals.answered(1)
    assert arrivals.written == ["c", "d"] and arrivals.numbers == [3, 5]
    arrivals.answered(1)  # told again
    assert arrivals.written == ["c", "d"]
    arrivals.answered(2)
    arrivals.answered(1)  # late
    assert arrivals.written == ["d"]
    arrivals.asked(3, 5)
    arrivals.answered(4)  # a later one, whose request never arrived here: covers 3
    assert arrivals.written == [] and arrivals.numbers == []


def test_a_confirmation_request_sent_again_covers_what_it_covered_the_first_time_and_tells_the_last_yes() -> None:
    from redmessenger.redis_edge.remote import RemoteSink

    class Outbox:
        def __init__(self) -> None:
            self.items: list[tuple[bytes, dict[str, Any]]] = []

        def send(self, node: str, kind: bytes, **fields: Any) -> None:
            self.items.append((kind, fields))

        def deliver(self, node: str, sid: str, message: Message, bubble: bool, number: int) -> None:
            self.items.append((b"D", {"n": number}))

    outbox = Outbox()
    sink = RemoteSink(outbox, "node-b", "r1.1", False, "127.0.0.1:1")
    message = Message("rm.users.u", 1, "p", "m-1", None)
    for _ in range(3):
        sink.send_message(message, True)
    first = sink.confirm()
    sink.send_message(message, True)
    assert sink.ask_again() == 0  # not late yet: the first check only notes it
    assert sink.ask_again() == 1
    requests = [fields for kind, fields in outbox.items if kind == b"confirm"]
    assert [(r["q"], r["c"], r["a"]) for r in requests] == [(b"1", b"3", b"0"), (b"1", b"3", b"0")]
    assert [fields["n"] for kind, fields in outbox.items if kind == b"D"] == [1, 2, 3, 4]
    answers: list[bool] = []
    first.addCallback(answers.append)
    sink.confirmed(1, True)
    sink.confirm()
    assert answers == [True] and [(kind, fields["q"], fields["c"], fields["a"]) for kind, fields in outbox.items[-1:]] == [
        (b"confirm", b"2", b"4", b"1")
    ]
