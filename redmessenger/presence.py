"""
Who is online: the identified sockets of each user, oldest first.  No I/O here.

The oldest socket of a user carries the bubble (SPEC §2); when it closes the
next oldest takes it over, simply by being first in the list.  A socket that is
being handed its queue *holds* live messages until the queue is through, so
that it receives the queue before anything newer (SPEC §3.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .envelope import Message
from .errors import ClientError, CloseCode


class MessageSink(Protocol):
    """What the core needs of a client connection, whatever its wire dialect."""

    @property
    def client_address(self) -> str:
        """``host:port`` of the client, for logs."""

    @property
    def writable(self) -> bool:
        """Whether messages can still be written to the client."""

    def send_message(self, message: Message, bubble: bool) -> bool:
        """Write the message to the client; False if the connection is already gone."""


@dataclass(eq=False)
class HeldMessage:
    """A live message waiting for a queue handover to finish on one socket."""

    message: Message
    bubble: bool
    #: Whether another socket of the user got it: if this socket drops, only the
    #: messages nobody else received go back to the queue.
    delivered_elsewhere: bool


@dataclass(eq=False)
class Attachment:
    """One identified socket of a user."""

    uid: str
    sink: MessageSink
    #: Not None while this socket is being handed the user's queue.
    held: list[HeldMessage] | None = None
    attached: bool = True


@dataclass(eq=False)
class User:
    uid: str
    attachments: list[Attachment] = field(default_factory=list)
    #: The attachment receiving the queue right now, if any: one at a time, so
    #: that two tabs identifying together never both receive it.
    handover: Attachment | None = None

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

    def detach(self, attachment: Attachment) -> None:
        """Forget a socket that closed; the user goes offline with their last one."""
        if not attachment.attached:
            return
        attachment.attached = False
        user = self._users[attachment.uid]
        user.attachments.remove(attachment)
        if not user.attachments:
            del self._users[attachment.uid]

    def deliver(self, user: User, message: Message) -> bool:
        """
        Give a live message to each of the user's sockets; the oldest gets the bubble.
        False if no socket took it (all of them closing): the caller queues it.
        """
        attachments = user.attachments
        shared = len(attachments) > 1
        bubble = True
        taken = False
        for attachment in attachments:
            if attachment.held is not None:
                attachment.held.append(HeldMessage(message, bubble, shared))
                taken = True
            elif attachment.sink.send_message(message, bubble):
                taken = True
            bubble = False
        return taken
