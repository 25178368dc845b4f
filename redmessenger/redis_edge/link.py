"""
The link to Redis: a pub/sub subscriber and a command connection (txredisapi).

Both reconnect by themselves with exponential backoff (txredisapi runs each on
a ``ClientService``); the subscriber re-issues PSUBSCRIBE on every new
connection, since Redis forgets subscriptions with the connection.  Replies are
raw bytes (``charset=None``, ``convertNumbers=False``): a payload such as
``007`` must reach the client as it was published.

txredisapi is imported inside functions: importing it installs the default
reactor, which must not happen before twistd has chosen one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint

from redmessenger.core.ports import LinkState
from redmessenger.logs import make_logger
from redmessenger.model.keyspace import SUBSCRIPTION_PATTERNS as PATTERNS

if TYPE_CHECKING:
    import txredisapi

#: Bytes the subscriber reads from Redis per reactor turn (Twisted's default: 64 KB).
SUBSCRIBER_READ_SIZE = 1 << 20

OnMessage = Callable[[bytes, bytes], None]


@dataclass
class RedisSettings:
    host: str
    port: int
    password: str | None = None
    username: str | None = None
    db: int = 0
    tls: bool = False
    timeout: float = 10.0


def _parsed(reader: Any, data: bytes) -> Iterator[Any]:
    """The complete replies hiredis can parse once ``data`` is fed to it."""
    if data:
        reader.feed(data)
    reply = reader.gets()
    while reply is not False:
        yield reply
        reply = reader.gets()


def _lean(protocol: Any) -> bool:
    """Whether replies can skip txredisapi's conversions: hiredis parses them, and they stay raw bytes."""
    return hasattr(protocol, "_reader") and protocol.charset is None and not protocol.convertNumbers


def _endpoint(reactor: Any, settings: RedisSettings) -> IStreamClientEndpoint:
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, settings.host, settings.port, timeout=settings.timeout)
    if settings.tls:
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = wrapClientTLS(optionsForClientTLS(settings.host), endpoint)
    return endpoint


