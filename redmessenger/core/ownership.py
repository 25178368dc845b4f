"""
Who owns a user among the live daemons (docs/scale-out.md): rendezvous hashing.
Every daemon computes the same owner from the same node list, alone, and when
a node comes or goes only that node's users move.  No I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol

#: Owners a node remembers at most (of the keys it was asked about since the nodes last changed).
REMEMBERED = 100_000


def weight(node_id: str, uid: str) -> int:
    """The node's score for the uid: the same in every process (not Python's salted hash())."""
    digest = hashlib.blake2b(f"{node_id}\x00{uid}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(uid: str, nodes: Iterable[str]) -> str | None:
    """The node with the highest score for ``uid``; None if there is no node."""
    best: str | None = None
    best_weight = -1
    for node in nodes:
        score = weight(node, uid)
        if score > best_weight or (score == best_weight and best is not None and node < best):
            best, best_weight = node, score
    return best


class Ownership(Protocol):
    """What the router and the delivery read of a node's view, once per message (:class:`Owners`)."""

    #: whether this node is among the live nodes (it acts on users' and groups' PUBLISHes only then)
    listed: bool
    #: whether there are other nodes (if not, this one owns every key)
    shared: bool

    def elsewhere(self, key: str) -> str | None:
        """The node that owns ``key`` when it is not this one; None when this one does."""


class Owners:
    """
    One node's view: the owner of each key, remembered until the nodes change.
    A group message asks for each of its members, every node for every member:
    hashing them all again for each message cost a third of the daemon's time
    (docs/performance.md).  Alone (or knowing no node yet), a node owns every key.
    """

    def __init__(self, node: str, remembered: int = REMEMBERED) -> None:
        self.node = node
        self._nodes: tuple[str, ...] = ()
        self._known: dict[str, str | None] = {}
        self._remembered = remembered
        self._alone = True
        #: whether there are other nodes (more than one known)
        self.shared = False
        #: whether this node is among the nodes
        self.listed = False

    @property
    def nodes(self) -> tuple[str, ...]:
        return self._nodes

    def set_nodes(self, nodes: Iterable[str]) -> None:
        found = tuple(nodes)
        if sorted(found) != sorted(self._nodes):
            self._known.clear()
        self._nodes = found
        self._alone = all(node == self.node for node in found)
        self.shared = len(found) > 1
        # The last node to leave goes on acting until it unsubscribes: no other acts then, and Redis told the
        # publishers it heard them.
        self.listed = self.node in found or (not found and self.listed)

    def elsewhere(self, key: str) -> str | None:
        """The node that owns ``key`` when it is not this one; None when this one does."""
        if self._alone:
            return None
        known = self._known
        try:
            return known[key]
        except KeyError:
            pass
        found = owner(key, self._nodes)
        other = None if found is None or found == self.node else found
        if len(known) >= self._remembered:
            known.clear()  # bounded: whatever was asked about starts again
        known[key] = other
        return other
