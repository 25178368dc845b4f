"""
The delivery engine: published messages in, envelopes to sockets or entries to queues out.

It knows users, sockets and queues, never a wire format: each dialect (plain
WebSocket, Socket.IO) hands it a :class:`~redmessenger.core.presence.MessageSink`
and an identifier, and is handed :class:`~redmessenger.model.envelope.Message` objects.

Order (SPEC §3): published messages are dispatched strictly in the order the
subscriber received them.  A group message needs its member list from Redis
first; the messages behind it wait in :attr:`Dispatcher._inbox` until it is
resolved (the lookups themselves are pipelined), so a group message published
before a user message reaches that user before it.
"""

from __future__ import annotations

import hmac
import math
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from redmessenger.logs import debugging, informing, make_logger
from twisted.python.failure import Failure

from redmessenger.model.envelope import Message, UnreadableEntry, decode_payload, message_from_entry, message_from_unreadable
from redmessenger.model.errors import UID_PATTERN, ClientError, CloseCode, parse_identifier
from redmessenger.core.presence import Attachment, MessageSink, Presence, Sent, User
from redmessenger.redis_edge.queues import QueueStore, queue_key

USER_PREFIX = b"rm.users."
GROUP_PREFIX = b"rm.channels."


@dataclass
class Counters:
    """Totals since start, for the operators' status and metrics."""

    published: int = 0
    delivered: int = 0
    queued: int = 0
    handed_over: int = 0
    identified: int = 0
    refused: dict[str, int] = field(default_factory=dict)


@dataclass(eq=False)
class _Pending:
    """A published message waiting for its recipients to be known."""

    message: Message
    uids: list[str] | None = None
    label: str = ""


