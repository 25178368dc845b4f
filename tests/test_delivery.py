"""
SPEC §1-3 against a real valkey-server and real WebSocket clients: queueing,
handover on identify, live delivery, groups, bubbles, order, secure_mode, conn_limit.
"""

from __future__ import annotations

import json

import pytest_twisted

from .conftest import publish, wait_until

QUEUE = "rm:users:{}:messages"


def payloads(messages: list[dict]) -> list[str]:
    return [m["payload"] for m in messages]


@pytest_twisted.ensureDeferred
async def test_offline_messages_are_queued_then_delivered_in_order_on_identify(daemon, redis):
    before = int(daemon.service.reactor.seconds() * 1000)
    publish(redis, "rm.users.user1", "Hello, world!")
    publish(redis, "rm.users.user1", "My life is a spicy pepper...")
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 2, what="two queued entries")
    assert 0 < redis.ttl(QUEUE.format("user1")) <= 604800

    client = await daemon.client("user1")
    first, second = await client.receive(2)
    assert first["source"] == "rm.users.user1"
    assert first["payload"] == "Hello, world!"
    assert second["payload"] == "My life is a spicy pepper..."
    assert first["bubble"] is True
    assert isinstance(first["timestamp"], int) and before <= first["timestamp"] <= second["timestamp"]
    assert set(first) == {"id", "source", "timestamp", "bubble", "payload"}
    await daemon.idle()
    assert not redis.exists(QUEUE.format("user1")), "a delivered and confirmed queue is emptied"
    client.close()


@pytest_twisted.ensureDeferred
async def test_online_user_gets_messages_live_without_touching_the_queue(daemon, redis):
    client = await daemon.client("user1")
    await daemon.idle()
    for text in ("one", "two", "007", "%41 stays %41"):
        publish(redis, "rm.users.user1", text)
    assert payloads(await client.receive(4)) == ["one", "two", "007", "%41 stays %41"]
    await daemon.idle()
    assert not redis.exists(QUEUE.format("user1"))
    client.close()


@pytest_twisted.ensureDeferred
async def test_queue_is_delivered_before_newer_messages(daemon, redis):
    """Messages published while the queue is being handed over arrive after it."""
    for i in range(1200):
        redis.rpush(QUEUE.format("user1"), json.dumps({"v": 1, "source": "rm.users.user1", "timestamp": i, "payload": f"q{i}"}))
    client = await daemon.client()
    client.send("user1")
    await daemon.until(lambda: daemon.service.presence.get("user1") is not None)
    publish(redis, "rm.users.user1", "live-1")
    publish(redis, "rm.users.user1", "live-2")
    got = payloads(await client.receive(1202))
    assert got == [f"q{i}" for i in range(1200)] + ["live-1", "live-2"]
    await daemon.idle()
    assert not redis.exists(QUEUE.format("user1"))
    client.close()


@pytest_twisted.ensureDeferred
async def test_group_message_reaches_online_members_and_queues_for_offline_ones(daemon, redis):
    redis.sadd("rm:channels:cats:subscribers", "user1", "user2", "user5")
    user5 = await daemon.client("user5")
    await daemon.idle()
    publish(redis, "rm.channels.cats", "Meow!")
    message = await user5.next()
    assert message["source"] == "rm.channels.cats" and message["payload"] == "Meow!"
    await daemon.idle()
    for uid in ("user1", "user2"):
        (entry,) = redis.lrange(QUEUE.format(uid), 0, -1)
        assert json.loads(entry)["payload"] == "Meow!"
        assert json.loads(entry)["source"] == "rm.channels.cats"
    assert not redis.exists(QUEUE.format("user5"))

    user1 = await daemon.client("user1")
    (queued,) = await user1.receive(1)
    assert queued["source"] == "rm.channels.cats" and queued["timestamp"] == message["timestamp"]
    user1.close()
    user5.close()


@pytest_twisted.ensureDeferred
async def test_group_membership_is_read_when_the_message_arrives(daemon, redis):
    user1 = await daemon.client("user1")
    await daemon.idle()
    publish(redis, "rm.channels.dogs", "nobody yet")
    await daemon.until(lambda: daemon.service.hub.counters.published == 1)
    await daemon.idle()
    redis.sadd("rm:channels:dogs:subscribers", "user1")
    publish(redis, "rm.channels.dogs", "now user1")
    assert payloads(await user1.receive(1)) == ["now user1"]
    await daemon.idle()
    assert len(user1.received) == 1
    user1.close()


@pytest_twisted.ensureDeferred
async def test_order_holds_across_group_and_user_channels(daemon, redis):
    """A group message published before a user message reaches the user before it."""
    redis.sadd("rm:channels:big:subscribers", *[f"member{i}" for i in range(300)], "user1")
    user1 = await daemon.client("user1")
    await daemon.idle()
    expected = []
    pipe = redis.pipeline(transaction=False)
    for i in range(50):
        pipe.publish("rm.channels.big", f"group-{i}")
        pipe.publish("rm.users.user1", f"user-{i}")
        expected += [f"group-{i}", f"user-{i}"]
    pipe.execute()
    assert payloads(await user1.receive(100)) == expected
    user1.close()


