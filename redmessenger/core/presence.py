"""
Who is online: the identified sockets of each user, oldest first.  No I/O here.

The oldest socket of a user carries the bubble (SPEC §2); when it closes the
next oldest takes it over, simply by being first in the list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from redmessenger.core.ports import MessageSink
from redmessenger.model.channels import Mode
from redmessenger.model.envelope import Message
from redmessenger.model.errors import ClientError, CloseCode


class Copies:
    """
    The copies of one message given to a user's several sockets: when one of
    them goes away unconfirmed, the message is delivered again (or queued) only
    if none of the others confirmed it and none still holds it.
    """

    __slots__ = ("holders", "confirmed")

    def __init__(self, holders: int) -> None:
        self.holders = holders
        self.confirmed = False


#: The "copies" of a message a socket got as a channel's subscriber: live only
#: (SPEC §7), so a socket that goes away with it unconfirmed loses nothing to redeliver.
SUBSCRIBED = Copies(0)
SUBSCRIBED.confirmed = True


@dataclass(eq=False, slots=True)
class Sent:
    """
    A live message written to (or held for) one socket, until the client confirms it.
    Never modified once made: delivery shares one among all the sockets that get it alike.
    """

    message: Message
    bubble: bool
    #: The user's copies, when several sockets got it; None when this is the only one.
    copies: Copies | None


def confirmed(uid: str, done: list[Sent]) -> int:
    """
    A socket of ``uid`` confirmed these: no other copy is needed, and a message
    from the durable intake has this recipient safe.  Returns their weight.
    """
    weight = 0
    for sent in done:
        message = sent.message
        weight += message.weight
        if sent.copies is not None:
            sent.copies.confirmed = True
        if message.ticket is not None:
            message.ticket.settle(uid)
    return weight


def lost(sents: list[Sent]) -> list[Message]:
    """
    A socket went away with these unconfirmed: the messages that must go again
    (to the user's other sockets or the queue), in order: those no other socket
    confirmed or still holds.
    """
    again = []
    for sent in sents:
        copies = sent.copies
        if copies is None:
            again.append(sent.message)
            continue
        if copies is SUBSCRIBED:
            continue
        copies.holders -= 1
        if not copies.confirmed and copies.holders <= 0:
            again.append(sent.message)
    return again


@dataclass(eq=False, slots=True)
class Attachment:
    """
    One admitted socket: identified as a user's, or anonymous (``uid`` empty:
    a version-1 session without a uid, which can only subscribe to channels).
    """

    uid: str
    sink: MessageSink
    #: Not None while this socket waits for (or receives) the user's queue:
    #: live messages wait here, so that the queue arrives first.
    held: list[Sent] | None = None
    #: Live messages written, not yet confirmed by the client, oldest first.
    #: A list (confirmed ones leave from the front in one slice): an empty
    #: deque costs 760 bytes, and an idle socket holds this for its lifetime.
    unconfirmed: list[Sent] = field(default_factory=list)
    #: The weight of the messages in ``held`` and ``unconfirmed`` (see redmessenger.core.budget).
    pending_bytes: int = 0
    #: The core gave this socket up (too slow); its connection is closing.
    abandoned: bool = False
    #: A confirmation is under way (at most one per socket at a time).
    confirming: bool = False
    #: While a confirmation is wanted and not asked for yet: from when a
    #: message written to the socket may carry the request along (see Confirmations).
    ask_from: float = math.inf
    attached: bool = True
    #: The connection's client id (SPEC §7.1), given when it first asks for a channel.
    client_id: str | None = None
    #: Its channel subscriptions (granted) and their modes; None until the first.
    channels: dict[str, Mode] | None = None
    #: The node that owns this socket's user when it is not this daemon (docs/scale-out.md): the
    #: socket is then a relay, not in this daemon's Presence; its user's messages come from the owner.
    owner: str | None = None
    #: On the owner, for a socket another node holds: that node (the sink reaches it through its inbox).
    via: str | None = None


@dataclass(eq=False)
class User:
    uid: str
    attachments: list[Attachment] = field(default_factory=list)

    def carries_bubble(self, attachment: Attachment) -> bool:
        return bool(self.attachments) and self.attachments[0] is attachment


class Presence:
    """The registry of online users."""

    def __init__(self, user_socket_limit: int | None = None) -> None:
        self._users: dict[str, User] = {}
        self._user_socket_limit = user_socket_limit

    def __len__(self) -> int:
        """Number of users online."""
        return len(self._users)

    def get(self, uid: str) -> User | None:
        return self._users.get(uid)

    def users(self) -> list[User]:
        return list(self._users.values())

    def attach(self, uid: str, sink: MessageSink) -> Attachment:
        """Register an identified socket as the user's newest."""
        user = self._users.get(uid)
        if user is None:
            user = self._users[uid] = User(uid)
        elif self._user_socket_limit is not None and len(user.attachments) >= self._user_socket_limit:
            raise ClientError(
                CloseCode.TOO_MANY_SOCKETS,
                f"{uid} already has {len(user.attachments)} sockets open (user_socket_limit)",
            )
        attachment = Attachment(uid, sink)
        user.attachments.append(attachment)
        return attachment

    def add(self, attachment: Attachment) -> None:
        """Register a socket that was a relay as its user's newest (its user is owned here now)."""
        user = self._users.get(attachment.uid)
        if user is None:
            user = self._users[attachment.uid] = User(attachment.uid)
        user.attachments.append(attachment)

    def release(self, uid: str) -> list[Attachment]:
        """Forget a user (owned by another node now): its sockets, oldest first, stay attached for their sessions."""
        user = self._users.pop(uid, None)
        return user.attachments if user is not None else []

    def detach(self, attachment: Attachment) -> None:
        """Forget a socket that closed; the user goes offline with their last one."""
        if not attachment.attached:
            return
        attachment.attached = False
        if not attachment.uid:
            return  # anonymous: never registered
        user = self._users[attachment.uid]
        user.attachments.remove(attachment)
        if not user.attachments:
            del self._users[attachment.uid]

    def carries_bubble(self, attachment: Attachment) -> bool:
        user = self._users.get(attachment.uid)
        return user is not None and user.carries_bubble(attachment)
