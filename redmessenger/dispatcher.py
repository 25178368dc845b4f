"""
The delivery engine: published messages in, envelopes to sockets or entries to queues out.

It knows users, sockets and queues, never a wire format: each dialect (plain
WebSocket, Socket.IO) hands it a :class:`~redmessenger.presence.MessageSink`
and an identifier, and is handed :class:`~redmessenger.envelope.Message` objects.

Order (SPEC §3): published messages are dispatched strictly in the order the
subscriber received them.  A group message needs its member list from Redis
first; the messages behind it wait in :attr:`Dispatcher._inbox` until it is
resolved (the lookups themselves are pipelined), so a group message published
before a user message reaches that user before it.
"""

from __future__ import annotations

import hmac
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from .logs import make_logger
from twisted.python.failure import Failure

from .envelope import Message, UnreadableEntry, decode_payload, message_from_entry, message_from_unreadable
from .errors import UID_PATTERN, ClientError, CloseCode, parse_identifier
from .presence import Attachment, MessageSink, Presence, User
from .queue_store import QueueStore, queue_key

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
        self._handovers: set[Deferred[None]] = set()
        self._stopping = False

    # -- published messages --------------------------------------------------------

    def on_publish(self, channel: bytes, payload: bytes) -> None:
        """A PUBLISH arrived on ``rm.users.*`` or ``rm.channels.*``."""
        self.counters.published += 1
        if channel.startswith(USER_PREFIX):
            uid = _valid_name(channel[len(USER_PREFIX) :])
            if uid is None:
                self.log.warn("Ignoring a message on {channel!r}: not a valid uid", channel=channel)
                return
            self.log.debug("New message from channel {channel}", channel=channel.decode())
            pending = _Pending(self._message(channel, payload), [uid])
            if not self._inbox:
                self._dispatch(pending)
            else:
                self._inbox.append(pending)
        elif channel.startswith(GROUP_PREFIX):
            cid = _valid_name(channel[len(GROUP_PREFIX) :])
            if cid is None:
                self.log.warn("Ignoring a message on {channel!r}: not a valid group id", channel=channel)
                return
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
            self._clock.callLater(self.lookup_retry_delay, self._look_up_members, pending, cid)
            return
        self.log.failure("Could not read the members of group {cid}; the message reaches nobody", failure, cid=cid)
        pending.uids = []
        self._drain_inbox()

    def _drain_inbox(self) -> None:
        inbox = self._inbox
        while inbox and inbox[0].uids is not None:
            self._dispatch(inbox.popleft())

    def _dispatch(self, pending: _Pending) -> None:
        message, uids = pending.message, pending.uids
        assert uids is not None
        offline = []
        for uid in uids:
            user = self.presence.get(uid)
            if user is not None and self.presence.deliver(user, message):
                self.counters.delivered += 1
            else:
                offline.append(uid)
        if offline:
            self.queue(offline, message)

    def queue(self, uids: list[str], message: Message) -> None:
        """Keep a message in the queues of users who are not online."""
        self.counters.queued += len(uids)
        for uid in uids:
            self.log.info(
                "Client is not online, queueing message in Redis ({key})", key=queue_key(uid), uid=uid
            )
        self.store.enqueue(uids, message.queue_entry())

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
        user = self.presence.get(ident.uid)
        assert user is not None
        if user.handover is None:
            self._start_handover(user, attachment)
        return attachment

    async def _check_key(self, uid: str, key: str | None) -> None:
        from txredisapi import ConnectionError, ResponseError

        try:
            stored = await self.store.user_key(uid)
        except ConnectionError:
            raise ClientError(CloseCode.TRY_AGAIN_LATER, "Redis is unreachable; try again later") from None
        except ResponseError as e:
            self.log.error("Cannot read the key of {uid}: {why}", uid=uid, why=str(e))
            stored = None
        # compare_digest takes as long whatever the bytes: no timing oracle
        # (bytes of equal length compared in constant time; a length mismatch is
        # revealed, as with any HMAC check).
        given = (key or "").encode("utf-8")
        if stored is None or not key or not hmac.compare_digest(stored, given):
            raise ClientError(CloseCode.BAD_KEY, "authentication failed: wrong or missing key")

    def detach(self, attachment: Attachment) -> None:
        """A socket closed: forget it.  An unfinished handover ends by itself."""
        self.presence.detach(attachment)

    def refused(self, reason: CloseCode) -> None:
        self.counters.refused[reason.name] = self.counters.refused.get(reason.name, 0) + 1

    # -- queue handover ------------------------------------------------------------

    def _start_handover(self, user: User, attachment: Attachment) -> None:
        user.handover = attachment
        attachment.held = []
        d = ensureDeferred(self._hand_over(user, attachment))
        self._handovers.add(d)

        def done(result: Any) -> Any:
            self._handovers.discard(d)
            return result

        d.addBoth(done)
        d.addErrback(
            lambda f: self.log.failure("Handing the queue of {uid} over failed", f, uid=user.uid)
        )

    async def _hand_over(self, user: User, attachment: Attachment) -> None:
        """
        Deliver the user's queue to one socket, oldest first, in batches.  Entries
        leave Redis only after they were written to the socket; live messages
        wait in ``attachment.held`` until the queue is through.
        """
        uid, sink = user.uid, attachment.sink
        delivered = 0  # written to the socket, not yet trimmed from Redis
        total = 0
        first = True
        try:
            while attachment.attached:
                length, entries = await self.store.take(uid, delivered, self._handover_batch)
                delivered = 0
                if first and length:
                    self.log.info(
                        "rm.users.{uid} has {count} messages enqueued, purging!", uid=uid, count=length
                    )
                first = False
                for raw in entries:
                    if not attachment.attached or not sink.send_message(
                        self._read_entry(uid, raw), user.carries_bubble(attachment)
                    ):
                        break
                    delivered += 1
                total += delivered
                if len(entries) < self._handover_batch or delivered < len(entries):
                    break
        finally:
            if delivered:
                self.store.trim(uid, delivered).addErrback(
                    lambda f: self.log.failure("Could not trim {count} delivered entries of {uid}", f, uid=uid, count=delivered)
                )
            self.counters.handed_over += total
            self._release_held(user, attachment)
        if total and not attachment.attached:
            self.log.info(
                "{uid}: socket closed during the handover after {count} messages; the rest stays queued",
                uid=uid,
                count=total,
            )

    def _read_entry(self, uid: str, raw: bytes) -> Message:
        try:
            message = message_from_entry(raw)
        except UnreadableEntry as e:
            self.log.warn(
                "{uid}: queue entry is not an envelope ({why}); delivering its bytes as the payload", uid=uid, why=str(e)
            )
            message = message_from_unreadable(raw, f"rm.users.{uid}", int(self._clock.seconds() * 1000))
        self.log.debug("{uid}: Purging message from {source}", uid=uid, source=message.source)
        return message

    def _release_held(self, user: User, attachment: Attachment) -> None:
        """After a handover: send the held live messages, or queue those nobody received."""
        held, attachment.held = attachment.held or [], None
        if user.handover is attachment:
            user.handover = None
        lost: list[Message] = []
        for item in held:
            if attachment.attached and attachment.sink.send_message(item.message, item.bubble):
                continue
            if not item.delivered_elsewhere:
                lost.append(item.message)
        for message in lost:
            # the user may have come back on another socket meanwhile
            online = self.presence.get(user.uid)
            if online is None or not self.presence.deliver(online, message):
                self.queue([user.uid], message)

    # -- shutdown ------------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> Deferred[Any]:
        """
        Let running handovers finish their bookkeeping (trims, held messages),
        for at most ``timeout`` seconds: with Redis away they cannot.
        """
        self._stopping = True
        waiting: Deferred[Any] = DeferredList(list(self._handovers), consumeErrors=True)
        waiting.addTimeout(timeout, self._clock)
        return waiting.addErrback(
            lambda f: self.log.warn("{count} queue handovers unfinished at shutdown", count=len(self._handovers))
        )


def _valid_name(raw: bytes) -> str | None:
    """A uid or group id from a channel name or a set member, if it is one."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if UID_PATTERN.fullmatch(text) else None

