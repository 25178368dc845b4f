"""
Queue handover (pure logic: the queues in memory, or a recording stand-in for
the Redis connection where the exact commands matter).  Handovers against a
real server, with real clients dropping midway, are in tests/test_delivery.py.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.testing import Clock

from redmessenger.core.hub import Hub
from redmessenger.core.ports import StoreError, StoreUnavailable
from redmessenger.core.presence import Attachment
from redmessenger.model.envelope import ENVELOPE_OVERHEAD
from redmessenger.model.errors import ClientError
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


def test_a_queue_is_read_only_once_the_change_of_the_nodes_holding_the_messages_is_let_go() -> None:
    """The old owner's queue writes land before its word: a read before it could miss them (they'd wait for a reload)."""
    hub, queues, clock = setting(batch=2)
    queues.hold_takes = True
    release = hub.hold()  # a change of the nodes, waiting for the old owner's word
    socket = Socket(clock)
    identify(hub, socket)
    queue(queues, "q1", "q2")  # the old owner's writes, landing before its word
    hub.on_publish(b"rm.users.u", b"live")
    assert socket.payloads() == [] and queues.held == [], "no read yet"
    release()
    assert len(queues.held) == 1
    queues.hold_takes = False
    queues.answer_take()
    socket.confirm_all()
    assert socket.payloads() == ["q1", "q2", "live"] and queues.payloads("u") == []


def test_the_queue_read_again_for_a_socket_goes_after_the_handover_under_way_and_before_live_messages() -> None:
    hub, queues, clock = setting(batch=2)
    queue(queues, "q1")
    socket = Socket(clock)
    identify(hub, socket)
    queue(queues, "q2")  # queued by another node that had the user while this one was out of the list
    hub.hand_queue_again("u")
    hub.on_publish(b"rm.users.u", b"live")
    socket.confirm_all()
    assert socket.payloads() == ["q1", "q2"], "read once more when the first handover is through"
    socket.confirm_all()
    assert socket.payloads() == ["q1", "q2", "live"] and queues.payloads("u") == []
    queue(queues, "q3")
    hub.hand_queue_again("u")  # none under way: one starts
    socket.confirm_all()
    assert socket.payloads() == ["q1", "q2", "live", "q3"] and queues.payloads("u") == []
    assert hub.handovers.running == 0


def test_the_queue_read_again_holds_the_users_other_sockets_and_one_takes_it_over_if_the_first_goes() -> None:
    hub, queues, clock = setting(batch=2)
    first, other = Socket(clock), Socket(clock)
    gone = identify(hub, first)
    identify(hub, other)
    release = hub.hold()  # the word of the nodes that had the user is not here yet
    queue(queues, "q1", "q2")
    hub.hand_queue_again("u")
    first.close()  # (a socket of a node gone, or one closing)
    hub.detach(gone)
    hub.on_publish(b"rm.users.u", b"live")
    release()
    other.confirm_all()
    assert other.payloads() == ["q1", "q2", "live"], "held while the queue was on its way, then in order"
    assert queues.payloads("u") == []


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


def test_a_tab_that_takes_a_handover_over_has_its_live_messages_confirmed_by_the_yes_to_a_batch() -> None:
    """
    The older tab had a live message unconfirmed when the handover moved to it: its yes to the batch's request
    says it read that message too (written before the request), so it is confirmed then, not at the next request.
    """
    hub, queues, clock = setting(batch=2)
    older = Socket(clock, "older")
    older_attachment = identify(hub, older)
    hub.on_publish(b"rm.users.u", b"live")
    assert [sent.message.payload for sent in older_attachment.unconfirmed] == ["live"]
    queue(queues, "left", "over", "from", "before")
    newer = Socket(clock, "newer")
    newer_attachment = identify(hub, newer)
    newer.close()
    hub.detach(newer_attachment)
    assert older.payloads() == ["live", "left", "over"] and older_attachment.unconfirmed != []
    older.confirm_all()
    assert older_attachment.unconfirmed == [], "the live message, read before the batch's request, confirmed with it"
    older.confirm_all()
    assert older.payloads() == ["live", "left", "over", "from", "before"] and queues.payloads("u") == []


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


# -- Redis failing a read: tried again, live messages held (SPEC §3.3) -----------------------------------


class FailingQueues(MemoryQueues):
    """MemoryQueues whose next ``failing`` reads fail as when Redis is away; records when each read was made."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.failing = 0
        self.reads: list[float] = []

    def take(self, uid: str, delivered: int, batch: int) -> Deferred[tuple[int, list[bytes]]]:
        self.reads.append(self.clock.seconds())
        if self.failing:
            self.failing -= 1
            return fail(StoreUnavailable("Lost connection"))
        return super().take(uid, delivered, batch)


