"""
Queue handover (pure logic: the queues in memory, or a recording stand-in for
the Redis connection where the exact commands matter).  Handovers against a
real server, with real clients dropping midway, are in tests/test_delivery.py.
"""

from __future__ import annotations

import json

from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import Clock

from redmessenger.core.hub import Hub
from redmessenger.core.presence import Attachment
from redmessenger.redis_edge.scripts import TAKE

from ..fakes import MemoryDirectory, MemoryQueues, Sink, Socket, connection_lost, make_store


def entry(n: int) -> bytes:
    return json.dumps({"v": 1, "source": "rm.users.u", "timestamp": n, "payload": f"p{n}"}).encode()


def test_a_batch_whose_trim_may_have_run_is_never_trimmed_again() -> None:
    """A TAKE that trims the confirmed batch loses its reply: trimming again could drop undelivered entries."""
    store, commands, clock = make_store()
    hub = Hub(store, MemoryDirectory(), clock, handover_batch=2)
    sink = Sink(clock)
    handover = ensureDeferred(hub.identify(sink, "u"))
    assert commands.sent[-1] == ("EVAL", TAKE, ["rm:users:u:messages"], [0, 2])
    commands.replies[-1].callback([5, [entry(1), entry(2)]])
    assert sink.log[-3:] == ["0.00 message p1", "0.00 message p2", "0.00 confirm"]
    sink.asked[-1].callback(True)
    assert commands.sent[-1] == ("EVAL", TAKE, ["rm:users:u:messages"], [2, 2]), "the next read trims the batch"
    commands.replies[-1].errback(connection_lost())
    assert [c for c in commands.sent if c[0] == "LTRIM"] == []
    assert handover.called


def setting(batch: int = 2) -> tuple[Hub, MemoryQueues, Clock]:
    queues, clock = MemoryQueues(), Clock()
    hub = Hub(queues, MemoryDirectory(), clock, handover_batch=batch)
    return hub, queues, clock


def identify(hub: Hub, socket: Socket, uid: str = "u") -> Attachment:
    d = ensureDeferred(hub.identify(socket, uid))
    attachment = d.result
    assert isinstance(attachment, Attachment)
    return attachment


def queue(queues: MemoryQueues, *payloads: str, uid: str = "u") -> None:
    for payload in payloads:
        queues.enqueue([uid], json.dumps({"v": 1, "source": f"rm.users.{uid}", "timestamp": 1, "payload": payload}).encode())


def test_the_queue_goes_out_a_batch_at_a_time_each_trimmed_once_confirmed() -> None:
    hub, queues, clock = setting(batch=2)
    queue(queues, "a", "b", "c", "d", "e")
    socket = Socket(clock)
    identify(hub, socket)
    assert socket.payloads() == ["a", "b"] and queues.payloads("u") == ["a", "b", "c", "d", "e"]
    socket.confirm_all()
    assert socket.payloads() == ["a", "b", "c", "d"] and queues.payloads("u") == ["c", "d", "e"]
    socket.confirm_all()
    assert socket.payloads() == ["a", "b", "c", "d", "e"] and queues.payloads("u") == ["e"]
    socket.confirm_all()
    assert queues.payloads("u") == [] and queues.trims == [("u", 1)]
    assert hub.handovers.running == 0 and hub.counters.handed_over == 5


def test_live_messages_wait_for_the_queue_and_follow_it_in_order() -> None:
    hub, queues, clock = setting(batch=2)
    queue(queues, "q1", "q2", "q3")
    socket = Socket(clock)
    identify(hub, socket)
    hub.on_publish(b"rm.users.u", b"live1")
    hub.on_publish(b"rm.users.u", b"live2")
    assert socket.payloads() == ["q1", "q2"], "live messages are held during the handover"
    socket.confirm_all()
    socket.confirm_all()
    assert socket.payloads() == ["q1", "q2", "q3", "live1", "live2"]
    assert [sent.message.payload for sent in hub.presence.get("u").attachments[0].unconfirmed] == ["live1", "live2"]


def test_a_socket_that_drops_mid_handover_leaves_what_it_did_not_confirm_queued() -> None:
    hub, queues, clock = setting(batch=2)
    queue(queues, "a", "b", "c", "d", "e")
    socket = Socket(clock)
    attachment = identify(hub, socket)
    socket.confirm_all()  # a, b confirmed; c, d sent
    hub.on_publish(b"rm.users.u", b"live")
    socket.close()  # c, d never confirmed
    hub.detach(attachment)
    assert queues.payloads("u") == ["c", "d", "e", "live"], "the unconfirmed batch stays, the held live message is queued behind"
    assert hub.handovers.running == 0


