"""
The link to Redis: a pub/sub subscriber and a command connection (txredisapi).

Both reconnect by themselves with exponential backoff (txredisapi runs each on
a ``ClientService``); the subscriber re-issues PSUBSCRIBE on every new
connection, since Redis forgets subscriptions with the connection.  Replies are
raw bytes (``charset=None``, ``convertNumbers=False``): a payload such as
``007`` must reach the client as it was published.

While Redis cannot be reached, the first failed attempt is a warning with its
cause, then one a minute (each connection retries at once, then every second), and
``/health`` shows the latest cause.

txredisapi is imported inside functions: importing it installs the default
reactor, which must not happen before twistd has chosen one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IStreamClientEndpoint,
)

from redmessenger.logs import make_logger
from redmessenger.model.keyspace import NODES_CHANNEL
from redmessenger.model.keyspace import SUBSCRIPTION_PATTERNS as PATTERNS
from redmessenger.redis_edge.linkreport import LinkReport
from redmessenger.redis_edge.outage import Attempts, quiet_retry_lines
from redmessenger.redis_edge.probe import PROBE_PREFIX, SubscriptionProbe
from redmessenger.redis_edge.replies import SUBSCRIBER_MIN_READ_SIZE, lean, next_read_size, parsed
from redmessenger.redis_edge.sentinel import (
    Address,
    MasterEndpoint,
    SentinelSettings,
    SentinelWatch,
    close_connections,
    is_master,
)

if TYPE_CHECKING:
    import txredisapi

#: Seconds before the first attempt to reconnect, and between attempts at most (doubling in between).
RECONNECT_FIRST_DELAY = 0.05
RECONNECT_MAX_DELAY = 1.0

#: Seconds a read of the intake stream waits for new entries (XREADGROUP BLOCK).
INTAKE_BLOCK_SECONDS = 1.0


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
    #: The master from Redis Sentinel instead of ``host``/``port`` (redis_edge/sentinel.py).
    sentinel: SentinelSettings | None = None
    #: Seconds between pub/sub probes (0: none); a probe not heard back by the next one ends the subscription.
    probe_interval: float = 5.0

    def describe(self) -> str:
        if self.sentinel is None:
            return f"{self.host}:{self.port}"
        sentinels = ",".join(f"{host}:{port}" for host, port in self.sentinel.sentinels)
        return f"master {self.sentinel.master_name!r} of the sentinels {sentinels}"


def _endpoint(reactor: Any, settings: RedisSettings) -> IStreamClientEndpoint:
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, settings.host, settings.port, timeout=settings.timeout)
    if settings.tls:
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = wrapClientTLS(optionsForClientTLS(settings.host), endpoint)
    return endpoint


class RedisLink:
    """Owns both Redis connections and tells whether they are up."""

    log = make_logger()

    def __init__(
        self,
        reactor: Any,
        settings: RedisSettings,
        on_message: OnMessage,
        on_read: tuple[Callable[[], None], Callable[[], None]] | None = None,
        direct: tuple[bytes, Callable[[bytes], None]] | None = None,
        nodes: tuple[Callable[[bytes], None], Callable[[], object], Callable[[], object]] | None = None,
    ) -> None:
        import txredisapi

        self.report = LinkReport(reactor, settings.describe)
        self.state = self.report.state
        self.outage = self.report.outage
        #: Called before and after the subscriber handles one read from Redis: the
        #: writes of all its messages go out together at its end (no timed call per read).
        self._read_started, self._read_ended = on_read if on_read is not None else (_nothing, _nothing)
        self._reactor = reactor
        self._settings = settings
        #: Where each PUBLISH heard goes (channel, payload); the wiring may point it elsewhere once what
        #: handles them is built (one call less a message than a method forwarding them).
        self.on_message = on_message
        #: The pub/sub probe, on the daemon's own channel (redis_edge/probe.py).
        self.probe = (
            SubscriptionProbe(reactor, settings.probe_interval, direct[0], self.state, self._publish, self._resubscribe)
            if direct is not None and settings.probe_interval > 0
            else None
        )
        #: Whether the subscriber hears rm.nodes (its SUBSCRIBE confirmed): a node beats only then.
        self.hearing_nodes = False
        #: With Sentinel: the master's address, followed through failovers.
        self.sentinel = SentinelWatch(reactor, settings.sentinel, self._master_moved) if settings.sentinel else None
        link = self

        class KeepTrying:
            """
            txredisapi stops reconnecting for good when AUTH or SELECT fails on a
            new connection, be it a refusal or a reply that never came (a Redis not
            up yet behind a proxy).  Keep trying, with the usual backoff; keep the
            reason as the cause of the connection's loss.  (txredisapi's QUIT and
            SHUTDOWN stop trying too; the daemon sends neither.)
            """

            def stopTrying(self) -> Any:
                from twisted.internet.defer import succeed

                return succeed(None)

            def connectionError(self, why: str) -> None:
                link.report.refusal = why  # nobody waits on the factory's Deferred (isLazy): no errback

        class Commands(KeepTrying, txredisapi.RedisFactory):
            pass

        class Subscribers(KeepTrying, txredisapi.SubscriberFactory):
            pass

        class RawReplies(txredisapi.RedisProtocol):
            def dataReceived(self, data: bytes, unpause: bool = False) -> None:
                if not lean(self) or self.inTransaction:
                    super().dataReceived(data, unpause)
                    return
                # HiredisProtocol.dataReceived minus tryConvertData, a no-op
                # here (raw bytes) but a Python call per element of every
                # reply: a thousand per SMEMBERS of a big group.
                for reply in parsed(self._reader, data):
                    self.replyReceived(reply)

            def connectionMade(self) -> Any:
                d = super().connectionMade()
                if link.sentinel is not None:
                    # A sentinel can still name the old master for a moment after a failover: a connection
                    # that reached a replica closes and asks again (the intake's and the inbox's blocking
                    # reads would otherwise fail with READONLY on it for good).
                    self.whenConnected().addCallback(lambda _: self._leave_a_replica())
                return d

            def _leave_a_replica(self) -> None:
                def checked(role: Any) -> None:
                    if not is_master(role) and self.transport is not None:
                        link.log.warn("A Redis connection reached a replica; asking the sentinels again")
                        self.transport.loseConnection()

                self.execute_command("ROLE").addCallbacks(checked, lambda f: None)

        class CommandProtocol(RawReplies):
            def connectionMade(self) -> Any:
                d = super().connectionMade()
                peer = self.transport.getPeer()
                address = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
                self.whenConnected().addCallback(lambda _: link._commands_up(address))
                return d

            def connectionLost(self, why: Any) -> None:
                link.report.commands_down(why)
                super().connectionLost(why)

        class Subscriber(txredisapi.SubscriberProtocol):
            def dataReceived(self, data: bytes, unpause: bool = False) -> None:
                if not lean(self):
                    super().dataReceived(data, unpause)
                    return
                # The live path: each published message goes from hiredis
                # straight to messageReceived (txredisapi would first copy
                # it through tryConvertData and two more dispatch steps).
                link._read_started()
                if link.probe is not None:
                    link.probe.reads += 1
                try:
                    for reply in parsed(self._reader, data):
                        if type(reply) is list and len(reply) == 4 and reply[0] == b"pmessage":
                            self.messageReceived(reply[1], reply[2], reply[3])
                        else:
                            self.replyReceived(reply)
                finally:
                    link._read_ended()
                    self._fit_read_size(len(data))

            def _fit_read_size(self, read: int) -> None:
                transport = self.transport
                size = getattr(transport, "bufferSize", None)
                if size is not None:
                    transport.bufferSize = next_read_size(size, read)

            def connectionMade(self) -> Any:
                if hasattr(self.transport, "bufferSize"):
                    self.transport.bufferSize = SUBSCRIBER_MIN_READ_SIZE
                d = super().connectionMade()
                self.whenConnected().addCallback(lambda _: self._subscribe())
                return d

            def _subscribe(self) -> None:
                d = self.psubscribe(PATTERNS)
                # This daemon's own channel (the application's answers), and the live nodes: SUBSCRIBE, not patterns.
                channels = ([direct[0]] if direct is not None else []) + ([NODES_CHANNEL] if nodes is not None else [])
                if channels:
                    d.addCallback(lambda _: self.subscribe(channels))
                d.addCallbacks(lambda _: link.report.subscribed(), link.report.psubscribe_failed)

            def replyReceived(self, reply: Any) -> None:
                super().replyReceived(reply)
                # Subscribed to rm.nodes: told by its own confirmation (txredisapi may fire the SUBSCRIBE's
                # Deferred with a confirmation of the PSUBSCRIBE before it, when Redis has not seen it yet).
                if nodes is not None and type(reply) is list and reply[:2] == [b"subscribe", NODES_CHANNEL]:
                    link.hearing_nodes = True
                    nodes[1]()

            def messageReceived(self, pattern: bytes | None, channel: bytes, message: bytes) -> None:
                # An exception escaping here would make Twisted drop the
                # subscriber connection: contain it.
                try:
                    if pattern is None and nodes is not None and channel == NODES_CHANNEL:
                        nodes[0](message)
                    elif pattern is None and direct is not None:
                        if message.startswith(PROBE_PREFIX):
                            if link.probe is not None:
                                link.probe.heard(message)
                        else:
                            direct[1](message)
                    else:
                        link.on_message(channel, message)
                except Exception:
                    link.log.failure("Handling a message on {channel!r} failed", channel=channel)

            def connectionLost(self, why: Any) -> None:
                link.hearing_nodes = False
                if nodes is not None:
                    nodes[2]()
                link.report.unsubscribed(why, link.probe.take_silence() if link.probe is not None else None)
                super().connectionLost(why)

        def commands_factory(protocol: Any, reply_timeout: float) -> Any:
            factory = Commands(
                f"{settings.host}:{settings.port}",
                settings.db,
                1,  # one connection: commands run in the order they are sent
                isLazy=True,
                charset=None,
                password=settings.password,
                replyTimeout=reply_timeout,
                convertNumbers=False,
                username=settings.username,
            )
            factory.protocol = protocol
            return factory

        self._commands = commands_factory(CommandProtocol, settings.timeout)
        # A connection of its own for the intake stream: its reads block (XREADGROUP
        # ... BLOCK), which must not hold up the commands behind them.
        self._reading = commands_factory(RawReplies, settings.timeout + INTAKE_BLOCK_SECONDS)
        self._reading_started = False
        # And one for this node's inbox (redis_edge/peers.py), which blocks as well.
        self._inbox = commands_factory(RawReplies, settings.timeout + INTAKE_BLOCK_SECONDS)
        self._inbox_started = False
        self._subscriber = Subscribers(isLazy=True)
        self._subscriber.protocol = Subscriber
        self._subscriber.charset = None
        self._subscriber.convertNumbers = False
        self._subscriber.password = settings.password
        self._subscriber.username = settings.username
        for factory in (self._commands, self._subscriber, self._reading, self._inbox):
            # Back at once when Redis is (a restart takes a second or two), then
            # an attempt a second: PUBLISHes made while the subscriber is away
            # reach nobody, so every second counts.  An attempt is one TCP connect.
            factory.initialDelay = RECONNECT_FIRST_DELAY
            factory.factor = 2.0
            factory.maxDelay = RECONNECT_MAX_DELAY
        quiet_retry_lines()

    @property
    def commands(self) -> "txredisapi.ConnectionHandler":
        """The command connection; commands sent while it is down wait for it."""
        return self._commands.handler

    @property
    def reading(self) -> "txredisapi.ConnectionHandler":
        """The intake stream's connection (see :meth:`start_reading`)."""
        return self._reading.handler

    def start_reading(self) -> None:
        """Open the intake stream's connection (only when the intake is on)."""
        if not self._reading_started:
            self._reading_started = True
            self._reading.startConnecting(Attempts(self._endpoint(), lambda why: None))

    @property
    def inbox(self) -> "txredisapi.ConnectionHandler":
        """This node's inbox connection (see :meth:`start_inbox`)."""
        return self._inbox.handler

    def start_inbox(self) -> None:
        """Open the inbox's connection."""
        if not self._inbox_started:
            self._inbox_started = True
            self._inbox.startConnecting(Attempts(self._endpoint(), lambda why: None))

    @property
    def ready(self) -> bool:
        return self.state.subscribed and self.state.commands_connected

    def start(self) -> None:
        self.log.info(
            "Connecting to Redis at {where} (db {db}{tls})",
            where=self._settings.describe(),
            db=self._settings.db,
            tls=", TLS" if self._settings.tls else "",
        )
        if self.sentinel is not None:
            self.sentinel.start()
        if self.probe is not None:
            self.probe.start()
        self._commands.startConnecting(Attempts(self._endpoint(), self.report.attempt_failed))
        self._subscriber.startConnecting(Attempts(self._endpoint(), self.report.attempt_failed))

    def _endpoint(self) -> IStreamClientEndpoint:
        if self.sentinel is not None:
            return MasterEndpoint(self._reactor, self.sentinel, self._settings.tls, self._settings.timeout)
        return _endpoint(self._reactor, self._settings)

    def _factories(self) -> list[Any]:
        return (
            [self._subscriber, self._commands]
            + ([self._reading] if self._reading_started else [])
            + ([self._inbox] if self._inbox_started else [])
        )

    def _master_moved(self, address: Address) -> None:
        """Sentinel named another master: close every connection to elsewhere (each reconnects there)."""
        self.state.master_switches += 1
        close_connections(self._factories(), keep=address)

    def _publish(self, channel: bytes, payload: bytes) -> Deferred[Any]:
        return self.commands.execute_command("PUBLISH", channel, payload)  # type: ignore[no-any-return]

    def _resubscribe(self) -> None:
        """Close the subscriber connection (it opens again by itself)."""
        for connection in list(self._subscriber.pool):
            connection.transport.abortConnection()

    def _commands_up(self, address: str) -> None:
        self.report.commands_up(address)
        self._check_mode()

    def _check_mode(self) -> None:
        """A Redis Cluster node is refused: the daemon's keys and scripts assume one keyspace (docs/scale-out.md)."""

        def checked(info: Any) -> None:
            text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
            clustered = any(line.strip() == "cluster_enabled:1" for line in text.splitlines())
            why = (
                f"{self.state.address} is a Redis Cluster node: Redis Cluster is not supported (docs/scale-out.md); "
                "the queues of users whose keys live on other nodes could not be written"
            )
            if clustered and self.state.unsupported is None:
                self.log.error("{why}", why=why)
            self.state.unsupported = why if clustered else None

        self.commands.execute_command("INFO", "cluster").addCallbacks(checked, lambda f: None)

    def unsubscribe(self) -> Deferred[Any]:
        """
        PUNSUBSCRIBE, first step of leaving Redis: no message comes after its
        answer, and every message Redis sent before it has been handled (replies
        arrive in order), so nothing Redis counted as delivered to us is dropped.
        """
        from twisted.internet.defer import succeed

        self.report.stopping = True
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

        self.report.stopping = True
        if self.probe is not None:
            self.probe.stop()
        stopping = [factory.disconnect() for factory in self._factories()]
        if self.sentinel is not None:
            stopping.append(self.sentinel.stop())
        return gatherResults(stopping, consumeErrors=True)

def _nothing() -> None:
    pass
