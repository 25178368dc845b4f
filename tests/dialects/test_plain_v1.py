"""
The plain dialect's version-1 session (a JSON hello, messages acknowledged by
the client's code): real daemon, real valkey-server, Autobahn clients.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from redmessenger.model.errors import CloseCode

from ..conftest import publish, wait_until

QUEUE = "rm:users:{}:messages"


def hello(uid: str = "user1", key: str | None = None, **more: object) -> str:
    return json.dumps({"type": "hello", "v": 1, "uid": uid, **({"key": key} if key is not None else {}), **more})


def ack(message_id: str) -> str:
    return json.dumps({"type": "ack", "id": message_id})


async def receive(client, count: int) -> list[dict]:
    """The next ``count`` messages, past the server's sync requests."""
    got: list[dict] = []
    while len(got) < count:
        frame = await client.next()
        if frame.get("type") != "sync":
            got.append(frame)
    return got


async def v1_client(daemon, uid: str = "user1", key: str | None = None):
    client = await daemon.client()
    client.send(hello(uid, key))
    welcome = await client.next()
    assert welcome == {"type": "welcome", "v": 1, "uid": uid}
    return client


@pytest_twisted.ensureDeferred
async def test_the_queue_comes_after_the_welcome_and_leaves_redis_once_acknowledged(daemon_factory, redis):
    daemon = await daemon_factory(handover_batch=3)
    for i in range(5):
        publish(redis, "rm.users.user1", f"q{i}")
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 5)
    client = await v1_client(daemon)
    batch = await receive(client, 3)
    assert [m["type"] for m in batch] == ["message"] * 3
    assert [m["payload"] for m in batch] == ["q0", "q1", "q2"]
    assert {"id", "source", "timestamp", "bubble", "payload", "type"} == set(batch[0])
    assert daemon.service.hub.handovers.running == 1, "the handover waits for the client's ack"
    assert redis.llen(QUEUE.format("user1")) == 5, "nothing leaves Redis before the client's code acknowledged it"
    client.send(ack(batch[-1]["id"]))  # cumulative: the whole batch
    rest = await receive(client, 2)
    assert [m["payload"] for m in rest] == ["q3", "q4"]
    client.send(ack(rest[-1]["id"]))
    await daemon.until(lambda: not redis.exists(QUEUE.format("user1")), what="the queue trimmed")
    client.close()


@pytest_twisted.ensureDeferred
async def test_what_the_client_code_did_not_acknowledge_comes_again_though_its_socket_answered_pings(daemon, redis):
    """A frozen page's browser answers WebSocket pings: a version-1 session confirms by acks only."""
    client = await v1_client(daemon)
    await daemon.idle()
    for i in range(5):
        publish(redis, "rm.users.user1", f"m{i}")
    got = await receive(client, 5)
    client.send(ack(got[2]["id"]))  # m0-m2 handled; m3, m4 not
    (attachment,) = daemon.service.presence.get("user1").attachments
    await daemon.until(lambda: len(attachment.unconfirmed) == 2, what="m0-m2 confirmed by the ack")
    delay = daemon.service.hub.confirmations.confirm_delay
    await wait_until(lambda: attachment.confirming, delay + 5, "the core asking for a confirmation")
    assert len(attachment.unconfirmed) == 2, "pongs do not confirm"
    client.drop()
    await daemon.until(lambda: daemon.service.presence.get("user1") is None)
    await daemon.idle()
    queued = [json.loads(e) for e in redis.lrange(QUEUE.format("user1"), 0, -1)]
    assert [e["payload"] for e in queued] == ["m3", "m4"]
    assert [e["id"] for e in queued] == [got[3]["id"], got[4]["id"]], "with their ids, for the client to drop copies"


