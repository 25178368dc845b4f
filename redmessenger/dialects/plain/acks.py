"""
Confirmation by acknowledgement, for sessions of protocol version 1: what a
client's code says it has handled, by message id, cumulatively.

A message is confirmed when the client acks it or any message sent after it to
the same socket.  An ack naming an id this socket was not sent (or was
confirmed already) changes nothing.  Two messages with the same id on one
socket (two byte-identical queue entries share their derived id): an ack of
that id confirms up to the later one.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

#: Acknowledged entries dropped from the front of the list at once, when at least this many.
_COMPACT = 64


class AckLedger:
    """The messages written to one socket and not acknowledged yet, in order, and who waits for them."""

    __slots__ = ("_written", "_acked", "_pending", "_head", "_seq_of", "_waiters")

    def __init__(self) -> None:
        self._written = 0
        self._acked = 0
        #: (sequence number, id) of each message written, oldest first, from ``_head`` on not acknowledged.
        #: A list and an index, not a deque: an idle socket keeps this for its lifetime.
        self._pending: list[tuple[int, str]] = []
        self._head = 0
        #: The latest sequence number of each id pending.
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
        head, end = self._head, len(pending)
        while head < end and pending[head][0] <= seq:
            entry_seq, entry_id = pending[head]
            if seq_of.get(entry_id) == entry_seq:
                del seq_of[entry_id]
            head += 1
        if head >= _COMPACT or head == end:
            del pending[:head]
            head = 0
        self._head = head
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
