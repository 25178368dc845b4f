"""
What a daemon hears while it does not know whether it acts on it (docs/scale-out.md): the PUBLISHes to users and
groups heard before it is first listed among the nodes, or after its subscription was lost while it was listed and
before it knows whether the others acted on its users meanwhile.  Kept in publish order, bounded, until the router
acts on them or leaves them to the others (core/routing.py).
"""

from __future__ import annotations

from typing import Generic, TypeVar

from redmessenger.logs import make_logger

#: PUBLISHes kept at most while this daemon does not know whether it acts on them (its first heartbeat, a round
#: trip), and their bytes at most (payloads and envelopes, about: Message.weight).
MAX_UNLISTED = 100000
MAX_UNLISTED_BYTES = 32 * 1024 * 1024

T = TypeVar("T")


class Undecided(Generic[T]):
    """The PUBLISHes kept while undecided, oldest first."""

    log = make_logger()

    def __init__(self) -> None:
        #: What was kept; None once decided (until this daemon is unsure again).
        self.kept: list[T] | None = []
        self._bytes = 0
        self._full = False
        #: Whether it is unknown if the others act on this daemon's users (its subscription was lost while listed).
        self.unsure = False

    def keep(self, item: T, weight: int) -> None:
        """Keep ``item`` (``weight`` bytes), unless the bounds are reached: then it is dropped, with one warning."""
        kept = self.kept
        assert kept is not None
        if len(kept) < MAX_UNLISTED and self._bytes + weight <= MAX_UNLISTED_BYTES:
            kept.append(item)
            self._bytes += weight
        elif not self._full:
            self._full = True
            self.log.warn(
                "{count} messages ({size} bytes) heard while this daemon does not know whether it acts on them (not "
                "listed among the nodes yet, or not heard from since its subscription came back): more are dropped "
                "until it knows (its heartbeat or its inbox fails: the log says why)",
                count=len(kept),
                size=self._bytes,
            )

    def lost_hearing(self) -> None:
        """Unsure from now on: keep again."""
        self.unsure = True
        if self.kept is None:
            self.kept, self._full = [], False

    def take(self) -> list[T]:
        """Decided: what was kept, to act on or to leave; nothing is kept from now on."""
        kept, self.kept, self._bytes = self.kept or [], None, 0
        return kept
