"""
Durable-intake entries between the node that reads the stream and the owners of their users (docs/scale-out.md,
*The durable intake through owners*): the reader gives an entry for a user owned elsewhere to that owner
(``intake``), which routes it as its own and answers once the user's copy is safe (``settled``); the reader
acknowledges the entry then.

Either item can be lost with inbox entries (a Redis failover, a refused write): an entry not settled
FORWARD_AGAIN_AFTER seconds after it was given is given again, as the reader claims what a dead reader left pending
for a minute.  The owner does not route an entry twice: one still on its way there is answered when it is safe, one
answered already is answered again.  An entry whose owner left (or started again) before settling is routed again
here, for its new owner.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from redmessenger.core.hub import Hub
from redmessenger.model.envelope import Message
from redmessenger.redis_edge.remote import OneRecipient, Outbox, RemoteTicket

#: Seconds after which an intake entry given to its user's owner, and not settled, is given again.
FORWARD_AGAIN_AFTER = 60.0
#: Intake entries given here and answered that an owner remembers: one given again is answered, not routed again.
GIVEN_SETTLED_KEPT = 10000


class Forwarding:
    """Both sides: the entries this node gave to owners (as the reader), and those other nodes gave it (as an owner)."""

    def __init__(self, outbox: Outbox, hub: Hub, clock: IReactorTime, log: Logger) -> None:
        self._outbox = outbox
        self._hub = hub
        self._clock = clock
        self._log = log
        #: Reader side: (entry, uid) -> (the message, its owner), until settled; and when each was given (last).
        self.forwarded: dict[tuple[str, str], tuple[Message, str]] = {}
        self._forwarded_at: dict[tuple[str, str], float] = {}
        #: Entries given to their owner again, since start.
        self.again = 0
        # owner side: (node, entry, uid) on their way here, and the last ones answered (b"1": queued)
        self._given: dict[tuple[str, str, str], None] = {}
        self._given_settled: dict[tuple[str, str, str], bytes] = {}

    # -- the reader's side ---------------------------------------------------------------

    def forward(self, owner: str, message: Message, uid: str) -> None:
        key = (message.id, uid)
        self.forwarded[key] = (message, owner)
        self._forwarded_at[key] = self._clock.seconds()
        self._outbox.send(owner, b"intake", e=message.queue_entry(), u=uid.encode("utf-8"))

    def forward_again(self) -> None:
        """The entries given to owners and not settled for FORWARD_AGAIN_AFTER: given again."""
        due = self._clock.seconds() - FORWARD_AGAIN_AFTER
        for key, at in list(self._forwarded_at.items()):
            if at <= due:
                message, owner = self.forwarded[key]
                self._log.warn(
                    "Intake entry {id} given to {owner} for {uid} {seconds:g}s ago, not settled: giving it again",
                    id=message.id,
                    owner=owner,
                    uid=key[1],
                    seconds=FORWARD_AGAIN_AFTER,
                )
                self.again += 1
                self.forward(owner, message, key[1])

    def settled(self, entry_id: str, uid: str, queued: bool) -> None:
        """The owner says ``uid``'s copy of the entry is safe."""
        key = (entry_id, uid)
        forwarded = self.forwarded.pop(key, None)
        self._forwarded_at.pop(key, None)
        ticket = forwarded[0].ticket if forwarded is not None else None
        if ticket is not None:
            if queued:
                ticket.settle_queued([uid])
            else:
                ticket.settle(uid)

    def owners_changed(self, gone: Callable[[str], bool]) -> None:
        """The entries given to an owner that is ``gone`` (left, or started again) before settling: routed again."""
        for (entry, uid), (message, owner) in list(self.forwarded.items()):
            if gone(owner):
                del self.forwarded[(entry, uid)]
                del self._forwarded_at[(entry, uid)]
                again = Message(message.source, message.timestamp, message.payload, message.id, message.sender)
                again.ticket = OneRecipient(message.ticket, uid)
                self._hub.router.route_user(again, uid)

    # -- the owner's side -----------------------------------------------------------------

    def given(self, node: str, message: Message, uid: str) -> None:
        """An intake entry ``node`` read, for ``uid`` (owned here): routed, once."""
        key = (node, message.id, uid)
        if key in self._given:
            return  # on its way here: answered when safe
        queued = self._given_settled.get(key)
        if queued is not None:  # answered already: the answer was lost
            self._outbox.send(node, b"settled", i=message.id.encode("ascii"), u=uid.encode("utf-8"), q=queued)
            return
        self._given[key] = None

        def answered(queued: bytes) -> None:
            self._given.pop(key, None)
            done = self._given_settled
            done[key] = queued
            if len(done) > GIVEN_SETTLED_KEPT:
                del done[next(iter(done))]

        message.ticket = RemoteTicket(self._outbox, node, message.id, uid, answered)
        self._hub.router.route_user(message, uid)
