"""
The interfaces through which the core reaches the outside: a client connection
(whatever its dialect), the queues, and the directory of user keys and group
members (both in Redis, implemented by :mod:`redmessenger.redis_edge`).

Errors cross this boundary as the two exceptions below, never as a Redis
client's own types: the core does not know which client the edge uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred

from redmessenger.core.ownership import Ownership
from redmessenger.model.channels import Answer, Sender, SubscriptionRequest
from redmessenger.model.envelope import Message
from redmessenger.model.errors import ClientError


class StoreUnavailable(Exception):
    """Redis cannot be reached right now (no connection, or no answer in time): try again later."""


class StoreError(Exception):
    """Redis refused a command (a key of another type, a script error): trying again will not help."""


class MessageSink(Protocol):
    """What delivery needs of a client connection, whatever its wire dialect."""

    @property
    def client_address(self) -> str:
        """``host:port`` of the client, for logs."""

    @property
    def writable(self) -> bool:
        """Whether messages can still be written to the client."""

    @property
    def acknowledges(self) -> bool:
        """
        Whether the client's code acknowledges messages by id (it then reports
        them with :meth:`redmessenger.core.hub.Hub.acknowledged` as they come,
        and :meth:`confirm` asks it for an ack).
        """

    def send_message(self, message: Message, bubble: bool) -> bool:
        """Write the message to the client; False if the connection is already gone."""

    def confirm(self) -> Deferred[bool]:
        """
        Fires True once the client has shown it received everything written so
        far (a WebSocket pong, the next poll), False if it went away first.
        """

    def abandon(self, error: ClientError) -> None:
        """The core gives up on this client (it reads too slowly): end its connection, telling it ``error``."""


if TYPE_CHECKING:
    from redmessenger.core.presence import Attachment


class Peers(Protocol):
    """
    The other daemons sharing this Redis (docs/scale-out.md): who owns a user,
    and the way to the owner of a user whose socket is here.  The owner decides
    for its users (which socket gets a message, the bubble, the queue); a socket
    of a user owned elsewhere is a relay: the owner's deliveries reach it, and
    its identification, acknowledgements and close reach the owner.
    """

    @property
    def shared(self) -> bool:
        """Whether other daemons share the Redis now (if not, this one owns every user)."""

    @property
    def listed(self) -> bool:
        """
        Whether this daemon is among the live nodes as it last heard them: it acts
        on the PUBLISHes to users and groups only then (before its first heartbeat
        is heard, the users it will own are still other daemons').
        """

    def owner(self, key: str) -> str | None:
        """The node that owns ``key`` (a uid, or a group for what one node does for it); None when it is this one."""

    @property
    def owners(self) -> Ownership:
        """The same view, for the router and the delivery to read once per message without a call through here."""

    def attach(self, owner: str, attachment: Attachment) -> None:
        """A socket here identified as a user ``owner`` owns: tell it (the owner hands it the queue)."""

    def detach(self, attachment: Attachment, received_all: bool) -> None:
        """A relayed socket closed, or its user moved: tell the owner it had it."""

    def acknowledged(self, attachment: Attachment, message_id: str) -> None:
        """A relayed socket's client acknowledged ``message_id``: tell the owner."""

    def forward(self, owner: str, message: Message, uid: str) -> None:
        """
        A message of the durable intake for ``uid``, which ``owner`` owns: give
        it to the owner; its ticket is settled for ``uid`` once the owner made it safe.
        """


class ClientLink(MessageSink, Protocol):
    """What a client session needs of its connection besides delivery: the dialect's way of talking back."""

    def accepted(self, uid: str | None) -> None:
        """
        The identifier was accepted (Socket.IO acknowledges it; the plain dialect
        says nothing, or welcomes a version-1 session); None: an anonymous session.
        """

    def refuse(self, error: ClientError) -> None:
        """Tell the client what it did wrong, the dialect's way, and end the connection."""

    def pass_to(self, node: str) -> Deferred[bool] | None:
        """
        Hand the connection, before its identifier is acted on, to ``node`` (the
        user's owner) when it runs on this host; None when it cannot go (a dialect
        or transport that cannot, or not configured).  Fires True once it went
        (this process has let go of it), False when it stays here (the owner is on
        another host, or declined).  Never fails.
        """


class Queues(Protocol):
    """Users' queues (``rm:users:$uid:messages``)."""

    @property
    def backlog(self) -> int:
        """Entries kept in memory until Redis accepts them."""

    def enqueue(
        self, uids: list[str], entry: bytes, again: bool = False, written: Callable[[], None] | None = None
    ) -> None:
        """
        Append an entry to the queues of ``uids``, in order with earlier calls;
        never fails (kept until written).  ``again``: it may be in some of them
        already (read again after a crash): pushed only where it is not.
        ``written``: called once Redis has it.
        """

    def keep_aside(self, channel: str, payload: bytes, written: Callable[[], None] | None = None) -> None:
        """
        Keep a message that will not be delivered (its payload is too large) at
        ``rm:oversize:$channel``, as published; never fails (kept until written).
        """

    def take(self, uid: str, delivered: int, batch: int) -> Deferred[tuple[int, list[bytes]]]:
        """
        Drop the ``delivered`` oldest entries, then the queue's length and its next ``batch`` entries: read once
        every entry queued for this queue before the call has landed (StoreUnavailable if Redis refuses a write
        meanwhile); writes to other queues do not hold it up.
        """

    def trim(self, uid: str, delivered: int) -> Deferred[None]:
        """Drop the ``delivered`` oldest entries."""

    def drain(self) -> Deferred[None]:
        """Fires once every queue write (append or trim) made before the call has been answered by Redis."""


class Directory(Protocol):
    """What the application keeps in Redis about users and groups."""

    def user_key(self, uid: str) -> Deferred[bytes | None]:
        """The secret at ``rm:users:$uid:key``, or None; fails with StoreUnavailable within a deadline."""

    def members(self, cid: str) -> Deferred[list[bytes]]:
        """The members of group ``cid`` right now (StoreUnavailable while Redis is away)."""


class NobodyListening(Exception):
    """No application reads the subscription requests (the request stream has no consumer group)."""


class Application(Protocol):
    """The application, as the daemon reaches it through Redis: asked about subscriptions, given clients' publishes."""

    def ask(self, request: SubscriptionRequest) -> Deferred[Answer]:
        """
        Hand the request to the application; fires with its answer.  Fails with
        :class:`NobodyListening` at once if no application reads requests, and
        :class:`StoreUnavailable` while Redis is away.  The caller cancels it
        (``Deferred.cancel``) when it stops waiting.
        """

    def publish(self, cid: str, sender: Sender, payload: str) -> Deferred[None]:
        """Publish a client's message on channel ``cid`` for every daemon (StoreUnavailable while Redis is away)."""


@dataclass
class LinkState:
    """What operators and /health need to know about the link to Redis (kept by the edge)."""

    subscribed: bool = False
    commands_connected: bool = False
    #: ``host:port`` of the Redis server the command connection last reached.
    address: str | None = None
    #: Times Sentinel named another master while this daemon ran (failovers followed).
    master_switches: int = 0
    #: Why this Redis cannot serve the daemon at all (a Redis Cluster node), if it cannot.
    unsupported: str | None = None
    #: When the subscriber last heard its own pub/sub probe (reactor time), and how many probes went
    #: unheard (each time the subscription was silently dead, and was opened again).
    probe_heard_at: float | None = None
    probe_silences: int = 0
    reconnects: int = 0
    last_error: str | None = None
    #: Since when (reactor time) the subscriber has been away after losing its connection, if it is.
    unsubscribed_since: float | None = None
    #: Seconds without a subscription since start (after the first), and the last such gap.
    unsubscribed_seconds: float = 0.0
    last_gap: float | None = None
