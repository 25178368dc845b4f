"""
Queue handover (SPEC §3 rules 3 and 4): when a socket identifies, the user's
queue goes to it, oldest first, a batch at a time, before any live message.

A batch leaves Redis only once the client confirmed it (trimmed with the next
read), so a client that drops keeps everything it did not confirm.  One
handover per user at a time.  The user's sockets that identify while it runs
wait for it: their live messages are held (``Attachment.held``) and released
once the queue is through, so that no socket sees a newer message before an
older one.  If the socket receiving the queue goes away midway (a page reload,
a tab closed), the rest goes on to the first socket waiting, or else to the
user's oldest socket: nothing stays stranded in Redis while the user is online.

If Redis fails a read (StoreUnavailable: no connection, no answer in time, a
"not now" error reply), the handover is tried again after a while (1 s,
doubling up to 30 s) for as long as the socket stays: its live messages stay
held meanwhile.  What is held counts against the socket's budget like what it
was sent; past its share the socket is given up (4413) and they go to the
user's other sockets or the queue, behind what the queue holds.

A batch is bounded by bytes as well as by entries: it stops before the socket
would hold more than ``max_pending_bytes`` sent and not confirmed, and what it
sent counts against the budget until the client confirms it (see
:mod:`redmessenger.core.budget`); the rest comes with the next read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    ensureDeferred,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from redmessenger.core.budget import Budget
from redmessenger.core.confirmations import Confirmations
from redmessenger.core.counters import Counters
from redmessenger.core.delivery import Delivery
from redmessenger.core.ports import Queues, StoreUnavailable
from redmessenger.core.presence import Attachment, Presence, Sent
from redmessenger.logs import debugging, make_logger
from redmessenger.model.envelope import (
    Message,
    UnreadableEntry,
    message_from_entry,
    message_from_unreadable,
)
from redmessenger.model.keyspace import user_channel


@dataclass(eq=False)
class _Handover:
    """The user's queue on its way to one socket; one per user at a time."""

    attachment: Attachment
    done: Deferred[None] | None = None
    delivered: int = 0
    #: Sockets of the same user that identified while this handover ran, oldest first.
    waiting: list[Attachment] = field(default_factory=list)
    #: The socket stopped taking messages or confirming them: it is going away.
    cut_short: bool = False
    #: Redis failed the last attempt: the next one waits for this (and its timer).
    pause: Deferred[None] | None = None
    resume: IDelayedCall | None = None
    failures: int = 0
    #: The queue is read once more when this one is through (:meth:`Handovers.again`).
    again: bool = False


