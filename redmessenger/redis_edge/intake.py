"""
The durable intake (SPEC §10): a Redis stream (``rm:intake``) the application
XADDs messages to, read by the daemons' consumer group.

Unlike a bare PUBLISH, an entry Redis accepted is kept until a daemon has made
every recipient's copy safe (delivered and confirmed, or queued): only then is
it acknowledged (XACK) and removed from the stream (XDEL).  A daemon that dies
before that leaves the entry pending under its consumer name; at its next start
it reads its pending entries again.  The daemon that reads claims the entries
any consumer left pending for ``claim_idle`` seconds when it starts reading, and
every ``claim_every`` seconds after (a reader killed, another one taking over:
what the dead one held is routed again once idle that long).  So nothing
accepted by Redis is lost while no daemon runs, nor when one is killed.  What is
read again may reach a socket twice (same id: clients drop the copy); it is
queued once.  Within one run the reader remembers the last ``RECENTLY_DONE``
entries whose every copy the clients confirmed: one of those read again (its
XACK was lost with the connection, or a Redis failover lost it before the
replica had it) is acknowledged again, not delivered again.  An entry made safe by a queue write is routed again instead:
the failover may have lost the queue write too (queued once all the same).

An entry has two fields, ``channel`` (``rm.users.$uid`` or ``rm.channels.$cid``)
and ``payload`` (any bytes)::

    XADD rm:intake * channel rm.users.user1 payload "Hello, world!"

An entry that cannot be delivered (a field missing, a channel that is not
RedMessenger's) is acknowledged and kept, as JSON, in ``rm:intake:invalid``.

A key of the wrong type (another program's) at ``rm:intake`` or
``rm:intake:invalid`` is renamed aside (``KEY:invalid:<time>``, as for queue
keys, redis_edge/scripts.py) with a warning, rather than stopping the intake.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from redmessenger.logs import make_logger
from redmessenger.model.keyspace import INTAKE_GROUP, INTAKE_INVALID, INTAKE_STREAM
from redmessenger.redis_edge.commands import RedisCommands
from redmessenger.redis_edge.scripts import INTAKE_DONE, INTAKE_GROUP_CREATE

#: An entry to route: (entry id, channel, payload, timestamp in ms, read again?) -> why it cannot be, or None.
OnEntry = Callable[[str, bytes, bytes, int, bool], "str | None"]

#: Ids acknowledged per script call at most (Lua's unpack has a limit).
ACKS_PER_CALL = 1000
#: Seconds acknowledgements wait to go out together.
ACK_DELAY = 0.01
#: Entries the clients confirmed that the reader remembers (within a run): reading one again does not deliver it again.
RECENTLY_DONE = 10000
#: Entries, and bytes of payload, read and not made safe yet past which the reader stops reading until they are
#: (under 90 % again): while Redis refuses queue writes (maxmemory) it still serves XREADGROUP, and each entry read
#: then waited in memory; the stream keeps what is not read yet.  Far above what a burst holds (case i: 20,000).
MAX_IN_FLIGHT = 50_000
MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024


class IntakeReader:
    """Reads the intake stream as one consumer of the group; acknowledges entries once the core says they are safe."""

    log = make_logger()

    def __init__(
        self,
        reading: RedisCommands,
        commands: RedisCommands,
        clock: IReactorTime,
        consumer: str,
        on_entry: OnEntry,
        *,
        batch: int = 500,
        block: float = 1.0,
        claim_idle: float = 60.0,
        claim_every: float | None = None,
        retry_delay: float = 1.0,
        reads: Callable[[], bool] = lambda: True,
    ) -> None:
        self._reading = reading
        self._commands = commands
        self._clock = clock
        self.consumer = consumer
        self._on_entry = on_entry
        self._batch = batch
        self._block_ms = max(1, int(block * 1000))
        self._claim_idle_ms = int(claim_idle * 1000)
        #: Seconds between two claims of entries left idle, while this daemon reads (``claim_idle`` / 2 unless given).
        self.claim_every = claim_idle / 2 if claim_every is None else claim_every
        self._claimed_at = 0.0
        self._retry_delay = retry_delay
        #: Whether this daemon is the one that reads now: with several on one Redis, one reads (the
        #: owner of the stream's name) and gives each user's entries to its owner, in stream order.
        self._reads = reads
        #: Entries read and not acknowledged yet (the core holds them), and the bytes of their payloads.
        self._in_flight: dict[str, int] = {}
        self._in_flight_bytes = 0
        self.max_in_flight = MAX_IN_FLIGHT
        self.max_in_flight_bytes = MAX_IN_FLIGHT_BYTES
        #: Whether reading waits for the entries in flight to be made safe (past max_in_flight or its bytes).
        self.full = False
        self._done: list[str] = []
        #: The last RECENTLY_DONE entries found safe (a dict: ordered, oldest first).
        self._recently_done: dict[str, None] = {}
        self._invalid: list[tuple[str, bytes]] = []
        self._flush_call: IDelayedCall | None = None
        self._stopping = False
        self._running: Deferred[None] | None = None
        self._wait: Deferred[None] | None = None
        #: A read under way (or the recovery before it); who waits for it to end (:meth:`quiet`).
        self._busy = False
        self._quiet_waiters: list[Deferred[None]] = []
        #: The reading connection's CLIENT ID (asked when the reader recovers), and whether it is blocked in a read:
        #: :meth:`quiet` unblocks it (CLIENT UNBLOCK) rather than wait for the read's block to end.
        self._client_id: int | None = None
        self._blocked = False
        #: Entries read, and acknowledged, since start (for operators).
        self.read = 0
        self.acknowledged = 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def start(self) -> None:
        self._stopping = False
        self._running = ensureDeferred(self._run())
        self._running.addErrback(lambda f: self.log.failure("Reading the intake stream stopped", f))

    def stop(self) -> None:
        """
        Stop reading.  A read under way ends within ``block`` seconds, or when the
        link closes; what it brings is handled, and acknowledged if it becomes
        safe before the link closes (else read again at the next start).
        """
        self._stopping = True
        if self._wait is not None and not self._wait.called:
            self._wait.callback(None)

    def quiet(self) -> Deferred[None]:
        """
        Fires once no read is under way and what the last one brought was handed to the core (at once if none is):
        with several daemons, what the reader read before it saw a change of the nodes goes to the new owners
        before the word that this daemon's part is done (redis_edge/handoff.py).
        """
        waiter: Deferred[None] = Deferred()
        if self._busy:
            self._quiet_waiters.append(waiter)
            if self._blocked and self._client_id is not None:
                d = self._commands.execute_command("CLIENT", "UNBLOCK", self._client_id)
                d.addErrback(lambda _: None)  # then the read ends with its block
        else:
            waiter.callback(None)
        return waiter

    def _quiet(self) -> None:
        self._busy = False
        waiters, self._quiet_waiters = self._quiet_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def wake(self) -> None:
        """Check now whether this daemon reads (the nodes changed), rather than at the end of the pause."""
        if self._wait is not None and not self._wait.called:
            self._wait.callback(None)

    def done(self, entry_id: str) -> None:
        """Every recipient's copy of this entry is safe: acknowledge it (with the others of this reactor turn)."""
        self._forget(entry_id)
        self._done.append(entry_id)
        self._schedule_flush()

    def _forget(self, entry_id: str) -> None:
        size = self._in_flight.pop(entry_id, None)
        if size is None:
            return
        self._in_flight_bytes -= size
        if self.full and not self._too_many(9 / 10):
            self.full = False
            self.log.info("{count} intake entries in flight: reading again", count=len(self._in_flight))
            self.wake()

    def _too_many(self, share: float = 1.0) -> bool:
        return len(self._in_flight) >= self.max_in_flight * share or self._in_flight_bytes >= self.max_in_flight_bytes * share

    def delivered(self, entry_id: str) -> None:
        """Every copy of this entry was confirmed by the clients (none queued): if read again, acknowledge it only."""
        recent = self._recently_done
        recent[entry_id] = None
        if len(recent) > RECENTLY_DONE:
            del recent[next(iter(recent))]

    def flush(self) -> Deferred[Any]:
        """Acknowledge what is done so far; fires once Redis has answered (a failure is logged: they stay pending)."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        calls = []
        while self._done or self._invalid:
            good, self._done = self._done[:ACKS_PER_CALL], self._done[ACKS_PER_CALL:]
            bad, self._invalid = self._invalid[: ACKS_PER_CALL - len(good)], self._invalid[ACKS_PER_CALL - len(good) :]
            args: list[Any] = [INTAKE_GROUP, len(good), *good]
            for entry_id, fields in bad:
                args += (entry_id, fields)
            d: Deferred[Any] = self._commands.eval(INTAKE_DONE, [INTAKE_STREAM, INTAKE_INVALID], args)
            d.addCallback(self._acknowledged, len(good) + len(bad))
            d.addErrback(self._ack_failed, len(good) + len(bad))
            calls.append(d)
        if not calls:
            return succeed(None)
        from twisted.internet.defer import gatherResults

        return gatherResults(calls, consumeErrors=True)

    # -- reading -------------------------------------------------------------------------

    async def _run(self) -> None:
        recovering = True
        while not self._stopping:
            try:
                if not self._reads():
                    await self._pause()  # another daemon reads (docs/scale-out.md)
                    continue
                if self._too_many():
                    if not self.full:
                        self.full = True
                        self.log.warn(
                            "{count} intake entries ({size} bytes) read and not yet delivered or queued (Redis refusing "
                            "queue writes?): reading paused until they are; the stream keeps the rest",
                            count=len(self._in_flight),
                            size=self._in_flight_bytes,
                        )
                    await self._pause()  # woken as soon as there is room (or the reader stops)
                    continue
                self._busy = True
                try:
                    if recovering:
                        await self._create_group()
                        await self._claim_abandoned()
                        await self._read_pending()
                        self._client_id = await self._ask_client_id()
                        recovering = False
                        self._claimed_at = self._clock.seconds()
                    elif self._clock.seconds() - self._claimed_at >= self.claim_every:
                        self._claimed_at = self._clock.seconds()
                        await self._claim_idle_entries()
                    self._blocked = True
                    try:
                        reply = await self._reading.execute_command(
                            "XREADGROUP", "GROUP", INTAKE_GROUP, self.consumer, "COUNT", self._batch,
                            "BLOCK", self._block_ms, "STREAMS", INTAKE_STREAM, ">",
                        )
                    finally:
                        self._blocked = False
                    self._handle(reply, again=False)
                finally:
                    self._quiet()
            except Exception as e:
                if self._stopping:
                    break
                self.log.warn("Reading the intake stream failed ({why}); trying again", why=str(e) or type(e).__name__)
                # After a lost connection, a reply may have been lost too: what it
                # carried is pending under our name and unknown to us.  Read it.
                recovering = True
                await self._pause()

    async def _ask_client_id(self) -> int | None:
        try:
            found = await self._reading.execute_command("CLIENT", "ID")
        except Exception:
            return None  # CLIENT denied (ACL): quiet() waits for the read's block instead
        return found if isinstance(found, int) else None

    async def _pause(self) -> None:
        """``retry_delay`` seconds, or less if the reader is stopped meanwhile."""
        wait: Deferred[None] = Deferred()
        self._wait = wait
        call = self._clock.callLater(self._retry_delay, wait.callback, None)
        try:
            await wait
        finally:
            if call.active():
                call.cancel()
            self._wait = None

    async def _create_group(self) -> None:
        """
        The group, reading from the start of the stream (entries added before any daemon ran are read too).  A key of
        another type there is kept aside first (the application's mistake): the intake goes on with a new stream.
        """
        kept = await self._reading.eval(INTAKE_GROUP_CREATE, [INTAKE_STREAM], [INTAKE_GROUP])
        if kept:
            self.log.warn(
                "{key} held something other than a stream; kept it as {kept}; reading a new {key}", key=INTAKE_STREAM, kept=_text(kept)
            )

    async def _claim_abandoned(self) -> None:
        """Entries pending for ``claim_idle`` seconds under any consumer (a daemon gone under another name) become ours."""
        cursor: Any = b"0-0"
        while True:
            reply = await self._reading.execute_command(
                "XAUTOCLAIM", INTAKE_STREAM, INTAKE_GROUP, self.consumer, self._claim_idle_ms, cursor, "COUNT", self._batch, "JUSTID"
            )
            cursor = reply[0]
            if cursor in (b"0-0", "0-0") or self._stopping:
                return

    async def _claim_idle_entries(self) -> None:
        """
        While reading (every ``claim_every`` seconds): entries pending for ``claim_idle`` seconds under any consumer (a
        reader killed, that this one took over from) become ours and go to the core now, in stream order, before the
        next read.  Those the core holds already, or that were safe already, are not routed again (see :meth:`_handle`).
        One XAUTOCLAIM when nothing is pending.
        """
        cursor: Any = b"0-0"
        while not self._stopping:
            reply = await self._reading.execute_command(
                "XAUTOCLAIM", INTAKE_STREAM, INTAKE_GROUP, self.consumer, self._claim_idle_ms, cursor, "COUNT", self._batch
            )
            cursor = reply[0]
            self._handle([[INTAKE_STREAM, reply[1]]], again=True)
            if cursor in (b"0-0", "0-0"):
                return

    async def _read_pending(self) -> None:
        """Our own pending entries (read before a crash, or a lost reply), that the core does not hold."""
        last: Any = b"0"
        while not self._stopping:
            reply = await self._reading.execute_command(
                "XREADGROUP", "GROUP", INTAKE_GROUP, self.consumer, "COUNT", self._batch, "STREAMS", INTAKE_STREAM, last
            )
            entries = _entries(reply)
            if not entries:
                return
            self._handle(reply, again=True)
            last = entries[-1][0]

    def _handle(self, reply: Any, again: bool) -> None:
        for raw_id, fields in _entries(reply):
            entry_id = raw_id.decode("ascii") if isinstance(raw_id, bytes) else str(raw_id)
            if entry_id in self._in_flight:
                continue  # the core holds it already (read again after a lost connection)
            if again and entry_id in self._recently_done:
                self._done.append(entry_id)  # safe already: its acknowledgement was lost, send it again
                self._schedule_flush()
                continue
            self.read += 1
            if fields is None:  # deleted from the stream while pending: nothing to deliver
                self._done.append(entry_id)
                self._schedule_flush()
                continue
            values = dict(zip(fields[::2], fields[1::2]))
            channel, payload = values.get(b"channel"), values.get(b"payload")
            why: str | None
            if not isinstance(channel, bytes) or not isinstance(payload, bytes):
                why = "no 'channel' and 'payload' fields"
            else:
                self._in_flight[entry_id] = len(payload)
                self._in_flight_bytes += len(payload)
                try:
                    why = self._on_entry(entry_id, channel, payload, _milliseconds(entry_id), again)
                except Exception:
                    self.log.failure("Routing intake entry {id} failed", id=entry_id)
                    why = "internal error"
                if why is not None:
                    self._forget(entry_id)
            if why is not None:
                self.log.warn("Intake entry {id} cannot be delivered ({why}); kept in {key}", id=entry_id, why=why, key=INTAKE_INVALID)
                record = {"id": entry_id, "why": why, "fields": {_text(k): _text(v) for k, v in values.items()}}
                self._invalid.append((entry_id, json.dumps(record).encode("utf-8")))
                self._schedule_flush()

    # -- acknowledging -------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        # A few milliseconds late, so that one call acknowledges what many turns made safe.
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(ACK_DELAY, self.flush)

    def _acknowledged(self, result: Any, count: int) -> None:
        self.acknowledged += count
        kept = result[1] if isinstance(result, list) and len(result) > 1 else None
        if kept:
            self.log.warn("{key} held something other than a list; kept it as {kept}", key=INTAKE_INVALID, kept=_text(kept))

    def _ack_failed(self, failure: Any, count: int) -> None:
        # They stay pending in Redis: claimed by the reader once idle claim_idle seconds, or read again at the next
        # start (queued once, delivered again with the same id).
        self.log.warn(
            "Could not acknowledge {count} intake entries ({why}); they stay pending, routed again once idle"
            " {seconds} s or at the next start",
            count=count,
            why=failure.getErrorMessage(),
            seconds=self._claim_idle_ms // 1000,
        )


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    """The (id, fields) of an XREADGROUP reply: [[stream, [[id, [field, value, ...] or nil], ...]]], or nil."""
    if not reply:
        return []
    entries: list[tuple[Any, Any]] = []
    for _stream, items in reply:
        for item in items or ():
            if item:  # (nil: an entry deleted while pending, in an XAUTOCLAIM before Redis 7)
                entries.append((item[0], item[1]))
    return entries


def _milliseconds(entry_id: str) -> int:
    """When Redis took the entry: the first part of its id."""
    head, _, _ = entry_id.partition("-")
    return int(head) if head.isdigit() else 0


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
