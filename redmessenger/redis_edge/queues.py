"""
Users' queues in Redis, over the daemon's one command connection.

One connection on purpose: Redis runs a connection's commands in the order they
were sent, so a message queued before a user identifies is always seen by the
handover that follows.  The queue writes of a reactor turn go together in one
script call (a burst for offline users costs one round of txredisapi's
per-command machinery, not one per message), at most ``writes_per_call`` of them
a call: an entry for more queues than that (a group of many offline members) is
split into parts, a call each.

**One queue write call is under way at a time**; what is queued meanwhile goes in
the next call, sent as soon as Redis answered this one.  Pipelining them would let
a later call overtake an earlier one that Redis refused "for now" (OOM near
``maxmemory``, BUSY behind another client's script, READONLY during a failover):
the later one lands, the earlier one lands on its retry, after it, and that queue
is out of order.  Refused or lost with the connection, a call's entries wait in
memory with everything queued behind them, and are sent again, first, after
``retry_delay``.

A queue read (the handover's ``take``) waits until every entry queued for that
queue before it has landed: sent pipelined behind them, it would read without one
Redis then refused, and that entry would land later behind what the user was
already given, or stay in Redis while the user is online.  If a write is refused
meanwhile, the read fails with StoreUnavailable, and the handover tries again (it
sends the waiting entries at once, without waiting for their retry).  Writes to
other queues never hold a read up.  At ``stop()`` whatever is pending goes at
once, pipelined: leaving, reaching Redis matters more.

Queue entries are removed only after they were written to a socket (the take
script trims what the previous batch delivered), so a daemon killed mid-handover
leaves them in Redis: at worst redelivered, never lost.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from redmessenger.core.ports import StoreUnavailable
from redmessenger.logs import make_logger
from redmessenger.model.keyspace import oversize_key, queue_key
from redmessenger.redis_edge.commands import RedisCommands
from redmessenger.redis_edge.errors import temporary, translated
from redmessenger.redis_edge.queueentries import AllParts, Entry, entries, key_list, text
from redmessenger.redis_edge.scripts import ENQUEUE, TAKE


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
        # Entries (and parts) not sent, in the order Redis must see them: queued
        # since the last call went, or sent and not taken (at the front, again).
        self._pending: list[Entry] = []
        self._flush_call: IDelayedCall | None = None
        # A write call was sent and Redis has not answered it yet (one at a time).
        self._under_way = False
        # Set while Redis refused or could not be reached: nothing is sent until it fires (or a read comes).
        self._retry: IDelayedCall | None = None
        # Retries since a write failed, 0 once Redis took everything kept (for the log).
        self._attempts = 0
        # Writes (by number) whose last call Redis refused or did not answer, until they land.
        self._refused: set[int] = set()
        # Those and the writes queued behind them while any is refused: what ``backlog`` counts.
        self._kept: set[int] = set()
        self._stopped = False
        self._next_seq = 0
        # Every queue write (an entry, a trim) by number, with how many of its calls
        # Redis has not answered yet: pending, or sent; and those numbers in order
        # (answered ones dropped once they reach its front).
        self._unanswered: dict[int, int] = {}
        self._numbers: deque[int] = deque()
        # Who waits for the writes numbered below a number to be answered, in the order they asked.
        self._drain_waiters: list[tuple[int, Deferred[None]]] = []
        # The last entry (by number) queued for each queue and not landed yet: entries land in the order they
        # were queued (one call at a time, a refused one first again), so a read waits for that one alone.
        self._last_for: dict[str, int] = {}
        # Queue reads waiting for an entry (by number) to land (failed if a write is refused meanwhile).
        self._read_waiters: list[tuple[int, Deferred[None]]] = []

    @property
    def backlog(self) -> int:
        """Entries waiting for Redis to come back (or to take them): those it refused, and those queued behind them."""
        return len(self._kept)

    def enqueue(
        self, uids: list[str], entry: bytes, again: bool = False, written: Callable[[], None] | None = None
    ) -> None:
        """
        Append an entry to the queues of ``uids`` (who are offline).  Sent at the
        end of this reactor turn with the others of the turn (or with the next
        call, if one is under way); kept in memory while Redis is away.  ``again``:
        it may be there already (not pushed twice).  ``written``: called once Redis has it.
        For more than ``writes_per_call`` queues it goes in parts, a script call
        each, in order; ``written`` is called once Redis has them all.
        """
        self._add([queue_key(uid) for uid in uids], entry, again, written)

    def keep_aside(self, channel: str, payload: bytes, written: Callable[[], None] | None = None) -> None:
        """
        Keep an oversize message at ``rm:oversize:$channel`` (a list, with the queues'
        expiry and length cap), in order with the queue writes, kept in memory while
        Redis is away: what is kept aside is no more lost than what is queued.
        """
        self._add([oversize_key(channel)], payload, False, written)

    def _add(self, keys: list[str], entry: bytes, again: bool, written: Callable[[], None] | None) -> None:
        seq = self._number(1)
        if self._refused:
            self._kept.add(seq)  # behind entries Redis refused: waiting for Redis too
        last_for = self._last_for
        for key in keys:
            last_for[key] = seq
        limit = max(1, self.writes_per_call)
        if len(keys) <= limit:
            self._pending.append(Entry(seq, keys, entry, again, written))
        else:
            parts = -(-len(keys) // limit)
            self._unanswered[seq] = parts
            landed = AllParts(parts, written).landed if written is not None else None
            self._pending += [
                Entry(seq, keys[start : start + limit], entry, again, landed, part, parts)
                for part, start in enumerate(range(0, len(keys), limit))
            ]
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self.flush)

    def _number(self, calls: int) -> int:
        """The next queue write's number: unanswered until Redis answered its ``calls`` calls."""
        seq = self._next_seq
        self._next_seq += 1
        self._unanswered[seq] = calls
        self._numbers.append(seq)
        return seq

    def _answered(self, seq: int) -> None:
        """Redis answered a call of write ``seq`` (it landed, or failed for good: nothing will send it again)."""
        left = self._unanswered[seq] - 1
        if left:
            self._unanswered[seq] = left
            return
        del self._unanswered[seq]
        self._refused.discard(seq)
        self._kept.discard(seq)
        numbers = self._numbers
        while numbers and numbers[0] not in self._unanswered:
            numbers.popleft()

    def _oldest_unanswered(self) -> int:
        """The number of the oldest queue write not answered yet (the next number if there is none)."""
        return self._numbers[0] if self._numbers else self._next_seq

    def flush(self) -> None:
        """Send the entries queued so far, unless a call is under way (they go when it is answered) or Redis is awaited."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._under_way and self._retry is None and not self._stopped:
            self._send_next()

    def _send_next(self) -> None:
        """Send the next call's worth of pending entries: up to ``writes_per_call`` writes, a part alone."""
        batch = self._next_batch()
        if batch:
            self._send(batch)

    def _next_batch(self) -> list[Entry]:
        pending = self._pending
        batch: list[Entry] = []
        writes = 0
        for item in pending:
            if batch and (item.parts > 1 or writes + len(item.keys) > self.writes_per_call):
                break
            batch.append(item)
            writes += len(item.keys)
            if item.parts > 1:
                break
        del pending[: len(batch)]
        return batch

    def _send(self, batch: list[Entry]) -> None:
        keys: list[str] = []
        args: list[Any] = [self._expiry, self._max_length]
        for item in batch:
            keys += item.keys
            args += (item.entry, len(item.keys), "1" if item.again else "0")
        self._under_way = True
        d = self._redis.eval(ENQUEUE, keys, args)
        d.addCallbacks(self._enqueued, self._enqueue_failed, callbackArgs=(batch,), errbackArgs=(batch,))
        d.addErrback(lambda f: self.log.failure("After a queue write", f))

    def _done_with(self, item: Entry) -> None:
        """Redis answered the call of ``item`` for good (it landed, or failed for good): nothing sends it again."""
        last_for = self._last_for
        for key in item.keys:
            if last_for.get(key) == item.seq:
                del last_for[key]
        self._answered(item.seq)

    def _enqueued(self, result: list[Any], batch: list[Entry]) -> None:
        self._under_way = False
        for item in batch:
            if item.written is not None:
                try:
                    item.written()
                except Exception:
                    self.log.failure("After writing a queue entry")
            self._done_with(item)
        dropped, renamed = result
        for key, kept in renamed:
            self.log.warn("{key} held something other than a list; kept it as {kept}", key=text(key), kept=text(kept))
        for key, count in dropped:
            self.log.warn(
                "Queue length cap ({cap}) reached: dropped the {dropped} oldest entries of {key}",
                cap=self._max_length,
                dropped=count,
                key=text(key),
            )
        self._landed()

    def _enqueue_failed(self, failure: Failure, batch: list[Entry]) -> None:
        from txredisapi import ConnectionError  # includes TimeoutError

        self._under_way = False
        refused = temporary(failure)  # LOADING, READONLY, NOREPLICAS...: Redis takes it later
        if not (refused or failure.check(ConnectionError)):
            self.log.failure(
                "Redis refused to queue {count} messages for {keys}",
                failure,
                count=entries(batch),
                keys=key_list(batch),
            )
            for item in batch:
                self._done_with(item)
            self._landed()
            return
        if self._stopped:
            self.log.error(
                "Redis lost {count} queue entries at shutdown ({why}; queues: {keys})",
                count=entries(batch),
                why=failure.getErrorMessage(),
                keys=key_list(batch),
            )
            for item in batch:
                self._done_with(item)
            self._landed()
            return
        # The call may have run before its answer was lost (Redis killed between the two), or run partway
        # before Redis refused a command of it: sent again, first, each entry pushed only where it is not already.
        self._pending[:0] = [item._replace(again=True) for item in batch]
        if not self._kept:
            self.log.warn(
                "Redis refused to queue {count} messages for now ({why}); keeping them in memory, trying again every {delay:g}s"
                if refused
                else "Redis unreachable ({why}); keeping {count} queue entries in memory until it is back",
                why=failure.getErrorMessage(),
                count=entries(batch),
                delay=self.retry_delay,
            )
        self._refused.update(item.seq for item in batch)
        self._kept.update(item.seq for item in self._pending)
        if self._retry is not None:  # (a read that came meanwhile sent them again already)
            self._retry.cancel()
        self._retry = self._clock.callLater(self.retry_delay, self._retry_now)
        # A queue read waiting for writes to its queue would read without them: it fails, and its handover tries
        # again.  (Last: what it does next may read or write again at once.)
        reads = self._read_waiters[:]
        del self._read_waiters[:]
        for _, waiter in reads:
            waiter.errback(StoreUnavailable(f"queue writes waiting for Redis ({failure.getErrorMessage()})"))

    def _landed(self) -> None:
        """A write call was answered: wake who waited for it, then send what was queued behind it."""
        if self._attempts and not self._kept:
            self.log.info("Redis took the queue entries kept in memory ({attempts} attempts)", attempts=self._attempts)
            self._attempts = 0
        unanswered = self._unanswered
        reads: list[tuple[int, Deferred[None]]] = []
        if self._read_waiters:
            waiting: list[tuple[int, Deferred[None]]] = []
            for read in self._read_waiters:
                (waiting if read[0] in unanswered else reads).append(read)
            self._read_waiters[:] = waiting
        oldest = self._oldest_unanswered()
        drains = self._drain_waiters
        done = 0
        while done < len(drains) and drains[done][0] <= oldest:
            done += 1
        drained = drains[:done]
        del drains[:done]
        for _, waiter in reads + drained:
            waiter.callback(None)
        if not self._under_way and self._retry is None and not self._stopped and self._pending:
            self._send_next()

    def _retry_now(self) -> None:
        """Send the kept entries, and what was queued behind them, now: one call at a time again."""
        if self._retry is not None:
            if self._retry.active():
                self._retry.cancel()
            self._retry = None
        self._attempts += 1
        (self.log.info if self._attempts == 1 else self.log.debug)(
            "Writing {count} queue entries kept while Redis was away", count=self.backlog
        )
        self.flush()

    def drain(self) -> Deferred[None]:
        """
        Fires once every queue write (append or trim) made so far has been
        answered by Redis (one waiting to be sent again is not), whatever is
        written after this call.
        """
        self.flush()
        if self._oldest_unanswered() >= self._next_seq or self._stopped:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append((self._next_seq, waiter))
        return waiter

    def stop(self) -> None:
        """
        Send everything pending at once (pipelined: leaving, order matters less than reaching Redis), unless Redis
        is refusing or away; stop retrying; entries never sent are reported (the link is going away).
        """
        self.flush()  # (the first call as any: one failing at once, Redis away, leaves a retry, and nothing more goes)
        self._stopped = True  # (a call failing at once is now reported, not put back to be sent again)
        if self._retry is None:
            while self._pending:
                self._send(self._next_batch())
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        reads = self._read_waiters[:]
        del self._read_waiters[:]
        for _, read in reads:
            read.errback(StoreUnavailable("stopping"))
        waiters = self._drain_waiters[:]
        del self._drain_waiters[:]
        for _, waiter in waiters:
            waiter.callback(None)
        unsent = [item for item in self._pending if item.seq in self._unanswered]
        if unsent:
            self.log.error(
                "Stopping with {count} queue entries Redis never accepted (queues: {keys})",
                count=entries(unsent),
                keys=key_list(unsent),
            )

    def _written_before(self, key: str) -> Deferred[None]:
        """
        Fires once every entry queued so far for ``key`` has landed; fails with StoreUnavailable if Redis refuses
        one (or any write, while one of them waits).  Writes to other queues do not hold it up.
        """
        last = self._last_for.get(key)
        if last is None:
            return succeed(None)
        if self._stopped:
            return fail(StoreUnavailable("stopping"))
        if self._retry is not None:
            self._retry_now()  # a read is waiting: what Redis refused goes now, not after its retry
        else:
            self.flush()
        if last not in self._unanswered:
            return succeed(None)
        if self._retry is not None:  # refused at once (no connection): not worth waiting for the retry
            return fail(StoreUnavailable("queue writes waiting for Redis"))
        waiter: Deferred[None] = Deferred()
        self._read_waiters.append((last, waiter))
        return waiter

    def take(self, uid: str, delivered: int, batch: int) -> Deferred[tuple[int, list[bytes]]]:
        """
        Drop the ``delivered`` oldest entries (written to a socket already) and
        return the queue's length and its next ``batch`` entries, once every
        entry queued for it before has landed (StoreUnavailable if Redis refuses a write meanwhile).
        """
        return self._written_before(queue_key(uid)).addCallback(self._read, uid, delivered, batch)

    def _read(self, _: None, uid: str, delivered: int, batch: int) -> Deferred[tuple[int, list[bytes]]]:
        d: Deferred[list[Any]] = self._redis.eval(TAKE, [queue_key(uid)], [delivered, batch])
        return translated(d).addCallback(self._taken, uid)

    def _taken(self, reply: list[Any], uid: str) -> tuple[int, list[bytes]]:
        length, found = reply
        if length < 0:
            self.log.warn("{key} held something other than a list; kept it as {kept}", key=queue_key(uid), kept=text(found))
            return 0, []
        return int(length), list(found)

    def trim(self, uid: str, delivered: int) -> Deferred[None]:
        """Drop the ``delivered`` oldest entries of a queue, once they were written to a socket."""
        self.flush()
        seq = self._number(1)
        d: Deferred[Any] = self._redis.execute_command("LTRIM", queue_key(uid), delivered, -1)
        d.addBoth(self._landed_through, seq)
        return translated(d).addCallback(lambda _: None)

    def _landed_through(self, result: Any, seq: int) -> Any:
        self._answered(seq)
        self._landed()
        return result
