"""
The application library with Redis Sentinel (``redis+sentinel://`` URLs): it finds
the master through real sentinels, as the daemon does, and publishes again after a
failover; every message it was told was taken reaches the user once, in order.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
import pytest_twisted
import valkey
from redmessenger_app import aio, blocking
from redmessenger_app import twisted as rm_twisted
from redmessenger_app.protocol import Settings, parse_sentinel_url
from twisted.internet.threads import deferToThread

from .conftest import wait_until
from .sentinels import MASTER_NAME, group  # noqa: F401 (group: a fixture)


def test_a_sentinel_url_names_the_sentinels_the_master_and_how_to_reach_it() -> None:
    found = parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.5:26379,[::1]:26380/main/2?sentinel_password=sp")
    assert found is not None
    assert (found.sentinels, found.master_name, found.db, found.password, found.sentinel_password, found.tls) == (
        (("10.0.0.5", 26379), ("::1", 26380)), "main", 2, "s3cret", "sp", False
    )  # fmt: skip
    assert "s3cret" not in repr(found) and "sp'" not in repr(found)
    assert parse_sentinel_url("rediss+sentinel://h:26379/m").tls is True  # type: ignore[union-attr]
    assert parse_sentinel_url("redis://127.0.0.1:6379/0") is None


@pytest.mark.parametrize(
    "url", ["redis+sentinel://h:26379", "redis+sentinel://h/m", "redis+sentinel://h:0/m", "redis+sentinel://h:1/m/x"]
)
def test_a_malformed_sentinel_url_is_an_error(url: str) -> None:
    with pytest.raises(ValueError):
        parse_sentinel_url(url)


def _publish(rm: blocking.RedMessenger, uid: str, messages: list[str]) -> int:
    """Each message, called again while the failover makes it fail; how many calls failed."""
    failures = 0
    for message in messages:
        while True:
            try:
                rm.publish_to_user(uid, message)
                break
            except (valkey.ConnectionError, valkey.ReadOnlyError, valkey.TimeoutError):
                failures += 1
                time.sleep(0.05)
    return failures


async def _publish_from_twisted(rm: rm_twisted.RedMessenger, uid: str, message: str) -> int:
    """The message, sent again while the failover makes it fail; how many calls failed."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    failures = 0
    while True:
        try:
            await rm.publish_to_user(uid, message)
            return failures
        except Exception:  # the connection lost under the call, or READONLY: the sentinels made its server a replica
            failures += 1
            assert failures < 400, f"{message!r} refused 400 times"
            await deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_the_three_flavours_publish_through_sentinels_and_across_a_failover(daemon_factory, group):
    daemon = await daemon_factory(redis_sentinels=group.sentinels, redis_sentinel_master=MASTER_NAME)
    await wait_until(lambda: daemon.service.link.ready, 15, "the daemon through the sentinels")
    url = "redis+sentinel://" + ",".join(group.sentinels) + f"/{MASTER_NAME}/0"
    rm = blocking.RedMessenger(Settings(redis_url=url))
    tw = rm_twisted.RedMessenger(Settings(redis_url=url))
    try:
        viv = await daemon.client("viv")
        before = [f"before {i}" for i in range(30)]
        assert await deferToThread(_publish, rm, "viv", before) == 0
        assert await _publish_from_twisted(tw, "viv", "from twisted, before") == 0
        assert [json.loads(m["payload"]) for m in await viv.receive(31)] == before + ["from twisted, before"]
        # delivered, confirmed and acknowledged in the intake, and that replicated, before the failover (an entry
        # whose acknowledgement a failover loses is read again and may reach a socket twice: docs/operations.md)
        master = group.current_master()
        await wait_until(lambda: master.xlen("rm:intake") == 0, 10, "the intake acknowledged")
        assert master.execute_command("WAIT", 1, 5000) == 1
        demoted = group.master_address()
        await deferToThread(group.failover)
        # The library's connection is on the old master until the sentinels make it a replica (and close its
        # clients): a write it takes before that is lost with it, whoever reads it (docs/operations.md).
        await deferToThread(group.demoted, demoted)
        after = [f"after {i}" for i in range(30)]
        failures = await deferToThread(_publish, rm, "viv", after)

        async def from_asyncio() -> str:
            app = aio.RedMessenger(Settings(redis_url=url))
            try:
                return await app.publish_to_user("viv", "from asyncio")
            finally:
                await app.redis.aclose()

        assert await deferToThread(asyncio.run, from_asyncio())
        # its connections were on the old master: closed by the sentinels, made again to the master they name now
        failures += await _publish_from_twisted(tw, "viv", "from twisted, after")
        got = [json.loads(m["payload"]) for m in await viv.receive(32, timeout=20)]  # the library sends JSON
        print(f"calls that failed during the failover and were made again: {failures}")
        assert got == after + ["from asyncio", "from twisted, after"]  # none lost, in order
        promoted = group.current_master()
        await wait_until(lambda: promoted.xlen("rm:intake") == 0, 10, "the intake acknowledged on the new master")
        await daemon.idle()
        assert len(viv.received) == 63, "none doubled"
        assert rm.redis.execute_command("ROLE")[0] in (b"master", "master")
        assert (await tw.redis.execute_command("ROLE"))[0] == b"master"
        viv.close()
        await viv.close_code()
    finally:
        rm.redis.close()
        await tw.stop()


