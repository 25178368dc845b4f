"""
Messages read from the durable intake (a Redis stream, SPEC §10), until every
recipient's copy is safe: delivered and confirmed by one of the user's sockets,
or written to the user's queue.  Then, and only then, the entry is acknowledged
in Redis: a daemon that dies before that leaves it in the stream, to be read
again at the next start (and delivered again: same id, clients drop the copy;
queued once: the queue write skips an entry already there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class IntakeTicket:
    """One intake entry's recipients not yet safe; ``done(entry_id)`` once none is left."""

    __slots__ = ("entry_id", "again", "queued", "_waiting", "_done")

    def __init__(self, entry_id: str, done: Callable[[str, bool], None], again: bool = False) -> None:
        self.entry_id = entry_id
        #: Read again after a crash: it may be in some queues already.
        self.again = again
        #: Some recipient's copy was made safe by a queue write (not only by sockets' confirmations).
        self.queued = False
        self._waiting: set[str] | None = None
        self._done: Callable[[str, bool], None] | None = done

    @property
    def settled(self) -> bool:
        return self._done is None

    def expect(self, uids: Iterable[str]) -> None:
        """The recipients, once known (a group's members are looked up first)."""
        self._waiting = set(uids)
        if not self._waiting:
            self._finish()

    def settle(self, uid: str) -> None:
        """``uid``'s copy is safe (confirmed by one of its sockets, or queued)."""
        waiting = self._waiting
        if waiting is not None:
            waiting.discard(uid)
            if not waiting:
                self._finish()

    def settle_all(self, uids: Iterable[str]) -> None:
        for uid in uids:
            self.settle(uid)

    def settle_queued(self, uids: Iterable[str]) -> None:
        """These recipients' copies were written to their queues."""
        self.queued = True
        self.settle_all(uids)

    def _finish(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(self.entry_id, self.queued)
