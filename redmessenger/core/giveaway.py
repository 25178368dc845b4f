"""
Users this node no longer owns, at a change of the nodes (docs/scale-out.md, *Changes of the nodes, in order*).

A socket held here that stays open becomes a relay of the new owner (which hands it the queue) once its client
confirmed what it was sent: then nothing of it goes back to the queue, to come again from there.  What a socket did
not confirm (it closed meanwhile, it was in a queue handover, or it did not answer within GIVE_AWAY_WAIT) goes back
to the queue, and the relay is attached once those writes have landed.  Sockets other nodes hold are forgotten
(their nodes attach them to the new owner).  The word to the new owner that this node's writes landed
(redis_edge/handoff.py) waits for all of it: :meth:`GiveAways.written`.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime

from redmessenger.core.budget import Budget
from redmessenger.core.delivery import Delivery
from redmessenger.core.ports import Peers, Queues
from redmessenger.core.presence import Attachment, Presence, Sent, confirmed, lost
from redmessenger.model.envelope import Message

#: Seconds a socket given away has to confirm what it was sent before it is counted unconfirmed: under
#: redis_edge/handoff.py's BARRIER_TIMEOUT (2 s), how long the new owner holds what follows the change at most.
GIVE_AWAY_WAIT = 1.0


class GiveAways:
    """The users given away, until what their sockets did not confirm is back in the queue."""

    def __init__(
        self,
        presence: Presence,
        budget: Budget,
        delivery: Delivery,
        queues: Queues,
        clock: IReactorTime,
        peers: Callable[[], Peers | None],
    ) -> None:
        self._presence = presence
        self._budget = budget
        self._delivery = delivery
        self._queues = queues
        self._clock = clock
        self._peers = peers
        #: Users being given away: :meth:`written` waits for them.
        self._giving: set[Deferred[None]] = set()

    def give_away(self, uid: str, owner: str) -> Deferred[None]:
        """``uid`` is owned by ``owner`` now; fires once its sockets were handed on (or their messages queued)."""
        attachments = self._presence.release(uid)
        steps: list[Deferred[None]] = []
        for attachment in attachments:
            sents = attachment.unconfirmed
            attachment.unconfirmed = []
            if attachment.pending_bytes:
                self._budget.give_back(attachment, attachment.pending_bytes)
            if attachment.via is not None:
                attachment.attached = False
                self._requeue(uid, lost(sents + (attachment.held or [])))
                continue
            attachment.owner = owner
            if attachment.held is not None or not sents or not attachment.sink.writable:
                self._requeue(uid, lost(sents + (attachment.held or [])))
                attachment.held = None
                steps.append(self._queues.drain().addCallback(self._hand_on, attachment, owner))
                continue
            steps.append(self._confirm_within(attachment).addCallback(self._confirmed_before_hand_on, attachment, owner, sents))
        if not steps:
            return succeed(None)
        given: Deferred[None] = gatherResults(steps, consumeErrors=True).addCallback(lambda _: None)
        self._giving.add(given)

        def over(result: object) -> object:
            self._giving.discard(given)
            return result

        given.addBoth(over)
        return given

    def written(self) -> Deferred[None]:
        """Fires once the users being given away were, and every queue write made so far was answered by Redis."""
        giving = list(self._giving)
        if not giving:
            return self._queues.drain()
        return DeferredList(giving, consumeErrors=True).addCallback(lambda _: self._queues.drain())

    def _confirm_within(self, attachment: Attachment) -> Deferred[bool]:
        """
        The socket's confirmation, or no after GIVE_AWAY_WAIT: counted unconfirmed then, what it was sent may come to
        the client twice (same ids), and never after what the new owner delivers or queues after the change.  (Not
        ``Deferred.addTimeout``: it would cancel the sink's confirmation, which its pong still fires.)
        """
        answer: Deferred[bool] = Deferred()

        def answered(received: bool) -> None:
            if timer.active():
                timer.cancel()
            if not answer.called:
                answer.callback(received)

        timer = self._clock.callLater(GIVE_AWAY_WAIT, answered, False)
        attachment.sink.confirm().addCallbacks(answered, lambda _: answered(False))
        return answer

    def _requeue(self, uid: str, messages: list[Message]) -> None:
        for message in messages:
            self._delivery.queue([uid], message)

    def _confirmed_before_hand_on(self, received: bool, attachment: Attachment, owner: str, sents: list[Sent]) -> Deferred[None]:
        if received:
            confirmed(attachment.uid, sents)
        else:  # the socket went away first, or did not answer in time: what it had goes back to the queue
            self._requeue(attachment.uid, lost(sents))
        return self._queues.drain().addCallback(self._hand_on, attachment, owner)

    def _hand_on(self, _: object, attachment: Attachment, owner: str) -> None:
        peers = self._peers()
        if attachment.attached and attachment.owner == owner and peers is not None:
            peers.attach(owner, attachment)
