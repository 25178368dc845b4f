"""
Redis Sentinel: which server is the master, now and after a failover.

The link's connections go through :class:`MasterEndpoint`, which asks the
sentinels for the master's address before every connection attempt (txredisapi's
``Sentinel.discover_master``: every sentinel is asked, the first valid answer
wins, a master seen as down does not count).  :class:`SentinelWatch` notices a
failover two ways and moves the link when it sees one:

- ``+switch-master`` on each sentinel's pub/sub (the sentinels announce a
  failover the moment it is done);
- a poll of the master's address every ``poll_interval`` seconds, so that a
  missed announcement (a sentinel connection down at that moment) cannot leave
  the daemon on a demoted master for longer than that.

Moving the link means closing its connections: each reconnects through the
endpoint, which asks again.  Each command connection also checks ``ROLE`` once
connected (a sentinel can answer with a stale address during a failover): one
that reached a replica closes and asks again.  The subscriber needs no check: on
a replica, the pub/sub probe finds nobody subscribed on the master and
resubscribes it (redis_edge/probe.py).

txredisapi is imported inside functions: importing it installs the default
reactor, which must not happen before twistd has chosen one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from redmessenger.logs import make_logger

Address = tuple[str, int]


@dataclass(frozen=True)
class SentinelSettings:
    #: The sentinels, ``(host, port)``; any one that answers will do.
    sentinels: tuple[Address, ...]
    #: The name the sentinels monitor the master under (``sentinel monitor <name> ...``).
    master_name: str
    #: The sentinels' own password (``requirepass`` in sentinel.conf), if any.
    password: str | None = field(default=None, repr=False)
    #: Seconds between polls of the master's address.
    poll_interval: float = 5.0


def parse_switch(message: str, master_name: str) -> Address | None:
    """The new master from a ``+switch-master`` message (``<name> <old ip> <old port> <new ip> <new port>``)."""
    parts = message.split()
    if len(parts) != 5 or parts[0] != master_name:
        return None
    try:
        port = int(parts[4])
    except ValueError:
        return None
    return (parts[3], port) if 0 < port < 65536 else None


class SentinelWatch:
    """The master's address as the sentinels say it, and who to tell when it changes."""

    log = make_logger()

    def __init__(self, reactor: Any, settings: SentinelSettings, on_switch: Callable[[Address], object]) -> None:
        import txredisapi

        self._reactor = reactor
        self.settings = settings
        self._on_switch = on_switch
        self._sentinel = txredisapi.Sentinel(
            list(settings.sentinels), password=settings.password, charset="utf-8", connectTimeout=5
        )
        #: The master's address as last heard from the sentinels (None before the first answer).
        self.master: Address | None = None
        #: Failovers seen (the master's address changed), how the last one was learnt, and the last
        #: error asking the sentinels.
        self.switches = 0
        self.last_source: str | None = None
        self.last_error: str | None = None
        self._poll = LoopingCall(self._poll_once)
        self._poll.clock = reactor
        self._listeners: list[Any] = []
        self._pending: set[Any] = set()  # the timeouts of discoveries under way
        #: The discoveries waiting for an answer: each answer is offered to them all.
        self._waiting: list[Callable[[Any], None]] = []
        #: The sentinels (by their place in the list) with a question on its way.  One at a time each: a
        #: sentinel that is down holds its question until it is back (txredisapi waits for a connection), so
        #: asking it again at each discovery would pile questions up (3.9 KB each, for ever, found by a review).
        self._asking: set[int] = set()
        self._running = False

    def start(self) -> None:
        self._running = True
        self._poll.start(self.settings.poll_interval, now=False)
        for host, port in self.settings.sentinels:
            self._listeners.append(self._listen(host, port))

    def stop(self) -> Deferred[Any]:
        from twisted.internet.defer import gatherResults

        self._running = False
        if self._poll.running:
            self._poll.stop()
        stopping = [listener.disconnect() for listener in self._listeners]
        self._listeners = []
        for timeout in list(self._pending):  # end the discoveries under way (they fail: nobody needs them now)
            if timeout.active():
                timeout.reset(0)
        stopping.append(self._sentinel.disconnect())
        return gatherResults(stopping, consumeErrors=True)

    def discover(self, why: str = "connecting") -> Deferred[Address]:
        """
        Ask every sentinel for the master; the first that names one it sees up
        (txredisapi's ``Sentinel.check_master_state``) answers.  A sentinel
        whose previous question is still unanswered is not asked again: its
        answer, when it comes, goes to every discovery then waiting.  Fails with
        MasterNotFoundError when none answered within ``poll_interval``, or at
        once once the watch is stopped.
        """
        import txredisapi

        result: Deferred[Any] = Deferred()
        name = self.settings.master_name

        def answered(masters: Any) -> None:
            state = masters.get(name) if isinstance(masters, dict) else None
            if not result.called and state and self._sentinel.check_master_state(state):
                settled()
                result.callback((state["ip"], int(state["port"])))

        def settled() -> None:
            self._pending.discard(timeout)
            if timeout.active():
                timeout.cancel()
            if answered in self._waiting:
                self._waiting.remove(answered)

        def timed_out() -> None:
            settled()
            if not result.called:
                result.errback(txredisapi.MasterNotFoundError(f"no sentinel named a master for {name!r}"))

        timeout = self._reactor.callLater(self.settings.poll_interval, timed_out)
        self._pending.add(timeout)
        self._waiting.append(answered)
        for place, sentinel in enumerate(self._sentinel.sentinels):
            if place not in self._asking:
                self._asking.add(place)
                sentinel.sentinel_masters().addCallbacks(self._answer, lambda f: None).addBoth(
                    lambda _, place=place: self._asking.discard(place)
                )
        found: Deferred[Address] = result.addCallback(self._heard, why)
        found.addErrback(self._not_heard)
        return found

    def _answer(self, masters: Any) -> None:
        """A sentinel's answer, offered to every discovery waiting (each takes it if it names a master up)."""
        for answered in list(self._waiting):
            answered(masters)

    def _heard(self, address: Any, why: str) -> Address:
        found = (str(address[0]), int(address[1]))
        self.last_error = None
        self._learn(found, f"the sentinels' answer when {why}")
        return found

    def _not_heard(self, failure: Failure) -> Failure:
        self.last_error = failure.getErrorMessage()
        return failure

    def _learn(self, address: Address, source: str) -> None:
        previous, self.master = self.master, address
        if previous is None or previous == address:
            return
        self.switches += 1
        self.last_source = source
        self.log.warn(
            "Redis master moved from {old} to {new} ({source}); moving the connections",
            old=f"{previous[0]}:{previous[1]}",
            new=f"{address[0]}:{address[1]}",
            source=source,
        )
        self._on_switch(address)

    def _poll_once(self) -> Deferred[Any]:
        d = self.discover("polling")
        d.addErrback(
            lambda f: self.log.warn("No Redis master from the sentinels: {why}", why=f.getErrorMessage()) if self._running else None
        )
        return d

    def _listen(self, host: str, port: int) -> Any:
        """A subscription to ``+switch-master`` on one sentinel, reconnecting by itself."""
        import txredisapi

        watch = self

        class Announcements(txredisapi.SubscriberProtocol):
            def connectionMade(self) -> Any:
                d = super().connectionMade()
                self.whenConnected().addCallback(lambda _: self.subscribe("+switch-master"))
                return d

            def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
                address = parse_switch(text, watch.settings.master_name)
                if address is not None and watch._running:
                    watch._learn(address, f"+switch-master from the sentinel at {host}:{port}")

        factory = txredisapi.SubscriberFactory(isLazy=True)
        factory.protocol = Announcements
        factory.password = self.settings.password
        factory.maxDelay = self.settings.poll_interval
        factory.startConnecting(HostnameEndpoint(self._reactor, host, port, timeout=5))
        return factory


def is_master(role: Any) -> bool:
    """Whether a ``ROLE`` reply is a master's."""
    kind = role[0] if isinstance(role, list) and role else role
    return kind in (b"master", "master")


def close_connections(factories: list[Any], keep: Address | None = None) -> None:
    """Close the connections of txredisapi factories (each reconnects by itself), but those to ``keep``."""
    for factory in factories:
        for connection in list(factory.pool):
            peer = connection.transport.getPeer()
            if keep is None or (getattr(peer, "host", None), getattr(peer, "port", None)) != keep:
                connection.transport.loseConnection()


@implementer(IStreamClientEndpoint)
class MasterEndpoint:
    """Connects to the master the sentinels name at the moment of each attempt."""

    def __init__(self, reactor: Any, watch: SentinelWatch, tls: bool, timeout: float) -> None:
        self._reactor = reactor
        self._watch = watch
        self._tls = tls
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connected: Deferred[IProtocol] = self._watch.discover().addCallback(self._connect, protocolFactory)
        return connected

    def _connect(self, address: Address, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        host, port = address
        endpoint: IStreamClientEndpoint = HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)
        if self._tls:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        result: Deferred[IProtocol] = endpoint.connect(protocolFactory)
        return result