@pytest_twisted.ensureDeferred
async def test_order_holds_for_a_user_who_is_offline(daemon, redis):
    redis.sadd("rm:channels:big:subscribers", "user1", "user2")
    pipe = redis.pipeline(transaction=False)
    expected = []
    for i in range(100):
        pipe.publish("rm.channels.big", f"group-{i}")
        pipe.publish("rm.users.user1", f"user-{i}")
        expected += [f"group-{i}", f"user-{i}"]
    pipe.execute()
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 200, what="200 queued entries")
    user1 = await daemon.client("user1")
    assert payloads(await user1.receive(200)) == expected
    user1.close()


@pytest_twisted.ensureDeferred
async def test_a_burst_for_offline_users_is_queued_in_order_across_script_calls(daemon, redis):
    """A turn's queue writes go out as script calls of at most writes_per_call writes; none is lost or reordered."""
    daemon.service.store.writes_per_call = 7  # a group message to 3 members alone takes 3 of them
    redis.sadd("rm:channels:big:subscribers", "user1", "user2", "user3")
    pipe = redis.pipeline(transaction=False)
    expected: dict[str, list[str]] = {uid: [] for uid in ("user1", "user2", "user3", "user4")}
    for i in range(150):
        pipe.publish("rm.channels.big", f"group-{i}")
        pipe.publish(f"rm.users.user{i % 4 + 1}", f"direct-{i}")
        for uid in ("user1", "user2", "user3"):
            expected[uid].append(f"group-{i}")
        expected[f"user{i % 4 + 1}"].append(f"direct-{i}")
    pipe.execute()
    await daemon.until(lambda: daemon.service.hub.counters.published == 300, what="all 300 read")
    await daemon.idle()
    for uid, payloads_expected in expected.items():
        entries = redis.lrange(QUEUE.format(uid), 0, -1)
        assert [json.loads(e)["payload"] for e in entries] == payloads_expected, uid
        assert 0 < redis.ttl(QUEUE.format(uid)) <= 604800


@pytest_twisted.ensureDeferred
async def test_exactly_one_tab_carries_the_bubble_and_hands_it_on(daemon, redis):
    first = await daemon.client("user1")
    second = await daemon.client("user1")
    third = await daemon.client("user1")
    await daemon.idle()
    publish(redis, "rm.users.user1", "m1")
    bubbles = [(await c.next())["bubble"] for c in (first, second, third)]
    assert bubbles == [True, False, False]

    first.close()
    await first.close_code()
    await daemon.until(lambda: len(daemon.service.presence.get("user1").attachments) == 2)
    publish(redis, "rm.users.user1", "m2")
    assert [(await c.next())["bubble"] for c in (second, third)] == [True, False]
    second.close()
    third.close()


@pytest_twisted.ensureDeferred
async def test_two_tabs_identifying_at_once_never_both_receive_the_queue(daemon, redis):
    for i in range(300):
        publish(redis, "rm.users.user1", f"q{i}")
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 300, what="300 queued entries")
    a = await daemon.client()
    b = await daemon.client()
    a.send("user1")
    b.send("user1")
    await daemon.until(lambda: len(getattr(daemon.service.presence.get("user1"), "attachments", [])) == 2)
    await daemon.idle()
    publish(redis, "rm.users.user1", "after")
    await wait_until(lambda: len(a.received) + len(b.received) >= 302, what="the queue and one live message per tab")
    # Until both tabs confirmed what they were sent: they have read all of it, nothing more is coming.
    await daemon.idle()
    tabs = daemon.service.presence.get("user1").attachments
    await daemon.until(lambda: all(not t.unconfirmed and not t.confirming for t in tabs), what="both tabs confirmed")
    counts = sorted([len(a.received), len(b.received)])
    assert counts == [1, 301], counts
    receiver = a if len(a.received) == 301 else b
    assert payloads(receiver.received) == [f"q{i}" for i in range(300)] + ["after"]
    await daemon.idle()
    assert not redis.exists(QUEUE.format("user1"))
    a.close()
    b.close()


