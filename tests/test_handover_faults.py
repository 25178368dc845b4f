"""
A queue handover when Redis fails it, and when its socket reads nothing (SPEC §3.3, §10), counted exactly.
Real daemon, real valkey-server, real clients.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest_twisted
import valkey
from twisted.internet.defer import Deferred, fail

from redmessenger.redis_edge.scripts import TAKE

from .conftest import Daemon, publish
from .wsclient import WebSocketClient, connect_client

QUEUE = "rm:users:{}:messages"


def payloads(received: list[dict[str, Any]]) -> list[str]:
    return [m["payload"] for m in received]


def entry(uid: str, payload: str) -> str:
    return json.dumps({"v": 1, "source": f"rm.users.{uid}", "timestamp": 1, "payload": payload})


class FailingTakes:
    """Stands between the queue store and its Redis connection: while ``failing``, each TAKE fails as ``fault`` makes it."""

    def __init__(self, daemon: Daemon, fault: str) -> None:
        self.store = daemon.service.store
        self.link = daemon.service.link
        self.real = self.store._redis
        self.fault = fault
        self.failing = True
        self.failed = 0
        self.store._redis = self

    def eval(self, script: bytes, keys: Any = (), args: Any = ()) -> Deferred[Any]:
        if script != TAKE or not self.failing:
            return self.real.eval(script, keys, args)
        self.failed += 1
        if self.fault == "busy":
            from txredisapi import ResponseError

            return fail(ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT."))
        d = self.real.eval(script, keys, args)
        for connection in list(self.link._commands.pool):
            connection.transport.abortConnection()  # the reply is lost with the connection
        return d

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return self.real.execute_command(*args, **kwargs)


async def _handover_fails_then_recovers(daemon: Daemon, redis: valkey.Valkey, fault: str) -> None:
    hub = daemon.service.hub
    hub.handovers.retry_first = 0.1
    redis.rpush(QUEUE.format("u1"), *(entry("u1", f"q{i}") for i in range(5)))
    takes = FailingTakes(daemon, fault)
    client = await daemon.client("u1")
    await daemon.until(lambda: takes.failed >= 1, what="a failed TAKE")
    publish(redis, "rm.users.u1", "live1")
    attachment = daemon.service.presence.get("u1").attachments[0]
    await daemon.until(lambda: attachment.held and len(attachment.held) == 1, what="the live message held for the queue")
    assert client.received == [] and hub.handovers.running == 1
    takes.failing = False
    await daemon.until(lambda: daemon.service.link.state.commands_connected, what="the command connection back")
    publish(redis, "rm.users.u1", "live2")
    await daemon.until(lambda: len(client.received) >= 7, 10, "the queue and the live messages")
    await daemon.idle()
    assert payloads(client.received) == [f"q{i}" for i in range(5)] + ["live1", "live2"], "the queue first, once each, in order"
    assert redis.llen(QUEUE.format("u1")) == 0, "nothing left in Redis"
    assert hub.handovers.running == 0
    await daemon.until(lambda: hub.budget.used == 0, what="the live messages confirmed")
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_take_whose_reply_is_lost_with_the_connection_is_tried_again_before_live_messages(daemon_factory, redis):
    """Defect 2: the socket got the live message, and its queue stayed in Redis until the next identify."""
    daemon = await daemon_factory(handover_batch=2)
    await _handover_fails_then_recovers(daemon, redis, "dropped")


@pytest_twisted.ensureDeferred
async def test_a_take_refused_for_now_is_tried_again_before_live_messages(daemon_factory, redis):
    """A temporary error reply (-BUSY: a script running too long) is StoreUnavailable, tried again like a lost connection."""
    daemon = await daemon_factory(handover_batch=2)
    await _handover_fails_then_recovers(daemon, redis, "busy")


async def frozen(daemon: Daemon, uid: str, small_buffer: bool = False) -> WebSocketClient:
    """
    A client that identifies, then reads nothing (a frozen tab): the daemon's writes pile up in the kernel's
    buffers, then in its own (``small_buffer``: sooner; such a client, once it reads again, reads only slowly).
    """
    client = await connect_client(daemon.url)
    if small_buffer:
        client.protocol.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.protocol.transport.pauseProducing()
    client.send(uid)
    return client


def unsent(attachment: Any) -> int:
    """Bytes the daemon holds for the socket that the kernel did not take yet."""
    transport = attachment.sink.transport
    return len(transport.dataBuffer) + transport._tempDataLen


@pytest_twisted.ensureDeferred
async def test_a_queue_handed_to_a_client_that_reads_nothing_is_bounded_by_max_pending_bytes(daemon_factory, redis):
    """
    Defect 5: each frozen socket had its whole batch (20 MB) written to it, and the budget counted none of it.
    Now a batch stops at max_pending_bytes, counted until confirmed; once the client reads, the rest follows.
    """
    limit = 1 << 20
    daemon = await daemon_factory(max_pending_bytes=limit, handover_batch=500)
    uids = ("h1", "h2", "h3")
    large = "x" * (500 * 1024)
    for uid in uids:
        redis.rpush(QUEUE.format(uid), *(entry(uid, f"{i:02d}{large}") for i in range(40)))
    clients = [await frozen(daemon, uid) for uid in uids]
    presence, hub = daemon.service.presence, daemon.service.hub
    await daemon.until(lambda: all(presence.get(uid) and presence.get(uid).attachments[0].pending_bytes for uid in uids))
    attachments = [presence.get(uid).attachments[0] for uid in uids]
    weight = len(large) + 2 + 160
    assert [a.pending_bytes for a in attachments] == [2 * weight] * 3, "two entries each: a third would pass the limit"
    assert hub.budget.used == 3 * 2 * weight
    assert all(unsent(a) <= limit for a in attachments)
    for client in clients:
        client.protocol.transport.resumeProducing()
    await daemon.until(lambda: all(len(c.received) == 40 for c in clients), 30, "every queue read")
    await daemon.until(lambda: hub.handovers.running == 0, 10, "the handovers over")
    for uid, client in zip(uids, clients):
        assert [m["payload"][:2] for m in client.received] == [f"{i:02d}" for i in range(40)], "once each, in order"
        assert redis.llen(QUEUE.format(uid)) == 0
    assert hub.budget.used == 0 and hub.counters.refused == {}
    for client in clients:
        client.close()


@pytest_twisted.ensureDeferred
async def test_past_the_memory_budget_a_frozen_socket_in_a_handover_is_given_up_and_its_queue_stays(daemon_factory, redis):
    """As for live messages: a socket past its share is closed with 4413; what it did not confirm stays queued."""
    limit = 1 << 20
    daemon = await daemon_factory(max_pending_bytes=limit, memory_budget_bytes=3 * limit // 2)
    uids = ("h1", "h2", "h3")
    large = "x" * (500 * 1024)
    for uid in uids:
        redis.rpush(QUEUE.format(uid), *(entry(uid, f"{i:02d}{large}") for i in range(40)))
    clients = [await frozen(daemon, uid, small_buffer=True) for uid in uids]
    hub = daemon.service.hub
    await daemon.until(lambda: sum(hub.counters.refused.values()) == 2, 10, "two sockets given up")
    assert hub.counters.refused == {"TOO_SLOW": 1 + 1}, "the first took two entries; each of the others passed the budget with its first"
    (survivor,) = [a for uid in uids for a in (daemon.service.presence.get(uid).attachments if daemon.service.presence.get(uid) else [])]
    assert hub.budget.used == survivor.pending_bytes == 2 * (len(large) + 2 + 160)
    assert [redis.llen(QUEUE.format(uid)) for uid in uids] == [40, 40, 40], "nothing confirmed, nothing trimmed"
    for client in clients:
        client.protocol.transport.resumeProducing()
    for client in clients:
        client.close()


@pytest_twisted.ensureDeferred
async def test_queue_entries_heavier_than_max_pending_bytes_reach_the_client_in_order_and_unblock_the_queue(daemon_factory, redis):
    """
    An entry heavier than the socket's whole share closed the socket (4413) at every identify, before its batch could
    be confirmed: the queue behind it never moved.  It now goes first in its batch, uncounted, and the rest follows.
    """
    limit = 64 * 1024
    daemon = await daemon_factory(max_pending_bytes=limit)
    big = "B" * 100_000
    queued = ["small0", "1" + big, "small2", "3" + big, "4" + big, "small5"]
    redis.rpush(QUEUE.format("u1"), *(entry("u1", payload) for payload in queued))
    client = await daemon.client("u1")
    await daemon.until(lambda: len(client.received) == len(queued), 10, "the whole queue")
    assert payloads(client.received) == queued, "once each, in order"
    await daemon.until(lambda: redis.llen(QUEUE.format("u1")) == 0, 5, "the queue trimmed")
    hub = daemon.service.hub
    await daemon.until(lambda: hub.handovers.running == 0 and hub.budget.used == 0, 5, "nothing left counted")
    assert hub.counters.refused == {}
    publish(redis, "rm.users.u1", "live")
    await daemon.until(lambda: len(client.received) == len(queued) + 1)
    assert client.received[-1]["payload"] == "live"
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_live_message_heavier_than_max_pending_bytes_reaches_the_client_from_the_queue(daemon_factory, redis):
    """
    With max_pending_bytes under a message's frame, a live message heavier than it closes the socket as too slow (4413)
    and goes back to the queue; at the next identify it comes from there, then what followed it: once each, in order.
    """
    daemon = await daemon_factory(max_pending_bytes=64 * 1024)
    first = await daemon.client("u1")
    await daemon.until(lambda: daemon.service.presence.get("u1") is not None)
    big = "B" * 100_000
    publish(redis, "rm.users.u1", big)
    assert (await first.close_code())[0] == 4413
    publish(redis, "rm.users.u1", "after")
    await daemon.until(lambda: redis.llen(QUEUE.format("u1")) == 2, 5, "both queued")
    second = await daemon.client("u1")
    await daemon.until(lambda: len(second.received) == 2, 10, "the queue")
    assert payloads(second.received) == [big, "after"]
    await daemon.until(lambda: redis.llen(QUEUE.format("u1")) == 0, 5, "the queue trimmed")
    assert daemon.service.hub.counters.refused == {"TOO_SLOW": 1}
    assert payloads(first.received) in ([], [big]), "the first socket was closed with it unconfirmed"
    second.close()