def test_a_page_reload_takes_the_rest_of_the_queue_over_in_order() -> None:
    """The socket receiving the queue goes; the user's next socket gets the rest, then what was published meanwhile."""
    hub, queues, clock = setting(batch=2)
    queue(queues, "a", "b", "c", "d", "e")
    queues.hold_takes = True
    old = Socket(clock, "old")
    old_attachment = identify(hub, old)
    queues.answer_take()
    old.confirm_all()  # a, b confirmed: the next TAKE (trimming them) is held
    old.close()
    hub.detach(old_attachment)
    new = Socket(clock, "new")
    identify(hub, new)
    hub.on_publish(b"rm.users.u", b"live")
    assert new.payloads() == [], "the new socket waits for the old handover to settle"
    queues.answer_take()  # the old handover's read: trims a, b; the old socket is gone
    queues.answer_take()  # the new socket's handover starts
    assert new.payloads() == ["c", "d"]
    new.confirm_all()
    queues.answer_take()
    assert new.payloads() == ["c", "d", "e"]
    new.confirm_all()
    assert new.payloads() == ["c", "d", "e", "live"]
    assert queues.payloads("u") == [] and hub.handovers.running == 0


def test_the_second_tab_of_a_user_waits_for_the_queue_and_gets_live_messages_after_it() -> None:
    hub, queues, clock = setting(batch=10)
    queue(queues, "q")
    queues.hold_takes = True
    first, second = Socket(clock, "first"), Socket(clock, "second")
    identify(hub, first)
    identify(hub, second)
    hub.on_publish(b"rm.users.u", b"live")
    assert second.messages == [], "the second tab waits while the queue goes to the first"
    queues.answer_take()
    first.confirm_all()
    assert first.messages == [("q", True), ("live", True)], "the queue first, then what was held; the oldest tab has the bubble"
    assert second.messages == [("live", False)]


def test_when_the_tab_receiving_the_queue_drops_the_waiting_tab_gets_the_rest_then_the_live_ones() -> None:
    """Issue 13: tab B stayed online but never got the rest of the queue; now it takes it over, in order."""
    hub, queues, clock = setting(batch=3)
    queue(queues, *(f"q{i}" for i in range(10)))
    a, b = Socket(clock, "a"), Socket(clock, "b")
    a_attachment = identify(hub, a)
    identify(hub, b)
    a.confirm_all()  # q0-q2 confirmed; q3-q5 sent
    hub.on_publish(b"rm.users.u", b"live1")
    hub.detach(a_attachment)  # the dialects detach first, then fail what waited for a confirmation
    a.close()  # q3-q5 never confirmed
    hub.on_publish(b"rm.users.u", b"live2")
    for _ in range(4):
        b.confirm_all()
    assert b.payloads() == [f"q{i}" for i in range(3, 10)] + ["live1", "live2"]
    assert a.payloads() == [f"q{i}" for i in range(6)]
    assert queues.payloads("u") == [] and hub.handovers.running == 0
    assert [payload for payload, bubble in b.messages if bubble] == b.payloads(), "b is the oldest socket now"


def test_when_the_tab_receiving_the_queue_drops_an_older_tab_takes_the_rest_over() -> None:
    """Nothing stays stranded in Redis while the user has a socket (entries left there by an outage, say)."""
    hub, queues, clock = setting(batch=2)
    older = Socket(clock, "older")
    identify(hub, older)
    queue(queues, "left", "over", "from", "before")
    newer = Socket(clock, "newer")
    newer_attachment = identify(hub, newer)
    assert newer.payloads() == ["left", "over"]
    newer.close()
    hub.detach(newer_attachment)
    hub.on_publish(b"rm.users.u", b"live")
    older.confirm_all()
    older.confirm_all()
    assert older.payloads() == ["left", "over", "from", "before", "live"]
    assert queues.payloads("u") == []


def test_the_handover_keeps_a_stopped_daemon_waiting_at_most_its_timeout() -> None:
    hub, queues, clock = setting()
    queue(queues, "a")
    queues.hold_takes = True
    identify(hub, Socket(clock))
    stopped = hub.stop(timeout=5)
    assert not stopped.called
    clock.advance(5)
    assert stopped.called


def test_a_handover_cut_short_by_the_stop_is_one_warning_not_a_failure() -> None:
    """Redis does not answer (it is away): the stop cancels the read; that is routine, not a traceback."""
    from twisted.logger import LogLevel, globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        hub, queues, clock = setting()
        queue(queues, "a", uid="u1")
        queue(queues, "b", uid="u2")
        queues.hold_takes = True
        identify(hub, Socket(clock), "u1")
        identify(hub, Socket(clock), "u2")
        stopped = hub.stop(timeout=5)
        clock.advance(5)
        assert stopped.called
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if "log_failure" in e], [e["log_format"] for e in events if "log_failure" in e]
    warnings = [e for e in events if e["log_level"] >= LogLevel.warn]
    assert [(e["log_level"], e["count"]) for e in warnings] == [(LogLevel.warn, 2)], warnings
    assert queues.payloads("u1") == ["a"] and queues.payloads("u2") == ["b"], "the queues stay"
