"""
The durable intake when something else went wrong first: a reader killed while
another daemon reads on, keys of the wrong type at rm:intake and
rm:intake:invalid.  Real valkey-server, in-process daemons.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest_twisted
import valkey
from twisted.logger import LogLevel

from ..conftest import Daemon
from ..fuzzing import events_logged
from ..wsclient import WebSocketClient

STREAM, GROUP, INVALID, QUEUE = "rm:intake", "redmessenger", "rm:intake:invalid", "rm:users:{}:messages"

StartDaemon = Callable[..., Awaitable[Daemon]]


def xadd(redis: valkey.Valkey, channel: str, payload: str) -> str:
    return str(redis.xadd(STREAM, {"channel": channel, "payload": payload}).decode())


def queued_ids(redis: valkey.Valkey, uid: str) -> list[str]:
    return [json.loads(e)["id"] for e in redis.lrange(QUEUE.format(uid), 0, -1)]


def pending_entries(redis: valkey.Valkey) -> list[tuple[str, str]]:
    """(entry id, consumer) of every pending entry, in stream order."""
    return [
        (p["message_id"].decode(), p["consumer"].decode())
        for p in redis.xpending_range(STREAM, GROUP, "-", "+", 100)
    ]


async def next_message(client: WebSocketClient) -> Any:
    """The next message, past the syncs the server sends while some are unacknowledged."""
    while True:
        frame = await client.next()
        if frame.get("type") != "sync":
            return frame


def warnings(events: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_level") == LogLevel.warn and text in e.get("log_format", "")]


@pytest_twisted.ensureDeferred
async def test_entries_a_dead_reader_left_are_claimed_while_reading_once_idle_long_enough(
    daemon_factory: StartDaemon, redis: valkey.Valkey
) -> None:
    """
    Defect 4: entries left pending by another consumer were claimed only when the reader started or recovered.  A
    reader killed, the next one takes over within seconds: the dead one's entries, idle less than ``claim_idle``
    then, stayed pending until a daemon restarted.
    """
    # read by node-dead (then killed) just before node-y starts reading: too fresh to claim at its start
    ids = [xadd(redis, "rm.users.u4", f"m{i}") for i in range(3)]
    redis.xgroup_create(STREAM, GROUP, id="0")
    redis.xreadgroup(GROUP, "node-dead", {STREAM: ">"})
    daemon = await daemon_factory(node_id="node-y")
    intake = daemon.service.intake
    assert intake is not None
    own = xadd(redis, "rm.users.u5", "node-y's own")
    await daemon.until(lambda: queued_ids(redis, "u5") == [own], what="node-y past its start, reading")
    await daemon.until(lambda: pending_entries(redis) == [(i, "node-dead") for i in ids], what="node-y's own acknowledged")
    intake.claim_every = 0.05  # claim_idle / 2, 30 s, by default
    # time passes: the first two have been pending an hour (claim_idle is a minute), the third a few seconds
    redis.execute_command("XCLAIM", STREAM, GROUP, "node-dead", 0, ids[0], ids[1], "IDLE", 3_600_000)
    await daemon.until(lambda: len(queued_ids(redis, "u4")) == 2, what="the idle entries claimed and queued")
    assert queued_ids(redis, "u4") == ids[:2], "in stream order"
    await daemon.until(lambda: pending_entries(redis) == [(ids[2], "node-dead")], what="the claimed ones acknowledged")
    assert redis.xlen(STREAM) == 1, "the one not idle long enough stays, under its reader's name"
    assert queued_ids(redis, "u4") == ids[:2], "nothing queued twice"


@pytest_twisted.ensureDeferred
async def test_an_invalid_list_of_the_wrong_type_is_kept_aside_and_every_entry_acknowledged(
    daemon: Daemon, redis: valkey.Valkey
) -> None:
    """Defect 7: a string at rm:intake:invalid failed every acknowledgement with an invalid entry in it, for good."""
    intake = daemon.service.intake
    assert intake is not None
    with events_logged() as events:
        redis.set(INVALID, "another program's")
        with redis.pipeline(transaction=True) as pipe:  # one read: the bad entry and the good ones together
            pipe.xadd(STREAM, {"channel": "rm.nope.x", "payload": "bad"})
            for i in range(5):
                pipe.xadd(STREAM, {"channel": "rm.users.off9", "payload": f"good {i}"})
            bad, *good = [entry_id.decode() for entry_id in pipe.execute()]
        await daemon.until(lambda: redis.xlen(STREAM) == 0 and not pending_entries(redis), what="all acknowledged")
    assert queued_ids(redis, "off9") == good
    assert [json.loads(e)["id"] for e in redis.lrange(INVALID, 0, -1)] == [bad]
    (aside,) = redis.keys(INVALID + ":invalid:*")
    assert redis.get(aside) == b"another program's"
    assert len(warnings(events, "held something other than a list")) == 1
    assert not warnings(events, "Could not acknowledge")
    assert (intake.read, intake.acknowledged) == (6, 6)


@pytest_twisted.ensureDeferred
async def test_an_intake_key_of_the_wrong_type_at_start_is_kept_aside_once_and_the_intake_reads(
    daemon_factory: StartDaemon, redis: valkey.Valkey
) -> None:
    """Defect 11: a string at rm:intake stopped the intake, with a warning a second."""
    redis.set(STREAM, "another program's")
    with events_logged() as events:
        daemon = await daemon_factory()
        await daemon.until(lambda: redis.type(STREAM) == b"stream", what="a new stream")
        entry_id = xadd(redis, "rm.users.user1", "after it")
        await daemon.until(lambda: queued_ids(redis, "user1") == [entry_id], what="the intake read")
        await daemon.until(lambda: redis.xlen(STREAM) == 0, what="acknowledged")
    (aside,) = redis.keys(STREAM + ":invalid:*")
    assert redis.get(aside) == b"another program's"
    assert len(warnings(events, "held something other than a stream")) == 1
    assert not warnings(events, "Reading the intake stream failed")


@pytest_twisted.ensureDeferred
async def test_an_intake_key_replaced_by_another_type_while_reading_is_kept_aside_and_the_intake_goes_on(
    daemon: Daemon, redis: valkey.Valkey
) -> None:
    """Defect 11, while reading: the read that meets it fails once, then the key is kept aside and a new stream read."""
    first = xadd(redis, "rm.users.user1", "before")
    await daemon.until(lambda: queued_ids(redis, "user1") == [first] and redis.xlen(STREAM) == 0, what="reading")
    with events_logged() as events:
        with redis.pipeline(transaction=True) as pipe:
            pipe.delete(STREAM)
            pipe.set(STREAM, "another program's")
            pipe.execute()
        await daemon.until(lambda: redis.type(STREAM) == b"stream", what="a new stream")
        second = xadd(redis, "rm.users.user1", "after")
        await daemon.until(lambda: queued_ids(redis, "user1") == [first, second], what="the intake read again")
        await daemon.until(lambda: redis.xlen(STREAM) == 0, what="acknowledged")
    (aside,) = redis.keys(STREAM + ":invalid:*")
    assert redis.get(aside) == b"another program's"
    assert len(warnings(events, "held something other than a stream")) == 1
    assert len(warnings(events, "Reading the intake stream failed")) == 1, "the read that met it, once"


@pytest_twisted.ensureDeferred
async def test_a_claim_of_an_entry_the_reader_holds_itself_does_not_deliver_it_again(daemon: Daemon, redis: valkey.Valkey) -> None:
    """The periodic claim takes this reader's own entries too: one still unconfirmed by its socket is not sent again."""
    intake = daemon.service.intake
    assert intake is not None
    client = await daemon.client()
    client.send(json.dumps({"type": "hello", "v": 1, "uid": "user1"}))
    await client.next()  # welcome
    await daemon.idle()
    held = xadd(redis, "rm.users.user1", "held")
    assert (await next_message(client))["id"] == held
    (consumer,) = {c for _, c in pending_entries(redis)}
    intake.claim_every = 0.05
    # unconfirmed for an hour (and read once: XCLAIM counts a delivery unless told the count)
    redis.execute_command("XCLAIM", STREAM, GROUP, consumer, 0, held, "IDLE", 3_600_000, "RETRYCOUNT", 1)
    await daemon.until(
        lambda: redis.xpending_range(STREAM, GROUP, "-", "+", 1)[0]["times_delivered"] == 2, what="claimed by its reader"
    )
    after = xadd(redis, "rm.users.user1", "after")
    message = await next_message(client)
    assert message["id"] == after, f"the held entry not sent again: {message}"
    client.send(json.dumps({"type": "ack", "id": held}))
    client.send(json.dumps({"type": "ack", "id": after}))
    await daemon.until(lambda: redis.xlen(STREAM) == 0 and not pending_entries(redis), what="both acknowledged")
    assert intake.read == 2
    client.close()
