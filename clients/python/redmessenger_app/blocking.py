"""
The blocking flavour, for WSGI applications (Django, Flask) and scripts: plain
function calls on valkey-py; the subscription requests and the channel
subscriptions are served by background threads.  Importing it needs neither
Twisted nor Autobahn.

    from redmessenger_app.blocking import RedMessenger

    rm = RedMessenger()                        # REDMESSENGER_* from the environment or .env
    rm.publish("room", {"text": "hi"})         # to the channel's subscribers and members
    rm.publish_to_user("alice", "hello")       # to alice, queued while she is away

    @rm.on("subscription_request")
    def authorize(request):
        if request.client_auth == "ok":
            request.permit("read_only")
        else:
            request.deny("members only")

    rm.start()                                 # the threads; rm.stop() at exit
"""

from __future__ import annotations

import inspect
import logging
import threading
from typing import Any, Optional

from redmessenger_app.base import RECONNECT_FIRST, RECONNECT_MAX, Application, Callback, Handler
from redmessenger_app.protocol import (
    DEFAULT_GROUP,
    INTAKE_STREAM,
    REQUESTS_STREAM,
    Sender,
    Settings,
    SubscriptionRequest,
    group_channel,
    parse_sentinel_url,
    payload_of,
    user_channel,
)

log = logging.getLogger("redmessenger_app")


def _redis_module() -> Any:
    try:
        import valkey

        return valkey
    except ImportError:  # redis-py has the same API
        import redis

        return redis


def _connect(url: str) -> Any:
    """A client for ``url``; for a ``redis+sentinel://`` URL, one that asks the sentinels for the master."""
    module = _redis_module()
    sentinel = parse_sentinel_url(url)
    if sentinel is None:
        return module.Redis.from_url(url)
    import importlib

    sentinels = importlib.import_module(module.__name__ + ".sentinel").Sentinel(list(sentinel.sentinels), **sentinel.sentinel_options())
    return sentinels.master_for(sentinel.master_name, **sentinel.master_options())