@pytest_twisted.ensureDeferred
async def test_an_ack_naming_an_unknown_id_changes_nothing(daemon, redis):
    client = await v1_client(daemon)
    await daemon.idle()
    publish(redis, "rm.users.user1", "m0")
    (m0,) = await receive(client, 1)
    client.send(ack("not-one-of-mine"))
    client.send(ack(m0["id"]))
    client.send(ack(m0["id"]))  # twice: harmless
    (attachment,) = daemon.service.presence.get("user1").attachments
    await daemon.until(lambda: not attachment.unconfirmed, what="m0 confirmed")
    publish(redis, "rm.users.user1", "m1")
    assert (await client.next())["payload"] == "m1"
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_legacy_client_beside_a_version_1_client_of_the_same_user(daemon, redis):
    v1 = await v1_client(daemon)
    legacy = await daemon.client("user1")
    publish(redis, "rm.users.user1", "both")
    (a,) = await receive(v1, 1)
    (b,) = await receive(legacy, 1)
    assert a["type"] == "message" and "type" not in b
    assert a["id"] == b["id"] and a["bubble"] is True and b["bubble"] is False
    v1.close()
    legacy.close()


@pytest_twisted.ensureDeferred
async def test_secure_mode_checks_the_hello_key(daemon_factory, redis):
    daemon = await daemon_factory(secure_mode=True)
    redis.set("rm:users:user1:key", "s3cret")
    wrong = await daemon.client()
    wrong.send(hello("user1", "nope"))
    assert (await wrong.close_code())[0] == CloseCode.BAD_KEY
    right = await v1_client(daemon, "user1", "s3cret")
    right.close()


