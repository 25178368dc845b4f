"""
Error replies that mean "not now" (LOADING after a restart, READONLY after a
failover, NOREPLICAS under min-replicas-to-write, OOM...) are Redis out of reach
for a while, not a refusal for good: queue writes are kept and written once
Redis takes them, and a key lookup says "try again later".  And what waits for
Redis is counted in the backlog, and read before any queue read.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import fail
from twisted.python.failure import Failure

from redmessenger.core.ports import StoreError, StoreUnavailable
from redmessenger.model.errors import CloseCode
from redmessenger.redis_edge.errors import translated
from redmessenger.redis_edge.scripts import ENQUEUE, TAKE

from ..conftest import RedisServer, refusals
from ..fakes import connection_lost, kinds, make_store, sent_entries

QUEUE = "rm:users:{}:messages"


def payloads(redis: Any, uid: str) -> list[str]:
    return [json.loads(entry)["payload"] for entry in redis.lrange(QUEUE.format(uid), 0, -1)]


def translation(reply: str) -> type[Exception]:
    from txredisapi import ResponseError

    results: list[Failure] = []
    translated(fail(ResponseError(reply))).addErrback(results.append)
    return type(results[0].value)


@pytest.mark.parametrize(
    "reply",
    [
        "LOADING Valkey is loading the dataset in memory",
        "READONLY You can't write against a read only replica. script: on @user_script:24.",
        "NOREPLICAS Not enough good replicas to write. script: on @user_script:24.",
        "OOM command not allowed when used memory > 'maxmemory'.",
        "MISCONF Errors writing to the AOF file: No space left on device",
        "BUSY Valkey is busy running a script. You can only call SCRIPT KILL or FUNCTION KILL.",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "CLUSTERDOWN The cluster is down",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        # before Redis 7, a script's refused command came wrapped
        "ERR Error running script (call to f_0123): @user_script:24: @user_script: 24: -READONLY You can't write against a read only replica.",
    ],
)
def test_an_error_reply_redis_gives_only_for_a_while_means_try_again_later(reply: str) -> None:
    assert translation(reply) is StoreUnavailable


@pytest.mark.parametrize(
    "reply",
    [
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "ERR Error running script (call to f_0123): @user_script:3: user_script:3: attempt to compare nil with number",
        "BUSYKEY Target key name already exists.",
        "BUSYGROUP Consumer Group name already exists",
        "NOPERM this user has no permissions to run the 'eval' command",
    ],
)
def test_any_other_error_reply_is_a_refusal(reply: str) -> None:
    assert translation(reply) is StoreError


def refused(reply: str) -> Failure:
    from txredisapi import ResponseError

    return Failure(ResponseError(reply))


def test_a_write_refused_for_now_is_kept_and_sent_again_as_possibly_there_already() -> None:
    """A script refused partway (NOREPLICAS at its first push) may have pushed some: pushed again only where not."""
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    clock.advance(0)
    store.enqueue(["a"], b"2")
    commands.replies[0].errback(refused("NOREPLICAS Not enough good replicas to write. script: on @user_script:24."))
    clock.advance(0)
    assert store.backlog == 2 and len(commands.sent) == 1, "2 waits behind 1"
    clock.advance(store.retry_delay)
    assert [c[3][2:] for c in commands.sent] == [[b"1", 1, "0"], [b"1", 1, "1", b"2", 1, "0"]]
    commands.replies[1].errback(refused("LOADING Valkey is loading the dataset in memory"))
    assert store.backlog == 2, "refused again: kept again"
    clock.advance(store.retry_delay)
    commands.replies[2].callback([[], []])
    assert sent_entries(commands) == [[b"1"], [b"1", b"2"], [b"1", b"2"]]
    assert store.backlog == 0 and not clock.getDelayedCalls()


def test_a_write_refused_for_good_is_not_kept() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    clock.advance(0)
    commands.replies[0].errback(refused("ERR Error running script (call to f_0123): @user_script:3: oops"))
    assert store.backlog == 0 and not clock.getDelayedCalls()


def test_entries_queued_while_a_retry_waits_for_redis_wait_behind_it_and_count_in_the_backlog() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    clock.advance(0)
    commands.replies[0].errback(connection_lost())
    clock.advance(store.retry_delay)  # the retry is sent; txredisapi holds it until Redis is back
    store.enqueue(["a"], b"2")
    clock.advance(0)
    assert sent_entries(commands) == [[b"1"], [b"1"]], "2 does not go ahead of the retry"
    assert store.backlog == 2, "both wait for Redis"
    commands.replies[1].callback([[], []])
    assert sent_entries(commands) == [[b"1"], [b"1"], [b"2"]], "Redis took the retry: 2 goes at once"
    assert store.backlog == 1
    commands.replies[2].callback([[], []])
    assert store.backlog == 0 and not clock.getDelayedCalls()


def test_a_queue_read_sends_the_writes_waiting_for_a_retry_first_without_waiting_for_it() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    clock.advance(0)
    commands.replies[0].errback(connection_lost())
    store.enqueue(["a"], b"2")
    read = store.take("a", 0, 10)
    assert kinds(commands) == [ENQUEUE, ENQUEUE] and sent_entries(commands) == [[b"1"], [b"1", b"2"]]
    assert not clock.getDelayedCalls(), "no retry left to come"
    store.enqueue(["a"], b"3")  # while the retry is not answered: behind it, and behind the read
    store.trim("a", 1)
    assert kinds(commands) == [ENQUEUE, ENQUEUE, "LTRIM"], "the read waits for 1 and 2 to land"
    commands.replies[1].callback([[], []])
    assert kinds(commands) == [ENQUEUE, ENQUEUE, "LTRIM", TAKE, ENQUEUE], "then the read, then 3"
    assert sent_entries(commands)[2] == [b"3"]
    commands.replies[3].callback([2, [b"1", b"2"]])
    assert read.result == (2, [b"1", b"2"])


def test_a_queue_read_fails_when_a_write_before_it_is_refused_and_the_next_one_waits_for_it() -> None:
    """Read anyway, it would leave the refused entry to land later, behind what the user was given by then."""
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    read = store.take("a", 0, 10)
    commands.replies[0].errback(refused("OOM command not allowed when used memory > 'maxmemory'."))
    failures: list[Failure] = []
    read.addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(StoreUnavailable), "the handover tries again later"
    assert kinds(commands) == [ENQUEUE], "nothing read"
    again = store.take("a", 0, 10)
    assert sent_entries(commands) == [[b"1"], [b"1"]], "the next read sends the kept entry at once"
    commands.replies[1].callback([[], []])
    assert kinds(commands)[-1] == TAKE
    commands.replies[2].callback([1, [b"1"]])
    assert again.result == (1, [b"1"]) and store.backlog == 0 and not clock.getDelayedCalls()


def test_a_queue_read_while_redis_is_unreachable_fails_at_once() -> None:
    store, commands, clock = make_store()
    store.enqueue(["a"], b"1")
    clock.advance(0)
    commands.replies[0].errback(connection_lost())
    commands.unreachable = True
    failures: list[Failure] = []
    store.take("a", 0, 10).addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(StoreUnavailable)
    assert store.backlog == 1 and clock.getDelayedCalls(), "kept, and tried again later"


@pytest.mark.parametrize(
    "setting, refusing, normal",
    [
        ("min-replicas-to-write", "1", "0"),  # NOREPLICAS: what docs/operations.md recommends, with its replica gone
        ("maxmemory", "1", "0"),  # OOM
    ],
)
@pytest_twisted.ensureDeferred
async def test_queue_writes_redis_refuses_for_now_are_written_once_it_takes_them(
    daemon_factory: Any, private_redis: RedisServer, setting: str, refusing: str, normal: str
) -> None:
    daemon = await daemon_factory(redis_port=private_redis.port)
    store = daemon.service.store
    store.retry_delay = 0.1
    redis = private_redis.client()
    redis.config_set(setting, refusing)
    try:
        redis.publish("rm.users.off1", "m1")
        redis.publish("rm.users.off1", "m2")
        await daemon.until(lambda: store.backlog == 2, what="both writes refused, and kept")
        assert payloads(redis, "off1") == []
    finally:
        redis.config_set(setting, normal)
    await daemon.until(lambda: store.backlog == 0, what="the kept writes taken")
    redis.publish("rm.users.off1", "m3")
    await daemon.until(lambda: redis.llen(QUEUE.format("off1")) >= 3, what="the next one queued")
    await daemon.idle()
    assert payloads(redis, "off1") == ["m1", "m2", "m3"], "none lost, none twice, in order"


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_while_redis_loads_its_data_writes_wait_and_a_key_lookup_says_try_again_later(
    daemon_factory: Any, tmp_path: Any
) -> None:
    from twisted.internet.threads import deferToThread

    # Each key takes 50 ms to load, and Redis answers LOADING meanwhile: about 10 s.
    server = RedisServer(
        tmp_path, arguments=("--key-load-delay", "50000", "--loading-process-events-interval-bytes", "1024")
    )
    server.start()
    try:
        daemon = await daemon_factory(redis_port=server.port, secure_mode=True, redis_timeout=2)
        link, store = daemon.service.link, daemon.service.store
        redis = server.client()
        redis.set("rm:users:u1:key", "k")
        for i in range(200):
            redis.set(f"filler:{i}", "x" * 3000)
        redis.save()
        server.stop()
        await daemon.until(lambda: not (link.state.commands_connected or link.state.subscribed), what="the link to drop")
        loaded = deferToThread(server.start)  # fires once Redis answers PING: loaded
        await daemon.until(lambda: link.state.subscribed, 10, "resubscribed while Redis loads")
        server.client().publish("rm.users.off1", "while loading")  # PUBLISH is served while loading
        await daemon.until(lambda: store.backlog == 1 or loaded.called, what="the write refused")
        assert store.backlog == 1 and not loaded.called, "refused with LOADING, and kept"
        client = await daemon.client()
        client.send("u1:k")
        code, _ = await client.close_code()
        assert not loaded.called, "still loading"
        assert code == CloseCode.TRY_AGAIN_LATER, "the key could not be read: not a wrong key"
        await loaded
        redis = server.client()
        await daemon.until(lambda: store.backlog == 0, what="the kept write taken")
        await daemon.idle()
        assert payloads(redis, "off1") == ["while loading"]
        again = await daemon.client()
        again.send("u1:k")
        await daemon.until(lambda: daemon.service.presence.get("u1") is not None, what="identified once loaded")
        again.close()
    finally:
        server.stop()


class DroppingCommands:
    """The store's commands, calling ``drop`` as the next queue write is sent (its answer lost with the connection)."""

    def __init__(self, real: Any, drop: Any) -> None:
        self.real = real
        self.drop = drop
        self.writes = 0

    def eval(self, script: bytes, keys: list[Any] = [], args: list[Any] = []) -> Any:
        d = self.real.eval(script, keys, args)
        if script == ENQUEUE:
            self.writes += 1
            if self.writes == 1:
                self.drop()
        return d

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return self.real.execute_command(*args, **kwargs)


