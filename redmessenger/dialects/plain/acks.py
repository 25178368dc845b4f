"""
Confirmation by acknowledgement, for sessions of protocol version 1: what a
client's code says it has handled, by message id, cumulatively.

A message is confirmed when the client acks it or any message sent after it to
the same socket.  An ack naming an id this socket was not sent (or was
confirmed already) changes nothing.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred


class AckLedger:
    """The messages written to one socket and not acknowledged yet, in order, and who waits for them."""

    __slots__ = ("_written", "_acked", "_pending", "_seq_of", "_waiters")

    def __init__(self) -> None:
        self._written = 0
        self._acked = 0
        #: (sequence number, id) of each message written and not acknowledged, oldest first.
        self._pending: deque[tuple[int, str]] = deque()
        self._seq_of: dict[str, int] = {}
        self._waiters: list[tuple[int, Deferred[bool]]] = []

    @property
    def unacknowledged(self) -> int:
        return self._written - self._acked

    def written(self, message_id: str) -> None:
        self._written += 1
        self._pending.append((self._written, message_id))
        self._seq_of[message_id] = self._written

    def confirm(self) -> Deferred[bool]:
        """Fires True once everything written so far is acknowledged, False if the socket goes first (:meth:`fail`)."""
        waiter: Deferred[bool] = Deferred()
        if self._written <= self._acked:
            waiter.callback(True)
        else:
            self._waiters.append((self._written, waiter))
        return waiter

    def ack(self, message_id: str) -> bool:
        """The client acknowledged ``message_id`` and everything before it; False if that id is not pending here."""
        seq = self._seq_of.get(message_id)
        if seq is None:
            return False
        pending, seq_of = self._pending, self._seq_of
        while pending and pending[0][0] <= seq:
            del seq_of[pending.popleft()[1]]
        self._acked = seq
        if self._waiters:
            still = []
            for target, waiter in self._waiters:
                if target <= seq:
                    waiter.callback(True)
                else:
                    still.append((target, waiter))
            self._waiters = still
        return True

    def fail(self) -> None:
        """The socket is gone: whoever waits learns nothing was confirmed."""
        waiters, self._waiters = self._waiters, []
        for _, waiter in waiters:
            waiter.callback(False)
