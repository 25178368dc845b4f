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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    ensureDeferred,
)
from twisted.internet.interfaces import IReactorTime

from redmessenger.core.budget import Budget
from redmessenger.core.confirmations import Confirmations
from redmessenger.core.counters import Counters
from redmessenger.core.delivery import Delivery
from redmessenger.core.ports import Queues
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


class Handovers:
    """The queues being handed over, one per user."""

    log = make_logger()

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
    ) -> None:
        self._budget = budget
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

    def identified(self, attachment: Attachment) -> None:
        """A socket just identified: hand it the queue, or let it wait for the running handover."""
        handover = self._running.get(attachment.uid)
        if handover is None:
            self._start(attachment)
        else:
            attachment.held = []
            handover.waiting.append(attachment)

    def stop(self, timeout: float) -> Deferred[Any]:
        """
        Let running handovers finish their bookkeeping (trims, held messages),
        for at most ``timeout`` seconds: with Redis away they cannot, and are
        cancelled (one warning; what they did not deliver stays queued).
        """
        self._stopping = True
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
        """Deliver the user's queue to one socket, oldest first, a batch at a time."""
        attachment = handover.attachment
        uid, sink = attachment.uid, attachment.sink
        batch = self._batch
        confirmed = 0  # confirmed by the client, not yet trimmed from Redis
        try:
            length, entries = await self._queues.take(uid, 0, batch)
            if length:
                self.log.info("rm.users.{uid} has {count} messages enqueued, purging!", uid=uid, count=length)
            while entries and attachment.attached:
                sent = 0
                # Who carries the bubble changes only between reactor turns, not within this loop.
                bubble = self._presence.carries_bubble(attachment)
                for raw in entries:
                    message = self._read_entry(uid, raw)
                    if not attachment.attached or not sink.send_message(message, bubble):
                        handover.cut_short = True
                        break
                    sent += 1
                if not sent or not await sink.confirm():
                    handover.cut_short = True
                    break
                confirmed = sent
                handover.delivered += sent
                if sent < len(entries) or len(entries) < batch:
                    break
                # TAKE trims them; if its reply is lost, whether it ran is unknown:
                # better sent twice (they stay) than trimmed twice (undelivered ones lost).
                trimming, confirmed = confirmed, 0
                length, entries = await self._queues.take(uid, trimming, batch)
        finally:
            if confirmed:
                self._queues.trim(uid, confirmed).addErrback(
                    lambda f: self.log.failure("Could not trim {count} delivered entries of {uid}", f, uid=uid, count=confirmed)
                )
            self._counters.handed_over += handover.delivered
            self._finish(handover)

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
