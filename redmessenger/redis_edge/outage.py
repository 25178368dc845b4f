"""
Redis out of reach: which failed attempts to warn about (:class:`Outage`: the
first, a new cause, then one a minute), and an endpoint that reports why each
connection attempt failed (:class:`Attempts`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

#: Seconds between two warnings while Redis stays unreachable.
UNREACHABLE_REMINDER = 60.0


class Outage:
    """
    The failed attempts to reach Redis since it was last reached, and which of
    them to warn about: the first, a new cause, and one a minute while it lasts.
    """

    def __init__(self, clock: IReactorTime, remind_every: float = UNREACHABLE_REMINDER) -> None:
        self._clock = clock
        self._remind_every = remind_every
        #: Failed attempts (of both connections) since Redis was last reached.
        self.failures = 0
        self.began: float | None = None
        self._warned_at = 0.0
        self._warned_why: str | None = None

    def failed(self, why: str) -> bool:
        """One more failed attempt; whether it deserves a warning."""
        now = self._clock.seconds()
        self.failures += 1
        if self.began is None:
            self.began = now
        if why == self._warned_why and now - self._warned_at < self._remind_every:
            return False
        self._warned_at, self._warned_why = now, why
        return True

    def over(self) -> int:
        """Redis was reached: the failed attempts it took (0 if none), and a fresh start."""
        failures, self.failures, self.began, self._warned_why = self.failures, 0, None, None
        return failures


@implementer(IStreamClientEndpoint)
class Attempts:
    """An endpoint that tells ``failed`` why each connection attempt failed (a stop's cancellation aside)."""

    def __init__(self, endpoint: IStreamClientEndpoint, failed: Callable[[Failure], None]) -> None:
        self._endpoint = endpoint
        self._failed = failed

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        return self._endpoint.connect(protocolFactory).addErrback(self._report)

    def _report(self, failure: Failure) -> Failure:
        if not failure.check(CancelledError):
            self._failed(failure)
        return failure

    def __repr__(self) -> str:
        return repr(self._endpoint)


def quiet_retry_lines() -> None:
    """
    Twisted's ClientService logs "Scheduling retry ..." at info for every attempt:
    twice a second per connection during an outage.  The link says what matters
    itself (a warning with the cause, then one a minute: :class:`Outage`), so
    ClientService's lines go through a logger filtered at warn.  (ClientService
    has no per-instance logger to give it; txredisapi builds the instances.)
    """
    from twisted.application.internet import ClientService

    from redmessenger.logs import make_logger, quiet_namespace

    namespace = "twisted.application.internet.ClientService"
    ClientService._log = make_logger(namespace)
    quiet_namespace(namespace)
