"""
The Redis side of the queues, keys and groups, over one command connection.

One connection on purpose: Redis runs a connection's commands in the order they
were sent, so a message queued before a user identifies is always seen by the
handover that follows.  Each operation is one command or one Lua script, sent
without waiting for the previous one (pipelined).

Queue entries are removed only after they were written to a socket (the take
script trims what the previous batch delivered), so a daemon killed mid-handover
leaves them in Redis: at worst redelivered, never lost.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from .logs import make_logger


class RedisCommands(Protocol):
    """The part of a txredisapi connection handler this module uses."""

    def eval(self, script: bytes, keys: list[Any] = ..., args: list[Any] = ...) -> Deferred[Any]: ...

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]: ...


def queue_key(uid: str) -> str:
    return f"rm:users:{uid}:messages"


def user_key_key(uid: str) -> str:
    return f"rm:users:{uid}:key"


def members_key(cid: str) -> str:
    return f"rm:channels:{cid}:subscribers"


# A key holding something that is not a list (another program's) is renamed
# to KEY:invalid:<server time in microseconds>, never overwritten or deleted.
KEEP_ASIDE = b"""
local function keep_aside(key)
  local now = redis.call('TIME')
  local kept = key .. ':invalid:' .. now[1] .. string.format('%06d', tonumber(now[2]))
  redis.call('RENAME', key, kept)
  return kept
