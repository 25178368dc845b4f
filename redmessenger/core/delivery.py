"""
Delivery (SPEC §3 rules 1 and 2, §2's bubble): a message for some uids goes to
each one's live sockets, the oldest with the bubble, or to the queues of those
who have none.  A message on a channel also goes to the sockets that subscribed
to it (SPEC §7, live only), except those that got it as a member's and the one
that published it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from twisted.internet.interfaces import IReactorTime

from redmessenger.core.budget import SLOW_SHARE, Budget
from redmessenger.core.channels import Channels
from redmessenger.core.confirmations import Confirmations
from redmessenger.core.counters import Counters
from redmessenger.core.ownership import Ownership
from redmessenger.core.ports import Peers, Queues
from redmessenger.core.presence import SUBSCRIBED, Attachment, Copies, Presence, Sent, User
from redmessenger.logs import debugging, informing, make_logger
from redmessenger.model.envelope import Message
from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.model.keyspace import GROUP_SOURCE_PREFIX, queue_key


class Delivery:
    """Fans a message out to online sockets and hands the rest to the queues."""

    log = make_logger()

    def __init__(
        self,
        presence: Presence,
        queues: Queues,
        confirmations: Confirmations,
        counters: Counters,
        clock: IReactorTime,
        budget: Budget,
    ) -> None:
        self._presence = presence
        self._queues = queues
        self._confirmations = confirmations
        self._budget = budget
        self._counters = counters
        self._clock = clock
        #: Called once per message delivered live (the latency histogram, redmessenger.ops.metrics).
        self.on_live_delivery: Callable[[Message], None] = _ignore
        #: Called with a socket to give up as too slow (Hub.abandon).
        self.on_too_slow: Callable[[Attachment, ClientError], None] = _ignore_slow
        #: The channels' subscribers (SPEC §7), when clients may subscribe.
        self.channels: Channels | None = None
        #: The other daemons sharing the Redis (docs/scale-out.md): recipients owned elsewhere are theirs.
        self.peers: Peers | None = None
        #: Their view of who owns whom (``peers.owners``), read once per message.
        self.owners: Ownership | None = None

    def deliver(self, message: Message, uids: Sequence[str], channel: str | None = None) -> None:
        """
        To the live sockets of each uid, else to its queue; a message on
        ``channel`` also to the sockets that subscribed to it.
        """
        exclude = None
        channels = self.channels
        if channels is not None and message.sender is not None:
            # A client's publish: not back to the socket that sent it (SPEC §7.4).
            exclude = channels.client(message.sender.client_id)
        offline = []
        get_user = self._presence.get
        # What every recipient with a single socket keeps until it confirms:
        # the same record for all of them (a group fans out to thousands).
        alone = Sent(message, True, None)
        if message.ticket is not None:
            message.ticket.expect(uids)
        members = uids  # a subscriber who is a member gets it as a member (from its user's owner)
        owners = self.owners
        if owners is not None and owners.shared and (channel is not None or message.ticket is not None):
            # (A user's bare PUBLISH is not asked again: the router acts on it only for a user owned here, Router._acts.)
            uids = self._owned_here(message, uids, owners)
        now = self._clock.seconds()
        delivered = 0
        for uid in uids:
            user = get_user(uid)
            if user is not None and self.deliver_live(user, message, alone, now, exclude):
                delivered += 1
            else:
                offline.append(uid)
        if channel is not None and channels is not None:
            readers = channels.readers(channel)
            if readers:
                delivered += self._to_subscribers(message, readers, members, exclude, now)
        self._counters.delivered += delivered
        if delivered:
            self.on_live_delivery(message)
        if offline:
            self.queue(offline, message)

    def deliver_live(
        self,
        user: User,
        message: Message,
        alone: Sent | None = None,
        now: float | None = None,
        exclude: Attachment | None = None,
    ) -> bool:
        """
        Give a message to each of the user's sockets, the oldest with the bubble.
        False if none took it (all closing): the caller queues it.  ``alone``:
        the record to keep if the user has one socket (Sent is never modified,
        so one per message serves every such recipient).  ``now``: the clock,
        read once per message by the caller.  ``exclude``: the socket that
        published it (it counts as delivered there).
        """
        if now is None:
            now = self._clock.seconds()
        attachments = user.attachments
        if not attachments:
            return False
        holders = len(attachments)
        if exclude is not None and exclude in attachments:
            holders -= 1  # the socket that published it holds no copy
        copies = Copies(holders) if holders > 1 else None
        bubble = True
        confirmations = self._confirmations
        # Budget.charge, inlined: this runs once per delivery.
        budget = self._budget
        per_socket, total, floor = budget.per_socket, budget.total, budget.per_socket // SLOW_SHARE
        weight = message.weight
        used = budget.used
        slow = None
        for attachment in attachments:
            if attachment is exclude:
                continue
            sent = alone if alone is not None and copies is None else Sent(message, bubble, copies)
            held = attachment.held
            if held is not None:
                held.append(sent)
            elif attachment.sink.send_message(message, bubble):
                attachment.unconfirmed.append(sent)
                # Confirmations.sent, inlined
                if not attachment.confirming:
                    confirmations.want(attachment)
                elif now >= attachment.ask_from:
                    confirmations.ask_now(attachment)
            else:
                # Closing: kept for it, so that when it is gone the message goes
                # to the user's other sockets or the queue after what it did not confirm.
                attachment.held = [sent]
            pending = attachment.pending_bytes + weight
            attachment.pending_bytes = pending
            used += weight
            if pending > per_socket or (used > total and pending > floor):
                slow = [attachment] if slow is None else slow + [attachment]
            bubble = False
        budget.used = used
        if slow is not None:
            for attachment in slow:
                self.too_slow(attachment)
        return True

    def _to_subscribers(
        self,
        message: Message,
        readers: dict[Attachment, None],
        members: Sequence[str],
        exclude: Attachment | None,
        now: float,
    ) -> int:
        """
        The channel's subscribers that did not get the message as a member's:
        live only (nothing to deliver again if they go), no bubble, held and
        confirmed like any live message, so that their memory is bounded.
        """
        member_set = set(members) if members else ()
        sent = Sent(message, False, SUBSCRIBED)
        weight = message.weight
        count = 0
        slow = []
        for attachment in readers:
            if attachment is exclude or (attachment.uid and attachment.uid in member_set):
                continue
            if attachment.held is not None:
                attachment.held.append(sent)
            elif attachment.sink.send_message(message, False):
                attachment.unconfirmed.append(sent)
                self._confirmations.sent(attachment, now)
            else:
                continue  # closing: live only, nothing to keep for it (deliver_live keeps it, to go elsewhere)
            count += 1
            if self._budget.charge(attachment, weight):
                slow.append(attachment)
        for attachment in slow:
            self.too_slow(attachment)
        return count

    def too_slow(self, attachment: Attachment) -> None:
        """The socket is past its share of the budget: given up (4413), once (the queue's handover calls this too)."""
        self._budget.over(attachment)
        if attachment.abandoned:
            return
        attachment.abandoned = True
        budget = self._budget
        self.on_too_slow(
            attachment,
            ClientError(
                CloseCode.TOO_SLOW,
                f"{attachment.pending_bytes} bytes sent and not confirmed (limit {budget.per_socket}; "
                f"daemon {budget.used} of {budget.total})",
            ),
        )

    def _owned_here(self, message: Message, uids: Sequence[str], owners: Ownership) -> list[str]:
        """The recipients this daemon owns; a durable message for the others goes to their owners."""
        owned = []
        elsewhere, peers = owners.elsewhere, self.peers
        assert peers is not None  # set with the owners (Hub.set_peers)
        for uid in uids:
            owner = elsewhere(uid)
            if owner is None:
                owned.append(uid)
            elif message.ticket is not None:
                peers.forward(owner, message, uid)
        return owned

    def redeliver(self, uid: str, messages: Iterable[Message]) -> None:
        """Messages a socket of ``uid`` lost: to the user's other sockets, else back to the queue, in order."""
        for message in messages:
            user = self._presence.get(uid)
            if user is None or not self.deliver_live(user, message):
                self.queue([uid], message)

    def queue(self, uids: list[str], message: Message) -> None:
        """
        Keep a message in the queues of users who are not online.  Logged once
        per message at info: a user's message names its queue (the Node.js
        RedMessenger's line), a group message gives the number of members it was
        queued for; the group's queues one by one are debug lines.
        """
        self._counters.queued += len(uids)
        if informing():
            if message.source.startswith(GROUP_SOURCE_PREFIX):
                count = len(uids)
                self.log.info(
                    "{channel}: queued for {count} offline {members}",
                    channel=message.source,
                    count=count,
                    members="member" if count == 1 else "members",
                )
                if debugging():
                    for uid in uids:
                        self.log.debug("Client is not online, queueing message in Redis ({key})", key=queue_key(uid), uid=uid)
            else:
                for uid in uids:
                    self.log.info("Client is not online, queueing message in Redis ({key})", key=queue_key(uid), uid=uid)
        ticket = message.ticket
        if ticket is None:
            self._queues.enqueue(uids, message.queue_entry())
        else:
            recipients = list(uids)
            self._queues.enqueue(
                recipients, message.queue_entry(), again=ticket.again, written=lambda: ticket.settle_queued(recipients)
            )


def _ignore(message: Message) -> None:
    pass


def _ignore_slow(attachment: Attachment, error: ClientError) -> None:
    pass