class Handovers:
    """The queues being handed over, one per user."""

    log = make_logger()

    #: Seconds before a handover Redis failed is tried again, doubling at each failure up to ``retry_most``.
    retry_first = 1.0
    retry_most = 30.0

    def __init__(
        self,
        presence: Presence,
        queues: Queues,
        delivery: Delivery,
        confirmations: Confirmations,
        counters: Counters,
        clock: IReactorTime,
        batch: int,
        on_settled: Callable[[], None],
        budget: Budget,
        unheld: Callable[[], Deferred[None]] = lambda: defer.succeed(None),
    ) -> None:
        self._budget = budget
        #: Fires once no change of the nodes holds the messages for the old owners' word (Router.unheld): a queue is
        #: read after what they queued before the change landed.
        self._unheld = unheld
        self._presence = presence
        self._queues = queues
        self._delivery = delivery
        self._confirmations = confirmations
        self._counters = counters
        self._clock = clock
        self._batch = batch
        self._on_settled = on_settled
        self._running: dict[str, _Handover] = {}
        self._stopping = False

    @property
    def running(self) -> int:
        """Handovers under way (users whose queue is on its way to a socket)."""
        return len(self._running)

    def detached(self, attachment: Attachment) -> None:
        """A socket closed: a handover of its queue waiting to try again ends now, not at its next try."""
        handover = self._running.get(attachment.uid)
        if handover is not None and handover.attachment is attachment:
            self._hurry(handover)

    def identified(self, attachment: Attachment) -> None:
        """A socket just identified: hand it the queue, or let it wait for the running handover."""
        handover = self._running.get(attachment.uid)
        if handover is None:
            self._start(attachment)
        else:
            attachment.held = []
            handover.waiting.append(attachment)
            if not self._ours(handover.attachment):
                self._hurry(handover)  # its socket went while it waited to try again: this one takes over now

    def again(self, uid: str) -> None:
        """
        The user's queue may hold messages its sockets here were not handed: another node took the user over while
        this one was out of the list (its subscription down) and queued them.  Handed to its oldest socket, the
        others' live messages held meanwhile (one of them takes the rest over if it goes); or, if a handover is
        under way, read once more by it.
        """
        handover = self._running.get(uid)
        if handover is not None:
            handover.again = True
            return
        user = self._presence.get(uid)
        sockets = [attachment for attachment in user.attachments if attachment.attached] if user is not None else []
        if sockets:
            for other in sockets[1:]:
                other.held = [] if other.held is None else other.held
            self._start(sockets[0], sockets[1:])

    def stop(self, timeout: float) -> Deferred[Any]:
        """
        Let running handovers finish their bookkeeping (trims, held messages),
        for at most ``timeout`` seconds: with Redis away they cannot, and are
        cancelled (one warning; what they did not deliver stays queued).
        """
        self._stopping = True
        pausing = [h.pause for h in self._running.values() if h.pause is not None]
        if pausing:
            self.log.info(
                "{count} queue handovers waiting to try Redis again stop here; their queues stay", count=len(pausing)
            )
        for pause in pausing:
            pause.cancel()  # settles it now (not tried again: the daemon stops)
        running = [h.done for h in self._running.values() if h.done is not None]
        waiting: Deferred[Any] = DeferredList(running, consumeErrors=True)

        def cut_short(result: Any, timeout: float) -> None:
            self.log.warn(
                "{count} queue handovers unfinished {timeout}s into the shutdown (Redis does not answer);"
                " what they did not deliver stays queued",
                count=len(running),
                timeout=timeout,
            )

        return waiting.addTimeout(timeout, self._clock, onTimeoutCancel=cut_short)

    def _start(self, attachment: Attachment, waiting: list[Attachment] | None = None) -> None:
        handover = _Handover(attachment, waiting=waiting or [])
        self._running[attachment.uid] = handover
        if attachment.held is None:
            attachment.held = []
        d = ensureDeferred(self._hand_over(handover))
        handover.done = d
        d.addErrback(self._failed, attachment.uid)

    def _failed(self, failure: Any, uid: str) -> None:
        if self._stopping and failure.check(CancelledError):
            return  # cut short by stop(), which says so
        self.log.failure("Handing the queue of {uid} over failed", failure, uid=uid)

    async def _hand_over(self, handover: _Handover) -> None:
        """Deliver the user's queue to one socket; while Redis fails the reads and the socket stays, try again."""
        attachment = handover.attachment
        delay = self.retry_first
        try:
            while True:
                before = handover.delivered
                try:
                    await self._attempt(handover)
                except (StoreUnavailable, defer.TimeoutError) as e:
                    if self._stopping or not self._ours(attachment):
                        raise
                    if handover.delivered > before:
                        delay = self.retry_first  # it got somewhere: Redis was back
                    handover.failures += 1
                    log = self.log.warn if handover.failures == 1 else self.log.debug
                    log(
                        "Handing the queue of {uid} over failed ({why}); trying again in {delay}s,"
                        " its live messages held until then",
                        uid=attachment.uid,
                        why=str(e),
                        delay=delay,
                    )
                else:
                    if handover.failures:
                        self.log.info(
                            "{uid}: queue handed over after {failures} failed attempts",
                            uid=attachment.uid,
                            failures=handover.failures,
                        )
                    return
                await self._pause(handover, delay)
                delay = min(delay * 2, self.retry_most)
                if not self._ours(attachment):
                    handover.cut_short = True  # it went meanwhile: the rest goes on to another socket
                    return
        finally:
            self._counters.handed_over += handover.delivered
            self._finish(handover)

    async def _attempt(self, handover: _Handover) -> None:
        """Deliver the user's queue to one socket, oldest first, a batch at a time."""
        attachment = handover.attachment
        uid, sink = attachment.uid, attachment.sink
        budget = self._budget
        wanted = self._batch
        confirmed = 0  # confirmed by the client, not yet trimmed from Redis
        await self._unheld()
        try:
            length, entries = await self._queues.take(uid, 0, wanted)
            if length:
                self.log.info("rm.users.{uid} has {count} messages enqueued, purging!", uid=uid, count=length)
            while entries and attachment.attached:
                sent = weight = 0
                # Who carries the bubble changes only between reactor turns, not within this loop.
                bubble = self._presence.carries_bubble(attachment)
                for raw in entries:
                    message = self._read_entry(uid, raw)
                    if sent and attachment.pending_bytes + message.weight > budget.per_socket:
                        break  # the rest waits for the client to confirm these
                    if not attachment.attached or not sink.send_message(message, bubble):
                        handover.cut_short = True
                        break
                    sent += 1
                    # An entry heavier than the socket's whole share (a Node.js-era or hand-written one, or one queued
                    # when max_pending_bytes was under a message's frame) could never be sent within it: counted, it
                    # closed the socket (4413) at every identify and blocked the queue behind it for good.  It goes
                    # first in its batch, uncounted, and the next batch waits for the client to confirm it.
                    charge = message.weight if message.weight <= budget.per_socket else 0
                    weight += charge
                    if budget.charge(attachment, charge):
                        self._delivery.too_slow(attachment)  # detached: Hub.detach gave its bytes back
                        handover.cut_short = True
                        break
                # live messages written to it before (it took over a handover cut short elsewhere) are read too if
                # it answers yes: confirmed with the batch (a relay's holder forgets them then: redis_edge/relays.py)
                live = attachment.unconfirmed[-1] if attachment.unconfirmed else None
                if handover.cut_short or not await sink.confirm():
                    handover.cut_short = True
                    break
                if live is not None and attachment.attached:
                    self._confirmations.read_up_to(attachment, live)
                if self._ours(attachment):
                    budget.give_back(attachment, weight)
                confirmed = sent
                handover.delivered += sent
                if sent == len(entries) and len(entries) < wanted:
                    break  # the end of the queue
                # As many as fitted last time (the next entries are likely as large), back up to a batch as they fit.
                wanted = sent if sent < len(entries) else min(wanted * 2, self._batch)
                # TAKE trims them; if its reply is lost, whether it ran is unknown:
                # better sent twice (they stay) than trimmed twice (undelivered ones lost).
                trimming, confirmed = confirmed, 0
                length, entries = await self._queues.take(uid, trimming, wanted)
        finally:
            if confirmed:
                self._queues.trim(uid, confirmed).addErrback(
                    lambda f: self.log.failure("Could not trim {count} delivered entries of {uid}", f, uid=uid, count=confirmed)
                )

    def _ours(self, attachment: Attachment) -> bool:
        """Whether the socket is still attached here as its user's (not closed, not handed to another node)."""
        return attachment.attached and attachment.owner is None

    def _pause(self, handover: _Handover, delay: float) -> Deferred[None]:
        """Fires after ``delay`` seconds, or sooner (:meth:`_hurry`); cancelled by :meth:`stop`."""

        def cancel(pause: Deferred[None]) -> None:
            call.cancel()
            handover.pause = handover.resume = None

        pause: Deferred[None] = Deferred(cancel)
        call = self._clock.callLater(delay, self._resume, handover)
        handover.pause, handover.resume = pause, call
        return pause

    def _resume(self, handover: _Handover) -> None:
        pause = handover.pause
        handover.pause = handover.resume = None
        if pause is not None:
            pause.callback(None)

    def _hurry(self, handover: _Handover) -> None:
        """Try again now rather than when the pause ends."""
        if handover.resume is not None:
            handover.resume.cancel()
            self._resume(handover)

    def _read_entry(self, uid: str, raw: bytes) -> Message:
        try:
            message, problem = message_from_entry(raw)
        except UnreadableEntry as e:
            self.log.warn(
                "{uid}: queue entry is not an envelope ({why}); delivering its bytes as the payload", uid=uid, why=str(e)
            )
            return message_from_unreadable(raw, user_channel(uid), int(self._clock.seconds() * 1000))
        if problem is not None:
            self.log.warn("{uid}: queue entry from {source}: {problem}", uid=uid, source=message.source, problem=problem)
        if debugging():
            self.log.debug("{uid}: Purging message from {source}", uid=uid, source=message.source)
        return message

    def _finish(self, handover: _Handover) -> None:
        """Release the live messages held back during the handover; pass the rest on if it was cut short."""
        attachment = handover.attachment
        uid = attachment.uid
        del self._running[uid]
        waiting = [other for other in handover.waiting if other.attached]
        if handover.again and self._ours(attachment) and not handover.cut_short and not self._stopping:
            self._start(attachment, waiting)  # live messages stay held until the queue is read once more
            return
        if attachment.attached and not handover.cut_short:
            self._release_held(attachment)
            for other in waiting:
                self._release_held(other)
        else:
            # Its held live messages go with it: Hub.detach delivers them to the others or queues them.
            successor = waiting.pop(0) if waiting else self._oldest_socket(uid, besides=attachment)
            if successor is not None:
                self.log.info(
                    "{uid}: socket closed during the handover after {count} messages; {peer} takes the rest over",
                    uid=uid,
                    count=handover.delivered,
                    peer=successor.sink.client_address,
                )
                self._start(successor, waiting)
            elif handover.delivered:
                self.log.info(
                    "{uid}: socket closed during the handover after {count} messages; the rest stays queued",
                    uid=uid,
                    count=handover.delivered,
                )
        if not self._running:
            self._on_settled()

    def _oldest_socket(self, uid: str, besides: Attachment) -> Attachment | None:
        user = self._presence.get(uid)
        others = [other for other in user.attachments if other is not besides] if user is not None else []
        return others[0] if others else None

    def _release_held(self, attachment: Attachment) -> None:
        held, attachment.held = attachment.held or [], None
        # If the socket that had the bubble went away before these reached it, this one has it now.
        carrier = self._presence.carries_bubble(attachment)
        for i, sent in enumerate(held):
            if carrier and not sent.bubble:
                sent = Sent(sent.message, True, sent.copies)
            if attachment.sink.send_message(sent.message, sent.bubble):
                attachment.unconfirmed.append(sent)
                continue
            # Closing: the rest waits for it to be gone (Hub.detach delivers it again, in order).
            attachment.held = [sent] + held[i + 1 :]
            break
        if attachment.unconfirmed:
            self._confirmations.want(attachment)
