"""
The durable intake (SPEC §10): messages XADDed to rm:intake survive a daemon
that is not there, or dies, until every recipient's copy is safe.  Real
daemons (in-process, and twistd killed with SIGKILL), real valkey-server, real clients.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from .conftest import wait_until
from .wsclient import AckingClient

STREAM, GROUP, QUEUE = "rm:intake", "redmessenger", "rm:users:{}:messages"


def xadd(redis, channel: str, payload: str | bytes) -> str:
    return redis.xadd(STREAM, {"channel": channel, "payload": payload}).decode()


def queued(redis, uid: str) -> list[dict]:
    return [json.loads(e) for e in redis.lrange(QUEUE.format(uid), 0, -1)]


def pending(redis) -> int:
    info = redis.xpending(STREAM, GROUP)
    return int(info["pending"])


@pytest_twisted.ensureDeferred
async def test_an_entry_for_an_offline_user_is_queued_with_its_id_then_acknowledged_and_removed(daemon, redis):
    entry_id = xadd(redis, "rm.users.user1", "Hello")
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 1, what="queued")
    (entry,) = queued(redis, "user1")
    assert entry["id"] == entry_id and entry["payload"] == "Hello" and entry["source"] == "rm.users.user1"
    assert entry["timestamp"] == int(entry_id.split("-")[0]), "when Redis took it"
    await daemon.until(lambda: redis.xlen(STREAM) == 0 and pending(redis) == 0, what="acknowledged and removed")


@pytest_twisted.ensureDeferred
async def test_an_entry_for_an_online_user_stays_until_the_client_code_acknowledges_it(daemon, redis):
    client = await daemon.client()
    client.send(json.dumps({"type": "hello", "v": 1, "uid": "user1"}))
    await client.next()  # welcome
    await daemon.idle()
    entry_id = xadd(redis, "rm.users.user1", "live")
    message = await client.next()
    assert message["id"] == entry_id and message["payload"] == "live"
    await daemon.idle()
    assert pending(redis) == 1, "not acknowledged before the client's code says it handled it"
    client.send(json.dumps({"type": "ack", "id": entry_id}))
    await daemon.until(lambda: redis.xlen(STREAM) == 0 and pending(redis) == 0, what="acknowledged and removed")
    assert not redis.exists(QUEUE.format("user1"))
    client.close()


@pytest_twisted.ensureDeferred
async def test_entries_added_while_no_daemon_runs_are_delivered_when_one_starts(daemon_factory, redis):
    ids = [xadd(redis, "rm.users.user1", f"m{i}") for i in range(3)]  # no group, no daemon yet
    daemon = await daemon_factory()
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 3, what="queued")
    assert [e["id"] for e in queued(redis, "user1")] == ids
    client = await daemon.client("user1")
    assert [m["payload"] for m in await client.receive(3)] == ["m0", "m1", "m2"]
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_group_entry_reaches_members_and_is_acknowledged_once_all_are_safe(daemon, redis):
    redis.sadd("rm:channels:cats:subscribers", "user1", "user2")
    client = await daemon.client("user1")
    await daemon.idle()
    entry_id = xadd(redis, "rm.channels.cats", "meow")
    assert (await client.next())["id"] == entry_id
    await daemon.until(lambda: redis.llen(QUEUE.format("user2")) == 1, what="queued for the offline member")
    attachment = daemon.service.presence.get("user1").attachments[0]
    await daemon.until(lambda: not attachment.unconfirmed, what="user1's pong")
    await daemon.until(lambda: redis.xlen(STREAM) == 0, what="acknowledged once both copies are safe")
    client.close()


@pytest_twisted.ensureDeferred
async def test_entries_that_cannot_be_delivered_are_kept_aside_and_the_rest_goes_on(daemon, redis):
    redis.xadd(STREAM, {"nothing": "useful"})
    redis.xadd(STREAM, {"channel": "other.channel", "payload": "x"})
    redis.xadd(STREAM, {"channel": "rm.users.not valid", "payload": "x"})
    xadd(redis, "rm.users.user1", "fine")
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 1, what="the good one queued")
    await daemon.until(lambda: redis.llen("rm:intake:invalid") == 3 and redis.xlen(STREAM) == 0, what="kept aside")
    kept = [json.loads(e) for e in redis.lrange("rm:intake:invalid", 0, -1)]
    assert [k["fields"] for k in kept] == [
        {"nothing": "useful"},
        {"channel": "other.channel", "payload": "x"},
        {"channel": "rm.users.not valid", "payload": "x"},
    ]
    assert all(k["why"] for k in kept)


@pytest_twisted.ensureDeferred
async def test_a_daemon_stopped_with_entries_unsafe_reads_them_again_and_queues_them_once(daemon_factory, redis):
    """A socket that confirmed nothing when the daemon stopped: its entry is queued, once, by the next daemon."""
    daemon = await daemon_factory(node_id="node-a")
    client = await daemon.client()
    client.send(json.dumps({"type": "hello", "v": 1, "uid": "user1"}))
    await client.next()
    await daemon.idle()
    entry_id = xadd(redis, "rm.users.user1", "unacknowledged")
    assert (await client.next())["id"] == entry_id
    await daemon.service.stopService()  # the version-1 client acked nothing: requeued at its close
    assert [e["id"] for e in queued(redis, "user1")] == [entry_id]
    again = await daemon_factory(node_id="node-a")  # reads its pending entries again, if any
    await again.idle()
    assert [e["id"] for e in queued(redis, "user1")] == [entry_id], "queued once"
    await wait_until(lambda: pending(redis) == 0 and redis.xlen(STREAM) == 0, 10, "nothing left pending")


def as_a_dead_daemon_left_it(redis, consumer: str, queued_too: bool) -> str:
    """An entry read by ``consumer`` (pending under its name), maybe queued by it, never acknowledged."""
    from redmessenger.model.envelope import Message

    entry_id = xadd(redis, "rm.users.user1", "once")
    redis.xgroup_create(STREAM, GROUP, id="0")
    redis.xreadgroup(GROUP, consumer, {STREAM: ">"})
    if queued_too:
        message = Message("rm.users.user1", int(entry_id.split("-")[0]), "once", entry_id)
        redis.rpush(QUEUE.format("user1"), message.queue_entry())
    return entry_id


@pytest_twisted.ensureDeferred
async def test_an_entry_a_killed_daemon_had_queued_is_not_queued_again(daemon_factory, redis):
    entry_id = as_a_dead_daemon_left_it(redis, "node-x", queued_too=True)
    daemon = await daemon_factory(node_id="node-x")
    await wait_until(lambda: pending(redis) == 0, 10, "the pending entry handled")
    await daemon.idle()
    assert [e["id"] for e in queued(redis, "user1")] == [entry_id]


@pytest_twisted.ensureDeferred
async def test_an_entry_a_killed_daemon_had_not_queued_is_queued(daemon_factory, redis):
    entry_id = as_a_dead_daemon_left_it(redis, "node-x", queued_too=False)
    await daemon_factory(node_id="node-x")
    await wait_until(lambda: pending(redis) == 0, 10, "the pending entry handled")
    assert [e["id"] for e in queued(redis, "user1")] == [entry_id]


@pytest_twisted.ensureDeferred
async def test_an_entry_left_by_a_daemon_of_another_name_is_claimed_once_idle_long_enough(daemon_factory, redis):
    entry_id = as_a_dead_daemon_left_it(redis, "gone-for-good", queued_too=False)
    redis.execute_command("XCLAIM", STREAM, GROUP, "gone-for-good", 0, entry_id, "IDLE", 3_600_000)  # an hour idle
    await daemon_factory(node_id="node-y")
    await wait_until(lambda: pending(redis) == 0, 10, "claimed and handled")
    assert [e["id"] for e in queued(redis, "user1")] == [entry_id]


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_kill_9_under_load_loses_no_entry_and_queues_none_twice(redis, redis_server, tmp_path):
    """
    Issue 13, items 4 and 7: XADDs at about 1,000 a second to an online user
    (a client that acks) and an offline one; the daemon is killed with SIGKILL
    midway and started again.  Every entry reaches the online user (some twice:
    the same id) or its queue, and the offline user's queue holds every entry
    of its own exactly once, in order.
    """
    import threading
    import time

    import valkey
    from twisted.internet.threads import deferToThread

    from .conftest import HOST
    from .twistdprocess import Twistd

    sent: dict[str, list[str]] = {"on": [], "off": []}
    stop = threading.Event()

    def publish() -> None:
        client = valkey.Valkey(host=HOST, port=redis_server.port, socket_timeout=5)
        try:
            for n in range(3000):
                if stop.is_set():
                    return
                uid = "on" if n % 2 else "off"
                sent[uid].append(client.xadd(STREAM, {"channel": f"rm.users.{uid}", "payload": f"{uid}#{n}"}).decode())
                time.sleep(0.001)
        finally:
            client.close()

    first = Twistd(tmp_path, redis_server.port, ping_interval=0, node_id="node-k")
    first.start()
    second = None
    online = AckingClient("on")
    publisher = deferToThread(publish)
    try:
        await first.healthy()
        await online.connect(first.url)
        await wait_until(lambda: len(sent["on"]) >= 500, 30, "a third of the entries")
        first.signal("KILL")
        assert await first.ended() == "signal 9"
        second = Twistd(tmp_path, redis_server.port, ping_interval=0, node_id="node-k")
        second.start()
        await second.healthy()
        await online.connect(second.url)
        await publisher
        await wait_until(lambda: redis.xlen(STREAM) == 0 and pending(redis) == 0, 30, "every entry safe and acknowledged")
    finally:
        stop.set()
        await first.stop()
        if second is not None:
            await second.stop()

    assert len(sent["on"]) == len(sent["off"]) == 1500
    off = [e["id"] for e in queued(redis, "off")]
    assert off == sent["off"], "every entry for the offline user queued exactly once, in order"
    on_received = {m["id"] for m in online.received}
    on_queued = {e["id"] for e in queued(redis, "on")}
    assert on_received | on_queued == set(sent["on"]), "nothing lost for the online user"
    doubled = len(online.received) - len(on_received)
    assert doubled <= 500, "only what was in the killed daemon's hands comes twice"


@pytest_twisted.ensureDeferred
async def test_while_redis_refuses_queue_writes_the_reader_stops_at_its_cap_and_loses_nothing(daemon, redis):
    """
    Under maxmemory Redis still serves XREADGROUP but refuses the queue writes: every entry read then waited in the
    daemon's memory, the whole stream's worth.  The reader stops past its cap until what it holds is safe.
    """
    intake = daemon.service.intake
    intake.max_in_flight = 600  # a read brings up to 500 (the batch): two reads pass it
    reads = intake._reads
    intake._reads = lambda: False  # hold the reader while the stream fills
    await intake.quiet()  # the read blocked in XREADGROUP ends (CLIENT UNBLOCK), bringing nothing
    users = [f"off{i}" for i in range(30)]
    for n in range(3000):
        xadd(redis, f"rm.users.{users[n % 30]}", f"m{n}")
    redis.config_set("maxmemory", int(redis.info("memory")["used_memory"]) - 10000)
    try:
        intake._reads = reads
        intake.wake()
        await daemon.until(lambda: intake.full, 10, "the reader at its cap")
        assert (intake.read, intake.in_flight) == (1000, 1000), "two reads, then no more while nothing is safe"
        assert redis.exists(QUEUE.format("off0")) == 0, "the queue writes refused"
    finally:
        redis.config_set("maxmemory", 0)
    await daemon.until(lambda: redis.xlen(STREAM) == 0 and pending(redis) == 0, 20, "every entry safe and removed")
    assert intake.read == 3000 and intake.in_flight == 0 and not intake.full
    for i, uid in enumerate(users):
        assert [e["payload"] for e in queued(redis, uid)] == [f"m{n}" for n in range(i, 3000, 30)], "once each, in order"