def _subscribers(redis: valkey.Valkey, channel: str) -> tuple[int, int]:
    """Connections listening to what clients publish on ``channel``, and to bare PUBLISHes there."""
    names = [f"rm.client.channels.{channel}", f"rm.channels.{channel}"]
    counts = dict(redis.pubsub_numsub(*names))
    return counts[names[0].encode()], counts[names[1].encode()]


@pytest_twisted.ensureDeferred
async def test_channel_subscriptions_of_the_three_flavours_follow_a_failover(group):
    url = "redis+sentinel://" + ",".join(group.sentinels) + f"/{MASTER_NAME}/0"
    heard: list[tuple[str, object]] = []
    rm = blocking.RedMessenger(Settings(redis_url=url))
    rm.subscribe("room", lambda message, sender: heard.append(("blocking", message)))
    tw = rm_twisted.RedMessenger(Settings(redis_url=url))
    tw.subscribe("room", lambda message, sender: heard.append(("twisted", message)))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    app = aio.RedMessenger(Settings(redis_url=url))
    app.subscribe("room", lambda message, sender: heard.append(("asyncio", message)))

    def in_loop(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(10)

    try:
        await deferToThread(rm.start)
        await deferToThread(in_loop, app.start())
        tw.start()
        master = group.current_master()
        await wait_until(lambda: _subscribers(master, "room") == (3, 3), 5, "the Twisted flavour subscribed too")
        assert master.publish("rm.channels.room", '"before"') == 3
        await wait_until(lambda: len(heard) == 3, 5, "the three callbacks before the failover")
        demoted = group.master_address()
        await deferToThread(group.failover)
        # the sentinels close the old master's pub/sub clients when they make it a replica
        await deferToThread(group.demoted, demoted)
        promoted = group.current_master()
        await wait_until(lambda: _subscribers(promoted, "room") == (3, 3), 15, "all subscribed again on the new master")
        assert promoted.publish("rm.channels.room", '"after"') == 3
        await wait_until(lambda: len(heard) == 6, 5, "the three callbacks after the failover")
        assert sorted(heard[:3]) == [("asyncio", "before"), ("blocking", "before"), ("twisted", "before")]
        assert sorted(heard[3:]) == [("asyncio", "after"), ("blocking", "after"), ("twisted", "after")]
    finally:
        await tw.stop()
        await deferToThread(rm.stop)
        rm.redis.close()
        await deferToThread(in_loop, app.aclose())
        loop.call_soon_threadsafe(loop.stop)
        await deferToThread(thread.join, 5)
        loop.close()


@pytest_twisted.ensureDeferred
async def test_the_twisted_flavour_leaves_a_replica_named_as_the_master_at_its_first_readonly(tmp_path, monkeypatch):
    """
    Real servers, the sentinels' answer given by the test: a replica named as the master (a sentinel that has not
    heard of a failover yet, or the old master before the sentinels closed its clients). The call answered READONLY
    fails, every connection of the pool is dropped, and the calls after it reach the master named then.
    """
    from .conftest import HOST, RedisServer

    at_once = ("--repl-diskless-sync-delay", "0")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = RedisServer(tmp_path / "a", arguments=at_once)
    a.start()
    b = RedisServer(tmp_path / "b", arguments=(*at_once, "--replicaof", HOST, str(a.port)))
    b.start()
    named = [(HOST, b.port)]  # the replica
    asked: list[tuple[str, int]] = []

    async def discover(master: Any) -> tuple[str, int]:
        asked.append(named[0])
        return named[0]

    monkeypatch.setattr(rm_twisted._SentinelMaster, "_discover", discover)
    tw = rm_twisted.RedMessenger(Settings(redis_url=f"redis+sentinel://{HOST}:1/{MASTER_NAME}"))
    try:
        with pytest.raises(Exception, match="READONLY"):
            await tw.publish_to_user("una", "refused by the replica")
        named[0] = (HOST, a.port)
        # every connection of the pool dropped (each was on the replica): a call under way when its own goes fails
        failures = await _publish_from_twisted(tw, "una", "to the master")
        assert asked[-1] == (HOST, a.port) and failures <= 10
        assert [fields[b"payload"] for _, fields in a.client().xrange("rm:intake")] == [b'"to the master"']
    finally:
        await tw.stop()
        b.stop()
        a.stop()


@pytest_twisted.ensureDeferred
async def test_the_twisted_flavour_stopped_while_no_sentinel_answers_leaves_nothing_running():
    """The look-ups of the master under way end with stop() (tests/conftest.py fails a test that leaves timers)."""
    from .conftest import HOST, free_port

    tw = rm_twisted.RedMessenger(Settings(redis_url=f"redis+sentinel://{HOST}:{free_port()}/{MASTER_NAME}"))
    assert tw._master is not None
    master = tw._master
    await wait_until(lambda: master._looking, 5, "a look-up of the master under way")
    await tw.stop()
    assert not master._looking


def test_the_twisted_flavour_refuses_tls_to_a_master_named_by_sentinels_with_the_reason() -> None:
    with pytest.raises(ValueError, match="rediss\\+sentinel"):
        rm_twisted.RedMessenger(Settings(redis_url="rediss+sentinel://127.0.0.1:26379/mymaster"))