@pytest.mark.parametrize(
    "first, code",
    [
        ("{not json", CloseCode.BAD_FRAME),
        ('{"type": "hello", "v": 2, "uid": "user1"}', CloseCode.BAD_FRAME),
        ('{"type": "hello", "v": 1, "key": "k"}', CloseCode.BAD_FRAME),  # a key needs a uid
        ('{"type": "hello", "v": 1, "uid": 7}', CloseCode.BAD_FRAME),
        ('{"type": "hello", "v": 1, "uid": "user1", "key": 7}', CloseCode.BAD_FRAME),
        ('{"type": "hello", "v": 1, "uid": "bad uid"}', CloseCode.INVALID_IDENTIFIER),
        ('{"type": "hello", "v": 1, "uid": "a:b"}', CloseCode.INVALID_IDENTIFIER),
        ('{"type": "ack", "id": "x"}', CloseCode.BAD_FRAME),
        ('{"type": "nope"}', CloseCode.BAD_FRAME),
        ("{}", CloseCode.BAD_FRAME),
        ('{"type": ["hello"]}', CloseCode.BAD_FRAME),
        # JSON escapes of half a surrogate pair: no UTF-8 encodes them (a pair, "\\ud83d\\ude00", is fine)
        ('{"type": "hello", "v": 1, "uid": "user1", "key": "\\ud800"}', CloseCode.BAD_FRAME),
        ('{"type": "hello", "v": 1, "pkey": "\\udc00"}', CloseCode.BAD_FRAME),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_first_frame_is_refused_with_a_code(daemon, redis, first, code):
    client = await daemon.client()
    client.send(first)
    assert (await client.close_code())[0] == code
    assert daemon.service.presence.get("user1") is None


@pytest.mark.parametrize(
    "later, code",
    [
        (hello(), CloseCode.ALREADY_IDENTIFIED),
        ('{"type": "hello", "v": 2, "uid": "user1"}', CloseCode.BAD_FRAME),  # read as a frame before as a second hello
        ('{"type": "ack"}', CloseCode.BAD_FRAME),
        ('{"type": "ack", "id": ""}', CloseCode.BAD_FRAME),
        ('{"type": "ack", "id": "' + "x" * 65 + '"}', CloseCode.BAD_FRAME),
        ("user1", CloseCode.BAD_FRAME),
        ('["ack"]', CloseCode.BAD_FRAME),
        ('{"type": "publish", "ref": 2, "channel": "room", "message": "\\ud800"}', CloseCode.BAD_FRAME),
        ('{"type": "subscribe", "ref": "\\uDBFF", "channel": "room"}', CloseCode.BAD_FRAME),
        ('{"type": "subscribe", "ref": 1, "channel": "room", "client_auth": "a\\udfff"}', CloseCode.BAD_FRAME),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_later_frame_is_refused_and_the_user_keeps_the_message(daemon, redis, later, code):
    client = await v1_client(daemon)
    await daemon.idle()
    publish(redis, "rm.users.user1", "unacknowledged")
    await receive(client, 1)
    client.send(later)
    assert (await client.close_code())[0] == code
    await daemon.until(lambda: daemon.service.presence.get("user1") is None)
    await daemon.idle()
    assert [json.loads(e)["payload"] for e in redis.lrange(QUEUE.format("user1"), 0, -1)] == ["unacknowledged"]


@pytest_twisted.ensureDeferred
async def test_binary_is_refused_on_a_version_1_session(daemon, redis):
    client = await v1_client(daemon)
    client.send_binary(b'{"type":"ack","id":"x"}')
    assert (await client.close_code())[0] == CloseCode.UNSUPPORTED_DATA


@pytest.mark.parametrize("frame", [b'{"type":"ack","id":"\xff"}', b'{"type": "ack", "id": "\xff"}'], ids=["fast", "json"])
@pytest_twisted.ensureDeferred
async def test_a_text_frame_that_is_not_utf8_is_closed_with_1007_whichever_path_reads_it(daemon, redis, frame):
    """A compact ack is read by the fast path, anything else by Autobahn: the client is told the same."""
    client = await v1_client(daemon)
    client.protocol.sendMessage(frame, isBinary=False)
    assert (await client.close_code())[0] == 1007


@pytest_twisted.ensureDeferred
async def test_two_identical_queue_entries_sharing_an_id_are_acked_without_harm(daemon, redis):
    """Two byte-identical entries without an id share the derived one; acking it used to drop the socket (KeyError)."""
    node_era = json.dumps({"source": "rm.users.user1", "timestamp": 1, "bubble": True, "payload": "twice"})
    redis.rpush(QUEUE.format("user1"), node_era, node_era)
    client = await v1_client(daemon)
    first, second = await receive(client, 2)
    assert first["id"] == second["id"] and first["payload"] == second["payload"] == "twice"
    client.send(ack(second["id"]))
    await daemon.until(lambda: not redis.exists(QUEUE.format("user1")), what="the queue trimmed")
    publish(redis, "rm.users.user1", "after")
    assert (await receive(client, 1))[0]["payload"] == "after", "the socket is still there"
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_client_that_acks_only_when_asked_gets_the_whole_queue_and_confirms_live_messages(daemon_factory, redis):
    """The server asks (a sync) when it needs a confirmation: a client may ack only then, with the last id it handled."""
    daemon = await daemon_factory(handover_batch=2)
    for i in range(5):
        publish(redis, "rm.users.user1", f"q{i}")
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 5)
    client = await v1_client(daemon)
    got: list[str] = []
    last = None
    syncs_after: list[int] = []  # how many messages had come when each sync came

    async def serve_until(done) -> None:
        nonlocal last
        while not done():
            frame = await client.next()
            if frame["type"] == "sync":
                syncs_after.append(len(got))
                client.send(ack(last))
            else:
                got.append(frame["payload"])
                last = frame["id"]

    await serve_until(lambda: len(got) == 5 and syncs_after[-1:] == [5])
    assert got == ["q0", "q1", "q2", "q3", "q4"]
    assert syncs_after == [2, 4, 5], "one request per batch of the queue, after it"
    await daemon.until(lambda: not redis.exists(QUEUE.format("user1")), what="the queue trimmed as acked")
    publish(redis, "rm.users.user1", "live")
    await serve_until(lambda: syncs_after[-1] == 6)  # the live message, then the request that covers it
    (attachment,) = daemon.service.presence.get("user1").attachments
    await daemon.until(lambda: not attachment.unconfirmed, what="the live message confirmed")
    assert got[-1] == "live"
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_whole_frame_between_the_fragments_of_a_message_is_a_protocol_error_even_an_ack(daemon, redis):
    """The fast path read an ack-shaped frame between two fragments as an ack; Autobahn closes such a frame with 1002."""
    client = await v1_client(daemon)
    server = daemon.service.presence.get("user1").attachments[0].sink
    client.protocol.sendFrame(opcode=1, payload=b'{"type":"ack",', fin=False)
    await daemon.until(lambda: server.inside_message, what="the first fragment read")
    client.protocol.sendFrame(opcode=1, payload=b'{"type":"ack","id":"x"}')  # compact: the fast path's
    assert (await client.close_code())[0] == 1002
