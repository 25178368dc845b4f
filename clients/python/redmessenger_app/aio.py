"""
The asyncio flavour, on valkey-py's asyncio client: the same calls as the
blocking flavour, awaited, and handlers that may be ``async def``.

    from redmessenger_app.aio import RedMessenger

    rm = RedMessenger()
    await rm.publish("room", {"text": "hi"})

    @rm.on("subscription_request")
    async def authorize(request):
        await request.permit("read_only") if await allowed(request) else await request.deny("no")

    await rm.start()        # tasks serving requests and subscriptions; await rm.stop() at exit
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Optional

from redmessenger_app.base import RECONNECT_FIRST, RECONNECT_MAX, Application
from redmessenger_app.protocol import (
    DEFAULT_GROUP,
    INTAKE_STREAM,
    REQUESTS_STREAM,
    Settings,
    SubscriptionRequest,
    group_channel,
    parse_sentinel_url,
    payload_of,
    user_channel,
)

log = logging.getLogger("redmessenger_app")


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _connect(url: str) -> Any:
    """A client for ``url``; for a ``redis+sentinel://`` URL, one that asks the sentinels for the master."""
    import valkey.asyncio

    sentinel = parse_sentinel_url(url)
    if sentinel is None:
        return valkey.asyncio.Redis.from_url(url)
    from valkey.asyncio.sentinel import Sentinel

    sentinels = Sentinel(list(sentinel.sentinels), **sentinel.sentinel_options())
    return sentinels.master_for(sentinel.master_name, **sentinel.master_options())


