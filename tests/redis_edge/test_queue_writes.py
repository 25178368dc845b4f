"""
QueueStore's writes against their limits: an entry for more queues than
``writes_per_call`` (a group with many offline members) goes in parts, a script
call each; and ``drain()`` waits for the writes made before it, not for a
stream of writes to stop.  With a recording stand-in for the connection where
the order of commands is the point, against a real server otherwise.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from redmessenger.redis_edge.queues import QueueStore
from redmessenger.redis_edge.scripts import ENQUEUE

from ..conftest import HOST, RedisServer, refusals, wait_until
from ..fakes import answer_in_turn, connection_lost, kinds, make_store, sent_entries

QUEUE = "rm:users:{}:messages"


def keys_of(sent: tuple[Any, ...]) -> list[str]:
    return list(sent[2])


def again_flags(sent: tuple[Any, ...]) -> list[str]:
    return list(sent[3][4::3])


# -- an entry in parts (recorded commands) ----------------------------------------------------


def test_an_entry_for_more_queues_than_writes_per_call_goes_in_parts_and_is_written_once_all_landed() -> None:
    store, commands, clock = make_store(writes_per_call=2)
    written: list[str] = []
    store.enqueue(["x"], b"0")
    store.enqueue(["a", "b", "c", "d", "e"], b"1", written=lambda: written.append("1"))
    store.enqueue(["y"], b"2")
    clock.advance(0)
    for n in range(4):
        assert len(commands.sent) == n + 1, "one call under way at a time"
        commands.replies[n].callback([[], []])
        assert written == ([] if n < 3 else ["1"]), "called once, when its last part landed"
    assert [keys_of(c) for c in commands.sent] == [
        [QUEUE.format("x")],
        [QUEUE.format("a"), QUEUE.format("b")],
        [QUEUE.format("c"), QUEUE.format("d")],
        [QUEUE.format("e")],
        [QUEUE.format("y")],
    ], "each part a call of its own, in order with the entries around it"
    assert sent_entries(commands) == [[b"0"], [b"1"], [b"1"], [b"1"], [b"2"]]
    commands.replies[4].callback([[], []])
    assert written == ["1"] and store.backlog == 0 and not clock.getDelayedCalls()


def test_a_part_that_fails_goes_back_first_as_possibly_there_already_with_the_rest_behind_it() -> None:
    store, commands, clock = make_store(writes_per_call=2)
    written: list[str] = []
    store.enqueue(["a", "b", "c", "d", "e"], b"1", written=lambda: written.append("1"))
    store.enqueue(["f"], b"2", written=lambda: written.append("2"))
    clock.advance(0)
    commands.replies[0].callback([[], []])  # the first part landed
    assert len(commands.sent) == 2
    commands.replies[1].errback(connection_lost())  # the connection dies under the second
    assert written == [] and store.backlog == 2, "the entry in parts counts once"
    drained = store.drain()
    clock.advance(store.retry_delay)
    answer_in_turn(commands, 2)
    retried = commands.sent[2:]
    assert [keys_of(c) for c in retried] == [
        [QUEUE.format("c"), QUEUE.format("d")],
        [QUEUE.format("e")],
        [QUEUE.format("f")],
    ], "only what had not landed, in the order it was queued, each part still a call of its own"
    assert [again_flags(c) for c in retried] == [["1"], ["0"], ["0"]], "the failed part checked for, the others never sent"
    assert written == ["1", "2"] and drained.called
    assert store.backlog == 0 and not clock.getDelayedCalls()


def test_a_part_failing_at_once_keeps_the_parts_not_sent_yet_behind_it() -> None:
    store, commands, clock = make_store(writes_per_call=2)
    written: list[str] = []
    store.enqueue(["a", "b", "c", "d", "e"], b"1", written=lambda: written.append("1"))
    store.enqueue(["f"], b"2")
    original = commands._record

    def refuse_the_second(command: tuple[Any, ...]) -> Deferred[Any]:
        d = original(command)
        if len(commands.sent) == 2:
            d.errback(connection_lost())  # as txredisapi does when it cannot send at all
        return d

    commands._record = refuse_the_second  # type: ignore[method-assign]
    clock.advance(0)
    commands.replies[0].callback([[], []])
    assert [keys_of(c) for c in commands.sent] == [[QUEUE.format("a"), QUEUE.format("b")], [QUEUE.format("c"), QUEUE.format("d")]]
    assert store.backlog == 2
    commands._record = original  # type: ignore[method-assign]
    assert written == []
    clock.advance(store.retry_delay)
    answer_in_turn(commands, 2)
    retried = commands.sent[2:]
    assert [keys_of(c) for c in retried] == [[QUEUE.format("c"), QUEUE.format("d")], [QUEUE.format("e")], [QUEUE.format("f")]]
    assert [again_flags(c) for c in retried] == [["1"], ["0"], ["0"]], "the failed part checked for, the others never sent"
    assert written == ["1"] and store.backlog == 0 and not clock.getDelayedCalls()


# -- drain (recorded commands) ------------------------------------------------------------------


def test_drain_waits_for_the_writes_and_trims_made_before_it_not_for_those_after() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    clock.advance(0)
    store.trim("b", 1)
    drained = store.drain()
    store.enqueue(["a"], b"2")
    clock.advance(0)
    assert kinds(commands) == [ENQUEUE, "LTRIM"], "2 waits for the answer to 1"
    commands.replies[0].callback([[], []])
    assert kinds(commands) == [ENQUEUE, "LTRIM", ENQUEUE]
    assert not drained.called, "the trim is not answered yet"
    commands.replies[1].callback(b"OK")
    assert drained.called, "fired with the write made after it still unanswered"
    commands.replies[2].callback([[], []])


def test_drain_waits_for_an_entry_in_parts_until_its_last_part_is_answered() -> None:
    store, commands, clock = make_store(writes_per_call=1)
    store.enqueue(["a", "b", "c"], b"1")
    drained = store.drain()
    store.enqueue(["d"], b"2")
    clock.advance(0)
    commands.replies[0].callback([[], []])
    commands.replies[1].callback([[], []])
    assert not drained.called
    commands.replies[2].callback([[], []])
    assert drained.called
    assert sent_entries(commands) == [[b"1"], [b"1"], [b"1"], [b"2"]]
    commands.replies[3].callback([[], []])


def test_drain_counts_writes_in_the_backlog_as_unanswered_and_not_those_queued_after_it() -> None:
    store, commands, clock = make_store(writes_per_call=1)
    store.enqueue(["a"], b"1")
    clock.advance(0)
    commands.replies[0].errback(connection_lost())
    assert store.backlog == 1
    drained = store.drain()
    assert not drained.called, "Redis has not taken it"
    store.enqueue(["a"], b"2")
    clock.advance(0)
    assert not drained.called
    clock.advance(store.retry_delay)
    commands.replies[1].callback([[], []])
    assert drained.called, "what was queued after it does not hold it up"
    assert sent_entries(commands)[1:] == [[b"1"], [b"2"]]
    commands.replies[2].callback([[], []])
    assert store.backlog == 0 and not clock.getDelayedCalls()


# -- against a real server --------------------------------------------------------------------


class CountingCommands:
    """The store's commands, recording the queues of each ENQUEUE call and how many were answered."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.enqueues: list[list[str]] = []
        self.answered = 0

    def eval(self, script: bytes, keys: list[Any] = [], args: list[Any] = []) -> Any:
        d = self.real.eval(script, keys, args)
        if script == ENQUEUE:
            self.enqueues.append(list(keys))
            d.addBoth(self._answered)
        return d

    def _answered(self, result: Any) -> Any:
        self.answered += 1
        return result

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return self.real.execute_command(*args, **kwargs)


