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

from redmessenger_app.base import Application
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
        self._pubsub: Any = None

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
        batches = await self.redis.xreadgroup(self.group, self.consumer, {REQUESTS_STREAM: ">"}, count=100, block=block_ms)
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

    # -- the application's own channel subscriptions (callbacks may be async def; from start()) --

    async def _listen(self) -> None:
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(*self._pubsub_channels())
        async for item in self._pubsub.listen():
            if item.get("type") != "message":
                continue
            try:
                found = self._incoming(item["channel"], item["data"])
                if found is not None:
                    callback, message, sender = found
                    await _maybe_await(callback(message, sender))
            except Exception:
                log.exception("A channel callback failed")

    # -- running ------------------------------------------------------------------------------

    async def start(self) -> "RedMessenger":
        if self._handler is not None:
            await self._ensure_group()
            self._tasks.append(asyncio.ensure_future(self._serve()))
        if self._callbacks:
            self._tasks.append(asyncio.ensure_future(self._listen()))
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
        if self._pubsub is not None:
            await self._pubsub.aclose() if hasattr(self._pubsub, "aclose") else await self._pubsub.close()
            self._pubsub = None

    async def aclose(self) -> None:
        await self.stop()
        await (self.redis.aclose() if hasattr(self.redis, "aclose") else self.redis.close())
