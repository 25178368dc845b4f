"""
The Redis side of the queues, keys and groups, over one command connection.

One connection on purpose: Redis runs a connection's commands in the order they
were sent, so a message queued before a user identifies is always seen by the
handover that follows.  Each operation is one command or one Lua script, sent
without waiting for the previous one (pipelined).  The queue writes of a reactor
turn go together in one script call (a burst for offline users costs one round
of txredisapi's per-command machinery, not one per message); anything that reads
a queue sends them first, so it never overtakes them.

Queue entries are removed only after they were written to a socket (the take
script trims what the previous batch delivered), so a daemon killed mid-handover
leaves them in Redis: at worst redelivered, never lost.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from redmessenger.logs import make_logger


class RedisCommands(Protocol):
    """The part of a txredisapi connection handler this module uses."""

    def eval(self, script: bytes, keys: list[Any] = ..., args: list[Any] = ...) -> Deferred[Any]: ...

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]: ...


class _Entry(NamedTuple):
    """A queue entry on its way to Redis: numbered as queued, the order Redis must see it in."""

    seq: int
    keys: list[str]
    entry: bytes


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

# Appends entries to users' queues, in order.  KEYS: the queues of every
# entry, entry after entry; ARGV: expiry, length cap, then for each entry the
# entry and how many of KEYS are its queues.  Returns {dropped, renamed}: lists
# of {key, entries the length cap dropped} and of {key, kept-aside name}.
ENQUEUE = KEEP_ASIDE + b"""
local ttl, maxlen = tonumber(ARGV[1]), tonumber(ARGV[2])
local dropped, renamed, touched = {}, {}, {}
local k = 0
for i = 3, #ARGV, 2 do
  local entry = ARGV[i]
  for j = k + 1, k + tonumber(ARGV[i + 1]) do
    local key = KEYS[j]
    if not touched[key] then
      local kind = redis.call('TYPE', key)['ok']
      if kind ~= 'list' and kind ~= 'none' then
        renamed[#renamed + 1] = {key, keep_aside(key)}
      end
      touched[key] = 0
    end
    local length = redis.call('RPUSH', key, entry)
    if length > maxlen then
      redis.call('LTRIM', key, length - maxlen, -1)
      touched[key] = touched[key] + length - maxlen
    end
  end
  k = k + tonumber(ARGV[i + 1])
end
for key, count in pairs(touched) do
  redis.call('EXPIRE', key, ttl)
  if count > 0 then dropped[#dropped + 1] = {key, count} end
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
    #: Queue writes (entries times their queues) per script call at most: a call blocks Redis while it runs.
    writes_per_call = 2000

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
        # Entries queued and not sent yet, in order: sent together at the end of the turn.
        self._pending: list[_Entry] = []
        self._flush_call: IDelayedCall | None = None
        self._next_seq = 0
        # Entries Redis could not take (link down).  While any wait here
        # nothing else is sent: the retry sends them all, in the order they
        # were queued, so that every queue keeps its order.
        self._backlog: list[_Entry] = []
        self._retry: IDelayedCall | None = None
        self._stopped = False
        # Queue writes sent and not answered yet, and who waits for them to end.
        self._in_flight = 0
        self._drain_waiters: list[Deferred[None]] = []

    @property
    def backlog(self) -> int:
        """Entries waiting for Redis to come back."""
        return len(self._backlog)

    def enqueue(self, uids: list[str], entry: bytes) -> None:
        """
        Append an entry to the queues of ``uids`` (who are offline).  Sent at the
        end of this reactor turn with the others of the turn, or earlier if a
        queue is read first; kept in memory while Redis is away.
        """
        self._pending.append(_Entry(self._next_seq, [queue_key(uid) for uid in uids], entry))
        self._next_seq += 1
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Send the entries queued so far: one script call per ``writes_per_call`` queue writes."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        pending, self._pending = self._pending, []
        if self._backlog:  # Redis is away: behind the entries waiting for it
            self._backlog += pending
            return
        batch: list[_Entry] = []
        writes = 0
        for i, item in enumerate(pending):
            if batch and writes + len(item.keys) > self.writes_per_call:
                self._send(batch)
                batch, writes = [], 0
                if self._backlog:  # that call failed at once: the rest waits behind it
                    self._backlog += pending[i:]
                    return
            batch.append(item)
            writes += len(item.keys)
        if batch:
            self._send(batch)

    def _send(self, batch: list[_Entry]) -> None:
        keys: list[str] = []
        args: list[Any] = [self._expiry, self._max_length]
        for item in batch:
            keys += item.keys
            args += (item.entry, len(item.keys))
        self._in_flight += 1
        d = self._redis.eval(ENQUEUE, keys, args)
        d.addCallbacks(self._enqueued, self._enqueue_failed, errbackArgs=(batch,))
        d.addBoth(self._landed)

    def _landed(self, _: object) -> None:
        self._in_flight -= 1
        if not self._in_flight and not self._backlog and not self._pending:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def drain(self) -> Deferred[None]:
        """Fires once every queue write so far has been answered by Redis."""
        self.flush()
        if not self._in_flight and not self._backlog:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append(waiter)
        return waiter

    def _enqueued(self, result: list[Any]) -> None:
        dropped, renamed = result
        for key, kept in renamed:
            self.log.warn("{key} held something other than a list; kept it as {kept}", key=_text(key), kept=_text(kept))
        for key, count in dropped:
            self.log.warn(
                "Queue length cap ({cap}) reached: dropped the {dropped} oldest entries of {key}",
                cap=self._max_length,
                dropped=count,
                key=_text(key),
            )

    def _enqueue_failed(self, failure: Failure, batch: list[_Entry]) -> None:
        from txredisapi import ConnectionError  # includes TimeoutError

        if not failure.check(ConnectionError):
            self.log.failure(
                "Redis refused to queue {count} messages for {keys}",
                failure,
                count=len(batch),
                keys=_key_list(batch),
            )
            return
        if self._stopped:
            self.log.error(
                "Redis lost {count} queue entries at shutdown ({why}; queues: {keys})",
                count=len(batch),
                why=failure.getErrorMessage(),
                keys=_key_list(batch),
            )
            return
        self._backlog += batch
        if self._retry is None:
            self.log.warn(
                "Redis unreachable ({why}); keeping {count} queue entries in memory until it is back",
                why=failure.getErrorMessage(),
                count=len(self._backlog),
            )
            self._retry = self._clock.callLater(self.retry_delay, self._flush_backlog)

    def _flush_backlog(self) -> None:
        self._retry = None
        # Batches fail in any order relative to what was queued meanwhile: the numbers restore it.
        waiting = sorted(self._backlog + self._pending)
        self._backlog = []
        self.log.info("Writing {count} queue entries kept while Redis was away", count=len(waiting))
        self._pending = waiting
        self.flush()

    def stop(self) -> None:
        """Send what is pending, stop retrying; entries still in the backlog are reported (the link is going away)."""
        self.flush()
        self._stopped = True
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
                keys=_key_list(self._backlog),
            )

    async def take(self, uid: str, delivered: int, batch: int) -> tuple[int, list[bytes]]:
        """
        Drop the ``delivered`` oldest entries (written to a socket already) and
        return the queue's length and its next ``batch`` entries.
        """
        self.flush()  # what was queued before must be in the queue this reads
        length, entries = await self._redis.eval(TAKE, [queue_key(uid)], [delivered, batch])
        if length < 0:
            self.log.warn("{key} held something other than a list; kept it as {kept}", key=queue_key(uid), kept=_text(entries))
            return 0, []
        return length, list(entries)

    def trim(self, uid: str, delivered: int) -> Deferred[Any]:
        """Drop the ``delivered`` oldest entries of a queue, once they were written to a socket."""
        self.flush()
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


def _key_list(entries: Iterable[_Entry]) -> str:
    return ", ".join(sorted({key for item in entries for key in item.keys}))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
