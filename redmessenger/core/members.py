"""
A group's members, read from the directory for a group message waiting in the
router's inbox (core/routing.py): invalid uids skipped with a warning, the read
tried again while Redis is away, an error Redis will not recover from taken as
no members (the message reaches nobody, the messages behind it go on).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from redmessenger.core.ports import Directory, StoreUnavailable
from redmessenger.logs import make_logger
from redmessenger.model.keyspace import valid_name


class MemberLookups:
    """The lookups of the router's group messages; ``found(pending, uids)`` once each is known."""

    log = make_logger()

    #: Seconds between attempts to read a group's members while Redis is away.
    retry_delay = 1.0

    def __init__(self, directory: Directory, clock: IReactorTime, found: Callable[[Any, list[str]], None]) -> None:
        self._directory = directory
        self._clock = clock
        self._found = found
        #: Lookups waiting to be retried while Redis is away.
        self._retries: set[IDelayedCall] = set()
        self._stopping = False

    def look_up(self, pending: Any, cid: str) -> None:
        d = self._directory.members(cid)
        d.addCallbacks(self._members, self._failed, callbackArgs=(pending, cid), errbackArgs=(pending, cid))

    def stop(self) -> None:
        """No retry from now on (the link to Redis is going away)."""
        self._stopping = True
        for call in self._retries:
            call.cancel()
        self._retries.clear()

    def _members(self, members: list[bytes], pending: Any, cid: str) -> None:
        uids = []
        for member in members:
            uid = valid_name(member)
            if uid is None:
                self.log.warn("Skipping member {member!r} of group {cid}: not a valid uid", member=member, cid=cid)
            else:
                uids.append(uid)
        self._found(pending, uids)

    def _failed(self, failure: Failure, pending: Any, cid: str) -> None:
        if failure.check(StoreUnavailable) and not self._stopping:
            self.log.warn(
                "Could not read the members of group {cid} ({why}); retrying", cid=cid, why=failure.getErrorMessage()
            )

            def retry() -> None:
                self._retries.discard(call)
                self.look_up(pending, cid)

            call = self._clock.callLater(self.retry_delay, retry)
            self._retries.add(call)
            return
        self.log.failure("Could not read the members of group {cid}; the message reaches nobody", failure, cid=cid)
        self._found(pending, [])