class SlowSocket(Socket):
    """A Socket the core may give up (too slow): records the close codes it was told."""

    def __init__(self, clock: Clock, name: str = "") -> None:
        super().__init__(clock, name)
        self.abandoned: list[int] = []

    def abandon(self, error: ClientError) -> None:
        self.abandoned.append(int(error.code))
        self.close()


def failing(batch: int = 2, **limits: int) -> tuple[Hub, FailingQueues, Clock]:
    clock = Clock()
    queues = FailingQueues(clock)
    return Hub(queues, MemoryDirectory(), clock, handover_batch=batch, **limits), queues, clock  # type: ignore[arg-type]


def test_a_read_redis_fails_is_tried_again_and_the_queue_still_comes_before_live_messages() -> None:
    """Defect 2: the failed handover was never tried again, and the live messages went out ahead of the queue."""
    hub, queues, clock = failing(batch=2)
    queue(queues, "q1", "q2", "q3")
    queues.failing = 1
    socket = Socket(clock)
    identify(hub, socket)
    hub.on_publish(b"rm.users.u", b"live1")
    assert socket.payloads() == [] and hub.handovers.running == 1, "the live message is held while the queue waits"
    clock.advance(0.99)
    assert queues.reads == [0.0]
    clock.advance(0.01)
    assert queues.reads == [0.0, 1.0] and socket.payloads() == ["q1", "q2"]
    hub.on_publish(b"rm.users.u", b"live2")
    socket.confirm_all()
    socket.confirm_all()
    assert socket.payloads() == ["q1", "q2", "q3", "live1", "live2"], "once each, queue first, in order"
    assert queues.payloads("u") == [] and hub.handovers.running == 0


def test_a_handover_is_tried_again_after_1s_doubling_up_to_30s() -> None:
    hub, queues, clock = failing()
    queue(queues, "q")
    queues.failing = 8
    socket = Socket(clock)
    identify(hub, socket)
    clock.pump([1.0] * 130)
    assert queues.reads == [0, 1, 3, 7, 15, 31, 61, 91, 121]
    socket.confirm_all()
    assert socket.payloads() == ["q"] and hub.handovers.running == 0


def test_the_delay_starts_again_from_1s_once_a_batch_went_through() -> None:
    hub, queues, clock = failing(batch=1)
    queue(queues, "a", "b")
    queues.failing = 2
    socket = Socket(clock)
    identify(hub, socket)
    clock.advance(1)
    clock.advance(2)  # reads at 0, 1 failed; at 3 "a" goes out
    assert socket.payloads() == ["a"]
    queues.failing = 1
    socket.confirm_all()  # the next read (trimming "a") fails
    clock.advance(1)
    assert queues.reads == [0, 1, 3, 3, 4]
    assert socket.payloads() == ["a", "a"], "whether the trim ran is unknown: sent twice rather than trimmed twice"
    socket.confirm_all()
    socket.confirm_all()
    assert socket.payloads() == ["a", "a", "b"] and queues.payloads("u") == []


def test_a_socket_that_closes_while_its_handover_waits_leaves_the_queue_in_place_and_its_live_messages_behind_it() -> None:
    hub, queues, clock = failing()
    queue(queues, "q1", "q2")
    queues.failing = 1
    socket = Socket(clock)
    attachment = identify(hub, socket)
    hub.on_publish(b"rm.users.u", b"live")
    socket.close()
    hub.detach(attachment)
    assert queues.payloads("u") == ["q1", "q2", "live"]
    assert hub.handovers.running == 0, "over at the close, not at the next try"
    clock.advance(1)
    assert queues.reads == [0.0], "not tried again for a socket that is gone"
    assert hub.handovers.running == 0 and socket.payloads() == []


def test_a_reload_while_the_handover_waits_takes_it_over_at_once() -> None:
    hub, queues, clock = failing(batch=10)
    queue(queues, "q1", "q2")
    queues.failing = 1
    old = Socket(clock, "old")
    old_attachment = identify(hub, old)
    old.close()
    hub.detach(old_attachment)
    new = Socket(clock, "new")
    identify(hub, new)
    hub.on_publish(b"rm.users.u", b"live")
    assert queues.reads == [0.0, 0.0] and new.payloads() == ["q1", "q2"], "no wait for the old socket's pause"
    new.confirm_all()
    assert new.payloads() == ["q1", "q2", "live"] and queues.payloads("u") == []
    assert hub.handovers.running == 0


def test_the_stop_ends_a_handover_waiting_to_try_again_at_once_and_quietly() -> None:
    from twisted.logger import LogLevel, globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        hub, queues, clock = failing()
        queue(queues, "q")
        queues.failing = 1
        identify(hub, Socket(clock))
        stopped = hub.stop(timeout=5)
        assert stopped.called and hub.handovers.running == 0
        clock.advance(60)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert queues.reads == [0.0] and queues.payloads("u") == ["q"]
    assert not [e for e in events if "log_failure" in e]
    assert [e["count"] for e in events if e["log_level"] == LogLevel.info and "count" in e] == [1]