@asynccontextmanager
async def store_on(port: int) -> AsyncIterator[tuple[QueueStore, CountingCommands]]:
    """A QueueStore on a connection of its own to the server at ``port``, its writes all answered at the end."""
    import txredisapi
    from twisted.internet import reactor

    connection = await txredisapi.Connection(HOST, port, reconnect=False, charset=None, convertNumbers=False)
    commands = CountingCommands(connection)
    store = QueueStore(commands, reactor, queue_expiry=60, queue_max_length=100_000)
    try:
        yield store, commands
        await store.drain().addTimeout(10, reactor)
    finally:
        store.stop()  # a test failing halfway leaves no retry behind
        await connection.disconnect()


def eval_calls(redis: Any) -> int:
    stats = redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("eval", "evalsha"))


@pytest_twisted.ensureDeferred
async def test_an_entry_for_5000_offline_members_is_written_in_10_calls_of_500(redis: Any, redis_server: RedisServer) -> None:
    uids = [f"m{n}" for n in range(5000)]
    async with store_on(redis_server.port) as (store, commands):
        store.writes_per_call = 500
        redis.config_resetstat()
        seen: list[tuple[int, list[int]]] = []

        def written() -> None:
            pipe = redis.pipeline(transaction=False)
            for uid in uids:
                pipe.llen(QUEUE.format(uid))
            seen.append((commands.answered, pipe.execute()))

        store.enqueue(uids, b"to the group", written=written)
        await store.drain().addTimeout(10, _reactor())
        assert [len(keys) for keys in commands.enqueues] == [500] * 10
        assert [key for keys in commands.enqueues for key in keys] == [QUEUE.format(uid) for uid in uids]
        assert eval_calls(redis) == 10, "Redis ran 10 script calls"
        assert len(seen) == 1, "written called exactly once"
        answered, lengths = seen[0]
        assert answered == 10, "written called only once the last part was answered"
        assert lengths == [1] * 5000, "every queue had it then"
    pipe = redis.pipeline(transaction=False)
    for uid in uids:
        pipe.lrange(QUEUE.format(uid), 0, -1)
    assert pipe.execute() == [[b"to the group"]] * 5000, "exactly one copy in every queue"