end
"""

# Appends one entry to several users' queues.
# Returns {entries dropped by the length cap, {key, kept-aside name}...}.
ENQUEUE = KEEP_ASIDE + b"""
local entry, ttl, maxlen = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local dropped, renamed = 0, {}
for _, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'list' and kind ~= 'none' then
    renamed[#renamed + 1] = {key, keep_aside(key)}
  end
  local length = redis.call('RPUSH', key, entry)
  if length > maxlen then
    redis.call('LTRIM', key, length - maxlen, -1)
    dropped = dropped + length - maxlen
  end
  redis.call('EXPIRE', key, ttl)
end
return {dropped, renamed}
"""

# Drops the ARGV[1] entries the previous batch delivered, then returns
# {length, the next ARGV[2] entries}; {-1, kept-aside name} if the key was not a
# list (kept aside, and the handover ends).
TAKE = KEEP_ASIDE + b"""
local delivered, batch = tonumber(ARGV[1]), tonumber(ARGV[2])
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {0, {}} end
if kind ~= 'list' then return {-1, keep_aside(KEYS[1])} end
if delivered > 0 then redis.call('LTRIM', KEYS[1], delivered, -1) end
return {redis.call('LLEN', KEYS[1]), redis.call('LRANGE', KEYS[1], 0, batch - 1)}
"""


class QueueStore:
    """Queues, user keys and group members in Redis."""

    log = make_logger()

    #: Seconds between attempts to write entries Redis did not accept.
    retry_delay = 1.0

    def __init__(
        self,
        redis: RedisCommands,
        clock: IReactorTime,
        queue_expiry: int,
        queue_max_length: int,
        lookup_timeout: float = 10.0,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._lookup_timeout = lookup_timeout
        self._expiry = queue_expiry
        self._max_length = queue_max_length
        # Entries Redis could not take (link down), in order; while any wait
        # here, newer entries wait behind them so that a queue keeps its order.
        self._backlog: deque[tuple[list[str], bytes]] = deque()
        self._retry: IDelayedCall | None = None
        # Queue writes sent and not answered yet, and who waits for them to end.
        self._in_flight = 0
        self._drain_waiters: list[Deferred[None]] = []

    @property
    def backlog(self) -> int:
        """Entries waiting for Redis to come back."""
        return len(self._backlog)

    def enqueue(self, uids: list[str], entry: bytes) -> None:
        """Append an entry to the queues of ``uids`` (who are offline)."""
        keys = [queue_key(uid) for uid in uids]
        if self._backlog:
            self._backlog.append((keys, entry))
        else:
            self._send(keys, entry)

    def _send(self, keys: list[str], entry: bytes) -> None:
        self._in_flight += 1
        d = self._redis.eval(ENQUEUE, keys, [entry, self._expiry, self._max_length])
        d.addCallbacks(self._enqueued, self._enqueue_failed, callbackArgs=(keys,), errbackArgs=(keys, entry))
        d.addBoth(self._landed)

    def _landed(self, _: object) -> None:
        self._in_flight -= 1
        if not self._in_flight and not self._backlog:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def drain(self) -> Deferred[None]:
        """Fires once every queue write sent so far has been answered by Redis."""
        if not self._in_flight and not self._backlog:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append(waiter)
        return waiter

    def _enqueued(self, result: list[Any], keys: list[str]) -> None:
        dropped, renamed = result
        for key, kept in renamed:
            self.log.warn("{key} held something other than a list; kept it as {kept}", key=_text(key), kept=_text(kept))
        if dropped:
            self.log.warn(
                "Queue length cap ({cap}) reached: dropped the {dropped} oldest entries of {keys}",
                cap=self._max_length,
                dropped=dropped,
                keys=", ".join(keys),
            )

    def _enqueue_failed(self, failure: Failure, keys: list[str], entry: bytes) -> None:
        from txredisapi import ConnectionError  # includes TimeoutError

        if not failure.check(ConnectionError):
            self.log.failure("Redis refused to queue a message for {keys}", failure, keys=", ".join(keys))
            return
        self._backlog.append((keys, entry))
        if self._retry is None:
            self.log.warn(
                "Redis unreachable ({why}); keeping {count} queue entries in memory until it is back",
                why=failure.getErrorMessage(),
                count=len(self._backlog),
            )
            self._retry = self._clock.callLater(self.retry_delay, self._flush_backlog)

    def _flush_backlog(self) -> None:
        self._retry = None
        pending, self._backlog = self._backlog, deque()
        if pending:
            self.log.info("Writing {count} queue entries kept while Redis was away", count=len(pending))
        for keys, entry in pending:
            self._send(keys, entry)

    def stop(self) -> None:
        """Stop retrying; entries still in the backlog are reported (the link is going away)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self._backlog:
            self.log.error(
                "Stopping with {count} queue entries Redis never accepted (queues: {keys})",
                count=len(self._backlog),
                keys=", ".join(sorted({k for keys, _ in self._backlog for k in keys})),
            )

    async def take(self, uid: str, delivered: int, batch: int) -> tuple[int, list[bytes]]:
        """
        Drop the ``delivered`` oldest entries (written to a socket already) and
        return the queue's length and its next ``batch`` entries.
        """
        length, entries = await self._redis.eval(TAKE, [queue_key(uid)], [delivered, batch])
        if length < 0:
            self.log.warn("{key} held something other than a list; kept it as {kept}", key=queue_key(uid), kept=_text(entries))
            return 0, []
        return length, list(entries)

    def trim(self, uid: str, delivered: int) -> Deferred[Any]:
        """Drop the ``delivered`` oldest entries of a queue, once they were written to a socket."""
        return self._redis.execute_command("LTRIM", queue_key(uid), delivered, -1)

    async def user_key(self, uid: str) -> bytes | None:
        """
        The secret stored at ``rm:users:$uid:key``, or None.  A client waits on
        it, so it has a deadline even while the link is down (txredisapi holds
        commands until it reconnects): ``twisted.internet.defer.TimeoutError``.
        """
        d = self._redis.execute_command("GET", user_key_key(uid))
        value = await d.addTimeout(self._lookup_timeout, self._clock)
        return value if isinstance(value, bytes) else None

    async def members(self, cid: str) -> list[bytes]:
        """The uids in ``rm:channels:$cid:subscribers`` right now."""
        members: Iterable[bytes] = await self._redis.execute_command("SMEMBERS", members_key(cid))
        return list(members)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