async def the_queued_one_then_a_live_one(daemon: Any, redis: Any, client: Any, uid: str) -> None:
    """Once the handover is over, a live message: the client has the queued one first, each once, the queue empty."""
    await daemon.until(lambda: daemon.service.hub.handovers.running == 0, what="the handover over")
    redis.publish(f"rm.users.{uid}", "B (live)")
    await daemon.until(lambda: len(client.received) >= 2, what="both messages")
    await daemon.idle()
    assert [m["payload"] for m in client.received] == ["A (queued while offline)", "B (live)"]
    assert daemon.service.store.backlog == 0 and redis.llen(QUEUE.format(uid)) == 0, "written once, and delivered"
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_handover_reads_the_queue_after_the_writes_waiting_for_a_retry(daemon: Any, redis: Any) -> None:
    """A write lost with the connection waits for its retry; the user identifying meanwhile gets it first."""
    store, link = daemon.service.store, daemon.service.link
    store.retry_delay = 60.0  # the handover comes long before the retry

    def drop() -> None:
        for connection in list(link._commands.pool):
            connection.transport.abortConnection()

    store._redis = DroppingCommands(store._redis, drop)
    redis.publish("rm.users.u2", "A (queued while offline)")
    await daemon.until(lambda: store.backlog == 1, what="the write lost, kept for the retry")
    await daemon.until(lambda: link.state.commands_connected, what="reconnected")
    client = await daemon.client("u2")
    await the_queued_one_then_a_live_one(daemon, redis, client, "u2")