@pytest_twisted.ensureDeferred
async def test_an_entry_read_again_goes_in_parts_pushed_only_where_it_is_not_in_order_with_the_others(
    redis: Any, redis_server: RedisServer
) -> None:
    uids = [f"m{n}" for n in range(1200)]
    for uid in ("m3", "m700", "m1100"):  # it reached these before a crash: one in each part
        redis.rpush(QUEUE.format(uid), b"B")
    async with store_on(redis_server.port) as (store, commands):
        store.writes_per_call = 500
        store.enqueue(["m0", "m1199"], b"A")
        store.enqueue(uids, b"B", again=True)
        store.enqueue(["m0", "m1199"], b"C")
        await store.drain().addTimeout(10, _reactor())
        assert [len(keys) for keys in commands.enqueues] == [2, 500, 500, 200, 2]
    assert redis.lrange(QUEUE.format("m0"), 0, -1) == [b"A", b"B", b"C"]
    assert redis.lrange(QUEUE.format("m1199"), 0, -1) == [b"A", b"B", b"C"]
    pipe = redis.pipeline(transaction=False)
    for uid in uids[1:-1]:
        pipe.lrange(QUEUE.format(uid), 0, -1)
    assert pipe.execute() == [[b"B"]] * 1198, "one copy in each queue"


