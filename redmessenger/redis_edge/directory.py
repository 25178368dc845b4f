"""
What the application keeps in Redis about users and groups (the core's
:class:`~redmessenger.core.ports.Directory`), and the operators' view of the
queues (the longest ones, for the manhole's ``status()``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from redmessenger.logs import make_logger
from redmessenger.model.keyspace import (
    QUEUE_KEY_PATTERN,
    members_key,
    uid_of_queue_key,
    user_key_key,
)
from redmessenger.redis_edge.commands import RedisCommands
from redmessenger.redis_edge.errors import translated
from redmessenger.redis_edge.scripts import MEMBERS


class Directory:
    """User keys and group members, read over the command connection."""

    log = make_logger()

    def __init__(self, redis: RedisCommands, clock: IReactorTime, lookup_timeout: float = 10.0) -> None:
        self._redis = redis
        self._clock = clock
        self._lookup_timeout = lookup_timeout

    def user_key(self, uid: str) -> Deferred[bytes | None]:
        """
        The secret stored at ``rm:users:$uid:key``, or None.  A client waits on
        it, so it has a deadline even while the link is down (txredisapi holds
        commands until it reconnects).
        """
        d: Deferred[Any] = self._redis.execute_command("GET", user_key_key(uid))
        d.addTimeout(self._lookup_timeout, self._clock)
        return translated(d).addCallback(lambda value: value if isinstance(value, bytes) else None)

    def members(self, cid: str) -> Deferred[list[bytes]]:
        """
        The uids in ``rm:channels:$cid:subscribers`` right now.  A key of another
        type is kept aside under a new name (and the group has no members).
        """
        key = members_key(cid)
        d: Deferred[Any] = self._redis.eval(MEMBERS, [key], [])
        return translated(d).addCallback(self._members, key)

    def _members(self, reply: list[Any], key: str) -> list[bytes]:
        kept_aside, found = reply
        if kept_aside:
            self.log.warn(
                "{key} held something other than a set; kept it as {kept}; the group has no members until it is a set",
                key=key,
                kept=found.decode("utf-8", "replace") if isinstance(found, bytes) else found,
            )
            return []
        return list(found)


async def longest_queues(
    commands: RedisCommands, limit: int = 10, max_keys: int = 10000, max_rounds: int = 200, count: int = 1000
) -> tuple[list[tuple[str, int]], int, bool]:
    """
    The ``limit`` longest user queues among the first ``max_keys`` found by a
    non-blocking SCAN (never KEYS), their lengths read with pipelined LLENs.
    Returns (uid and length, longest first; keys scanned; whether the scan finished).
    """
    cursor = b"0"
    lengths: list[tuple[str, int]] = []
    rounds = 0
    while True:
        cursor, keys = await commands.execute_command("SCAN", cursor, "MATCH", QUEUE_KEY_PATTERN, "COUNT", count)
        rounds += 1
        if keys:
            found = await gatherResults([commands.execute_command("LLEN", key) for key in keys])
            for key, length in zip(keys, found):
                lengths.append((uid_of_queue_key(key), int(length)))
        complete = cursor in (b"0", 0, "0")
        if complete or len(lengths) >= max_keys or rounds >= max_rounds:
            break
    lengths.sort(key=lambda item: (-item[1], item[0]))
    return [item for item in lengths[:limit] if item[1] > 0], len(lengths), complete
