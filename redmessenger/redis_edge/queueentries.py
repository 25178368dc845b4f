"""
A queue entry on its way to Redis (redis_edge/queues.py): numbered in the order
Redis must see it, split in parts when it is for more queues than one script
call should write, and the words the log uses for a batch of them.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple


class Entry(NamedTuple):
    """A queue entry on its way to Redis: numbered as queued, the order Redis must see it in."""

    seq: int
    keys: list[str]
    entry: bytes
    #: It may be in those queues already (read again after a crash): pushed only where it is not.
    again: bool = False
    #: Called once Redis has it (for a part: once Redis has every part, see :class:`AllParts`).
    written: Callable[[], None] | None = None
    #: An entry for more queues than ``writes_per_call`` goes in parts (a script call each): which one, of how many.
    part: int = 0
    parts: int = 1


class AllParts:
    """The ``written`` of an entry split into parts: called once, when the last of them has landed."""

    __slots__ = ("left", "written")

    def __init__(self, parts: int, written: Callable[[], None]) -> None:
        self.left = parts
        self.written = written

    def landed(self) -> None:
        self.left -= 1
        if not self.left:
            self.written()


def entries(items: Iterable[Entry]) -> int:
    """How many entries ``items`` are (the parts of one entry count once)."""
    return len({item.seq for item in items})


def key_list(items: Iterable[Entry]) -> str:
    return ", ".join(sorted({key for item in items for key in item.keys}))


def text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
