"""
Publishers and other programs are untrusted: any bytes, odd channels, garbage in
queues and sets.  Each is logged and handled; nothing crashes, nothing is lost,
no other user's data is touched.  Node.js-era queue entries are delivered as it would.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from .conftest import publish, wait_until
from .node import run_node

QUEUE = "rm:users:{}:messages"


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_is_delivered_with_replacement_characters(daemon, redis):
    client = await daemon.client("user1")
    publish(redis, "rm.users.user1", b"ok \xff\xfe bytes \xc3")
    publish(redis, "rm.users.user1", "after")
    first, second = await client.receive(2)
    assert first["payload"] == "ok \ufffd\ufffd bytes \ufffd"
    assert second["payload"] == "after"
    client.close()


@pytest.mark.parametrize("payload", ["100%", "%E2%82%AC", "%zz", "a%2", "%25", '{"json": [1, "%20"]}', "", "0", "007"])
@pytest_twisted.ensureDeferred
async def test_payload_reaches_the_client_unchanged_live_and_queued(daemon, redis, payload):
    publish(redis, "rm.users.offline", payload)
    await daemon.until(lambda: redis.llen(QUEUE.format("offline")) == 1)
    online = await daemon.client("online")
    publish(redis, "rm.users.online", payload)
    assert (await online.next())["payload"] == payload
    offline = await daemon.client("offline")
    assert (await offline.next())["payload"] == payload
    online.close()
    offline.close()


@pytest_twisted.ensureDeferred
async def test_a_one_megabyte_payload_is_delivered_whole(daemon, redis):
    big = ("0123456789abcdef" * 65536)[: 1024 * 1024]
    publish(redis, "rm.users.offline", big)
    await daemon.until(lambda: redis.llen(QUEUE.format("offline")) == 1)
    online = await daemon.client("online")
    publish(redis, "rm.users.online", big)
    assert (await online.next())["payload"] == big
    offline = await daemon.client("offline")
    assert (await offline.next())["payload"] == big
    online.close()
    offline.close()


@pytest.mark.parametrize("channel", ["rm.users.", "rm.users.a b", "rm.users.a:b", "rm.channels.", "rm.users.\xff", "rm.other"])
@pytest_twisted.ensureDeferred
async def test_a_message_on_a_channel_that_names_no_valid_uid_is_ignored(daemon, redis, channel):
    client = await daemon.client("user1")
    publish(redis, channel, "stray")
    publish(redis, "rm.users.user1", "normal")
    assert (await client.next())["payload"] == "normal"
    await daemon.idle()
    keys = {k.decode() for k in redis.keys("*") if not k.startswith(b"rm:nodes")}  # but the daemons' list
    assert keys <= {"rm:intake"} and redis.xlen("rm:intake") == 0, f"nothing but the (empty) intake stream: {keys}"
    client.close()


@pytest_twisted.ensureDeferred
async def test_invalid_group_members_are_skipped_without_writing_odd_keys(daemon, redis):
    redis.sadd("rm:channels:g:subscribers", "good", "bad uid", "a:b", "x" * 200, b"\xff")
    publish(redis, "rm.channels.g", "hello")
    await daemon.until(lambda: redis.llen(QUEUE.format("good")) == 1)
    await daemon.idle()
    keys = sorted(k.decode("utf-8", "replace") for k in redis.keys("rm:users:*"))
    assert keys == ["rm:users:good:messages"]


@pytest_twisted.ensureDeferred
async def test_a_group_key_of_the_wrong_type_is_kept_aside_with_one_warning_and_no_traceback(daemon, redis):
    """Issue 13, item 6: WRONGTYPE on SMEMBERS logged a critical traceback for every message."""
    from twisted.logger import LogLevel, globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        redis.set("rm:channels:g:subscribers", "the application's string")
        client = await daemon.client("user1")
        publish(redis, "rm.channels.g", "to nobody")
        publish(redis, "rm.users.user1", "after it")
        assert (await client.next())["payload"] == "after it"
        redis.sadd("rm:channels:g:subscribers", "user1")
        publish(redis, "rm.channels.g", "to the group again")
        assert (await client.next())["payload"] == "to the group again"
    finally:
        globalLogPublisher.removeObserver(events.append)
    (kept,) = redis.keys("rm:channels:g:subscribers:invalid:*")
    assert redis.get(kept) == b"the application's string"
    assert not [e for e in events if e.get("log_failure") is not None or e.get("log_level") in (LogLevel.error, LogLevel.critical)]
    warnings = [e for e in events if e.get("log_level") == LogLevel.warn and "held something other than a set" in e.get("log_format", "")]
    assert len(warnings) == 1
    client.close()


@pytest_twisted.ensureDeferred
async def test_garbage_queue_entries_are_delivered_as_payloads_and_nothing_after_them_is_lost(daemon, redis):
    good = json.dumps({"v": 1, "source": "rm.users.user1", "timestamp": 5, "payload": "good"})
    entries = [b"not json", b"[1, 2]", b'{"source": 1}', b"\xff\xfe", good.encode(), b'{"payload": "no source"}']
    redis.rpush(QUEUE.format("user1"), *entries)
    client = await daemon.client("user1")
    got = await client.receive(len(entries))
    assert [m["payload"] for m in got] == ["not json", "[1, 2]", '{"source": 1}', "\ufffd\ufffd", "good", '{"payload": "no source"}']
    assert all(m["source"] == "rm.users.user1" for m in got)
    assert got[4]["timestamp"] == 5
    await daemon.idle()
    assert not redis.exists(QUEUE.format("user1"))
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_queue_key_of_the_wrong_type_is_kept_aside_and_queueing_goes_on(daemon, redis):
    redis.set(QUEUE.format("user1"), "someone else's string")
    publish(redis, "rm.users.user1", "m1")
    await daemon.until(lambda: redis.type(QUEUE.format("user1")) == b"list")
    (kept,) = redis.keys(QUEUE.format("user1") + ":invalid:*")
    assert redis.get(kept) == b"someone else's string"
    # a second one is kept beside the first, not over it
    redis.delete(QUEUE.format("user1"))
    redis.set(QUEUE.format("user1"), "another string")
    publish(redis, "rm.users.user1", "m0")
    await daemon.until(lambda: len(redis.keys(QUEUE.format("user1") + ":invalid:*")) == 2)
    client = await daemon.client("user1")
    assert (await client.next())["payload"] == "m0"
    client.close()


@pytest_twisted.ensureDeferred
async def test_identifying_with_a_queue_key_of_the_wrong_type_keeps_it_aside(daemon, redis):
    redis.sadd(QUEUE.format("user1"), "a set")
    client = await daemon.client("user1")
    await daemon.idle()
    (kept,) = redis.keys(QUEUE.format("user1") + ":invalid:*")
    assert list(redis.smembers(kept)) == [b"a set"]
    publish(redis, "rm.users.user1", "live")
    assert (await client.next())["payload"] == "live"
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_group_set_of_the_wrong_type_reaches_nobody_and_breaks_nothing(daemon, redis):
    redis.set("rm:channels:g:subscribers", "oops")
    client = await daemon.client("user1")
    publish(redis, "rm.channels.g", "to nobody")
    publish(redis, "rm.users.user1", "after")
    assert (await client.next())["payload"] == "after"
    client.close()


# -- Node.js-era queue entries ---------------------------------------------------------

NODE_TEXTS = ["Hello, world!", "My life is a spicy pepper...", "100% sure", "café ☕ 𝄞", "a #hash, ?q=1&b=2", "%41 literal"]


def node_entries() -> list[str]:
    """Queue entries exactly as the Node.js RedMessenger wrote them (its generateMetadata + JSON.stringify)."""
    script = (
        "const texts = JSON.parse(process.argv[1]);"
        "for (const t of texts) console.log(JSON.stringify("
        "{source: 'rm.users.user1', timestamp: 1438480701712, bubble: false, payload: encodeURI(t)}));"
    )
    return run_node(script, NODE_TEXTS).splitlines()


@pytest_twisted.ensureDeferred
async def test_queues_written_by_the_nodejs_redmessenger_are_delivered_decoded(daemon, redis):
    entries = node_entries()
    assert len(entries) == len(NODE_TEXTS) and "%20" in entries[0]
    redis.rpush(QUEUE.format("user1"), *entries)
    client = await daemon.client("user1")
    got = await client.receive(len(entries))
    assert [m["payload"] for m in got] == NODE_TEXTS
    assert {m["timestamp"] for m in got} == {1438480701712}
    assert {m["source"] for m in got} == {"rm.users.user1"}
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_nodejs_entry_with_a_malformed_escape_is_delivered_as_stored(daemon, redis):
    redis.rpush(QUEUE.format("user1"), json.dumps({"source": "rm.users.user1", "timestamp": 1, "bubble": False, "payload": "50%off"}))
    client = await daemon.client("user1")
    assert (await client.next())["payload"] == "50%off"
    client.close()


@pytest_twisted.ensureDeferred
async def test_the_daemon_survives_a_flood_of_bad_input_and_still_delivers(daemon, redis):
    client = await daemon.client("user1")
    pipe = redis.pipeline(transaction=False)
    for i in range(200):
        pipe.publish("rm.users.", b"\x00" * i)
        pipe.publish("rm.channels.nope", b"\xff" * i)
        pipe.publish("rm.users.user1", f"ok{i}")
    pipe.execute()
    got = await client.receive(200)
    assert [m["payload"] for m in got] == [f"ok{i}" for i in range(200)]
    await wait_until(lambda: daemon.service.hub.counters.published == 600, what="all 600 messages read")
    client.close()
