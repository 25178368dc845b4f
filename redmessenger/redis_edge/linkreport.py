"""
The link to Redis as operators see it: its state (``LinkState``: ``/health``,
``/metrics``, the manhole's ``status()``) and what it says in the log as its
connections come and go.  Kept apart from the connections themselves
(redis_edge/link.py), which call in here.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.python.failure import Failure

from redmessenger.core.ports import LinkState
from redmessenger.logs import make_logger
from redmessenger.model.keyspace import SUBSCRIPTION_PATTERNS as PATTERNS
from redmessenger.redis_edge.outage import Outage


class LinkReport:
    def __init__(self, reactor: Any, where: Callable[[], str]) -> None:
        #: The link's log lines keep the namespace they always had (operators filter on it); an
        #: instance attribute, since a Logger on the class would take this class's name.
        self.log = make_logger("redmessenger.redis_edge.link.RedisLink")
        self._reactor = reactor
        self._where = where
        self.state = LinkState()
        self.outage = Outage(reactor)
        #: Why txredisapi gave up on a new connection (AUTH or SELECT failed): the cause of its loss.
        self.refusal: str | None = None
        #: The link is closing: losses are expected, not reported.
        self.stopping = False

    def attempt_failed(self, why: Failure) -> None:
        """A connection attempt failed, or a connection closed before it was of use."""
        refusal, self.refusal = self.refusal, None
        if self.stopping:
            return
        self.state.last_error = refusal or why.getErrorMessage()
        first = self.outage.failures == 0
        if not self.outage.failed(self.state.last_error):
            return
        where = self._where()
        if first:
            self.log.warn(
                "Cannot reach Redis at {where} ({why}); retrying every second", where=where, why=self.state.last_error
            )
        else:
            self.log.warn(
                "Still cannot reach Redis at {where} after {count} attempts in {seconds:.0f}s ({why}); retrying",
                where=where,
                count=self.outage.failures,
                seconds=self._reactor.seconds() - (self.outage.began or 0.0),
                why=self.state.last_error,
            )

    def reached(self) -> None:
        failures = self.outage.over()
        if failures:
            where = self._where()
            self.log.info("Reached Redis at {where} after {count} failed attempts", where=where, count=failures)

    def commands_up(self, address: str) -> None:
        self.state.commands_connected = True
        self.state.address = address
        self.reached()
        self.log.info("Redis command connection up ({address})", address=address)

    def commands_down(self, why: Any) -> None:
        if self.state.commands_connected and not self.stopping:
            self.state.reconnects += 1
            self.state.last_error = why.getErrorMessage()
            self.log.warn("Redis command connection lost ({why}); reconnecting", why=self.state.last_error)
        elif not self.state.commands_connected:
            self.attempt_failed(why)
        self.state.commands_connected = False

    def subscribed(self) -> None:
        self.state.subscribed = True
        since, self.state.unsubscribed_since = self.state.unsubscribed_since, None
        if since is not None:
            gap = self._reactor.seconds() - since
            self.state.last_gap = gap
            self.state.unsubscribed_seconds += gap
            self.log.info("Subscribed again after {gap:.2f}s without a subscription", gap=gap)
        self.reached()
        self.log.info("Subscribed to {patterns} on Redis", patterns=" and ".join(p.decode() for p in PATTERNS))

    def psubscribe_failed(self, failure: Failure) -> None:
        from txredisapi import ResponseError

        if failure.check(ResponseError):  # Redis said no (an ACL, say): it will not change by itself
            self.state.last_error = failure.getErrorMessage()
            self.log.error("Redis refused PSUBSCRIBE: {why}", why=self.state.last_error)
        # else the connection was lost: that is reported where it is seen (_unsubscribed)

    def unsubscribed(self, why: Any, silence: str | None) -> None:
        if self.state.subscribed and not self.stopping:
            # From now until PSUBSCRIBE is answered again, a PUBLISH reaches nobody here.
            self.state.unsubscribed_since = self._reactor.seconds()
            self.state.last_error = silence or why.getErrorMessage()
            self.log.warn("Redis subscriber connection lost ({why}); reconnecting", why=self.state.last_error)
        elif not self.state.subscribed:
            self.attempt_failed(why)
        self.state.subscribed = False