@pytest_twisted.ensureDeferred
async def test_a_user_identifying_while_redis_refuses_their_queue_entry_gets_it_once_it_lands_before_what_follows(
    daemon_factory: Any, private_redis: RedisServer
) -> None:
    """
    Redis refuses writes (NOREPLICAS) but serves reads: a handover reading the queue then would find it without
    the refused entry, which would land later, after the live messages, and stay in Redis while the user is online.
    """
    daemon = await daemon_factory(redis_port=private_redis.port)
    store, handovers = daemon.service.store, daemon.service.hub.handovers
    store.retry_delay = handovers.retry_first = 0.05
    redis = private_redis.client()
    redis.config_set("min-replicas-to-write", "1")
    try:
        redis.publish("rm.users.u3", "A (queued while offline)")
        await daemon.until(lambda: store.backlog == 1, what="the write refused, kept")
        client = await daemon.client("u3")
        await daemon.until(lambda: refusals(redis, "NOREPLICAS") >= 3, what="the write refused again, twice, the handover waiting")
        assert client.received == [] and redis.llen(QUEUE.format("u3")) == 0
    finally:
        redis.config_set("min-replicas-to-write", "0")
    await daemon.until(lambda: len(client.received) == 1, what="the entry, once it landed")
    await the_queued_one_then_a_live_one(daemon, redis, client, "u3")



@pytest_twisted.ensureDeferred
async def test_the_backlog_gauge_counts_retried_writes_until_redis_is_back(
    daemon_factory: Any, private_redis: RedisServer
) -> None:
    from ..httpclient import scrape

    daemon = await daemon_factory(redis_port=private_redis.port)
    store = daemon.service.store
    store.retry_delay = 0.05
    commands = store._redis = DroppingCommands(store._redis, private_redis.stop)  # Redis goes away, unanswered
    private_redis.client().publish("rm.users.off8", "m")
    await daemon.until(lambda: commands.writes == 2, what="the retry sent, waiting for Redis")
    assert store.backlog == 1
    assert (await scrape(daemon.port))["redmessenger_queue_backlog"] == 1, "what operators alert on"
    private_redis.start()
    redis = private_redis.client()
    await daemon.until(lambda: store.backlog == 0, 20, "written once Redis is back")
    await daemon.idle()
    assert payloads(redis, "off8") == ["m"]
    assert (await scrape(daemon.port))["redmessenger_queue_backlog"] == 0