class Dispatcher:
    """Routes published messages to online sockets and offline queues; hands queues over."""

    log = make_logger()

    #: Seconds between attempts to read a group's members while Redis is away.
    lookup_retry_delay = 1.0

    #: Seconds live messages wait before their socket is asked to confirm them:
    #: one ping then covers every message sent meanwhile.  Under load a ping per
    #: reactor turn per socket cost as much as the messages themselves; the price
    #: is that a dropped connection may see this much more delivered twice.
    confirm_delay = 0.5
    #: Seconds: sockets due for a confirmation within this of each other are asked in the same turn.
    confirm_tick = 0.01

    def __init__(
        self,
        presence: Presence,
        store: QueueStore,
        clock: IReactorTime,
        *,
        secure_mode: bool = False,
        handover_batch: int = 500,
    ) -> None:
        self.presence = presence
        self.store = store
        self.counters = Counters()
        self._clock = clock
        self._secure_mode = secure_mode
        self._handover_batch = handover_batch
        self._inbox: deque[_Pending] = deque()
        self._handovers: dict[str, _Handover] = {}
        #: Sockets to ask for a confirmation: (by when, the socket, its ask_from then), in
        #: that order since the delay is the same for all.  An entry whose ask_from no
        #: longer matches the socket's is spent: a message carried the request.
        self._to_confirm: deque[tuple[float, Attachment, float]] = deque()
        self._confirm_call: IDelayedCall | None = None
        #: Member lookups waiting to be retried while Redis is away.
        self._lookup_retries: set[IDelayedCall] = set()
        self._stopping = False
        #: Called once per message delivered live (the latency histogram, redmessenger.ops.monitoring).
        self.on_live_delivery: Callable[[Message], None] = _ignore

    # -- published messages --------------------------------------------------------

    def on_publish(self, channel: bytes, payload: bytes) -> None:
        """A PUBLISH arrived on ``rm.users.*`` or ``rm.channels.*``."""
        self.counters.published += 1
        if channel.startswith(USER_PREFIX):
            uid = _valid_name(channel[len(USER_PREFIX) :])
            if uid is None:
                self.log.warn("Ignoring a message on {channel!r}: not a valid uid", channel=channel)
                return
            if debugging():
                self.log.debug("New message from channel {channel}", channel=channel.decode())
            message = self._message(channel, payload)
            if not self._inbox:
                self._deliver(message, (uid,))
            else:
                self._inbox.append(_Pending(message, [uid]))
        elif channel.startswith(GROUP_PREFIX):
            cid = _valid_name(channel[len(GROUP_PREFIX) :])
            if cid is None:
                self.log.warn("Ignoring a message on {channel!r}: not a valid group id", channel=channel)
                return
            if debugging():
                self.log.debug("New message from channel {channel}", channel=channel.decode())
            pending = _Pending(self._message(channel, payload), label=cid)
            self._inbox.append(pending)
            self._look_up_members(pending, cid)

    def _message(self, channel: bytes, payload: bytes) -> Message:
        return Message(channel.decode("ascii"), int(self._clock.seconds() * 1000), decode_payload(payload))

    def _look_up_members(self, pending: _Pending, cid: str) -> None:
        d = ensureDeferred(self.store.members(cid))
        d.addCallbacks(self._members_found, self._members_failed, callbackArgs=(pending,), errbackArgs=(pending, cid))

    def _members_found(self, members: list[bytes], pending: _Pending) -> None:
        uids = []
        for member in members:
            uid = _valid_name(member)
            if uid is None:
                self.log.warn(
                    "Skipping member {member!r} of group {cid}: not a valid uid", member=member, cid=pending.label
                )
            else:
                uids.append(uid)
        pending.uids = uids
        self._drain_inbox()

    def _members_failed(self, failure: Failure, pending: _Pending, cid: str) -> None:
        from txredisapi import ConnectionError

        if failure.check(ConnectionError) and not self._stopping:
            self.log.warn(
                "Could not read the members of group {cid} ({why}); retrying", cid=cid, why=failure.getErrorMessage()
            )

            def retry() -> None:
                self._lookup_retries.discard(call)
                self._look_up_members(pending, cid)

            call = self._clock.callLater(self.lookup_retry_delay, retry)
            self._lookup_retries.add(call)
            return
        self.log.failure("Could not read the members of group {cid}; the message reaches nobody", failure, cid=cid)
        pending.uids = []
        self._drain_inbox()

    def _drain_inbox(self) -> None:
        inbox = self._inbox
        while inbox and inbox[0].uids is not None:
            self._dispatch(inbox.popleft())

    def _dispatch(self, pending: _Pending) -> None:
        assert pending.uids is not None
        self._deliver(pending.message, pending.uids)

    def _deliver(self, message: Message, uids: Sequence[str]) -> None:
        """Rules 1 and 2 of SPEC §3: to the live sockets of each uid, else to its queue."""
        offline = []
        get_user = self.presence.get
        # What every recipient with a single socket keeps until it confirms:
        # the same record for all of them (a group fans out to thousands).
        alone = Sent(message, True, False)
        now = self._clock.seconds()
        delivered = 0
        for uid in uids:
            user = get_user(uid)
            if user is not None and self._deliver_live(user, message, alone, now):
                delivered += 1
            else:
                offline.append(uid)
        self.counters.delivered += delivered
        if delivered:
            self.on_live_delivery(message)
        if offline:
            self.queue(offline, message)

    def _deliver_live(self, user: User, message: Message, alone: Sent | None = None, now: float | None = None) -> bool:
        """
        Give a message to each of the user's sockets, the oldest with the bubble.
        False if none took it (all closing): the caller queues it.  ``alone``:
        the record to keep if the user has one socket (Sent is never modified,
        so one per message serves every such recipient).  ``now``: the clock,
        read once per message by the caller.
        """
        if now is None:
            now = self._clock.seconds()
        attachments = user.attachments
        shared = len(attachments) > 1
        bubble = True
        taken = False
        for attachment in attachments:
            sent = alone if alone is not None and not shared else Sent(message, bubble, shared)
            if attachment.held is not None:
                attachment.held.append(sent)
                taken = True
            elif attachment.sink.send_message(message, bubble):
                attachment.unconfirmed.append(sent)
                if not attachment.confirming:
                    self._want_confirmation(attachment)
                elif now >= attachment.ask_from:
                    self._ask_now(attachment)
                taken = True
            bubble = False
        return taken

    def queue(self, uids: list[str], message: Message) -> None:
        """Keep a message in the queues of users who are not online."""
        self.counters.queued += len(uids)
        if informing():
            for uid in uids:
                self.log.info("Client is not online, queueing message in Redis ({key})", key=queue_key(uid), uid=uid)
        self.store.enqueue(uids, message.queue_entry())

    # -- confirmations of live messages ----------------------------------------------
    #
    # A message written to a socket may still be lost with the connection (in
    # buffers, in flight).  Each socket keeps its live messages until the client
    # confirms them (one confirmation under way per socket, asked for at most
    # every confirm_delay); if it goes away first, the unconfirmed ones are
    # delivered again or queued.  Duplicates are then possible for what was sent
    # during the last confirm_delay and round trip; losses are not.
    #
    # Each socket is asked confirm_delay after its first unconfirmed message,
    # not all of them at once: a thousand pings (and pongs) in one turn held
    # every message behind them for 50-130 ms.  A message written to the socket
    # in the second half of that delay carries the request along instead (the
    # ping goes out in the same send() as the message): a ping of its own costs
    # a send() and wakes the client once more.

    def _want_confirmation(self, attachment: Attachment) -> None:
        if attachment.confirming:
            return
        attachment.confirming = True
        now = self._clock.seconds()
        attachment.ask_from = ask_from = now + self.confirm_delay / 2
        self._to_confirm.append((now + self.confirm_delay, attachment, ask_from))
        if self._confirm_call is None:
            self._confirm_call = self._clock.callLater(self.confirm_delay, self._ask_confirmations)

    def _ask_now(self, attachment: Attachment) -> None:
        attachment.ask_from = math.inf
        count = len(attachment.unconfirmed)
        attachment.sink.confirm().addCallback(self._live_confirmed, attachment, count)

    def _ask_confirmations(self) -> None:
        self._confirm_call = None
        due = self._clock.seconds() + self.confirm_tick
        queue = self._to_confirm
        while queue and queue[0][0] <= due:
            _, attachment, ask_from = queue.popleft()
            # Not if a message carried the request already (the entry is spent).
            if attachment.attached and attachment.ask_from == ask_from:
                self._ask_now(attachment)
        if queue and not self._stopping:
            delay = max(queue[0][0] - self._clock.seconds(), self.confirm_tick)
            self._confirm_call = self._clock.callLater(delay, self._ask_confirmations)

    def _live_confirmed(self, received: bool, attachment: Attachment, count: int) -> None:
        attachment.confirming = False
        if not received or not attachment.attached:
            return  # detach() has taken care of what was unconfirmed
        unconfirmed = attachment.unconfirmed
        del unconfirmed[:count]
        if unconfirmed:
            self._want_confirmation(attachment)

    # -- sockets -------------------------------------------------------------------

    async def identify(self, sink: MessageSink, identifier: str) -> Attachment | None:
        """
        Identify a socket and start handing it the user's queue.  Raises
        :class:`ClientError` for a bad identifier or key; returns None if the
        socket went away in the meantime.
        """
        ident = parse_identifier(identifier)
        if self._secure_mode:
            await self._check_key(ident.uid, ident.key)
        if not sink.writable:
            return None
        attachment = self.presence.attach(ident.uid, sink)
        self.counters.identified += 1
        self.log.info("Assigning id {uid} to socket {peer}.", uid=ident.uid, peer=sink.client_address)
        handover = self._handovers.get(ident.uid)
        if handover is None:
            self._start_handover(attachment)
        elif not handover.attachment.attached and handover.next is None:
            # The socket receiving the queue went away (a page reload): this one
            # takes the queue over once the old handover has settled.
            handover.next = attachment
            attachment.held = []
        return attachment

    async def _check_key(self, uid: str, key: str | None) -> None:
        from twisted.internet.defer import TimeoutError
        from txredisapi import ConnectionError, ResponseError

        try:
            stored = await self.store.user_key(uid)
        except (ConnectionError, TimeoutError):
            raise ClientError(CloseCode.TRY_AGAIN_LATER, "Redis is unreachable; try again later") from None
        except ResponseError as e:
            self.log.error("Cannot read the key of {uid}: {why}", uid=uid, why=str(e))
            stored = None
        # compare_digest's time does not depend on where the bytes differ.
        given = (key or "").encode("utf-8")
        if stored is None or not key or not hmac.compare_digest(stored, given):
            raise ClientError(CloseCode.BAD_KEY, "authentication failed: wrong or missing key")

    def detach(self, attachment: Attachment, received_all: bool = False) -> None:
        """
        A socket closed: forget it, and deliver again (or queue) the live
        messages only it had and never confirmed (``received_all``: the dialect
        knows the client read everything written).  Its queue entries that were
        not confirmed are still in Redis: the handover only trims confirmed ones.
        """
        if not attachment.attached:
            return
        self.presence.detach(attachment)
        orphans = []
        if not received_all:
            orphans += [sent.message for sent in attachment.unconfirmed if not sent.delivered_elsewhere]
        orphans += [sent.message for sent in attachment.held or () if not sent.delivered_elsewhere]
        attachment.unconfirmed.clear()
        attachment.held = None
        if orphans:
            self.log.info(
                "{uid}: {count} messages were not confirmed by {peer} before it closed; delivering them again",
                uid=attachment.uid,
                count=len(orphans),
                peer=attachment.sink.client_address,
            )
        for message in orphans:
            user = self.presence.get(attachment.uid)
            if user is None or not self._deliver_live(user, message):
                self.queue([attachment.uid], message)

    def refused(self, reason: CloseCode) -> None:
        self.counters.refused[reason.name] = self.counters.refused.get(reason.name, 0) + 1

    # -- queue handover ------------------------------------------------------------

    def _start_handover(self, attachment: Attachment) -> None:
        handover = _Handover(attachment)
        self._handovers[attachment.uid] = handover
        if attachment.held is None:
            attachment.held = []
        d = ensureDeferred(self._hand_over(handover))
        handover.done = d
        d.addErrback(lambda f: self.log.failure("Handing the queue of {uid} over failed", f, uid=attachment.uid))

    async def _hand_over(self, handover: _Handover) -> None:
        """
        Deliver the user's queue to one socket, oldest first, a batch at a time.
        A batch leaves Redis only once the client confirmed it (trimmed with the
        next read), so a client that drops keeps everything it did not confirm.
        """
        attachment = handover.attachment
        uid, sink = attachment.uid, attachment.sink
        confirmed = 0  # confirmed by the client, not yet trimmed from Redis
        try:
            length, entries = await self.store.take(uid, 0, self._handover_batch)
            if length:
                self.log.info("rm.users.{uid} has {count} messages enqueued, purging!", uid=uid, count=length)
            while entries and attachment.attached:
                sent = 0
                # Who carries the bubble changes only between reactor turns, not within this loop.
                bubble = self.presence.carries_bubble(attachment)
                for raw in entries:
                    message = self._read_entry(uid, raw)
                    if not attachment.attached or not sink.send_message(message, bubble):
                        break
                    sent += 1
                if not sent or not await sink.confirm():
                    break
                confirmed = sent
                handover.delivered += sent
                if sent < len(entries) or len(entries) < self._handover_batch:
                    break
                # TAKE trims them; if its reply is lost, whether it ran is unknown:
                # better sent twice (they stay) than trimmed twice (undelivered ones lost).
                trimming, confirmed = confirmed, 0
                length, entries = await self.store.take(uid, trimming, self._handover_batch)
        finally:
            if confirmed:
                self.store.trim(uid, confirmed).addErrback(
                    lambda f: self.log.failure("Could not trim {count} delivered entries of {uid}", f, uid=uid, count=confirmed)
                )
            self.counters.handed_over += handover.delivered
            self._finish_handover(handover)

    def _read_entry(self, uid: str, raw: bytes) -> Message:
        try:
            message = message_from_entry(raw)
        except UnreadableEntry as e:
            self.log.warn(
                "{uid}: queue entry is not an envelope ({why}); delivering its bytes as the payload", uid=uid, why=str(e)
            )
            message = message_from_unreadable(raw, f"rm.users.{uid}", int(self._clock.seconds() * 1000))
        if debugging():
            self.log.debug("{uid}: Purging message from {source}", uid=uid, source=message.source)
        return message

    def _finish_handover(self, handover: _Handover) -> None:
        """Release the live messages held back during the handover; pass the turn on if it was cut short."""
        attachment = handover.attachment
        del self._handovers[attachment.uid]
        if attachment.attached:
            self._release_held(attachment)
        elif handover.delivered:
            self.log.info(
                "{uid}: socket closed during the handover after {count} messages; the rest stays queued",
                uid=attachment.uid,
                count=handover.delivered,
            )
        following = handover.next
        if following is not None and following.attached:
            self._start_handover(following)

    def _release_held(self, attachment: Attachment) -> None:
        held, attachment.held = attachment.held or [], None
        for sent in held:
            if attachment.sink.send_message(sent.message, sent.bubble):
                attachment.unconfirmed.append(sent)
            elif not sent.delivered_elsewhere:
                self.queue([attachment.uid], sent.message)
        if attachment.unconfirmed:
            self._want_confirmation(attachment)

    # -- shutdown ------------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> Deferred[Any]:
        """
        Let running handovers finish their bookkeeping (trims, held messages),
        for at most ``timeout`` seconds: with Redis away they cannot.
        """
        self._stopping = True
        for call in self._lookup_retries:
            call.cancel()
        self._lookup_retries.clear()
        if self._confirm_call is not None:
            self._confirm_call.cancel()
            self._confirm_call = None
        running = [h.done for h in self._handovers.values() if h.done is not None]
        waiting: Deferred[Any] = DeferredList(running, consumeErrors=True)
        waiting.addTimeout(timeout, self._clock)
        return waiting.addErrback(
            lambda f: self.log.warn("{count} queue handovers unfinished at shutdown", count=len(self._handovers))
        )


@dataclass(eq=False)
class _Handover:
    """The user's queue on its way to one socket; one per user at a time."""

    attachment: Attachment
    done: Deferred[None] | None = None
    delivered: int = 0
    #: A socket of the same user that identified after this one went away.
    next: Attachment | None = None


def _ignore(message: Message) -> None:
    pass


@lru_cache(maxsize=16384)  # once per member of a group, per message: the same names again and again
def _valid_name(raw: bytes) -> str | None:
    """A uid or group id from a channel name or a set member, if it is one."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if UID_PATTERN.fullmatch(text) else None