@pytest_twisted.ensureDeferred
async def test_drain_under_steady_writes_fires_once_the_writes_made_before_it_are_answered(
    redis: Any, redis_server: RedisServer
) -> None:
    reactor = _reactor()
    key = QUEUE.format("steady")
    most = 3000  # the writer gives up here: without this, drain waiting for the stream to stop would never end
    async with store_on(redis_server.port) as (store, commands):
        made: list[int] = []
        at_drain: list[tuple[int, list[bytes]]] = []
        stopped: Deferred[None] = Deferred()

        def drained(_: object) -> None:
            at_drain.append((len(made), redis.lrange(key, 0, -1)))

        def write() -> None:
            if at_drain or len(made) == most:
                stopped.callback(None)
                return
            store.enqueue(["steady"], b"%d" % len(made))
            made.append(len(made))
            if len(made) == 100:
                store.drain().addCallback(drained)
            reactor.callLater(0, write)  # a write every reactor turn

        write()
        await stopped.addTimeout(20, reactor)
        assert at_drain, f"drain did not fire while writes went on ({len(made)} made)"
        writes, queued = at_drain[0]
        assert writes < most, f"drain fired only once the writes stopped ({writes} made)"
        assert queued[:100] == [b"%d" % n for n in range(100)], "the writes made before it were in Redis then"
    assert redis.lrange(key, 0, -1) == [b"%d" % n for n in range(len(made))]


@pytest_twisted.ensureDeferred
async def test_drain_with_nothing_unanswered_fires_at_once(redis: Any, redis_server: RedisServer) -> None:
    async with store_on(redis_server.port) as (store, commands):
        assert store.drain().called, "nothing written yet"
        store.enqueue(["u1"], b"1")
        drained = store.drain()
        assert not drained.called, "sent, not answered"
        await drained.addTimeout(10, _reactor())
        assert redis.lrange(QUEUE.format("u1"), 0, -1) == [b"1"]
        assert store.drain().called, "everything answered"
        trimmed = store.trim("u1", 1)
        drained = store.drain()
        assert not drained.called, "a trim counts"
        await drained.addTimeout(10, _reactor())
        assert trimmed.called and redis.llen(QUEUE.format("u1")) == 0


@pytest_twisted.ensureDeferred
async def test_drain_waits_while_redis_refuses_writes_until_the_backlog_is_written(private_redis: RedisServer) -> None:
    redis = private_redis.client()
    async with store_on(private_redis.port) as (store, commands):
        store.retry_delay = 0.05
        redis.config_set("min-replicas-to-write", "1")  # NOREPLICAS: refused for now
        try:
            store.enqueue(["away"], b"kept")
            drained = store.drain()
            await wait_until(lambda: store.backlog == 1 and commands.answered >= 3, what="refused a few times, kept")
            assert not drained.called and redis.llen(QUEUE.format("away")) == 0
            queued: list[Any] = []

            def landed(_: object) -> None:
                queued.append(redis.lrange(QUEUE.format("away"), 0, -1))

            drained.addCallback(landed)
        finally:
            redis.config_set("min-replicas-to-write", "0")
        await drained.addTimeout(10, _reactor())
        assert queued == [[b"kept"]], "fired once Redis had it"
        assert store.backlog == 0


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor



@pytest_twisted.ensureDeferred
async def test_an_entry_queued_while_redis_refuses_the_one_before_it_lands_after_it(private_redis: RedisServer) -> None:
    """
    Redis refuses a write for now (NOREPLICAS here; OOM near maxmemory flaps the same way) and, a moment later,
    would take the next: the next is not sent before the first has landed, so the queue keeps its order.
    """
    redis = private_redis.client()
    async with store_on(private_redis.port) as (store, commands):
        store.retry_delay = 0.05
        redis.config_set("min-replicas-to-write", "1")
        try:
            store.enqueue(["u"], b"first")
            store.flush()
            connection = commands.real._factory.pool[0]
            connection.transport.doWrite()  # on the wire now, its answer not read yet (the reactor does not run)
            deadline = time.monotonic() + 5
            while not refusals(redis, "NOREPLICAS"):  # a round trip each: Redis has read it and said no
                assert time.monotonic() < deadline, "the write never reached Redis"
        finally:
            redis.config_set("min-replicas-to-write", "0")  # Redis takes writes again...
        store.enqueue(["u"], b"second")  # ...before this process has read the refusal
        store.flush()
        await wait_until(lambda: store.backlog == 0 and redis.llen(QUEUE.format("u")) == 2, what="both written")
    assert redis.lrange(QUEUE.format("u"), 0, -1) == [b"first", b"second"]
