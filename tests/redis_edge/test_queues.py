"""
The order in which QueueStore sends its commands (pure logic: a recording
stand-in for the connection).  What Redis then makes of them is tested against
a real server in test_delivery.py and test_redis_outage.py.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure

from redmessenger.redis_edge.scripts import ENQUEUE, TAKE

from ..fakes import answer_in_turn, connection_lost, kinds, make_store, sent_entries


def refused(reply: str) -> Failure:
    from txredisapi import ResponseError

    return Failure(ResponseError(reply))


def test_a_turns_queue_writes_go_out_together_at_its_end() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a", "b"], b"one")
    store.enqueue(["a"], b"two")
    assert commands.sent == [], "nothing is sent before the end of the turn"
    clock.advance(0)
    assert commands.sent == [
        ("EVAL", ENQUEUE, ["rm:users:a:messages", "rm:users:b:messages", "rm:users:a:messages"], [60, 100, b"one", 2, "0", b"two", 1, "0"])
    ]


def test_a_queue_read_waits_for_the_writes_queued_before_it_to_land() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a"], b"one")
    read = store.take("a", 0, 10)
    assert kinds(commands) == [ENQUEUE], "the write sent at once, the read waiting for its answer"
    commands.replies[0].callback([[], []])
    assert kinds(commands) == [ENQUEUE, TAKE]
    store.enqueue(["a"], b"two")
    store.trim("a", 1)
    assert kinds(commands) == [ENQUEUE, TAKE, ENQUEUE, "LTRIM"]
    clock.advance(0)
    assert len(commands.sent) == 4, "the end of the turn finds nothing left to send"
    commands.replies[1].callback([1, [b"one"]])
    assert read.result == (1, [b"one"])
    assert not clock.getDelayedCalls()


def test_a_queue_read_with_nothing_unwritten_goes_at_once() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a"], b"one")
    clock.advance(0)
    commands.replies[0].callback([[], []])
    store.take("a", 0, 10)
    assert kinds(commands) == [ENQUEUE, TAKE]


def test_one_write_call_is_under_way_at_a_time_what_is_queued_meanwhile_goes_once_it_is_answered() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    clock.advance(0)
    store.enqueue(["a"], b"2")
    clock.advance(0)
    store.enqueue(["b"], b"3")
    clock.advance(0)
    assert sent_entries(commands) == [[b"1"]], "2 and 3 wait for the answer to 1"
    commands.replies[0].callback([[], []])
    assert sent_entries(commands) == [[b"1"], [b"2", b"3"]], "sent together, as soon as 1 was answered"
    commands.replies[1].callback([[], []])
    assert store.backlog == 0 and not clock.getDelayedCalls()


def test_a_big_turn_is_split_into_calls_of_at_most_writes_per_call_writes() -> None:
    store, commands, clock = make_store(writes_per_call=3)
    store.enqueue(["a", "b"], b"1")
    store.enqueue(["c", "d"], b"2")  # would make 4: a new call
    store.enqueue(["e"], b"3")
    store.enqueue(["f", "g", "h", "i"], b"4")  # more than the limit alone: split, each part a call of its own
    store.enqueue(["j"], b"5")
    clock.advance(0)
    answer_in_turn(commands)
    assert [c[3][2:] for c in commands.sent] == [
        [b"1", 2, "0"],
        [b"2", 2, "0", b"3", 1, "0"],
        [b"4", 3, "0"],
        [b"4", 1, "0"],
        [b"5", 1, "0"],
    ]
    assert [c[2] for c in commands.sent[2:4]] == [
        ["rm:users:f:messages", "rm:users:g:messages", "rm:users:h:messages"],
        ["rm:users:i:messages"],
    ]


def test_drain_waits_for_writes_not_sent_yet() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a"], b"one")
    drained = store.drain()
    assert len(commands.sent) == 1, "drain sends what waits for the end of the turn"
    assert not drained.called
    commands.replies[0].callback([[], []])
    assert drained.called


def test_entries_queued_while_a_write_fails_wait_behind_it() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    clock.advance(0)
    store.enqueue(["a"], b"2")  # pending when the write of 1 fails
    commands.replies[0].errback(connection_lost())
    store.enqueue(["a"], b"3")
    clock.advance(0)
    assert sent_entries(commands) == [[b"1"]], "nothing overtakes the failed write"
    assert store.backlog == 3
    clock.advance(store.retry_delay)
    assert sent_entries(commands) == [[b"1"], [b"1", b"2", b"3"]]
    commands.replies[1].callback([[], []])
    assert store.backlog == 0 and not clock.getDelayedCalls()


def test_a_write_whose_answer_was_lost_is_sent_again_as_possibly_there_already() -> None:
    """Redis may have run the call before the connection died: the retry pushes each entry only where it is not."""
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    clock.advance(0)
    store.enqueue(["a"], b"2")
    commands.replies[0].errback(connection_lost())
    clock.advance(store.retry_delay)
    enqueues = [c[3] for c in commands.sent if c[0] == "EVAL" and c[1] == ENQUEUE]
    assert [args[2::3] for args in enqueues] == [[b"1"], [b"1", b"2"]]
    assert [args[4::3] for args in enqueues] == [["0"], ["1", "0"]], "1 checked for, 2 (never sent) pushed"


def test_a_write_refused_for_now_is_not_overtaken_by_one_queued_after_it() -> None:
    """Redis refusing 1 (OOM) and taking 2 a moment later would put 2 before 1 in the queue: 2 is not sent before 1 lands."""
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    clock.advance(0)
    store.enqueue(["a"], b"2")
    clock.advance(0)  # the end of 2's turn comes before Redis answers 1
    commands.replies[0].errback(refused("OOM command not allowed when used memory > 'maxmemory'."))
    clock.advance(0)
    assert sent_entries(commands) == [[b"1"]]
    assert store.backlog == 2
    clock.advance(store.retry_delay)
    assert sent_entries(commands) == [[b"1"], [b"1", b"2"]], "1 first, then 2"
    commands.replies[1].callback([[], []])
    assert store.backlog == 0 and not clock.getDelayedCalls()


def test_a_write_failing_after_stop_is_reported_not_retried() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    store.stop()
    assert sent_entries(commands) == [[b"1"]], "stop sends what is pending"
    commands.replies[0].errback(connection_lost())
    assert store.backlog == 0 and not clock.getDelayedCalls()


def test_a_write_failing_at_once_keeps_the_rest_behind_it() -> None:
    store, commands, clock = make_store(writes_per_call=1)
    for entry in (b"1", b"2", b"3"):
        store.enqueue(["a"], entry)
    commands.unreachable = True
    clock.advance(0)
    assert sent_entries(commands) == [[b"1"]], "after the first call fails, the rest is not sent"
    assert store.backlog == 3
    commands.unreachable = False
    clock.advance(store.retry_delay)
    answer_in_turn(commands, 1)
    assert sent_entries(commands)[1:] == [[b"1"], [b"2"], [b"3"]]
    assert store.backlog == 0 and not clock.getDelayedCalls()


def test_an_oversize_message_kept_aside_goes_with_the_queue_writes_and_survives_redis_away() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a"], b"one")
    store.keep_aside("rm.users.a", b"\xff" * 5000)
    store.enqueue(["a"], b"two")
    clock.advance(0)
    assert commands.sent == [
        (
            "EVAL",
            ENQUEUE,
            ["rm:users:a:messages", "rm:oversize:rm.users.a", "rm:users:a:messages"],
            [60, 100, b"one", 1, "0", b"\xff" * 5000, 1, "0", b"two", 1, "0"],
        )
    ]
    commands.replies[0].errback(connection_lost())
    assert store.backlog == 3, "kept in memory while Redis is away, as queue entries are"
    clock.advance(store.retry_delay)
    again = [60, 100, b"one", 1, "1", b"\xff" * 5000, 1, "1", b"two", 1, "1"]  # each pushed only where it is not
    assert commands.sent[1] == ("EVAL", ENQUEUE, commands.sent[0][2], again)
    commands.replies[1].callback([[], []])
    assert store.backlog == 0


def test_the_enqueue_script_pushes_an_entry_read_again_only_where_it_is_not(redis) -> None:
    """Against a real server: an intake entry read again after a crash is not queued twice (LPOS)."""
    from redmessenger.redis_edge.scripts import ENQUEUE as script

    enqueue = redis.register_script(script)
    a, b = "rm:users:a:messages", "rm:users:b:messages"
    enqueue(keys=[a], args=[60, 100, b"e1", 1, "0"])  # a had it queued before the crash; b had not
    enqueue(keys=[a, b, b], args=[60, 100, b"e1", 2, "1", b"e2", 1, "0"])
    assert redis.lrange(a, 0, -1) == [b"e1"]
    assert redis.lrange(b, 0, -1) == [b"e1", b"e2"]
    enqueue(keys=[b], args=[60, 100, b"e2", 1, "0"])  # not read again: pushed, whatever is there
    assert redis.lrange(b, 0, -1) == [b"e1", b"e2", b"e2"]
    assert 0 < redis.ttl(a) <= 60


def test_a_queue_read_waiting_at_stop_or_coming_after_it_fails_rather_than_waiting_for_ever() -> None:
    from redmessenger.core.ports import StoreUnavailable

    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    waiting = store.take("a", 0, 10)
    store.stop()
    store.enqueue(["a"], b"2")
    late = store.take("a", 0, 10)
    failures: list[Failure] = []
    waiting.addErrback(failures.append)
    late.addErrback(failures.append)
    assert [f.check(StoreUnavailable) for f in failures] == [StoreUnavailable, StoreUnavailable]
    assert kinds(commands) == [ENQUEUE], "nothing read"


def test_a_queue_read_waits_only_for_the_writes_to_its_own_queue() -> None:
    """Redis refusing an offline user's entry (OOM) holds up no other user's handover."""
    store, commands, clock = make_store()
    store.enqueue(["b"], b"for b")
    clock.advance(0)
    read = store.take("a", 0, 10)
    assert kinds(commands) == [ENQUEUE, TAKE], "nothing queued for a: read at once, the write to b under way"
    results: list[Any] = []
    read.addBoth(results.append)
    commands.replies[0].errback(refused("OOM command not allowed when used memory > 'maxmemory'."))
    assert results == [], "not failed by b's refusal"
    commands.replies[1].callback([0, []])
    assert results == [(0, [])]
    assert store.backlog == 1


def test_the_backlog_empties_once_the_refused_entries_land_though_writes_keep_coming() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    clock.advance(0)
    commands.replies[0].errback(connection_lost())
    store.enqueue(["a"], b"2")  # behind it: kept too
    assert store.backlog == 2
    clock.advance(store.retry_delay)
    assert sent_entries(commands)[1] == [b"1", b"2"]
    store.enqueue(["b"], b"3")  # while the retry is under way: behind what Redis refused
    clock.advance(0)
    assert store.backlog == 3
    commands.replies[1].callback([[], []])
    assert store.backlog == 1, "1 and 2 landed; 3, under way, was queued behind them"
    store.enqueue(["c"], b"4")  # Redis took what it refused: an ordinary write again
    clock.advance(0)
    commands.replies[2].callback([[], []])
    assert store.backlog == 0, "back to 0 with writes still coming"
    assert sent_entries(commands)[3] == [b"4"]
    commands.replies[3].callback([[], []])
    assert store.backlog == 0 and not clock.getDelayedCalls()


def test_a_read_failed_by_a_refusal_that_reads_again_at_once_leaves_one_retry_behind() -> None:
    """A handover failed by the refusal may ask again at once: that sends the kept entry now, and one retry waits."""
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    first = store.take("a", 0, 10)
    failures: list[Failure] = []
    first.addErrback(lambda f: (failures.append(f), store.take("a", 0, 10).addErrback(failures.append)))
    commands.replies[0].errback(connection_lost())
    assert len(failures) == 1 and sent_entries(commands) == [[b"1"], [b"1"]], "sent again at once, for the read"
    commands.replies[1].errback(connection_lost())
    assert len(failures) == 2, "the second read failed by the second refusal"
    assert len(clock.getDelayedCalls()) == 1, "one retry, not one per refusal"
    store.stop()
    assert not clock.getDelayedCalls()


def test_stop_sends_everything_pending_at_once_behind_the_call_under_way() -> None:
    store, commands, clock = make_store(writes_per_call=2)
    store.enqueue(["x"], b"0")
    clock.advance(0)
    store.enqueue(["a", "b", "c"], b"1")  # in two parts
    store.enqueue(["y"], b"2")
    store.stop()
    assert sent_entries(commands) == [[b"0"], [b"1"], [b"1"], [b"2"]], "nothing left unsent"
    assert store.drain().called, "a drain after stop does not wait"


def test_stop_while_redis_refuses_sends_nothing_more_and_reports_it() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    clock.advance(0)
    commands.replies[0].errback(connection_lost())
    store.enqueue(["a"], b"2")
    store.stop()
    assert sent_entries(commands) == [[b"1"]] and not clock.getDelayedCalls()


def test_stop_with_no_connection_reports_what_it_could_not_send_once() -> None:
    """txredisapi fails a command at once when it has no connection: stop() does not send it again and again."""
    store, commands, clock = make_store(writes_per_call=1)
    store.enqueue(["a"], b"1")
    store.enqueue(["b"], b"2")
    commands.unreachable = True
    store.stop()
    assert sent_entries(commands) == [[b"1"]], "tried once; with no connection, the rest is not tried"
    assert store.backlog == 2 and not clock.getDelayedCalls(), "both never written (and logged so), no retry left"
