"""
txredisapi's failures as the core's two exceptions
(:class:`~redmessenger.core.ports.StoreUnavailable`, :class:`~redmessenger.core.ports.StoreError`):
only the edge knows which Redis client it uses.
"""

from __future__ import annotations

import re
from typing import TypeVar

from twisted.internet.defer import Deferred, TimeoutError
from twisted.python.failure import Failure

from redmessenger.core.ports import StoreError, StoreUnavailable

T = TypeVar("T")

#: Error replies that mean "not now": Redis loading its data after a restart, a replica (READONLY, MASTERDOWN:
#: after a failover), too few replicas for min-replicas-to-write, out of memory, failing to save (MISCONF), a
#: script running too long (BUSY), a cluster resharding or down.  The same command succeeds a while later.
TEMPORARY_REPLIES = ("LOADING", "READONLY", "NOREPLICAS", "OOM", "MISCONF", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN")

# The error code starts the reply; before Redis 7 a script's command refused this way came wrapped
# ("ERR Error running script (call to f_...): @user_script:3: @user_script: 3: -READONLY You can't write...").
_TEMPORARY = re.compile(r"(?:^|: -)(?:%s)\b" % "|".join(TEMPORARY_REPLIES))


def translated(d: Deferred[T]) -> Deferred[T]:
    """
    ``d``, with a lost connection, a deadline or a temporary error reply (:data:`TEMPORARY_REPLIES`)
    as StoreUnavailable, and any other error reply as StoreError.
    """
    return d.addErrback(_translate)


def temporary(failure: Failure) -> bool:
    """Whether ``failure`` is an error reply saying Redis cannot do it now, but will later."""
    from txredisapi import ResponseError

    return failure.check(ResponseError) is not None and _TEMPORARY.search(failure.getErrorMessage()) is not None


def _translate(failure: Failure) -> Failure:
    from txredisapi import (  # includes txredisapi's TimeoutError
        ConnectionError,
        ResponseError,
    )

    if failure.check(ConnectionError, TimeoutError) or temporary(failure):
        return Failure(StoreUnavailable(failure.getErrorMessage()))
    if failure.check(ResponseError):
        return Failure(StoreError(failure.getErrorMessage()))
    return failure
