"""
Channels that clients ask for (SPEC §7), end to end: a real daemon, a real
valkey-server, Autobahn clients speaking the plain dialect's version 1, and an
application answering at the Redis level as docs/protocol.md tells it to.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from redmessenger.model.errors import CloseCode
from redmessenger.ops.status import status_text

from .appworker import AppWorker, permit
from .channelclient import error, hello, session
from .conftest import publish
from .httpclient import scrape


@pytest_twisted.ensureDeferred
async def test_a_permitted_subscriber_receives_the_channel_and_the_app_saw_every_field(daemon_factory, redis, app):
    worker = app(lambda request: {"permit": "read_write"})
    daemon = await daemon_factory()
    alice = await session(daemon, "alice")
    reply = await alice.subscribe("room", client_auth="session-token-1")
    assert reply == {"type": "reply", "ref": 1, "ok": True, "mode": "read_write"}
    [request] = worker.requests
    assert set(request) == {"id", "channel", "client_auth", "client_id", "uid", "reply_to", "deadline"}
    assert (request["channel"], request["client_auth"], request["uid"]) == ("room", "session-token-1", "alice")
    assert request["client_id"] and request["reply_to"].startswith("rm.answers.")
    publish(redis, "rm.channels.room", "hello room")
    [message] = await alice.receive(1)
    assert (message["source"], message["payload"], message["bubble"]) == ("rm.channels.room", "hello room", False)
    assert "sender" not in message, "the application's messages name no sender"
    assert daemon.service.hub.counters.subscriptions_permitted == 1


@pytest_twisted.ensureDeferred
async def test_each_mode_does_what_it_says_and_nothing_more(daemon_factory, redis, app):
    modes = {"r": "read_only", "w": "write_only", "rw": "read_write"}
    app(lambda request: {"permit": modes[request["client_auth"]]})
    daemon = await daemon_factory()
    reader, writer, both = [await session(daemon) for _ in range(3)]
    assert (await reader.subscribe("c", client_auth="r"))["mode"] == "read_only"
    assert (await writer.subscribe("c", client_auth="w"))["mode"] == "write_only"
    assert (await both.subscribe("c", client_auth="rw"))["mode"] == "read_write"

    # read_only: a publish is refused and goes nowhere
    assert error(await reader.request("publish", channel="c", message="from the reader")) == "read_only"
    # write_only: may publish; read_write and read_only subscribers get it, the sender does not
    assert (await writer.request("publish", channel="c", message={"n": 1}))["ok"] is True
    publish(redis, "rm.channels.c", "from the app")
    for client in (reader, both):
        got = await client.receive(2)
        assert [m["payload"] for m in got] == ['{"n":1}', "from the app"], "the refused publish reached nobody"
        assert got[0]["sender"] == {"client_id": got[0]["sender"]["client_id"], "uid": None}
        assert "sender" not in got[1]
    # the write_only socket receives nothing from the channel: the next thing it sees is its own reply
    assert (await writer.request("unsubscribe", channel="c"))["ok"] is True
    assert writer.messages == []


@pytest_twisted.ensureDeferred
async def test_denied_by_the_app_by_silence_and_when_nobody_listens(daemon_factory, redis, app):
    daemon = await daemon_factory(subscription_timeout=0.3)
    nobody = await session(daemon, "u1")
    reply = await nobody.subscribe("room")
    assert error(reply) == "denied" and "no application" in reply["error"]["reason"]

    app(lambda request: None if request["channel"] == "silent" else {"deny": "members only"})
    client = await session(daemon, "u2")
    reply = await client.subscribe("room")
    assert error(reply) == "denied" and reply["error"]["reason"] == "members only"
    reply = await client.subscribe("silent")
    assert error(reply) == "denied" and "did not answer within 0.3 seconds" in reply["error"]["reason"]
    counters = daemon.service.hub.counters
    assert (counters.subscriptions_denied, counters.subscriptions_timed_out, counters.subscriptions_permitted) == (3, 1, 0)
    metrics = await scrape(daemon.port)
    outcomes = {o: metrics[f'redmessenger_subscription_requests_total{{outcome="{o}"}}'] for o in ("permitted", "denied", "timed_out")}
    assert outcomes == {"permitted": 0, "denied": 2, "timed_out": 1}
    assert metrics["redmessenger_subscription_request_seconds_count"] == 1, "the app's one answer (the others: none)"
    assert "Channels:   0 subscriptions, 0 requests waiting; since start 0 permitted, 3 denied (1 timed out)" in (
        await status_text(daemon.service.view)
    )
    publish(redis, "rm.channels.room", "nobody may read this")
    for uid, denied in (("u1", nobody), ("u2", client)):
        publish(redis, f"rm.users.{uid}", "fence")  # after the channel's message, to the same socket: order shows none came
        assert [m["payload"] for m in await denied.receive(1)] == ["fence"]
    assert error(await client.request("publish", channel="room", message=1)) == "not_subscribed"


@pytest_twisted.ensureDeferred
async def test_two_app_workers_answer_each_request_once(daemon_factory, app):
    first = app(name="worker-1")
    second = app(name="worker-2", create=False)
    daemon = await daemon_factory()
    clients = [await session(daemon) for _ in range(4)]
    for i in range(20):
        assert (await clients[i % 4].subscribe(f"ch{i}"))["ok"] is True
    ids = [r["id"] for r in first.requests + second.requests]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert daemon.service.application.stray_answers == 0, "no request was answered twice"


@pytest_twisted.ensureDeferred
async def test_a_client_publish_names_its_real_sender_and_is_not_echoed(daemon_factory, app):
    app()
    daemon = await daemon_factory()
    alice, bob, anon = await session(daemon, "alice"), await session(daemon, "bob"), await session(daemon)
    for client in (alice, bob, anon):
        assert (await client.subscribe("chat"))["ok"] is True
    forged = {"text": "hi", "sender": {"client_id": "admin", "uid": "root"}, "source": "rm.users.bob"}
    assert (await alice.request("publish", channel="chat", message=forged))["ok"] is True
    for client in (bob, anon):
        [message] = await client.receive(1)
        assert json.loads(message["payload"]) == forged, "the message is the client's JSON value, unchanged"
        assert message["source"] == "rm.channels.chat"
        assert message["sender"]["uid"] == "alice" and message["sender"]["client_id"] != "admin"
    assert (await anon.request("publish", channel="chat", message="from nobody"))["ok"] is True
    for client in (alice, bob):
        [message] = await client.receive(1)
        assert message["payload"] == '"from nobody"' and message["sender"]["uid"] is None
    assert alice.messages == [], "alice did not get her own message back"
    # anon's next message is a later one of alice's, not its own: it was not echoed either
    assert (await alice.request("publish", channel="chat", message="fence"))["ok"] is True
    assert [m["payload"] for m in await anon.receive(1)] == ['"fence"']


@pytest_twisted.ensureDeferred
async def test_a_member_that_subscribed_gets_each_message_once_and_offline_members_get_it_queued(daemon_factory, redis, app):
    app()
    redis.sadd("rm:channels:team:subscribers", "alice", "carol")  # carol is offline
    daemon = await daemon_factory()
    alice, anon = await session(daemon, "alice"), await session(daemon)
    for client in (alice, anon):
        assert (await client.subscribe("team"))["ok"] is True
    publish(redis, "rm.channels.team", "one")
    assert (await anon.request("publish", channel="team", message="two"))["ok"] is True
    got = await alice.receive(2)
    assert [m["payload"] for m in got] == ["one", '"two"']
    assert got[0]["bubble"] is True, "as a member, alice gets the member's envelope (her only socket: the bubble)"
    publish(redis, "rm.users.alice", "fence")
    [fence] = await alice.receive(1)
    assert fence["payload"] == "fence", "and nothing twice before it"
    await daemon.idle()
    queued = [json.loads(e) for e in redis.lrange("rm:users:carol:messages", 0, -1)]
    assert [(e["payload"], e.get("sender", {}).get("uid", "-")) for e in queued] == [("one", "-"), ('"two"', None)]


@pytest_twisted.ensureDeferred
async def test_unsubscribe_stops_that_channel_for_that_socket_only(daemon_factory, redis, app):
    app()
    daemon = await daemon_factory()
    first, second = await session(daemon, "u1"), await session(daemon, "u1")
    for client in (first, second):
        assert (await client.subscribe("news"))["ok"] is True
    assert (await first.request("unsubscribe", channel="news"))["ok"] is True
    assert error(await first.request("unsubscribe", channel="news")) == "not_subscribed"
    publish(redis, "rm.channels.news", "extra")
    publish(redis, "rm.users.u1", "fence")
    assert [m["payload"] for m in await second.receive(2)] == ["extra", "fence"]
    assert [m["payload"] for m in await first.receive(1)] == ["fence"]


@pytest_twisted.ensureDeferred
async def test_subscribing_and_unsubscribing_in_a_loop_asks_the_application_only_so_often(daemon_factory, app):
    """
    A cancelled request stays in the application's stream until its deadline: a client churning subscribe and
    unsubscribe gets rate_limited past MAX_ASKING of them, and the application is asked no more than that.
    """
    from redmessenger.core.channels import MAX_ASKING

    asked: list[str] = []
    app(lambda request: asked.append(request["channel"]))  # never answers
    daemon = await daemon_factory(subscription_timeout=30)
    churner = await session(daemon, "u1")
    rounds = 3 * MAX_ASKING
    for _ in range(rounds):
        churner.ref += 2
        churner.client.send(json.dumps({"type": "subscribe", "ref": churner.ref - 1, "channel": "churn"}))
        churner.client.send(json.dumps({"type": "unsubscribe", "ref": churner.ref, "channel": "churn"}))
    await churner.pump(lambda: len(churner.replies) == 2 * rounds)
    outcomes = [churner.replies[ref]["ok"] or error(churner.replies[ref]) for ref in range(1, 2 * rounds + 1, 2)]
    assert outcomes == ["cancelled"] * MAX_ASKING + ["rate_limited"] * (rounds - MAX_ASKING)
    other = await session(daemon, "u2")
    other.client.send(json.dumps({"type": "subscribe", "ref": 1, "channel": "fence"}))
    await daemon.until(lambda: "fence" in asked, 10, "another client's request reaching the application")
    assert asked == ["churn"] * MAX_ASKING + ["fence"]


@pytest_twisted.ensureDeferred
async def test_the_public_key_is_checked_when_configured(daemon_factory):
    daemon = await daemon_factory(public_key="pk-123")
    for given in (None, "wrong", 5):
        client = await daemon.client()
        client.send(hello("alice", **({"pkey": given} if given is not None else {})))
        code, reason = await client.close_code()
        expected = CloseCode.BAD_FRAME if given == 5 else CloseCode.BAD_KEY
        assert code == expected, (given, code, reason)
    ok = await session(daemon, "alice", pkey="pk-123")
    assert ok.client.protocol.state == ok.client.protocol.STATE_OPEN


@pytest_twisted.ensureDeferred
async def test_bad_requests_get_a_coded_reply_and_harm_nothing(daemon_factory, redis, app):
    worker = app()
    daemon = await daemon_factory(client_publish_max_bytes=100, client_publish_rate=3, max_frame_bytes=16384)
    client, other = await session(daemon), await session(daemon)
    assert (await other.subscribe("ok"))["ok"] is True
    for channel in (None, "", "a b", "x" * 129, 7, ["room"], "ü"):
        assert error(await client.subscribe(channel)) == "invalid_channel", channel
    assert error(await client.subscribe("ok", client_auth=5)) == "invalid_request"
    assert error(await client.subscribe("ok", client_auth="x" * 5000)) == "invalid_request"
    assert len(worker.requests) == 1, "no bad request reached the application"
    assert (await client.subscribe("ok"))["ok"] is True
    assert error(await client.subscribe("ok")) == "already_subscribed"
    assert error(await client.request("publish", channel="ok")) == "invalid_request"
    assert error(await client.request("publish", channel="ok", message="x" * 200)) == "too_large"
    refs = [f"p{i}" for i in range(5)]
    for i, ref in enumerate(refs):  # in one go: the daemon reads them together, the bucket has no time to refill
        client.client.send(json.dumps({"type": "publish", "ref": ref, "channel": "ok", "message": i}))
    await client.pump(lambda: all(ref in client.replies for ref in refs))
    results = [client.replies.pop(ref) for ref in refs]
    assert [r["ok"] for r in results] == [True, True, True, False, False]
    assert {error(r) for r in results[3:]} == {"rate_limited"}
    got = await other.receive(3)
    assert [m["payload"] for m in got] == ["0", "1", "2"], "only the accepted publishes went out, in order"
    # a request without a usable ref cannot be answered: the socket is closed (4422); the other is unharmed
    client.client.send(json.dumps({"type": "subscribe", "channel": "ok"}))
    code, _ = await client.client.close_code()
    assert code == CloseCode.BAD_FRAME
    publish(redis, "rm.channels.ok", "still here")
    assert [m["payload"] for m in await other.receive(1)] == ["still here"]
    assert daemon.service.hub.channels.readers("ok") is not None and len(daemon.service.hub.channels.readers("ok")) == 1


@pytest_twisted.ensureDeferred
async def test_a_connection_holds_at_most_max_subscriptions_channels(daemon_factory, redis, app):
    """An application that permits anything (the demo's) let one client hold any number of channels, each in memory."""
    worker = app()
    daemon = await daemon_factory(max_subscriptions=3)
    client, other = await session(daemon), await session(daemon)
    for name in ("c1", "c2", "c3"):
        assert (await client.subscribe(name))["ok"] is True
    assert error(await client.subscribe("c4")) == "too_many_subscriptions"
    assert len(worker.requests) == 3, "the fourth never reached the application"
    assert (await other.subscribe("c4"))["ok"] is True, "per connection: another one is not held to it"
    assert (await client.request("unsubscribe", channel="c2"))["ok"] is True
    assert (await client.subscribe("c4"))["ok"] is True, "room again after an unsubscribe"
    publish(redis, "rm.channels.c4", "to both")
    assert [m["payload"] for m in await client.receive(1)] == ["to both"]
    assert [m["payload"] for m in await other.receive(1)] == ["to both"]
    assert daemon.service.hub.channels.subscriptions == 4


@pytest_twisted.ensureDeferred
async def test_a_subscriber_that_never_acknowledges_is_given_up_and_its_memory_returned(daemon_factory, redis, app):
    app()
    daemon = await daemon_factory(max_pending_bytes=65536)
    silent, reader = await session(daemon), await session(daemon)
    for client in (silent, reader):
        assert (await client.subscribe("firehose"))["ok"] is True
    got = []
    for burst in range(10):  # 100 x ~1.2 KB held for the silent one, which never acks; the reader acks as it goes
        for i in range(burst * 10, burst * 10 + 10):
            publish(redis, "rm.channels.firehose", f"{i:04d}" + "x" * 1000)
        got += await reader.receive(10)
    code, reason = await silent.client.close_code()
    assert code == CloseCode.TOO_SLOW, (code, reason)
    assert [m["payload"][:4] for m in got] == [f"{i:04d}" for i in range(100)], "the reader lost nothing"
    hub = daemon.service.hub
    await daemon.until(lambda: hub.budget.used == 0, what="every byte held for the sockets given back")
    assert len(hub.channels.readers("firehose")) == 1


# -- the Socket.IO dialect: the same requests as events with acknowledgements, real socket.io-client ----------


def sio_channels_client(daemon: Any, generation: str = "v4", **hello: Any) -> Any:
    from .sioclients import JS_DIR, node_binary, spawn

    config = {"url": f"http://127.0.0.1:{daemon.port}{daemon.service.config.rm_route}", "generation": generation,
              "hello": {"v": 1, **hello}}  # fmt: skip
    return spawn(f"channels-{generation}", [node_binary(), str(JS_DIR / "channels_client.js"), json.dumps(config)], cwd=JS_DIR)


async def sio_request(client: Any, ref: int, name: str, **data: Any) -> dict:
    client.command(cmd="request", ref=ref, name=name, data=data)
    await client.until(lambda: any(e.get("ref") == ref for e in client.of("reply")), f"the reply to {ref}")
    return next(e["data"] for e in client.of("reply") if e.get("ref") == ref)


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest_twisted.ensureDeferred
async def test_socketio_clients_subscribe_publish_and_get_coded_refusals(daemon_factory, redis, app, generation):
    app(lambda request: {"permit": "read_only"} if request["uid"] == "bob" else {"permit": "read_write"})
    daemon = await daemon_factory(public_key="pk")
    alice = sio_channels_client(daemon, generation, uid="alice", pkey="pk")
    bob = sio_channels_client(daemon, generation, uid="bob", pkey="pk")
    plain = await session(daemon, pkey="pk")  # a plain-dialect subscriber on the same channel
    try:
        for client, uid in ((alice, "alice"), (bob, "bob")):
            [welcome] = await client.expect("welcome")
            assert welcome["data"] == {"uid": uid}
        assert await sio_request(alice, 1, "subscribe", channel="room") == {"ok": True, "mode": "read_write"}
        assert await sio_request(bob, 1, "subscribe", channel="room") == {"ok": True, "mode": "read_only"}
        assert (await plain.subscribe("room"))["mode"] == "read_write"
        refused = await sio_request(bob, 2, "publish", channel="room", message="from bob")
        assert refused["ok"] is False and refused["error"]["code"] == "read_only"
        assert (await sio_request(alice, 2, "subscribe", channel="a b"))["error"]["code"] == "invalid_channel"
        assert await sio_request(alice, 3, "publish", channel="room", message={"text": "hi"}) == {"ok": True}
        publish(redis, "rm.channels.room", "from the app")
        [first, second] = await plain.receive(2)
        assert (first["payload"], first["sender"]["uid"], second["payload"]) == ('{"text":"hi"}', "alice", "from the app")
        await bob.expect("message", 2)
        assert [m["payload"] for m in bob.messages()] == ['{"text":"hi"}', "from the app"], "the refused one went nowhere"
        await alice.expect("message", 1)
        assert [m["payload"] for m in alice.messages()] == ["from the app"], "not her own message back"
        assert await sio_request(alice, 4, "unsubscribe", channel="room") == {"ok": True}
    finally:
        for client in (alice, bob):
            await client.stop()


@pytest_twisted.ensureDeferred
async def test_a_socketio_hello_with_a_wrong_public_key_is_refused_with_4401(daemon_factory):
    daemon = await daemon_factory(public_key="pk")
    client = sio_channels_client(daemon, pkey="wrong")
    try:
        [error] = await client.expect("error")
        assert error["data"]["code"] == 4401 and error["data"]["name"] == "BAD_KEY"
        await client.expect("disconnect")
        assert client.of("welcome") == []
    finally:
        await client.stop()


# -- grants (SPEC §7.5) ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_permitted_subscription_comes_with_a_grant_that_resubscribes_without_asking(daemon_factory, app):
    from redmessenger.model.channels import Mode
    from redmessenger.model.grants import subscription_grant

    worker = app(lambda request: {"permit": "read_only"})
    daemon = await daemon_factory(secret_key="s3cret", grant_ttl=600)
    first = await session(daemon, "alice")
    reply = await first.subscribe("room")
    assert reply["mode"] == "read_only" and reply["grant"]
    grant = reply["grant"]
    # a reconnect (a new connection of the same user) with the grant: granted here, the application not asked
    again = await session(daemon, "alice")
    assert await again.subscribe("room", grant=grant) == {"type": "reply", "ref": 1, "ok": True, "mode": "read_only"}
    assert len(worker.requests) == 1 and daemon.service.hub.counters.subscriptions_by_grant == 1
    # refused: another user, another channel, tampered, expired, signed with another key
    mallory = await session(daemon, "mallory")
    now = int(daemon.service.reactor.seconds())
    refusals = {
        "another user": await mallory.subscribe("room", grant=grant),
        "another channel": await again.subscribe("lobby", grant=grant),
        "tampered": await mallory.subscribe("room", grant=grant[:-2] + ("AA" if grant[-2:] != "AA" else "BB")),
        "expired": await mallory.subscribe("room", grant=subscription_grant("s3cret", "room", Mode.READ_WRITE, now - 1)),
        "other key": await mallory.subscribe("room", grant=subscription_grant("other", "room", Mode.READ_WRITE, now + 60)),
        "not a string": await mallory.subscribe("room", grant=["a", "list"]),
    }
    assert {why: error(reply) for why, reply in refusals.items()} == dict.fromkeys(refusals, "bad_grant")
    assert len(worker.requests) == 1, "no refused grant reached the application either"
    assert daemon.service.hub.channels.readers("room") is not None and len(daemon.service.hub.channels.readers("room")) == 2


@pytest_twisted.ensureDeferred
async def test_an_identity_grant_identifies_without_the_stored_key(daemon_factory, redis):
    from redmessenger.model.grants import identity_grant

    daemon = await daemon_factory(secret_key="s3cret", secure_mode=True)
    now = int(daemon.service.reactor.seconds())
    client = await session(daemon, "alice", grant=identity_grant("s3cret", "alice", now + 60))
    publish(redis, "rm.users.alice", "for alice")
    assert [m["payload"] for m in await client.receive(1)] == ["for alice"]
    for grant in (identity_grant("s3cret", "bob", now + 60), identity_grant("s3cret", "alice", now - 1), "junk"):
        refused = await daemon.client()
        refused.send(hello("alice", grant=grant))
        code, reason = await refused.close_code()
        assert code == CloseCode.BAD_KEY, (grant, code, reason)
    assert redis.exists("rm:users:alice:key") == 0, "no key was ever stored"


@pytest_twisted.ensureDeferred
async def test_redis_away_answers_unavailable_at_once_and_nothing_goes_out_later(daemon_factory, private_redis):
    redis = private_redis.client()
    worker = AppWorker(private_redis.port, permit()).start()
    try:
        daemon = await daemon_factory(redis_port=private_redis.port, redis_timeout=0.5)
        writer, reader = await session(daemon), await session(daemon)
        for client in (writer, reader):
            assert (await client.subscribe("room"))["ok"] is True
    finally:
        worker.stop()
    private_redis.stop()
    await daemon.until(lambda: not daemon.service.link.state.commands_connected, what="the command connection to notice")
    assert error(await writer.request("publish", channel="room", message="while away")) == "unavailable"
    assert error(await writer.subscribe("other")) == "unavailable"
    assert daemon.service.hub.counters.subscriptions_denied == 0, "an outage is not a denial"
    private_redis.start()
    await daemon.until(lambda: daemon.service.link.ready, 10, "the link back")
    assert (await writer.request("publish", channel="room", message="back"))["ok"] is True
    [message] = await reader.receive(1)
    assert message["payload"] == '"back"', "the refused publish never went out, before or after"
    redis.close()


@pytest_twisted.ensureDeferred
async def test_keys_grants_client_auth_and_payloads_never_reach_the_logs(daemon_factory, app):
    from twisted.logger import formatEvent, globalLogPublisher

    from redmessenger.logs import set_level
    from redmessenger.model.grants import identity_grant

    secrets_seen = ["PublicKey-7f3", "SecretKey-9q2", "ClientAuth-5x1", "Payload-8k4"]
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event) + repr(event))

    app(lambda request: {"deny": "no"} if request["channel"] == "shut" else {"permit": "read_write"})
    globalLogPublisher.addObserver(observe)
    try:
        set_level("debug")
        daemon = await daemon_factory(public_key="PublicKey-7f3", secret_key="SecretKey-9q2", max_frame_bytes=16384)
        now = int(daemon.service.reactor.seconds())
        grant = identity_grant("SecretKey-9q2", "alice", now + 60)
        secrets_seen.append(grant)
        client = await session(daemon, "alice", pkey="PublicKey-7f3", grant=grant)
        other = await session(daemon, "alice", pkey="PublicKey-7f3", grant=grant)
        reply = await client.subscribe("room", client_auth="ClientAuth-5x1")
        secrets_seen.append(reply["grant"])
        assert (await other.subscribe("room", grant=reply["grant"]))["ok"] is True
        assert error(await client.subscribe("shut", client_auth="ClientAuth-5x1")) == "denied"
        assert (await client.request("publish", channel="room", message="Payload-8k4"))["ok"] is True
        await other.receive(1)
        wrong = await daemon.client()
        wrong.send(hello("bob", pkey="PublicKey-7f3", grant=grant))
        await wrong.close_code()
    finally:
        set_level("info")
        globalLogPublisher.removeObserver(observe)
    assert any("Subscribed" in line and "room" in line for line in lines), "the log does say what happened"
    leaked = [(secret[:12], line[:200]) for line in lines for secret in secrets_seen if secret in line]
    assert leaked == []


@pytest_twisted.ensureDeferred
async def test_unsubscribing_while_messages_are_in_flight_ends_them_cleanly(daemon_factory, redis, app):
    app()
    daemon = await daemon_factory()
    client = await session(daemon, "u9")
    assert (await client.subscribe("busy"))["ok"] is True
    pipe = redis.pipeline(transaction=False)
    for i in range(300):
        pipe.publish("rm.channels.busy", f"m{i}")
    pipe.execute()
    reply = await client.request("unsubscribe", channel="busy")  # sent while the burst is arriving
    assert reply["ok"] is True
    before = [m["payload"] for m in client.messages]
    publish(redis, "rm.channels.busy", "after the unsubscribe")
    publish(redis, "rm.users.u9", "fence")
    rest = await client.receive(len(before) + 1)
    payloads = [m["payload"] for m in rest]
    assert payloads[-1] == "fence" and "after the unsubscribe" not in payloads
    got = payloads[:-1]
    assert got == [f"m{i}" for i in range(len(got))], "a prefix of the burst, in order, none twice"
    assert daemon.service.hub.channels.readers("busy") is None
