"""
``websocket_compression: true``: permessage-deflate, which the other tests never
negotiate.  A compressing socket cannot take the shared, prepared frames of the
hot path (redmessenger.transport.fastpath): each message is compressed for it by Autobahn,
and its pings go through Autobahn too.  Real clients: the `websockets` library
(offers permessage-deflate by default, or not), Autobahn's (never offers it),
Node's socket.io-client over WebSocket.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from ..conftest import HOST, publish
from ..pyws import ThreadedClient
from ..sioclients import node_client

QUEUE = "rm:users:{}:messages"

#: Payloads that must come through compression byte for byte: long and repetitive
#: (compresses well), non-ASCII, JSON-looking, percent signs, empty.
PAYLOADS = [
    "My life is a spicy pepper... " * 400,
    "Grüße, ☕ and 🌶️ — \u2028 \\ \"quoted\"",
    '{"source": "not me", "payload": 1}',
    "%41 stays %41",
    "",
]


def texts(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i} {PAYLOADS[i % len(PAYLOADS)]}" for i in range(count)]


def entry(uid: str, n: int, payload: str) -> str:
    return json.dumps({"v": 1, "source": f"rm.users.{uid}", "timestamp": 1000 + n, "payload": payload})


def payloads(messages: list[dict[str, Any]]) -> list[str]:
    return [m["payload"] for m in messages]


def open_sockets(daemon: Any) -> list[Any]:
    return list(daemon.service.websockets.sockets)


async def all_confirmed(daemon: Any, uid: str) -> None:
    """Until every socket of ``uid`` confirmed what it was sent: it has read all of it."""
    await daemon.idle()
    user = daemon.service.presence.get(uid)
    attachments = user.attachments if user is not None else []
    await daemon.until(lambda: all(not a.unconfirmed and not a.confirming for a in attachments), what="confirmations")


@pytest_twisted.ensureDeferred
async def test_queued_and_live_messages_arrive_intact_and_in_order_over_permessage_deflate(daemon_factory, redis):
    daemon = await daemon_factory(websocket_compression=True, handover_batch=20)
    queued = texts("q", 100)
    redis.rpush(QUEUE.format("user1"), *[entry("user1", n, text) for n, text in enumerate(queued)])

    client = await ThreadedClient.connect(daemon.url)
    assert client.extensions.startswith("permessage-deflate"), client.extensions
    (socket,) = open_sockets(daemon)
    assert not socket.raw_frames, "the daemon compresses for this socket, no shared raw frames"
    await client.send("user1")

    got = await client.receive(len(queued))
    assert payloads(got) == queued, "the queue, intact and in order (five batches, each confirmed)"
    assert [m["timestamp"] for m in got] == [1000 + n for n in range(len(queued))]
    assert all(m["source"] == "rm.users.user1" and m["bubble"] is True for m in got)
    assert set(got[0]) == {"id", "source", "timestamp", "bubble", "payload"}
    await daemon.idle()
    assert not redis.exists(QUEUE.format("user1")), "every batch confirmed by a pong, and trimmed"

    live = texts("live", 30)
    for text in live:
        publish(redis, "rm.users.user1", text)
    assert payloads(await client.receive(len(live))) == live
    await all_confirmed(daemon, "user1")
    assert await client.unread() == [], "each message once"
    assert client.compressed_frames == len(queued) + len(live), "every message came compressed"

    await client.close()
    await daemon.until(lambda: daemon.service.presence.get("user1") is None)
    await daemon.idle()
    assert not redis.exists(QUEUE.format("user1")), "the live messages were confirmed: none is queued again"
    assert daemon.service.hub.counters.queued == 0


@pytest_twisted.ensureDeferred
async def test_clients_without_compression_work_on_the_same_daemon(daemon_factory, redis):
    daemon = await daemon_factory(websocket_compression=True)
    redis.sadd("rm:channels:all:subscribers", "deflate", "plain", "autobahn")
    for uid in ("deflate", "plain", "autobahn"):
        redis.rpush(QUEUE.format(uid), entry(uid, 0, f"queued for {uid} {PAYLOADS[1]}"))

    deflate = await ThreadedClient.connect(daemon.url)
    plain = await ThreadedClient.connect(daemon.url, compression=None)
    autobahn = await daemon.client()  # Autobahn's client offers no extension
    assert deflate.extensions.startswith("permessage-deflate")
    assert plain.extensions == ""
    await deflate.send("deflate")
    await plain.send("plain")
    autobahn.send("autobahn")
    presence = daemon.service.presence
    await daemon.until(
        lambda: deflate.attached(presence, "deflate") and plain.attached(presence, "plain") and autobahn.attached(presence, "autobahn"),
        what="three users online",
    )
    assert sorted(s.raw_frames for s in open_sockets(daemon)) == [False, True, True]

    group = texts("group", 20)
    for text in group:
        publish(redis, "rm.channels.all", text)
    expected = {uid: [f"queued for {uid} {PAYLOADS[1]}"] + group for uid in ("deflate", "plain", "autobahn")}
    assert payloads(await deflate.receive(21)) == expected["deflate"]
    assert payloads(await plain.receive(21)) == expected["plain"]
    assert payloads(await autobahn.receive(21)) == expected["autobahn"]
    for uid in ("deflate", "plain", "autobahn"):
        await all_confirmed(daemon, uid)
    assert await deflate.unread() == [] and await plain.unread() == [] and len(autobahn.received) == 21
    # the same envelopes, whether compressed or sent as the shared raw frame
    assert deflate.received[1:] == plain.received[1:] == autobahn.received[1:]
    assert deflate.compressed_frames == 21 and plain.compressed_frames == 0
    assert not any(redis.exists(QUEUE.format(uid)) for uid in ("deflate", "plain", "autobahn"))
    await deflate.close()
    await plain.close()
    autobahn.close()


# -- Socket.IO over a compressed WebSocket -----------------------------------------------------------


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest_twisted.ensureDeferred
async def test_socketio_over_a_compressed_websocket(daemon_factory, redis, clients, generation):
    daemon = await daemon_factory(websocket_compression=True, handover_batch=20)
    queued = texts("q", 50)
    redis.rpush(QUEUE.format("user1"), *[entry("user1", n, text) for n, text in enumerate(queued)])
    client = node_client(
        f"http://{HOST}:{daemon.port}{daemon.service.config.rm_route}", "user1", generation=generation, transports=["websocket"]
    )
    clients.append(client)
    await client.expect("message", len(queued))
    (socket,) = daemon.service.socketio.websockets.sockets
    assert not socket.raw_frames, "permessage-deflate negotiated with socket.io-client"
    live = texts("live", 20)
    for text in live:
        publish(redis, "rm.users.user1", text)
    await client.expect("message", len(queued) + len(live))
    await all_confirmed(daemon, "user1")
    assert payloads(client.messages()) == queued + live
    assert not redis.exists(QUEUE.format("user1"))
    assert not client.of("disconnect") and not client.of("error")