class RedMessenger(Application):
    """The application's handle on RedMessenger, for asyncio applications."""

    def __init__(
        self,
        settings: Optional[Settings] = None,
        *,
        redis: Any = None,
        group: str = DEFAULT_GROUP,
        consumer: Optional[str] = None,
    ) -> None:
        super().__init__(settings, group, consumer)
        if redis is None:
            redis = _connect(self.settings.redis_url)
        self.redis = redis
        self._tasks: list[asyncio.Task[Any]] = []
        self._pubsub: Any = None  # the listener's, while it has one
        self._loop: Optional[asyncio.AbstractEventLoop] = None  # while started
        self._changed: Optional[asyncio.Event] = None  # set when subscribe()/unsubscribe() change the channels

    # -- publishing (durable: see the blocking flavour) -----------------------------------------

    async def publish(self, channel: str, message: Any) -> str:
        return await self._add(group_channel(channel), message)

    async def publish_to_user(self, uid: str, message: Any) -> str:
        return await self._add(user_channel(uid), message)

    async def _add(self, channel: str, message: Any) -> str:
        entry = await self.redis.xadd(INTAKE_STREAM, {"channel": channel, "payload": payload_of(message)})
        return entry.decode("ascii") if isinstance(entry, bytes) else str(entry)

    # -- subscription requests (the handler may be async def) ------------------------------------

    async def serve_requests_once(self, block_ms: int = 1000) -> int:
        await self._ensure_group()
        try:
            batches = await self.redis.xreadgroup(self.group, self.consumer, {REQUESTS_STREAM: ">"}, count=100, block=block_ms)
        except Exception as e:
            if not self._group_gone(e):
                raise
            log.warning("The consumer group %r on %s is gone (Redis lost its data?): creating it again", self.group, REQUESTS_STREAM)
            self._group_ready = False
            await self._ensure_group()
            return 0
        handled = 0
        for _stream, entries in batches or []:
            for entry_id, fields in entries:
                await self._handle(fields)
                await self.redis.xack(REQUESTS_STREAM, self.group, entry_id)
                handled += 1
        return handled

    async def _handle(self, fields: Any) -> None:
        request = SubscriptionRequest.from_entry(
            fields, lambda raw: asyncio.ensure_future(self.redis.publish(request.reply_to, raw))
        )
        if request.expired:
            return
        try:
            if self._handler is None:
                await request.deny("the application does not answer subscription requests")
                return
            await _maybe_await(self._handler(request))
        except Exception:
            log.exception("The subscription_request handler failed for channel %s", request.channel)
            if request.answer is None:
                await request.deny("the application failed")
            return
        if request.answer is None:
            await request.deny("the application did not answer")
        else:
            await request.sent  # a task: answered whether or not the handler awaited permit()/deny()

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(REQUESTS_STREAM, self.group, id="$", mkstream=True)
        except Exception as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    # -- the application's own channel subscriptions (callbacks may be async def) ---------------

    def _subscribed(self, channel: str) -> None:
        self._changed_channels()

    def _unsubscribed(self, channel: str) -> None:
        self._changed_channels()

    def _changed_channels(self) -> None:
        """Wakes the listener (from the loop's thread or another): it subscribes within a tenth of a second."""
        loop, changed = self._loop, self._changed
        if loop is not None and changed is not None and not loop.is_closed():
            loop.call_soon_threadsafe(changed.set)

    async def _listen(self, pubsub: Any, subscribed: set[str]) -> None:
        """
        The listener (a task), from ``pubsub`` subscribed to ``subscribed``: subscribes to what the callbacks
        need, as they change, and calls them.  When its connection fails (Redis restarted, a Sentinel failover)
        it connects again, after a back-off, and subscribes to everything again (a PUBLISH made while it was
        away is lost, as pub/sub is).
        """
        assert self._changed is not None
        delay = RECONNECT_FIRST
        try:
            while True:
                self._changed.clear()
                wanted = set(self._pubsub_channels())
                if pubsub is None and not wanted:
                    await self._changed.wait()  # no connection until there is something to hear
                    continue
                try:
                    if pubsub is None:
                        pubsub = self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                        subscribed = set()
                    if wanted - subscribed:
                        await pubsub.subscribe(*sorted(wanted - subscribed))
                        delay = RECONNECT_FIRST  # connected
                    if subscribed - wanted:
                        await pubsub.unsubscribe(*sorted(subscribed - wanted))
                    subscribed = wanted
                    item = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                except Exception as e:
                    log.warning("Channel subscriptions lost Redis (%s); subscribing again in %.1f s", e, delay)
                    await self._close_quietly(pubsub)
                    pubsub = self._pubsub = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX)
                    continue
                if item is not None and item.get("type") == "message":
                    await self._dispatch(item)
        finally:
            await self._close_quietly(pubsub)
            self._pubsub = None

    async def _dispatch(self, item: dict[str, Any]) -> None:
        try:
            found = self._incoming(item["channel"], item["data"])
            if found is not None:
                callback, message, sender = found
                await _maybe_await(callback(message, sender))
        except Exception:
            log.exception("A channel callback failed")

    @staticmethod
    async def _close_quietly(pubsub: Any) -> None:
        if pubsub is not None:
            try:
                await pubsub.aclose() if hasattr(pubsub, "aclose") else await pubsub.close()
            except Exception:  # its connection is gone already
                pass

    # -- running ------------------------------------------------------------------------------

    async def start(self) -> "RedMessenger":
        """
        Serve subscription requests (if a handler is set) and channel subscriptions (those made later too), in
        tasks.  Raises if Redis cannot be reached; once started, the tasks reconnect by themselves.
        """
        if self._handler is not None:
            await self._ensure_group()
        # subscribed here first: when start() returns, the subscriptions are in place
        pubsub: Any = None
        channels = set(self._pubsub_channels())
        if channels:
            pubsub = self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*sorted(channels))
            except BaseException:
                await self._close_quietly(pubsub)
                self._pubsub = None
                raise
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._tasks.append(asyncio.ensure_future(self._listen(pubsub, channels)))
        if self._handler is not None:
            self._tasks.append(asyncio.ensure_future(self._serve()))
        return self

    async def _serve(self) -> None:
        while True:
            try:
                await self.serve_requests_once(block_ms=200)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Reading subscription requests failed; retrying in a second")
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        self._loop = self._changed = None
        await self._close_quietly(self._pubsub)
        self._pubsub = None

    async def aclose(self) -> None:
        await self.stop()
        await (self.redis.aclose() if hasattr(self.redis, "aclose") else self.redis.close())