@pytest_twisted.ensureDeferred
async def test_client_dropping_mid_queue_keeps_the_rest_queued_in_order(daemon_factory, redis):
    daemon = await daemon_factory(handover_batch=100)
    total = 2000
    pipe = redis.pipeline(transaction=False)
    for i in range(total):
        pipe.publish("rm.users.user1", f"m{i}")
    pipe.execute()
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == total, what="2000 queued entries")

    client = await daemon.client()
    client.drop_after(700)  # no close handshake, in the middle of the queue
    client.send("user1")
    await client.close_code()
    await daemon.until(lambda: daemon.service.presence.get("user1") is None)
    await daemon.idle()

    got = payloads(client.received)
    remaining = [json.loads(e)["payload"] for e in redis.lrange(QUEUE.format("user1"), 0, -1)]
    everything = [f"m{i}" for i in range(total)]
    # It vanished on the last message of the 7th batch: its pong never came, so
    # that batch (m600-m699) stays queued, and only it is delivered twice.
    assert got == everything[:700], "what the client got came in order, and no more after it vanished"
    assert remaining == everything[600:], "what stays is the unconfirmed batch and the rest, in order"

    # Coming back delivers exactly what stayed, then live messages.
    again = await daemon.client("user1")
    assert payloads(await again.receive(len(remaining))) == remaining
    again.close()


@pytest_twisted.ensureDeferred
async def test_live_messages_a_vanished_client_never_confirmed_are_queued(daemon, redis):
    """A client that vanishes without answering pings loses nothing that was sent to it."""
    client = await daemon.client("user1")
    await daemon.idle()
    # Stop answering pings: the client now looks like a dead peer.
    client.protocol.sendPong = lambda payload: None
    for i in range(5):
        publish(redis, "rm.users.user1", f"m{i}")
    await wait_until(lambda: len(client.received) == 5, what="5 live messages")
    client.drop()
    await daemon.until(lambda: daemon.service.presence.get("user1") is None)
    await daemon.idle()
    queued = [json.loads(e)["payload"] for e in redis.lrange(QUEUE.format("user1"), 0, -1)]
    assert queued == [f"m{i}" for i in range(5)]


@pytest_twisted.ensureDeferred
async def test_confirmed_live_messages_are_not_queued_again(daemon, redis):
    client = await daemon.client("user1")
    await daemon.idle()
    for i in range(5):
        publish(redis, "rm.users.user1", f"m{i}")
    await wait_until(lambda: len(client.received) == 5, what="5 live messages")
    attachment = daemon.service.presence.get("user1").attachments[0]
    await daemon.until(lambda: not attachment.unconfirmed, what="the pongs")
    client.close()
    await client.close_code()
    await daemon.until(lambda: daemon.service.presence.get("user1") is None)
    await daemon.idle()
    assert not redis.exists(QUEUE.format("user1"))


@pytest_twisted.ensureDeferred
async def test_a_reload_after_a_handover_cut_short_gets_the_rest_of_the_queue(daemon_factory, redis):
    """The old handover has ended when the new socket identifies (while it runs: test_page_reload.py)."""
    daemon = await daemon_factory(handover_batch=50)
    for i in range(500):
        redis.rpush(QUEUE.format("user1"), json.dumps({"v": 1, "source": "rm.users.user1", "timestamp": i, "payload": f"q{i}"}))
    first = await daemon.client()
    first.drop_after(120)
    first.send("user1")
    await first.close_code()
    await daemon.until(lambda: daemon.service.presence.get("user1") is None and not daemon.service.hub.handovers.running)
    second = await daemon.client()
    second.send("user1")
    await wait_until(lambda: second.received and second.received[-1]["payload"] == "q499", what="the end of the queue")
    everything = [f"q{i}" for i in range(500)]
    # The third batch (q100-q149) was never confirmed: it stayed, and only it repeats.
    assert payloads(first.received) == everything[: len(first.received)] and 120 <= len(first.received) <= 150
    assert payloads(second.received) == everything[100:]
    second.close()


@pytest_twisted.ensureDeferred
async def test_queue_expiry_is_reset_by_each_push(daemon_factory, redis):
    daemon = await daemon_factory(queue_expiry=100)
    publish(redis, "rm.users.user1", "a")
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 1)
    redis.expire(QUEUE.format("user1"), 5)
    publish(redis, "rm.users.user1", "b")
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 2)
    assert 90 < redis.ttl(QUEUE.format("user1")) <= 100


@pytest_twisted.ensureDeferred
async def test_queue_length_is_capped_by_dropping_the_oldest(daemon_factory, redis):
    daemon = await daemon_factory(queue_max_length=3)
    for i in range(5):
        publish(redis, "rm.users.user1", f"m{i}")
    await daemon.until(lambda: daemon.service.hub.counters.published == 5, what="all five read")
    await daemon.idle()
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 3)
    assert [json.loads(e)["payload"] for e in redis.lrange(QUEUE.format("user1"), 0, -1)] == ["m2", "m3", "m4"]


@pytest_twisted.ensureDeferred
async def test_another_users_queue_is_never_touched(daemon, redis):
    redis.rpush(QUEUE.format("user2"), json.dumps({"v": 1, "source": "rm.users.user2", "timestamp": 1, "payload": "mine"}))
    client = await daemon.client("user1")
    publish(redis, "rm.users.user1", "hi")
    assert payloads(await client.receive(1)) == ["hi"]
    await daemon.idle()
    assert redis.llen(QUEUE.format("user2")) == 1
    client.close()
