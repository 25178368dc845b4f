"""
Users' queues in Redis, over the daemon's one command connection.

One connection on purpose: Redis runs a connection's commands in the order they
were sent, so a message queued before a user identifies is always seen by the
handover that follows.  Each operation is one command or one Lua script, sent
without waiting for the previous one (pipelined).  The queue writes of a reactor
turn go together in one script call (a burst for offline users costs one round
of txredisapi's per-command machinery, not one per message); anything that reads
a queue sends them first, so it never overtakes them: the entries waiting for a
retry too, without waiting for it.

Queue entries are removed only after they were written to a socket (the take
script trims what the previous batch delivered), so a daemon killed mid-handover
leaves them in Redis: at worst redelivered, never lost.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from redmessenger.logs import make_logger
from redmessenger.model.keyspace import oversize_key, queue_key
from redmessenger.redis_edge.commands import RedisCommands
from redmessenger.redis_edge.errors import temporary, translated
from redmessenger.redis_edge.scripts import ENQUEUE, TAKE


class _Entry(NamedTuple):
    """A queue entry on its way to Redis: numbered as queued, the order Redis must see it in."""

    seq: int
    keys: list[str]
    entry: bytes
    #: It may be in those queues already (read again after a crash): pushed only where it is not.
    again: bool = False
    #: Called once Redis has it.
    written: Callable[[], None] | None = None


class QueueStore:
    """Users' queues in Redis (the core's :class:`~redmessenger.core.ports.Queues`)."""

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
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._expiry = queue_expiry
        self._max_length = queue_max_length
        # Entries queued and not sent yet, in order: sent together at the end of the turn.
        self._pending: list[_Entry] = []
        self._flush_call: IDelayedCall | None = None
        self._next_seq = 0
        # Entries Redis could not take (link down, or refused for now: LOADING,
        # READONLY...).  While any wait here nothing else is sent: the retry
        # sends them all, in the order they were queued, so that every queue
        # keeps its order.
        self._backlog: list[_Entry] = []
        self._retry: IDelayedCall | None = None
        # Entries the retries sent and Redis has not answered yet (while Redis is
        # away they wait for a connection): still waiting for it, and what is
        # queued meanwhile waits behind them, in the backlog.
        self._retried = 0
        # Retries since a write failed, 0 once Redis took everything (for the log).
        self._attempts = 0
        self._stopped = False
        # Queue writes sent and not answered yet, and who waits for them to end.
        self._in_flight = 0
        self._drain_waiters: list[Deferred[None]] = []

    @property
    def backlog(self) -> int:
        """Entries waiting for Redis to come back (or to take them): kept in memory, or sent again and not answered."""
        return len(self._backlog) + self._retried

    def enqueue(
        self, uids: list[str], entry: bytes, again: bool = False, written: Callable[[], None] | None = None
    ) -> None:
        """
        Append an entry to the queues of ``uids`` (who are offline).  Sent at the
        end of this reactor turn with the others of the turn, or earlier if a
        queue is read first; kept in memory while Redis is away.  ``again``: it
        may be there already (not pushed twice).  ``written``: called once Redis has it.
        """
        self._pending.append(_Entry(self._next_seq, [queue_key(uid) for uid in uids], entry, again, written))
        self._next_seq += 1
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self.flush)

    def keep_aside(self, channel: str, payload: bytes, written: Callable[[], None] | None = None) -> None:
        """
        Keep an oversize message at ``rm:oversize:$channel`` (a list, with the queues'
        expiry and length cap), in order with the queue writes, kept in memory while
        Redis is away: what is kept aside is no more lost than what is queued.
        """
        self._pending.append(_Entry(self._next_seq, [oversize_key(channel)], payload, False, written))
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
        if self._backlog or self._retried:  # Redis is away, or not known to be back: behind the entries waiting for it
            self._backlog += pending
            return
        self._send_all(pending)

    def _send_all(self, pending: list[_Entry], retried: bool = False) -> None:
        batch: list[_Entry] = []
        writes = 0
        for i, item in enumerate(pending):
            if batch and writes + len(item.keys) > self.writes_per_call:
                self._send(batch, retried)
                batch, writes = [], 0
                if self._backlog:  # that call failed at once: the rest waits behind it
                    self._backlog += pending[i:]
                    return
            batch.append(item)
            writes += len(item.keys)
        if batch:
            self._send(batch, retried)

    def _send(self, batch: list[_Entry], retried: bool) -> None:
        keys: list[str] = []
        args: list[Any] = [self._expiry, self._max_length]
        for item in batch:
            keys += item.keys
            args += (item.entry, len(item.keys), "1" if item.again else "0")
        self._in_flight += 1
        if retried:
            self._retried += len(batch)
        d = self._redis.eval(ENQUEUE, keys, args)
        if retried:
            d.addBoth(self._retry_answered, len(batch))
        d.addCallbacks(self._enqueued, self._enqueue_failed, callbackArgs=(batch,), errbackArgs=(batch,))
        d.addBoth(self._landed)

    def _retry_answered(self, result: Any, count: int) -> Any:
        self._retried -= count
        return result

    def _landed(self, _: object) -> None:
        self._in_flight -= 1
        if self._attempts and not self._retried and self._retry is None and not self._stopped:
            # The retries are answered, and none failed for now: what was queued behind them goes now.
            if self._backlog:
                self._flush_backlog()
            else:
                self.log.info("Redis took the queue entries kept in memory ({attempts} attempts)", attempts=self._attempts)
                self._attempts = 0
        if not self._in_flight and not self._backlog and not self._pending:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def drain(self) -> Deferred[None]:
        """Fires once every queue write (append or trim) so far has been answered by Redis."""
        self.flush()
        if not self._in_flight and not self._backlog:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append(waiter)
        return waiter

    def _enqueued(self, result: list[Any], batch: list[_Entry]) -> None:
        for item in batch:
            if item.written is not None:
                try:
                    item.written()
                except Exception:
                    self.log.failure("After writing a queue entry")
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

        refused = temporary(failure)  # LOADING, READONLY, NOREPLICAS...: Redis takes it later
        if not (refused or failure.check(ConnectionError)):
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
        # The call may have run before its answer was lost (Redis killed between the two), or run partway
        # before Redis refused a command of it: sent again, each entry is pushed only where it is not already.
        self._backlog += [item._replace(again=True) for item in batch]
        if self._retry is not None:
            return
        if not self._attempts:
            self.log.warn(
                "Redis refused to queue {count} messages for now ({why}); keeping them in memory, trying again every {delay:g}s"
                if refused
                else "Redis unreachable ({why}); keeping {count} queue entries in memory until it is back",
                why=failure.getErrorMessage(),
                count=len(self._backlog),
                delay=self.retry_delay,
            )
        self._retry = self._clock.callLater(self.retry_delay, self._flush_backlog)

    def _flush_backlog(self) -> None:
        """Send the backlog, and what was queued behind it, now: counted in it until Redis answers."""
        if self._retry is not None:
            if self._retry.active():
                self._retry.cancel()
            self._retry = None
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        # Batches fail in any order relative to what was queued meanwhile: the numbers restore it.
        waiting = sorted(self._backlog + self._pending)
        self._backlog, self._pending = [], []
        if not waiting:
            return
        self._attempts += 1
        (self.log.info if self._attempts == 1 else self.log.debug)(
            "Writing {count} queue entries kept while Redis was away", count=len(waiting)
        )
        self._send_all(waiting, retried=True)

    def _send_now(self) -> None:
        """Send every entry queued so far, the backlog too without waiting for its retry: a queue read comes after them."""
        if self._backlog or self._retried:
            self._flush_backlog()
        else:
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

    def take(self, uid: str, delivered: int, batch: int) -> Deferred[tuple[int, list[bytes]]]:
        """
        Drop the ``delivered`` oldest entries (written to a socket already) and
        return the queue's length and its next ``batch`` entries.
        """
        self._send_now()  # what was queued before must be in the queue this reads
        d: Deferred[list[Any]] = self._redis.eval(TAKE, [queue_key(uid)], [delivered, batch])
        return translated(d).addCallback(self._taken, uid)

    def _taken(self, reply: list[Any], uid: str) -> tuple[int, list[bytes]]:
        length, entries = reply
        if length < 0:
            self.log.warn("{key} held something other than a list; kept it as {kept}", key=queue_key(uid), kept=_text(entries))
            return 0, []
        return int(length), list(entries)

    def trim(self, uid: str, delivered: int) -> Deferred[None]:
        """Drop the ``delivered`` oldest entries of a queue, once they were written to a socket."""
        self._send_now()
        self._in_flight += 1
        d: Deferred[Any] = self._redis.execute_command("LTRIM", queue_key(uid), delivered, -1)
        d.addBoth(self._landed_through)
        return translated(d).addCallback(lambda _: None)

    def _landed_through(self, result: Any) -> Any:
        self._landed(result)
        return result


def _key_list(entries: Iterable[_Entry]) -> str:
    return ", ".join(sorted({key for item in entries for key in item.keys}))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
