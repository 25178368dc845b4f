"""
Who owns a user among the live daemons (docs/scale-out.md): rendezvous hashing.
Every daemon computes the same owner from the same node list, alone, and when
a node comes or goes only that node's users move.  No I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


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
