"""
The Twisted flavour, on txredisapi (as the daemon itself): the same calls as
the blocking flavour, returning Deferreds; handlers and callbacks may return a
Deferred or be ``async def``.

    from redmessenger_app.twisted import RedMessenger

    rm = RedMessenger()
    yield rm.publish("room", {"text": "hi"})      # fires with the intake entry's id

    @rm.on("subscription_request")
    def authorize(request):
        return check(request).addCallback(lambda ok: request.permit() if ok else request.deny("no"))

    rm.start()                                     # rm.stop() returns a Deferred
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from redmessenger_app.base import Application
from redmessenger_app.protocol import (
    DEFAULT_GROUP,
    INTAKE_STREAM,
    REQUESTS_STREAM,
    SentinelURL,
    Settings,
    SubscriptionRequest,
    client_channel,
    group_channel,
    parse_sentinel_url,
    payload_of,
    user_channel,
)


_log = Logger(namespace="redmessenger_app")


def _connection_arguments(url: str) -> dict[str, Any]:
    sentinel = parse_sentinel_url(url)
    if sentinel is not None:
        if sentinel.tls:
            raise ValueError(
                "the Twisted flavour does not take rediss+sentinel:// (TLS to the master the sentinels name) yet: "
                "use the blocking or asyncio flavour, or rediss:// to the master"
            )
        return {
            "host": sentinel.master_name,  # (for the messages: the master's address is the sentinels' to say)
            "port": 0,
            "dbid": sentinel.db or None,
            "password": sentinel.password,
            "username": sentinel.username,
            "ssl_context_factory": False,
            "charset": None,
            "convertNumbers": False,
        }
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(
            f"the Twisted flavour takes redis://, rediss:// or redis+sentinel:// URLs, not {parts.scheme}://"
        )
    db = parts.path.lstrip("/")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "dbid": int(db) if db else None,
        "password": unquote(parts.password) if parts.password else None,
        "username": unquote(parts.username) if parts.username else None,
        "ssl_context_factory": parts.scheme == "rediss",
        "charset": None,  # raw bytes, as the daemon reads them
        "convertNumbers": False,
    }


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


#: Seconds a look-up of the master waits for a sentinel's answer (then the connection is tried again).
DISCOVERY_TIMEOUT = 10.0


@implementer(IStreamClientEndpoint)
class _SentinelMaster:
    """
    Connects to the master the sentinels name, asking them before each connection (a failover moves it).  Not
    txredisapi's ``Sentinel.master_for``: its connections compare ROLE's answer with text (raw bytes here, as the
    daemon reads them: never a match), ROLE needs an @admin permission applications seldom have, and its look-up's
    timer outlives a stop.
    """

    def __init__(self, sentinel: SentinelURL) -> None:
        import txredisapi

        self.sentinel = sentinel
        options = {"password": sentinel.sentinel_password} if sentinel.sentinel_password else {}
        #: txredisapi's: a connection to each sentinel, and its reading of their answers (check_master_state)
        self.sentinels = txredisapi.Sentinel(list(sentinel.sentinels), **options)
        #: Look-ups under way (stop() ends them).
        self._looking: set[Deferred[tuple[str, int]]] = set()

    def connect(self, factory: Any) -> Deferred[Any]:
        return ensureDeferred(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        from twisted.internet import reactor
        from twisted.internet.endpoints import HostnameEndpoint

        host, port = await self._discover()
        return await HostnameEndpoint(reactor, host, port, timeout=5).connect(factory)

    async def _discover(self) -> tuple[str, int]:
        """Where the master is, as the first sentinel to answer names it (a master it does not see down)."""
        from twisted.internet import reactor

        found: Deferred[tuple[str, int]] = Deferred()

        def answer(masters: Any) -> None:
            state = masters.get(self.sentinel.master_name) if isinstance(masters, dict) else None
            if state and not found.called and self.sentinels.check_master_state(state):
                found.callback((_text(state["ip"]), int(state["port"])))

        for sentinel in self.sentinels.sentinels:
            sentinel.sentinel_masters().addCallbacks(answer, lambda _: None)
        found.addTimeout(DISCOVERY_TIMEOUT, reactor)
        self._looking.add(found)
        try:
            return await found
        finally:
            self._looking.discard(found)

    def stop(self) -> Deferred[Any]:
        """End the look-ups under way and close the connections to the sentinels."""
        for looking in list(self._looking):
            looking.cancel()
        return self.sentinels.disconnect()  # type: ignore[no-any-return]

    def connection(self, arguments: dict[str, Any], poolsize: int) -> Any:
        """A lazy txredisapi handler of ``poolsize`` connections to the master."""
        import txredisapi

        class Master(txredisapi.RedisProtocol):
            """
            When the server answers READONLY (it is a replica: the sentinels made it one, or one that had not heard
            of a failover named it), every connection of the pool is dropped and made again to the master the
            sentinels name then; the call fails, as with valkey-py in the other flavours: call it again.
            """

            def replyReceived(self, reply: Any) -> None:
                if isinstance(reply, txredisapi.ResponseError) and str(reply).startswith("READONLY"):
                    for connection in [self, *self.factory.pool]:  # the pool's others are on that server too
                        connection.transport.loseConnection()
                super().replyReceived(reply)

        class Factory(txredisapi.RedisFactory):
            protocol = Master
            #: The master is asked for again at each attempt: a failover is the likely reason the last one was lost.
            initialDelay = 0.1

            def retryDelay(self, attempt: int) -> float:
                return 0 if attempt <= 1 else float(super().retryDelay(attempt))

        factory = Factory(
            f"{self.sentinel.master_name} (through the sentinels)", arguments["dbid"], poolsize, True,
            charset=None, password=arguments["password"], convertNumbers=False, username=arguments["username"],
        )  # fmt: skip
        factory.startConnecting(self)
        return factory.handler


class RedMessenger(Application):
    """The application's handle on RedMessenger, for Twisted applications."""

    def __init__(
        self, settings: Optional[Settings] = None, *, group: str = DEFAULT_GROUP, consumer: Optional[str] = None
    ) -> None:
        import txredisapi

        super().__init__(settings, group, consumer)
        self._arguments = _connection_arguments(self.settings.redis_url)
        sentinel = parse_sentinel_url(self.settings.redis_url)
        #: For a ``redis+sentinel://`` URL: the way to the master, through the sentinels.
        self._master = _SentinelMaster(sentinel) if sentinel is not None else None
        self.redis = self._connection(10)
        self._reading: Any = None
        self._subscriber: Any = None
        #: The subscriber's connection while it is connected (ClientService makes a new one after a loss).
        self._subscriber_protocol: Any = None
        self._running = False
        self._serving: Optional[Deferred[None]] = None

    def _connection(self, poolsize: int) -> Any:
        """A lazy txredisapi handler of ``poolsize`` connections: to the server named, or to the sentinels' master."""
        import txredisapi

        if self._master is not None:
            return self._master.connection(self._arguments, poolsize)
        return txredisapi.lazyConnectionPool(poolsize=poolsize, **self._arguments)

    # -- publishing (durable: see the blocking flavour) -----------------------------------------

    def publish(self, channel: str, message: Any) -> Deferred[str]:
        return self._add(group_channel(channel), message)

    def publish_to_user(self, uid: str, message: Any) -> Deferred[str]:
        return self._add(user_channel(uid), message)

    def _add(self, channel: str, message: Any) -> Deferred[str]:
        d: Deferred[Any] = self.redis.execute_command("XADD", INTAKE_STREAM, "*", "channel", channel, "payload", payload_of(message))
        return d.addCallback(_text)

    # -- subscription requests ------------------------------------------------------------------

    async def _serve(self) -> None:
        import txredisapi

        self._reading = self._connection(1)
        while self._running:
            try:
                await self._ensure_group()
                try:
                    reply = await self._reading.execute_command(
                        "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", 100, "BLOCK", 200, "STREAMS", REQUESTS_STREAM, ">"
                    )
                except Exception as e:
                    if not self._group_gone(e):
                        raise
                    _log.warn("The consumer group {group} on {stream} is gone (Redis lost its data?): creating it again",
                              group=self.group, stream=REQUESTS_STREAM)  # fmt: skip
                    self._group_ready = False
                    continue
                for _stream, entries in reply or []:
                    for entry_id, raw in entries:
                        fields = dict(zip(raw[::2], raw[1::2])) if raw else {}
                        await self._handle(fields)
                        await self.redis.execute_command("XACK", REQUESTS_STREAM, self.group, entry_id)
            except Exception:
                if not self._running:
                    return
                from twisted.internet import reactor
                from twisted.internet.task import deferLater

                await deferLater(reactor, 1.0, lambda: None)  # Redis away: try again in a second

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.execute_command("XGROUP", "CREATE", REQUESTS_STREAM, self.group, "$", "MKSTREAM")
        except Exception as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    async def _handle(self, fields: Any) -> None:
        request = SubscriptionRequest.from_entry(fields, lambda raw: self.redis.execute_command("PUBLISH", request.reply_to, raw))
        if request.expired:
            return
        if self._handler is None:
            await request.deny("the application does not answer subscription requests")
            return
        try:
            result = self._handler(request)
            if hasattr(result, "__await__") and not isinstance(result, Deferred):
                result = ensureDeferred(result)
            await maybeDeferred(lambda: result)
        except Exception:
            if request.answer is None:
                await request.deny("the application failed")
            return
        if request.answer is None:
            await request.deny("the application did not answer")
        else:
            await request.sent

    # -- the application's own channel subscriptions ------------------------------------------

    def _subscribed(self, channel: str) -> None:
        if not self._running:
            return  # subscribed at start()
        if self._subscriber is None:
            self._start_subscriber()  # subscribes to every channel once connected
        elif self._subscriber_protocol is not None:
            self._send(self._subscriber_protocol.subscribe([client_channel(channel), group_channel(channel)]))
        # else connecting: it subscribes to every channel once connected

    def _unsubscribed(self, channel: str) -> None:
        if self._subscriber_protocol is not None:
            self._send(self._subscriber_protocol.unsubscribe([client_channel(channel), group_channel(channel)]))

    def _attach(self, protocol: Any) -> None:
        """A subscriber connection is ready: subscribe it to every channel the callbacks need now."""
        self._subscriber_protocol = protocol
        channels = self._pubsub_channels()
        if channels:
            self._send(protocol.subscribe(channels))

    def _detach(self, protocol: Any) -> None:
        if self._subscriber_protocol is protocol:
            self._subscriber_protocol = None

    @staticmethod
    def _send(d: Deferred[Any]) -> None:
        """A SUBSCRIBE or UNSUBSCRIBE sent: a lost connection is made again, and subscribes again, by itself."""
        d.addErrback(lambda failure: _log.warn("A pub/sub command failed: {error}", error=failure.getErrorMessage()))

    def _start_subscriber(self) -> None:
        import txredisapi
        from twisted.internet import reactor

        owner = self

        class Subscriber(txredisapi.SubscriberProtocol):
            def connectionMade(self) -> Any:
                d = super().connectionMade()
                self.whenConnected().addCallback(lambda _: owner._attach(self))
                return d

            def connectionLost(self, why: Any) -> Any:
                owner._detach(self)
                return super().connectionLost(why)

            def messageReceived(self, pattern: Any, name: bytes, data: bytes) -> None:
                try:
                    found = owner._incoming(name, data)
                    if found is not None:
                        callback, message, sender = found
                        result = callback(message, sender)
                        if hasattr(result, "__await__") and not isinstance(result, Deferred):
                            result = ensureDeferred(result)
                        if isinstance(result, Deferred):
                            result.addErrback(lambda failure: _log.failure("A channel callback failed", failure))
                except Exception:
                    _log.failure("A channel callback failed, or a malformed message on {name!r}", name=name)

        from twisted.application.internet import ClientService
        from twisted.internet.endpoints import HostnameEndpoint

        factory = txredisapi.SubscriberFactory()
        factory.protocol = Subscriber
        factory.charset = None
        factory.password = self._arguments["password"]
        factory.username = self._arguments["username"]
        # reconnects by itself (and subscribes again on each new connection); through the sentinels, to the master
        # they name then (they close the pub/sub connections of a master they make a replica)
        endpoint: Any = self._master
        if endpoint is None:
            endpoint = HostnameEndpoint(reactor, self._arguments["host"], self._arguments["port"])
            if self._arguments["ssl_context_factory"]:
                from twisted.internet.endpoints import wrapClientTLS
                from twisted.internet.ssl import optionsForClientTLS

                endpoint = wrapClientTLS(optionsForClientTLS(self._arguments["host"]), endpoint)
        self._subscriber = ClientService(endpoint, factory)
        self._subscriber.startService()

    # -- running ------------------------------------------------------------------------------

    def start(self) -> "RedMessenger":
        self._running = True
        if self._handler is not None:
            self._serving = ensureDeferred(self._serve())
        if self._callbacks:
            self._start_subscriber()
        return self

    def stop(self) -> Deferred[None]:
        self._running = False
        waits: list[Deferred[Any]] = []
        if self._subscriber is not None:
            waits.append(self._subscriber.stopService())
            self._subscriber = None
            self._subscriber_protocol = None
        if self._reading is not None:
            waits.append(self._reading.disconnect())
        if self._serving is not None:
            waits.append(self._serving)
        waits.append(self.redis.disconnect())
        if self._master is not None:
            waits.append(self._master.stop())
        from twisted.internet.defer import DeferredList

        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)