class RedMessenger(Application):
    """The application's handle on RedMessenger, over one Redis connection pool."""

    def __init__(
        self,
        settings: Optional[Settings] = None,
        *,
        redis: Any = None,
        group: str = DEFAULT_GROUP,
        consumer: Optional[str] = None,
    ) -> None:
        super().__init__(settings, group, consumer)
        self.redis = redis if redis is not None else _connect(self.settings.redis_url)
        self._pubsub: Any = None  # the reader's, while it has one
        self._pubsub_thread: Optional[threading.Thread] = None
        #: This run's stop (a new one per start(): a reader of a run before, still in a slow callback, stays stopped).
        self._stop = threading.Event()
        #: Held while a reader is started: two threads subscribing at once start one reader, not two.
        self._starting = threading.Lock()
        self._started = False
        self._requests_thread: Optional[threading.Thread] = None

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, channel: str, message: Any) -> str:
        """
        To the channel's subscribers and its members (queued for those away).
        Through the durable intake: once this returns (the entry's id), the message
        is kept until a daemon delivered or queued it, even if none runs right now.
        """
        return self._add(group_channel(channel), message)

    def publish_to_user(self, uid: str, message: Any) -> str:
        """To every live socket of ``uid``, or into their queue; durable as :meth:`publish`."""
        return self._add(user_channel(uid), message)

    def _add(self, channel: str, message: Any) -> str:
        entry = self.redis.xadd(INTAKE_STREAM, {"channel": channel, "payload": payload_of(message)})
        return entry.decode("ascii") if isinstance(entry, bytes) else str(entry)

    # -- subscription requests ------------------------------------------------------------------

    def _accepts(self, handler: Handler) -> None:
        if inspect.iscoroutinefunction(handler):
            raise TypeError("an async handler needs the asyncio flavour (redmessenger_app.aio)")

    def serve_requests_once(self, block_ms: int = 1000) -> int:
        """Read and answer the requests waiting (at most 100); how many.  :meth:`start` runs this in a thread."""
        self._ensure_group()
        try:
            batches = self.redis.xreadgroup(self.group, self.consumer, {REQUESTS_STREAM: ">"}, count=100, block=block_ms)
        except Exception as e:
            if not self._group_gone(e):
                raise
            log.warning("The consumer group %r on %s is gone (Redis lost its data?): creating it again", self.group, REQUESTS_STREAM)
            self._group_ready = False
            self._ensure_group()
            return 0
        handled = 0
        for _stream, entries in batches or []:
            for entry_id, fields in entries:
                self._handle(fields)
                self.redis.xack(REQUESTS_STREAM, self.group, entry_id)
                handled += 1
        return handled

    def _handle(self, fields: Any) -> None:
        request = SubscriptionRequest.from_entry(fields, lambda raw: self.redis.publish(request.reply_to, raw))
        if request.expired:
            return  # the daemon has denied it already
        if self._handler is None:
            request.deny("the application does not answer subscription requests")
            return
        try:
            self._handler(request)
        except Exception:
            log.exception("The subscription_request handler failed for channel %s", request.channel)
            if request.answer is None:
                request.deny("the application failed")
            return
        if request.answer is None:
            request.deny("the application did not answer")

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self.redis.xgroup_create(REQUESTS_STREAM, self.group, id="$", mkstream=True)
        except Exception as e:  # BUSYGROUP: another worker made it; anything else is real
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    # -- the application's own channel subscriptions ------------------------------------------

    def _subscribed(self, channel: str) -> None:
        with self._starting:
            if self._started and self._pubsub_thread is None:
                self._start_pubsub()
        # else a running reader subscribes within a tenth of a second (it alone uses its connection)

    def _listen(self, pubsub: Any, subscribed: set[str], stop: threading.Event) -> None:
        """
        The pub/sub reader (a thread), from ``pubsub`` subscribed to ``subscribed``: subscribes to what the
        callbacks need, as they change, and calls them.  When its connection fails (Redis restarted, a Sentinel
        failover) it connects again, after a back-off, and subscribes to everything again (a PUBLISH made while
        it was away is lost, as pub/sub is).
        """
        delay = RECONNECT_FIRST
        try:
            while not stop.is_set():
                try:
                    wanted = set(self._pubsub_channels())
                    if pubsub is None:
                        pubsub = self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                        subscribed = set()
                    if wanted - subscribed:
                        pubsub.subscribe(*sorted(wanted - subscribed))
                        delay = RECONNECT_FIRST  # connected
                    if subscribed - wanted:
                        pubsub.unsubscribe(*sorted(subscribed - wanted))
                    subscribed = wanted
                    item = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                    if item is not None and item.get("type") == "message":
                        self._received(item)
                except Exception as e:
                    if stop.is_set():
                        return
                    log.warning("Channel subscriptions lost Redis (%s); subscribing again in %.1f s", e, delay)
                    self._close_quietly(pubsub)
                    pubsub = self._pubsub = None
                    stop.wait(delay)
                    delay = min(delay * 2, RECONNECT_MAX)
        finally:
            self._close_quietly(pubsub)
            self._pubsub = None

    @staticmethod
    def _close_quietly(pubsub: Any) -> None:
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # its connection is gone already
                pass

    def _received(self, item: dict[str, Any]) -> None:
        try:
            found = self._incoming(item["channel"], item["data"])
        except Exception:  # not what the daemons write there
            log.exception("A malformed message on %r", item["channel"])
            return
        if found is not None:
            callback, message, sender = found
            self._call(callback, message, sender)

    @staticmethod
    def _call(callback: Callback, message: Any, sender: Optional[Sender]) -> None:
        try:
            callback(message, sender)
        except Exception:
            log.exception("A channel callback failed")

    # -- running ------------------------------------------------------------------------------

    def start(self) -> "RedMessenger":
        """
        Serve subscription requests (if a handler is set) and channel subscriptions, in background threads.
        Raises if Redis cannot be reached; once started, the threads reconnect by themselves.
        """
        self._stop = stop = threading.Event()
        with self._starting:
            self._started = True
            if self._callbacks and self._pubsub_thread is None:
                self._start_pubsub()
        if self._handler is not None:
            self._ensure_group()
            self._requests_thread = threading.Thread(target=self._serve, args=(stop,), name="redmessenger-requests", daemon=True)
            self._requests_thread.start()
        return self

    def _start_pubsub(self) -> None:
        """The reader, subscribed here first: when start() returns, the subscriptions are in place."""
        pubsub = self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        channels = set(self._pubsub_channels())
        try:
            if channels:
                pubsub.subscribe(*sorted(channels))
        except BaseException:
            self._close_quietly(pubsub)
            self._pubsub = None
            raise
        self._pubsub_thread = threading.Thread(
            target=self._listen, args=(pubsub, channels, self._stop), name="redmessenger-pubsub", daemon=True
        )
        self._pubsub_thread.start()

    def _serve(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.serve_requests_once(block_ms=200)
            except Exception:
                if stop.is_set():
                    return
                log.exception("Reading subscription requests failed; retrying in a second")
                stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        with self._starting:
            self._started = False
        if self._requests_thread is not None:
            self._requests_thread.join(5)
            self._requests_thread = None
        if self._pubsub_thread is not None:
            self._pubsub_thread.join(5)
            self._pubsub_thread = None
