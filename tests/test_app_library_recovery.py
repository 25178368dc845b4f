"""
The application library (clients/python) when Redis loses things under it, in each
flavour (blocking, asyncio, Twisted), against a real valkey-server and the real
daemon: its consumer group deleted (FLUSHDB, Redis restarted without its data),
Redis restarted under its channel subscriptions, and subscribe()/unsubscribe()
while it runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest
import pytest_twisted
import valkey
from redmessenger_app import aio, blocking
from redmessenger_app.protocol import Settings
from twisted.internet.threads import deferToThread

from .channelclient import session
from .conftest import RedisServer, wait_until

Handler = Optional[Callable[[Any], Any]]


class BlockingApp:
    """The blocking flavour, called from threads (as a WSGI application's are), never the reactor's."""

    def __init__(self, port: int, handler: Handler) -> None:
        self.rm = blocking.RedMessenger(Settings(redis_url=f"redis://127.0.0.1:{port}/0"))
        if handler is not None:
            self.rm.on("subscription_request", handler)

    async def start(self) -> None:
        await deferToThread(self.rm.start)

    async def subscribe(self, channel: str, callback: Callable[[Any, Any], Any]) -> None:
        await deferToThread(self.rm.subscribe, channel, callback)

    async def unsubscribe(self, channel: str) -> None:
        await deferToThread(self.rm.unsubscribe, channel)

    async def close(self) -> None:
        await deferToThread(self.rm.stop)
        self.rm.redis.close()


class AsyncioApp:
    """The asyncio flavour in an event loop of its own (a thread), every call made in that loop."""

    def __init__(self, port: int, handler: Handler) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.rm = aio.RedMessenger(Settings(redis_url=f"redis://127.0.0.1:{port}/0"))
        if handler is not None:
            self.rm.on("subscription_request", handler)

    async def _in_loop(self, function: Callable[[], Any]) -> Any:
        async def call() -> Any:
            result = function()
            return await result if asyncio.iscoroutine(result) else result

        return await deferToThread(lambda: asyncio.run_coroutine_threadsafe(call(), self.loop).result(10))

    async def start(self) -> None:
        await self._in_loop(self.rm.start)

    async def subscribe(self, channel: str, callback: Callable[[Any, Any], Any]) -> None:
        await self._in_loop(lambda: self.rm.subscribe(channel, callback))

    async def unsubscribe(self, channel: str) -> None:
        await self._in_loop(lambda: self.rm.unsubscribe(channel))

    async def close(self) -> None:
        try:
            await self._in_loop(self.rm.aclose)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            await deferToThread(self.thread.join, 5)
            self.loop.close()


class TwistedApp:
    """The Twisted flavour, in the test's reactor."""

    def __init__(self, port: int, handler: Handler) -> None:
        from redmessenger_app import twisted as tx

        self.rm = tx.RedMessenger(Settings(redis_url=f"redis://127.0.0.1:{port}/0"))
        if handler is not None:
            self.rm.on("subscription_request", handler)

    async def start(self) -> None:
        self.rm.start()

    async def subscribe(self, channel: str, callback: Callable[[Any, Any], Any]) -> None:
        self.rm.subscribe(channel, callback)

    async def unsubscribe(self, channel: str) -> None:
        self.rm.unsubscribe(channel)

    async def close(self) -> None:
        await self.rm.stop()


FLAVOURS = {"blocking": BlockingApp, "asyncio": AsyncioApp, "twisted": TwistedApp}


@pytest.fixture(params=list(FLAVOURS))
def flavour(request: Any, redis_server: RedisServer, redis: valkey.Valkey) -> Iterator[Any]:
    """Makes the library in the parametrized flavour (on the test's Redis unless told a port); closed after the test."""
    made: list[Any] = []

    def make(port: Optional[int] = None, handler: Handler = None) -> Any:
        app = FLAVOURS[request.param](port or redis_server.port, handler)
        made.append(app)
        return app

    yield make
    from twisted.internet.defer import ensureDeferred

    for app in made:
        pytest_twisted.blockon(ensureDeferred(app.close()))


def groups(redis: valkey.Valkey) -> list[bytes]:
    """The consumer groups on rm:requests (none if there is no such stream)."""
    return [group["name"] for group in redis.xinfo_groups("rm:requests")] if redis.exists("rm:requests") else []


def subscribers(redis: valkey.Valkey, channel: str) -> tuple[int, int]:
    """How many connections listen to what clients publish on ``channel`` and to bare PUBLISHes there."""
    counts = dict(redis.pubsub_numsub(f"rm.client.channels.{channel}", f"rm.channels.{channel}"))
    return counts[f"rm.client.channels.{channel}".encode()], counts[f"rm.channels.{channel}".encode()]


# -- finding: the request consumer group gone ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_library_creates_its_consumer_group_again_when_it_is_gone(flavour, daemon_factory, redis):
    rm = flavour(handler=lambda request: request.permit("read_only"))
    await rm.start()
    daemon = await daemon_factory()
    client = await session(daemon, "alice")
    assert await client.subscribe("before") == {"type": "reply", "ref": 1, "ok": True, "mode": "read_only"}
    redis.delete("rm:requests")  # what FLUSHDB, or Redis restarted without its data, does to the group
    await wait_until(lambda: groups(redis) == [b"app"], 5, "the library's consumer group made again")
    assert await client.subscribe("after") == {"type": "reply", "ref": 2, "ok": True, "mode": "read_only"}


# -- finding: channel subscriptions across a Redis restart ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["blocking", "asyncio"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_channel_subscriptions_come_back_after_redis_restarts(flavour, private_redis):
    got: list[tuple[Any, Any]] = []
    rm = flavour(port=private_redis.port)
    await rm.subscribe("room", lambda message, sender: got.append((message, sender)))
    await rm.start()
    before = private_redis.client()
    assert subscribers(before, "room") == (1, 1), "subscribed when start() returns"
    assert before.publish("rm.channels.room", '"before"') == 1
    await wait_until(lambda: got == [("before", None)], 5, "the callback before the restart")
    before.close()
    await deferToThread(private_redis.stop)
    await deferToThread(private_redis.start)  # the same port
    after = private_redis.client()
    try:
        await wait_until(lambda: subscribers(after, "room") == (1, 1), 10, "the library subscribed again")
        assert after.publish("rm.channels.room", '"after"') == 1
        await wait_until(lambda: len(got) == 2, 5, "the callback after the restart")
        assert got == [("before", None), ("after", None)]
    finally:
        after.close()


# -- finding: subscribe() and unsubscribe() while running --------------------------------------


@pytest_twisted.ensureDeferred
async def test_subscribe_and_unsubscribe_take_effect_while_the_library_runs(flavour, redis):
    got: list[tuple[str, Any]] = []
    rm = flavour()
    await rm.subscribe("early", lambda message, sender: got.append(("early", message)))
    await rm.start()
    await wait_until(lambda: subscribers(redis, "early") == (1, 1), 5, "the subscription made before start()")
    await rm.subscribe("late", lambda message, sender: got.append(("late", message)))
    await wait_until(lambda: subscribers(redis, "late") == (1, 1), 5, "the subscription made while running")
    assert redis.publish("rm.channels.late", '"one"') == 1
    await wait_until(lambda: len(got) == 1, 5, "the late channel's callback")
    await rm.unsubscribe("early")
    await wait_until(lambda: subscribers(redis, "early") == (0, 0), 5, "the unsubscription made while running")
    assert redis.publish("rm.channels.early", '"two"') == 0
    assert redis.publish("rm.channels.late", '"three"') == 1
    await wait_until(lambda: len(got) == 2, 5, "the late channel's callback again")
    assert got == [("late", "one"), ("late", "three")]
    assert subscribers(redis, "late") == (1, 1)


@pytest_twisted.ensureDeferred
async def test_a_library_started_with_no_subscription_subscribes_later(flavour, redis):
    got: list[Any] = []
    rm = flavour()
    await rm.start()
    await rm.subscribe("later", lambda message, sender: got.append(message))
    await wait_until(lambda: subscribers(redis, "later") == (1, 1), 5, "the subscription made after start()")
    assert redis.publish("rm.channels.later", '{"n": 1}') == 1
    await wait_until(lambda: len(got) == 1, 5, "the callback")
    assert got == [{"n": 1}]


def test_two_threads_subscribing_at_once_after_start_make_one_reader(redis_server: RedisServer, redis: valkey.Valkey) -> None:
    """
    Blocking flavour, started with no subscription: two threads subscribe at once (a threaded WSGI application).
    Each saw no reader and started one, so every callback ran twice.  The reader's first SUBSCRIBE is slowed here
    (0.2 s, then the real one) so that both threads are surely inside it together.
    """
    rm = blocking.RedMessenger(Settings(redis_url=f"redis://127.0.0.1:{redis_server.port}/0"))
    real = rm.redis.pubsub

    def slow_pubsub(**kwargs: Any) -> Any:
        pubsub = real(**kwargs)
        subscribe = pubsub.subscribe

        def slowly(*args: Any, **more: Any) -> Any:
            threading.Event().wait(0.2)
            return subscribe(*args, **more)

        pubsub.subscribe = slowly
        return pubsub

    rm.redis.pubsub = slow_pubsub  # type: ignore[method-assign]
    got: list[Any] = []
    rm.start()
    try:
        threads = [
            threading.Thread(target=rm.subscribe, args=(name, lambda message, sender: got.append(message)))
            for name in ("one", "two")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        readers = [t for t in threading.enumerate() if t.name == "redmessenger-pubsub"]
        assert len(readers) == 1, readers
        polled_until(lambda: subscribers(redis, "one") == subscribers(redis, "two") == (1, 1), "one connection for both")
        assert redis.publish("rm.channels.one", '{"n": 1}') == 1
        polled_until(lambda: bool(got), "the callback")
        assert got == [{"n": 1}], "once"
    finally:
        rm.stop()
        rm.redis.close()


def polled_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """For tests outside the reactor: ``condition`` checked every 50 ms until it holds, or AssertionError."""
    pause = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        pause.wait(0.05)
    assert condition(), f"timed out after {timeout}s waiting for {what}"
