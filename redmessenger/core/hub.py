"""
The core's one entry point: what the Redis edge feeds it (PUBLISHes) and what
client sessions ask of it (identify, detach).  It composes the rooms of the
core and holds no rule of its own beyond identification:

- :mod:`~redmessenger.core.routing`: PUBLISHes to (message, recipients), in order;
- :mod:`~redmessenger.core.delivery`: to live sockets with the bubble, or to queues;
- :mod:`~redmessenger.core.confirmations`: live messages kept until confirmed;
- :mod:`~redmessenger.core.handover`: a user's queue to a socket that identified;
- :mod:`~redmessenger.core.presence`: who is online.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Collection
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from redmessenger.core.budget import Budget
from redmessenger.core.channels import Channels
from redmessenger.core.confirmations import Confirmations
from redmessenger.core.counters import Counters
from redmessenger.core.delivery import Delivery
from redmessenger.core.giveaway import GiveAways
from redmessenger.core.handover import Handovers
from redmessenger.core.intake import IntakeTicket
from redmessenger.core.ports import (
    Application,
    Directory,
    MessageSink,
    Peers,
    Queues,
    StoreError,
    StoreUnavailable,
)
from redmessenger.core.presence import Attachment, Presence, confirmed, lost
from redmessenger.core.routing import Router
from redmessenger.logs import make_logger
from redmessenger.model import grants
from redmessenger.model.envelope import Message
from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.model.identity import Identifier, parse_identifier


class Hub:
    """Routes published messages to online sockets and offline queues; identifies sockets and hands them their queue."""

    log = make_logger()

    def __init__(
        self,
        queues: Queues,
        directory: Directory,
        clock: IReactorTime,
        *,
        secure_mode: bool = False,
        handover_batch: int = 500,
        user_socket_limit: int | None = None,
        max_payload_bytes: int | None = None,
        max_pending_bytes: int = 8 << 20,
        memory_budget_bytes: int = 256 << 20,
        application: Application | None = None,
        answers_to: str = "",
        public_key: str | None = None,
        secret_key: str | None = None,
        grant_ttl: int = 3600,
        subscription_timeout: float = 5.0,
        client_publish_max_bytes: int = 3072,
        client_publish_rate: float = 20.0,
        max_subscriptions: int = 128,
        run: str | None = None,
    ) -> None:
        self._clock = clock
        #: This daemon run's tag: in message ids, client ids, request ids (and, by the wiring, its answers channel).
        self.run = run if run is not None else secrets.token_hex(5)
        self._queues = queues
        self._directory = directory
        self._secure_mode = secure_mode
        self._idle_waiters: list[Deferred[None]] = []
        #: Called with an intake entry's id once every recipient's copy is safe (the intake reader acknowledges it).
        self.intake_done: Callable[[str], None] = _ignore_entry
        #: Called first when every copy was made safe by sockets' confirmations alone (no queue write, which
        #: a Redis failover could lose): the reader need not deliver the entry again if it reads it again.
        self.intake_delivered: Callable[[str], None] = _ignore_entry
        self.counters = Counters()
        self.presence = Presence(user_socket_limit)
        self.budget = Budget(max_pending_bytes, memory_budget_bytes)
        self.confirmations = Confirmations(clock, self.budget)
        self.delivery = Delivery(self.presence, queues, self.confirmations, self.counters, clock, self.budget)
        self.giveaways = GiveAways(self.presence, self.budget, self.delivery, queues, clock, lambda: self.peers)
        self.delivery.on_too_slow = self.abandon
        #: The other daemons sharing this Redis (docs/scale-out.md), once the wiring gives them (set_peers).
        self.peers: Peers | None = None
        self._public_key = public_key
        self._secret_key = secret_key
        #: Channels clients ask for (SPEC §7); None when the daemon was not given a way to reach the application.
        self.channels: Channels | None = None
        if application is not None:
            self.channels = Channels(
                application,
                clock,
                self.counters,
                reply_to=answers_to,
                timeout=subscription_timeout,
                max_publish_bytes=client_publish_max_bytes,
                publish_rate=client_publish_rate,
                max_subscriptions=max_subscriptions,
                secret_key=secret_key,
                grant_ttl=grant_ttl,
                run=self.run,
            )
            self.delivery.channels = self.channels
        self.router = Router(
            directory,
            self.delivery.deliver,
            self.counters,
            clock,
            self._settled,
            max_payload=max_payload_bytes,
            keep_aside=queues.keep_aside,
            run=self.run,
        )
        self.on_publish = self.router.on_publish  # type: ignore[method-assign]
        self.handovers = Handovers(
            self.presence,
            queues,
            self.delivery,
            self.confirmations,
            self.counters,
            clock,
            handover_batch,
            self._settled,
            self.budget,
            self.router.unheld,
        )

    # -- from Redis ------------------------------------------------------------------

    def on_publish(self, channel: bytes, payload: bytes) -> None:
        """A PUBLISH arrived on ``rm.users.*`` or ``rm.channels.*`` (the router's, bound in __init__: one call less a message)."""
        self.router.on_publish(channel, payload)

    def on_intake(self, entry_id: str, channel: bytes, payload: bytes, timestamp: int, again: bool) -> str | None:
        """
        An entry of the durable intake stream (``again``: read again after a
        crash).  Routed as a PUBLISH; ``intake_done(entry_id)`` is called once
        every recipient's copy is safe.  Returns why it cannot be routed, or None.
        """
        ticket = IntakeTicket(entry_id, self._intake_settled, again)
        return self.router.on_intake(channel, payload, timestamp, ticket)

    def _intake_settled(self, entry_id: str, queued: bool) -> None:
        self.counters.intake_acked += 1
        if not queued:
            self.intake_delivered(entry_id)
        self.intake_done(entry_id)

    def set_live_delivery_observer(self, observer: Callable[[Message], None]) -> None:
        """Called once per message delivered live, on the hot path (the latency histogram)."""
        self.delivery.on_live_delivery = observer

    # -- from client sessions -----------------------------------------------------------

    async def identify(self, sink: MessageSink, identifier: str | Identifier, verified: bool = False) -> Attachment | None:
        """
        Identify a socket and start handing it the user's queue.  Raises
        :class:`ClientError` for a bad identifier or key; returns None if the
        socket went away in the meantime.
        """
        ident = parse_identifier(identifier) if isinstance(identifier, str) else identifier
        if self._secure_mode and not verified:
            await self._check_key(ident.uid, ident.key)
        if not sink.writable:
            return None
        owner = self.owner(ident.uid)
        if owner is not None:
            assert self.peers is not None
            attachment = Attachment(ident.uid, sink, owner=owner)
            self.counters.identified += 1
            self.log.info("Assigning id {uid} to socket {peer} (owned by {owner}).", uid=ident.uid, peer=sink.client_address, owner=owner)
            self.peers.attach(owner, attachment)
            return attachment
        attachment = self.presence.attach(ident.uid, sink)
        self.counters.identified += 1
        self.log.info("Assigning id {uid} to socket {peer}.", uid=ident.uid, peer=sink.client_address)
        self.handovers.identified(attachment)
        return attachment

    # -- several daemons on one Redis (docs/scale-out.md) ----------------------------------

    def set_peers(self, peers: Peers) -> None:
        self.peers = self.delivery.peers = peers
        self.router.owners = self.delivery.owners = peers.owners

    def owner(self, uid: str) -> str | None:
        """The node that owns ``uid`` when it is not this one."""
        peers = self.peers
        return peers.owner(uid) if peers is not None and peers.shared else None

    def attach_remote(self, uid: str, sink: MessageSink, via: str) -> Attachment:
        """A socket another node holds identified as a user owned here: hand it the queue, as a local one."""
        attachment = self.presence.attach(uid, sink)  # ClientError past user_socket_limit
        attachment.via = via
        self.handovers.identified(attachment)
        return attachment

    def take_over(self, attachment: Attachment) -> None:
        """A relayed socket whose user is owned here now: a local socket of the user, handed the queue."""
        attachment.owner = None
        self.presence.add(attachment)
        self.handovers.identified(attachment)

    def hand_queue_again(self, uid: str) -> None:
        """This node is listed again after others took its users over: what they queued goes to the user's sockets."""
        self.handovers.again(uid)

    def give_away(self, uid: str, owner: str) -> Deferred[None]:
        """``uid`` is owned by ``owner`` now (core/giveaway.py)."""
        return self.giveaways.give_away(uid, owner)

    def check_public_key(self, given: object) -> None:
        """A version-1 session's public key (SPEC §7.5): refused (4401) if one is configured and this is not it."""
        expected = self._public_key
        if expected is None:
            return
        if not isinstance(given, str) or not hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8")):
            raise ClientError(CloseCode.BAD_KEY, "wrong or missing public key")

    def check_identity_grant(self, uid: str, token: str) -> None:
        """An identity grant presented instead of the key: signed by our secret key, unexpired, for ``uid`` (else 4401)."""
        if self._secret_key is None:
            raise ClientError(CloseCode.BAD_KEY, "this server does not accept grants (no secret_key)")
        try:
            grant = grants.verify(self._secret_key, token, self._clock.seconds())
        except grants.BadGrant as e:
            raise ClientError(CloseCode.BAD_KEY, f"invalid identity grant: {e}") from None
        if grant.kind != grants.IDENTITY or grant.uid != uid:
            raise ClientError(CloseCode.BAD_KEY, f"the grant is not an identity grant for {uid}")

    def connect(self, sink: MessageSink) -> Attachment:
        """Admit a socket that does not identify as a user: it may only subscribe to channels."""
        self.counters.anonymous += 1
        return Attachment("", sink)

    async def _check_key(self, uid: str, key: str | None) -> None:
        try:
            stored = await self._directory.user_key(uid)
        except StoreUnavailable:
            raise ClientError(CloseCode.TRY_AGAIN_LATER, "Redis is unreachable; try again later") from None
        except StoreError as e:
            self.log.error("Cannot read the key of {uid}: {why}", uid=uid, why=str(e))
            stored = None
        # compare_digest's time does not depend on where the bytes differ.
        given = (key or "").encode("utf-8")
        if stored is None or not key or not hmac.compare_digest(stored, given):
            raise ClientError(CloseCode.BAD_KEY, "authentication failed: wrong or missing key")

    def detach(self, attachment: Attachment, received_all: bool = False, read: Collection[str] = ()) -> None:
        """
        A socket closed: forget it, and deliver again (or queue) the live
        messages only it had and never confirmed (``received_all``: the dialect
        knows the client read everything written; ``read``: the ids of those it
        knows the client read, when not all).  Its queue entries that were
        not confirmed are still in Redis: the handover only trims confirmed ones.
        """
        if not attachment.attached:
            return
        if self.channels is not None:
            self.channels.drop(attachment)
        if attachment.owner is not None:
            # A relay: only channel messages (live only) are held here; the owner has the rest.
            attachment.attached = False
            if attachment.pending_bytes:
                self.budget.give_back(attachment, attachment.pending_bytes)
            attachment.unconfirmed.clear()
            assert self.peers is not None
            self.peers.detach(attachment, received_all)
            return
        self.presence.detach(attachment)
        self.handovers.detached(attachment)
        if received_all:
            confirmed(attachment.uid, attachment.unconfirmed)
            orphans = lost(attachment.held or [])
        elif read:
            # what the client read, as the node holding the socket counted it (a relay's clean close: redis_edge/relays.py)
            unread = [sent for sent in attachment.unconfirmed if sent.message.id not in read]
            confirmed(attachment.uid, [sent for sent in attachment.unconfirmed if sent.message.id in read])
            orphans = lost(unread + (attachment.held or []))
        else:
            orphans = lost(attachment.unconfirmed + (attachment.held or []))
        if attachment.pending_bytes:
            self.budget.give_back(attachment, attachment.pending_bytes)
        attachment.unconfirmed.clear()
        attachment.held = None
        if orphans:
            self.log.info(
                "{uid}: {count} messages were not confirmed by {peer} before it closed; delivering them again",
                uid=attachment.uid,
                count=len(orphans),
                peer=attachment.sink.client_address,
            )
            self.delivery.redeliver(attachment.uid, orphans)

    def acknowledged(self, attachment: Attachment, message_id: str) -> None:
        """
        The client's code handled the message ``message_id`` and everything sent
        to this socket before it: those live messages are confirmed.  (Queue
        entries are confirmed through :meth:`MessageSink.confirm` by the handover.)
        """
        if attachment.owner is not None and self.peers is not None:
            self.peers.acknowledged(attachment, message_id)  # its user's messages: the owner keeps them
        unconfirmed = attachment.unconfirmed
        if not unconfirmed:
            return  # a queue entry's ack (the handover's batch), or a repeat
        for index, sent in enumerate(unconfirmed):
            if sent.message.id == message_id:
                done = unconfirmed[: index + 1]
                del unconfirmed[: index + 1]
                self.budget.give_back(attachment, confirmed(attachment.uid, done))
                return

    def abandon(self, attachment: Attachment, error: ClientError) -> None:
        """
        Give a socket up (too slow): what it was sent and did not confirm goes to
        the user's other sockets or back to the queue now, in order, and its
        connection is told to end.
        """
        self.detach(attachment)
        attachment.sink.abandon(error)

    def refused(self, reason: CloseCode) -> None:
        """A client was refused or closed for a mistake (counted by reason)."""
        self.counters.refusal(reason.name)

    # -- state -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a handover is running or a group message waits for its members."""
        return bool(self.handovers.running or self.router.waiting)

    def written(self) -> Deferred[None]:
        """
        Fires once every queue write made so far has been answered by Redis, those of the users being given away
        included (what their sockets did not confirm goes back to the queue first: core/giveaway.py).
        """
        return self.giveaways.written()

    def in_order(self, action: Callable[[], None]) -> None:
        """Run ``action`` once every message published before it was handed on (a change of the nodes)."""
        self.router.in_order(action)

    def hold(self) -> Callable[[], None]:
        """Hold the messages published from now on until the function returned is called."""
        return self.router.hold()

    def when_idle(self) -> Deferred[None]:
        """
        Fires once no handover runs, no message waits for a group's members, and
        every queue write made so far has been answered by Redis.
        """
        if self.busy:
            waiter: Deferred[None] = Deferred()
            self._idle_waiters.append(waiter)
            return waiter.addCallback(lambda _: self.when_idle())
        return self.written()

    def _settled(self) -> None:
        if not self.busy:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def stop(self, timeout: float = 5.0) -> Deferred[Any]:
        """Stop timers and retries; let running handovers settle, for at most ``timeout`` seconds."""
        self.router.stop()
        self.confirmations.stop()
        if not self.handovers.running:
            return succeed(None)
        return self.handovers.stop(timeout)


def _ignore_entry(entry_id: str) -> None:
    pass