class RedisLink:
    """Owns both Redis connections and tells whether they are up."""

    log = make_logger()

    def __init__(self, reactor: Any, settings: RedisSettings, on_message: OnMessage) -> None:
        import txredisapi

        self.state = LinkState()
        self._stopping = False
        self._reactor = reactor
        self._settings = settings
        link = self

        class CommandProtocol(txredisapi.RedisProtocol):
            def connectionMade(self) -> Any:
                d = super().connectionMade()
                self.whenConnected().addCallback(lambda _: link._commands_up())
                return d

            def connectionLost(self, why: Any) -> None:
                link._commands_down(why)
                super().connectionLost(why)

            def dataReceived(self, data: bytes, unpause: bool = False) -> None:
                if not _lean(self) or self.inTransaction:
                    super().dataReceived(data, unpause)
                    return
                # HiredisProtocol.dataReceived minus tryConvertData, a no-op
                # here (raw bytes) but a Python call per element of every
                # reply: a thousand per SMEMBERS of a big group.
                for reply in _parsed(self._reader, data):
                    self.replyReceived(reply)

        class Subscriber(txredisapi.SubscriberProtocol):
            def dataReceived(self, data: bytes, unpause: bool = False) -> None:
                if not _lean(self):
                    super().dataReceived(data, unpause)
                    return
                # The live path: each published message goes from hiredis
                # straight to messageReceived (txredisapi would first copy
                # it through tryConvertData and two more dispatch steps).
                for reply in _parsed(self._reader, data):
                    if type(reply) is list and len(reply) == 4 and reply[0] == b"pmessage":
                        self.messageReceived(reply[1], reply[2], reply[3])
                    else:
                        self.replyReceived(reply)

            def connectionMade(self) -> Any:
                # Read more than Twisted's 64 KB a turn: under a burst each
                # socket then gets several frames per turn, sent in one write.
                if hasattr(self.transport, "bufferSize"):
                    self.transport.bufferSize = SUBSCRIBER_READ_SIZE
                d = super().connectionMade()
                self.whenConnected().addCallback(lambda _: self._subscribe())
                return d

            def _subscribe(self) -> None:
                self.psubscribe(PATTERNS).addCallbacks(
                    lambda _: link._subscribed(), lambda f: link.log.failure("PSUBSCRIBE failed", f)
                )

            def messageReceived(self, pattern: bytes, channel: bytes, message: bytes) -> None:
                # An exception escaping here would make Twisted drop the
                # subscriber connection: contain it.
                try:
                    on_message(channel, message)
                except Exception:
                    link.log.failure("Handling a message on {channel!r} failed", channel=channel)

            def connectionLost(self, why: Any) -> None:
                link._unsubscribed(why)
                super().connectionLost(why)

        self._commands = txredisapi.RedisFactory(
            f"{settings.host}:{settings.port}",
            settings.db,
            1,  # one connection: commands run in the order they are sent
            isLazy=True,
            charset=None,
            password=settings.password,
            replyTimeout=settings.timeout,
            convertNumbers=False,
            username=settings.username,
        )
        self._commands.protocol = CommandProtocol
        self._subscriber = txredisapi.SubscriberFactory(isLazy=True)
        self._subscriber.protocol = Subscriber
        self._subscriber.charset = None
        self._subscriber.convertNumbers = False
        self._subscriber.password = settings.password
        self._subscriber.username = settings.username
        for factory in (self._commands, self._subscriber):
            factory.maxDelay = 5  # seconds between attempts, at most

    @property
    def commands(self) -> "txredisapi.ConnectionHandler":
        """The command connection; commands sent while it is down wait for it."""
        return self._commands.handler

    @property
    def ready(self) -> bool:
        return self.state.subscribed and self.state.commands_connected

    def start(self) -> None:
        self.log.info(
            "Connecting to Redis at {host}:{port} (db {db}{tls})",
            host=self._settings.host,
            port=self._settings.port,
            db=self._settings.db,
            tls=", TLS" if self._settings.tls else "",
        )
        self._commands.startConnecting(_endpoint(self._reactor, self._settings))
        self._subscriber.startConnecting(_endpoint(self._reactor, self._settings))

    def unsubscribe(self) -> Deferred[Any]:
        """
        PUNSUBSCRIBE, first step of leaving Redis: no message comes after its
        answer, and every message Redis sent before it has been handled (replies
        arrive in order), so nothing Redis counted as delivered to us is dropped.
        """
        from twisted.internet.defer import succeed

        self._stopping = True
        if not self.state.subscribed:
            return succeed(None)
        self.state.subscribed = False
        return self._subscriber.handler.punsubscribe(PATTERNS)  # type: ignore[no-any-return]

    def round_trip(self) -> Deferred[Any]:
        """
        A PING on the command connection: fires once every command sent before
        it has been answered.  At once while the connection is down: it would
        only wait for a reconnection.
        """
        from twisted.internet.defer import succeed

        if not self.state.commands_connected:
            return succeed(None)
        return self.commands.execute_command("PING")  # type: ignore[no-any-return]

    def stop(self) -> Deferred[Any]:
        from twisted.internet.defer import gatherResults

        self._stopping = True
        return gatherResults([self._subscriber.disconnect(), self._commands.disconnect()], consumeErrors=True)

    # -- state, logged ------------------------------------------------------------

    def _commands_up(self) -> None:
        self.state.commands_connected = True
        self.log.info("Redis command connection up")

    def _commands_down(self, why: Any) -> None:
        if self.state.commands_connected and not self._stopping:
            self.state.reconnects += 1
            self.state.last_error = why.getErrorMessage()
            self.log.warn("Redis command connection lost ({why}); reconnecting", why=self.state.last_error)
        self.state.commands_connected = False

    def _subscribed(self) -> None:
        self.state.subscribed = True
        self.log.info("Subscribed to {patterns} on Redis", patterns=" and ".join(p.decode() for p in PATTERNS))

    def _unsubscribed(self, why: Any) -> None:
        if self.state.subscribed and not self._stopping:
            self.state.last_error = why.getErrorMessage()
            self.log.warn("Redis subscriber connection lost ({why}); reconnecting", why=self.state.last_error)
        self.state.subscribed = False