def test_a_failure_redis_will_not_recover_from_is_not_tried_again() -> None:
    hub, queues, clock = failing()
    queue(queues, "q")
    queues.take = lambda uid, delivered, batch: fail(StoreError("WRONGTYPE"))  # type: ignore[method-assign]
    socket = Socket(clock)
    identify(hub, socket)
    assert hub.handovers.running == 0
    hub.on_publish(b"rm.users.u", b"live")
    assert socket.payloads() == ["live"]


def test_live_messages_held_while_the_handover_waits_are_bounded_by_max_pending_bytes() -> None:
    """Past its share the socket is given up (4413) and what was held is queued behind the queue, in order."""
    hub, queues, clock = failing(max_pending_bytes=10_000)
    queue(queues, "q1", "q2")
    queues.failing = 1
    socket = SlowSocket(clock)
    identify(hub, socket)
    for i in range(10):
        hub.on_publish(b"rm.users.u", f"{i}{'x' * 1000}".encode())
    assert socket.abandoned == [4413] and hub.presence.get("u") is None
    assert [p[0] for p in queues.payloads("u")[2:]] == [str(i) for i in range(10)]
    assert queues.payloads("u")[:2] == ["q1", "q2"] and hub.budget.used == 0
    clock.advance(1)
    assert hub.handovers.running == 0 and socket.payloads() == []


# -- a batch bounded by bytes, charged to the budget (SPEC §10) ---------------------------------------------


def big(n: int, size: int = 1000) -> str:
    return f"{n:02d}" + "x" * (size - 2)


def test_a_batch_stops_at_max_pending_bytes_and_the_next_read_brings_the_rest() -> None:
    """Defect 5: a whole batch went out however large; and a short batch was taken for the end of the queue."""
    hub, queues, clock = failing(batch=10, max_pending_bytes=3500)  # three 1160-byte messages fit
    queue(queues, *(big(i) for i in range(10)))
    socket = Socket(clock)
    attachment = identify(hub, socket)
    sizes = []
    while len(socket.payloads()) < 10 and socket.asked:
        sizes.append(len(socket.payloads()))
        assert attachment.pending_bytes <= 3500 and hub.budget.used == attachment.pending_bytes
        socket.confirm_all()
    assert sizes == [3, 6, 9]
    assert hub.budget.used == attachment.pending_bytes == 1000 + ENVELOPE_OVERHEAD
    socket.confirm_all()
    assert [p[:2] for p in socket.payloads()] == [f"{i:02d}" for i in range(10)], "once each, in order"
    assert queues.payloads("u") == [] and hub.handovers.running == 0
    assert hub.budget.used == 0


def test_what_the_batch_sent_counts_against_the_budget_until_confirmed() -> None:
    hub, queues, clock = failing(batch=10, max_pending_bytes=1 << 20)
    queue(queues, *(big(i) for i in range(4)))
    socket = Socket(clock)
    attachment = identify(hub, socket)
    assert len(socket.payloads()) == 4
    assert hub.budget.used == attachment.pending_bytes == 4 * (1000 + ENVELOPE_OVERHEAD)
    socket.confirm_all()
    assert hub.budget.used == attachment.pending_bytes == 0


def test_a_socket_past_its_share_of_the_budget_in_a_handover_is_given_up_and_its_queue_stays() -> None:
    """Past memory_budget_bytes, a socket holding over an eighth of its limit is given up (4413), as for live messages."""
    hub, queues, clock = failing(batch=10, max_pending_bytes=16_000, memory_budget_bytes=3_000)
    queue(queues, *(big(i) for i in range(10)))
    socket = SlowSocket(clock)
    identify(hub, socket)
    assert socket.abandoned == [4413] and len(socket.payloads()) == 3, "given up once past 2000 bytes with the daemon over 3000"
    assert hub.budget.used == 0 and hub.handovers.running == 0
    assert [p[:2] for p in queues.payloads("u")] == [f"{i:02d}" for i in range(10)], "nothing confirmed, nothing trimmed"


def test_a_socket_detached_in_a_handover_has_its_bytes_given_back_once() -> None:
    """Hub.detach gives back all the socket held, the batch included: a confirmation coming after takes nothing more back."""
    hub, queues, clock = failing(batch=10)
    queue(queues, *(big(i) for i in range(4)))
    socket = Socket(clock)
    attachment = identify(hub, socket)
    hub.detach(attachment)
    assert hub.budget.used == 0 and attachment.pending_bytes == 0
    socket.confirm_all()
    assert hub.budget.used == 0 and attachment.pending_bytes == 0
    assert hub.handovers.running == 0
