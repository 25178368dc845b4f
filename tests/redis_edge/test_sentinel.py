"""
Redis Sentinel (issue 14): the daemon finds the master through real sentinels and
follows a failover, announced or not; what was queued survives it, counted exactly.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread

from redmessenger.redis_edge.sentinel import parse_switch

from ..conftest import HOST, wait_until
from ..httpclient import http_get
from ..sentinels import MASTER_NAME, SentinelGroup, counted, group  # noqa: F401 (group: a fixture)


def test_a_switch_master_announcement_is_read_for_our_master_only() -> None:
    assert parse_switch("rmmaster 127.0.0.1 6379 127.0.0.1 6380", "rmmaster") == ("127.0.0.1", 6380)
    assert parse_switch("other 127.0.0.1 6379 127.0.0.1 6380", "rmmaster") is None
    assert parse_switch("rmmaster 127.0.0.1 6379 127.0.0.1", "rmmaster") is None
    assert parse_switch("rmmaster 127.0.0.1 6379 127.0.0.1 http", "rmmaster") is None
    assert parse_switch("rmmaster 127.0.0.1 6379 127.0.0.1 70000", "rmmaster") is None


async def _daemon_on(daemon_factory: Any, group: SentinelGroup, **overrides: Any) -> Any:
    daemon = await daemon_factory(
        redis_sentinels=group.sentinels, redis_sentinel_master=MASTER_NAME, intake=False, **overrides
    )
    await wait_until(lambda: daemon.service.link.ready, 15, "the link through the sentinels")
    return daemon


async def _health(daemon: Any) -> tuple[int, dict[str, Any]]:
    status, _, body = await http_get(daemon.port, "/health")
    return status, json.loads(body)


async def _follow_a_failover(daemon: Any, group: SentinelGroup, what: str) -> None:
    """Messages queued before, live ones after: none lost, none doubled, in order."""
    master = group.current_master()
    old = f"{HOST}:{group.master.port}"
    assert daemon.service.link.state.address == old
    oscar = await daemon.client("oscar")
    for i in range(50):
        master.publish("rm.users.olga", f"queued {i}")  # olga is offline: queued on the master
    await wait_until(lambda: master.llen("rm:users:olga:messages") == 50, 10, "olga's 50 messages queued")
    assert master.execute_command("WAIT", 1, 5000) == 1, "the replica has the queue"

    new_host, new_port = await deferToThread(group.failover)
    new = f"{new_host}:{new_port}"
    assert new == f"{HOST}:{group.replica.port}"
    await wait_until(
        lambda: daemon.service.link.ready and daemon.service.link.state.address == new, 20, f"the daemon on {new} ({what})"
    )
    assert daemon.service.link.state.master_switches == 1
    status, health = await _health(daemon)
    assert status == 200 and health["redis"]["address"] == new and health["redis"]["master_switches"] == 1

    promoted = group.current_master()
    for i in range(20):
        promoted.publish("rm.users.oscar", f"live {i}")
    assert [m["payload"] for m in await oscar.receive(20)] == [f"live {i}" for i in range(20)]
    olga = await daemon.client("olga")
    assert [m["payload"] for m in await olga.receive(50)] == [f"queued {i}" for i in range(50)]
    oscar.close()
    olga.close()
    await olga.close_code()
    await daemon.idle()
    assert promoted.llen("rm:users:olga:messages") == 0, "handed over from the new master and trimmed there"
    assert oscar.received[20:] == [] and olga.received[50:] == [], "nothing more, nothing twice"


@pytest_twisted.ensureDeferred
async def test_a_sentinel_that_is_down_holds_one_question_however_often_the_master_is_asked_for() -> None:
    """Each discovery asked every sentinel; a question to one that is down waited for its connection, for ever."""
    from twisted.internet import reactor

    from redmessenger.redis_edge.sentinel import SentinelSettings, SentinelWatch

    from ..conftest import free_port

    settings = SentinelSettings(sentinels=((HOST, free_port()),), master_name=MASTER_NAME, poll_interval=0.05)
    watch = SentinelWatch(reactor, settings, lambda address: None)
    failures: list[Any] = []
    for _ in range(200):  # a poll, or a connection attempt of the link, each
        watch.discover().addErrback(failures.append)
    await wait_until(lambda: len(failures) == 200, what="every discovery to fail")
    assert all("no sentinel named a master" in f.getErrorMessage() for f in failures)
    waiting = watch._sentinel.sentinels[0]._factory.connectionQueue.peekers
    assert len(waiting) == 1, "one question waits for the sentinel, not one per discovery"
    assert watch._waiting == [], "no discovery is kept once it failed"
    await watch.stop()


@pytest_twisted.ensureDeferred
async def test_an_answer_to_an_earlier_question_serves_the_discoveries_waiting_then(group) -> None:
    """A sentinel is asked once at a time; what it answers goes to each discovery waiting, not only the first."""
    from twisted.internet import reactor

    from redmessenger.redis_edge.sentinel import SentinelSettings, SentinelWatch

    sentinels = tuple((HOST, port) for port in group.sentinel_ports)
    settings = SentinelSettings(sentinels=sentinels, master_name=MASTER_NAME, poll_interval=5.0)
    watch = SentinelWatch(reactor, settings, lambda address: None)
    found = await gatherResults([watch.discover() for _ in range(5)])
    assert found == [(HOST, group.master.port)] * 5
    assert watch._waiting == []
    await wait_until(lambda: not watch._asking, what="the other sentinels' answers")
    await watch.stop()


@pytest_twisted.ensureDeferred
async def test_the_daemon_finds_the_master_through_the_sentinels_and_follows_an_announced_failover(daemon_factory, group):
    daemon = await _daemon_on(daemon_factory, group)
    await _follow_a_failover(daemon, group, "announced by +switch-master")


@pytest_twisted.ensureDeferred
async def test_a_failover_whose_announcement_was_missed_is_found_by_the_poll(daemon_factory, group):
    daemon = await _daemon_on(daemon_factory, group)
    watch = daemon.service.link.sentinel
    # the announcements go missing (each sentinel's pub/sub connection down when it is sent): only the poll is left
    for listener in watch._listeners:
        await listener.disconnect()
    watch._listeners = []
    await _follow_a_failover(daemon, group, "found by the poll")


@pytest_twisted.ensureDeferred
async def test_the_poll_alone_finds_a_new_master_within_its_interval(group):
    """Where connections to the old master stay open and no announcement arrives, only the poll can tell."""
    from twisted.internet import reactor

    from redmessenger.redis_edge.sentinel import SentinelSettings, SentinelWatch

    moved: list[tuple[str, int]] = []
    settings = SentinelSettings(tuple((HOST, int(s.rpartition(":")[2])) for s in group.sentinels), MASTER_NAME, poll_interval=0.5)
    watch = SentinelWatch(reactor, settings, moved.append)
    watch._running = True
    watch._poll.start(settings.poll_interval, now=True)  # polling, with no +switch-master subscription
    try:
        await wait_until(lambda: watch.master == (HOST, group.master.port), 10, "the first answer")
        new = await deferToThread(group.failover)
        await wait_until(lambda: moved == [new], 10, "the poll to see the new master")
        assert (watch.switches, watch.last_source) == (1, "the sentinels' answer when polling")
    finally:
        await watch.stop()


def _publish_through_failovers(group: SentinelGroup, uid: str, count: int, started: Any) -> tuple[list[str], list[str]]:
    """
    The application's side, in a thread: ``count`` messages into the durable intake of whichever server the
    sentinels name master, each XADD followed by WAIT 1 (on a replica too). What WAIT confirmed is accepted; an
    attempt that failed or was not confirmed is tried again under a new name. Returns (accepted, attempted).
    """
    import time

    import valkey

    accepted: list[str] = []
    attempted: list[str] = []
    for i in range(count):
        tries = 0
        while True:
            payload = f"m{i}.{tries}"
            tries += 1
            try:
                master = group.current_master()
                attempted.append(payload)
                master.xadd("rm:intake", {"channel": f"rm.users.{uid}", "payload": payload})
                if master.execute_command("WAIT", 1, 2000) == 1:
                    accepted.append(payload)
                    break
            except (valkey.ConnectionError, valkey.ResponseError, valkey.TimeoutError):
                pass
            time.sleep(0.02)
        if i == count // 3:
            started.set()
    return accepted, attempted


@pytest_twisted.ensureDeferred
async def test_a_failover_under_load_loses_and_doubles_nothing_that_was_accepted(daemon_factory, group):
    import threading

    daemon = await daemon_factory(redis_sentinels=group.sentinels, redis_sentinel_master=MASTER_NAME)
    await wait_until(lambda: daemon.service.link.ready, 15, "the link through the sentinels")
    started = threading.Event()
    publishing = deferToThread(_publish_through_failovers, group, "ursula", 300, started)
    await deferToThread(started.wait, 30)
    new_host, new_port = await deferToThread(group.failover)  # a third of the way in
    accepted, attempted = await publishing
    new = f"{new_host}:{new_port}"
    await wait_until(lambda: daemon.service.link.ready and daemon.service.link.state.address == new, 20, "the new master")
    promoted = group.current_master()
    await wait_until(lambda: promoted.xlen("rm:intake") == 0, 20, "the intake emptied into the queue")
    queued = [p.decode() for p in promoted.lrange("rm:users:ursula:messages", 0, -1)]
    ursula = await daemon.client("ursula")
    got = [m["payload"] for m in await ursula.receive(len(queued))]
    # trimmed once the client confirmed the last batch (its pong): closed before that, the batch would stay queued
    await wait_until(lambda: promoted.llen("rm:users:ursula:messages") == 0, 10, "the queue confirmed and trimmed")
    ursula.close()
    await ursula.close_code()
    await daemon.idle()
    assert counted(got, accepted, attempted) == ([], [], [], True)
    assert len(accepted) == 300 and promoted.llen("rm:users:ursula:messages") == 0


@pytest_twisted.ensureDeferred
async def test_an_online_user_gets_each_accepted_message_once_in_order_across_a_failover_under_load(daemon_factory, group):
    """
    The entries the daemon had delivered and acknowledged just before the failover are pending again on the new
    master (their XACK was lost with the connection, or not replicated yet): read again, they are acknowledged
    again, not delivered again (before, 22 to 93 of 300 reached the socket twice).
    """
    import threading

    daemon = await daemon_factory(redis_sentinels=group.sentinels, redis_sentinel_master=MASTER_NAME)
    await wait_until(lambda: daemon.service.link.ready, 15, "the link through the sentinels")
    wes = await daemon.client("wes")
    started = threading.Event()
    publishing = deferToThread(_publish_through_failovers, group, "wes", 300, started)
    await deferToThread(started.wait, 30)
    await deferToThread(group.failover)
    accepted, attempted = await publishing
    promoted = group.current_master()
    await wait_until(lambda: promoted.xlen("rm:intake") == 0, 20, "every entry acknowledged on the new master")
    await daemon.idle()
    got = [m["payload"] for m in wes.received]
    assert counted(got, accepted, attempted) == ([], [], [], True)
    wes.close()
    await wes.close_code()


@pytest_twisted.ensureDeferred
async def test_two_daemons_follow_a_failover_under_load_and_a_relayed_socket_gets_each_accepted_message_once(
    daemon_factory, group
):
    """
    Two daemons through the sentinels; the user's socket is on the daemon that does not own it (a relay, fed
    through the owner's writes to the other's inbox). Across a failover under load both follow the new master,
    /health tells, and the user gets each accepted message once, in order: live, or, if the failover lost inbox
    entries, from the queue after the relay was closed with 1013 and the client reconnected.
    """
    import threading

    from redmessenger.core.ownership import owner as owner_of

    from ..wsclient import connect_client

    names = ["node-a", "node-b"]
    a, b = [
        await daemon_factory(redis_sentinels=group.sentinels, redis_sentinel_master=MASTER_NAME, node_id=name)
        for name in names
    ]
    await wait_until(lambda: a.service.peers.nodes == b.service.peers.nodes == names, 10, "each daemon to see the other")
    uid = next(u for u in (f"vera{i}" for i in range(100)) if owner_of(u, names) == "node-b")

    async def relayed() -> Any:
        client = await connect_client(a.url)
        client.send(uid)
        await wait_until(lambda: (user := b.service.presence.get(uid)) is not None and user.attachments, 5, "attached")
        return client

    clients = [await relayed()]
    started = threading.Event()
    publishing = deferToThread(_publish_through_failovers, group, uid, 300, started)
    await deferToThread(started.wait, 30)
    new_host, new_port = await deferToThread(group.failover)
    accepted, attempted = await publishing
    new = f"{new_host}:{new_port}"
    for daemon in (a, b):
        await wait_until(lambda: daemon.service.link.ready and daemon.service.link.state.address == new, 20, "the new master")
        status, health = await _health(daemon)
        assert status == 200 and health["redis"]["master_switches"] >= 1 and health["redis"]["address"] == new, health
    promoted = group.current_master()
    await wait_until(lambda: promoted.xlen("rm:intake") == 0, 20, "every entry acknowledged on the new master")
    first = clients[0]
    await wait_until(lambda: first.protocol.closed.called or len(first.received) >= len(accepted), 20, "all, or a close")
    if first.protocol.closed.called:  # closed with 1013: what it missed waits in the queue
        assert (await first.close_code())[0] == 1013
        clients.append(await relayed())
    await wait_until(lambda: promoted.llen(f"rm:users:{uid}:messages") == 0, 10, "nothing left queued")
    for daemon in (a, b):
        await daemon.idle()
    got = [m["payload"] for client in clients for m in client.received]
    assert counted(got, accepted, attempted) == ([], [], [], True)
    for client in clients:
        client.close()
        await client.close_code()
