"""
txredisapi's failures as the core's two exceptions
(:class:`~redmessenger.core.ports.StoreUnavailable`, :class:`~redmessenger.core.ports.StoreError`):
only the edge knows which Redis client it uses.
"""

from __future__ import annotations

from typing import TypeVar

from twisted.internet.defer import Deferred, TimeoutError
from twisted.python.failure import Failure

from redmessenger.core.ports import StoreError, StoreUnavailable

T = TypeVar("T")


def translated(d: Deferred[T]) -> Deferred[T]:
    """``d``, with a lost connection or a deadline as StoreUnavailable and an error reply as StoreError."""
    return d.addErrback(_translate)


def _translate(failure: Failure) -> Failure:
    from txredisapi import (  # includes txredisapi's TimeoutError
        ConnectionError,
        ResponseError,
    )

    if failure.check(ConnectionError, TimeoutError):
        return Failure(StoreUnavailable(failure.getErrorMessage()))
    if failure.check(ResponseError):
        return Failure(StoreError(failure.getErrorMessage()))
    return failure
