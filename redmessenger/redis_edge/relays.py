"""
On the node holding a socket whose user another node owns (docs/scale-out.md):
the *relays*.  The holder tells the owner of each (``attach``, sent again while
unanswered: ``attached``), of its client's acks and of its close (``ack``,
``detach``); it answers the owner's confirmation requests (``confirm``), and
closes the socket when the owner says so (``abandon``) or when deliveries the
owner sent it never arrived.  The deliveries themselves are written to the
relays by the inbox's reader (redis_edge/peers.py), from the tables here,
without a call through this class per message.

Each relay has a socket id, ``{run}.{n}``: the owner tells the sockets of a
node's runs apart (redis_edge/remotesockets.py).

What the owner sent may not all arrive (a Redis failover loses the last inbox
entries written to the old master; a write fails).  The holder writes nothing
to a socket past a loss: its owner numbers each socket's deliveries
(redis_edge/batches.py), and a delivery whose number skips closes the socket
(1013) before it is written; a confirmation request that counts more
deliveries than arrived closes it the same way (the last ones were lost).  When
its client read everything written (a close the server started, whose ping before
the close frame the client answered: dialects/plain/pings.py), the
detach names the messages that were written: the owner takes those as read,
and sends the rest again, in order (lost ones, those that came while it was
closing, those still on their way).  The owner tells, with each
confirmation request, the last one it had answered yes: what that one covered
is forgotten here then, not before (the answer may be lost on the way).

An owner may drop a relay it was told of: it drops the sockets of a node that
left its list, and this node may be alive (its heartbeat late, its subscription
down for longer than its entry lasts).  The owner then says so (``dropped``),
and this node, listed again after such a lapse, attaches every relay again
(:meth:`Relays.follow`): under the same socket id, so that an owner that still
knows it only answers (idempotent), while one that had dropped it attaches it
anew, says so (``attached`` with ``f``), numbers its deliveries from 1 again and
hands it the queue, where it had put what the socket had not confirmed.  Its
answers to confirmation requests wait meanwhile: those of requests the owner
sent before it dropped the socket must not reach the new one.  An ``abandon``
for a socket this node no longer has is answered with a ``detach``: the owner
sends it again until then (a lost one left the socket open here, unknown there).
"""

from __future__ import annotations

import itertools
import json
from bisect import bisect_right

from twisted.logger import Logger

from redmessenger.core.hub import Hub
from redmessenger.core.ownership import Owners
from redmessenger.core.presence import Attachment
from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.redis_edge.batches import text
from redmessenger.redis_edge.remote import LOST_BETWEEN_DAEMONS, Outbox


class Relays:
    """This node's relays, by socket id, and what it tells their owners."""

    def __init__(self, outbox: Outbox, hub: Hub, owners: Owners, run_id: str, log: Logger) -> None:
        self._outbox = outbox
        self._hub = hub
        self._owners = owners
        #: The first part of each socket id: this daemon's run (RUN_PREFIX hex digits of it).
        self._run_id = run_id
        #: The logger of the link (redis_edge/peers.PeerLink): these warnings keep its namespace.
        self._log = log
        self._sids = itertools.count(1)
        #: The relays by sid (never rebound: the inbox's reader reads it on the hot path).
        self.by_sid: dict[str, Attachment] = {}
        self._sid_of: dict[Attachment, str] = {}
        #: Deliveries that arrived for each relay (counted by the inbox's reader, never rebound): fewer than its owner
        #: sent means some were lost on the way.
        self.arrived: dict[str, Arrivals] = {}
        #: Relays closed for deliveries that never arrived: their owner must not take them as read.
        self._incomplete: set[str] = set()
        #: Relays whose owner has not answered their attach yet (in order); those already unanswered at the last check.
        self._unanswered: dict[str, None] = {}
        self._unanswered_before: set[str] = set()
        #: Relays attached again (their owner may have dropped them), until it answers: the answers to its confirmation
        #: requests meanwhile, sent once it says it knew the socket, forgotten if it attached it anew.
        self._reattaching: dict[str, list[tuple[str, bytes, bool]]] = {}
        #: Relays attached again since start (each after their owner dropped them, or might have).
        self.reattached = 0
        #: Relays their owner closed (``abandon``, sent again until detached): closing, not attached again.
        self._abandoned: set[str] = set()

    # -- what the core tells (core.ports.Peers, through the link) ---------------------------

    def attach(self, owner: str, attachment: Attachment) -> None:
        sid = f"{self._run_id}.{next(self._sids)}"
        self.by_sid[sid] = attachment
        self._sid_of[attachment] = sid
        self.arrived[sid] = Arrivals()
        self._unanswered[sid] = None
        self._send_attach(owner, sid, attachment)

    def _send_attach(self, owner: str, sid: str, attachment: Attachment) -> None:
        sink = attachment.sink
        self._outbox.send(
            owner, b"attach", s=sid, u=attachment.uid.encode("utf-8"), a=b"1" if sink.acknowledges else b"0",
            p=sink.client_address.encode("utf-8"),
        )  # fmt: skip

    def detach(self, attachment: Attachment, received_all: bool) -> None:
        sid = self._sid_of.pop(attachment, None)
        if sid is None or attachment.owner is None:
            return
        self.by_sid.pop(sid, None)
        arrivals = self.arrived.pop(sid, None)
        self._unanswered.pop(sid, None)
        self._reattaching.pop(sid, None)
        self._abandoned.discard(sid)
        self._incomplete.discard(sid)
        if not received_all or arrivals is None:
            self._outbox.send(attachment.owner, b"detach", s=sid, r=b"0")
        else:
            # The client read what was written to it; not what its owner sent that was lost, came while it was
            # closing, or is still on its way (never "all": the owner may have sent more since).
            self._outbox.send(attachment.owner, b"detach", s=sid, r=b"0", w=json.dumps(arrivals.written, ensure_ascii=False))

    def acknowledged(self, attachment: Attachment, message_id: str) -> None:
        sid = self._sid_of.get(attachment)
        if sid is not None and attachment.owner is not None:
            self._outbox.send(attachment.owner, b"ack", s=sid, i=message_id.encode("utf-8"))

    # -- what the owners say (items of this node's inbox) -----------------------------------

    def confirm(self, node: str, sid: str, asked: bytes, sent: bytes, answered: bytes | None = None) -> None:
        """
        ``node`` asks whether the relay ``sid`` got what it sent it (``sent``: how many deliveries, if it says;
        ``answered``: the last request it had answered yes, if it says).
        """
        relay = self.by_sid.get(sid)
        arrivals = self.arrived.get(sid)
        if arrivals is not None and answered is not None and answered.isdigit():
            arrivals.answered(int(answered))
        if relay is None or arrivals is None or not relay.attached:
            self._answer(node, sid, asked, False)
            if relay is None:  # its detach may have been lost: the owner must not keep it
                self._outbox.send(node, b"detach", s=sid, r=b"0")
            return
        covers = int(sent) if sent.isdigit() else arrivals.count  # the deliveries it asks about (all, if it does not say)
        number = int(asked) if asked.isdigit() else 0
        if sid in self._incomplete or 0 < arrivals.unwritten <= covers or arrivals.count < covers:
            # Not a yes, whatever the client says of what was written to it: closing already; a delivery it covers
            # was not written (the socket was closing); or deliveries it covers never arrived (a Redis failover lost
            # inbox entries): then closed, its owner sends what it did not confirm to the user's other sockets or
            # the queue, and the client reconnects for it.
            self._answer(node, sid, asked, False)
            if sid not in self._incomplete and arrivals.count < covers:
                self._log.warn(
                    "{count} deliveries from {node} for socket {sid} never arrived; closing it (1013)",
                    count=covers - arrivals.count, node=node, sid=sid,
                )  # fmt: skip
                self._close_incomplete(sid, relay)
            return
        arrivals.asked(number, covers)
        told = answered is not None  # else an owner of a version before: forgotten when answered

        def answer(received: bool) -> None:
            if self.arrived.get(sid, arrivals) is not arrivals:
                return  # asked before its owner dropped it: the socket it asked for is gone there
            if received and not told:
                arrivals.answered(number)
            self._answer(node, sid, asked, received)

        relay.sink.confirm().addCallback(answer)

    def _answer(self, node: str, sid: str, asked: bytes, received: bool) -> None:
        waiting = self._reattaching.get(sid)
        if waiting is not None:
            waiting.append((node, asked, received))  # the owner may have dropped it: the answer waits for its word
        else:
            self._outbox.send(node, b"confirmed", s=sid, q=asked, o=b"1" if received else b"0")

    def lost(self, node: str, sid: str, number: object) -> None:
        """
        A delivery from ``node`` for the relay ``sid`` came numbered ``number``, not the next: those before it never
        arrived (or the number is not one).  Closed (1013) before this one or any later one is written.
        """
        relay, arrivals = self.by_sid.get(sid), self.arrived.get(sid)
        if relay is None or arrivals is None or sid in self._incomplete:
            return
        self._log.warn(
            "Delivery {number!r} from {node} for socket {sid} came after {count}: the others never arrived; closing it"
            " (1013)",
            number=number, count=arrivals.count - 1, node=node, sid=sid,
        )  # fmt: skip
        if type(number) is int and number > arrivals.count:
            arrivals.count = number
        self._close_incomplete(sid, relay)

    def _close_incomplete(self, sid: str, relay: Attachment) -> None:
        self._incomplete.add(sid)
        relay.sink.abandon(ClientError(CloseCode.TRY_AGAIN_LATER, LOST_BETWEEN_DAEMONS))

    def attached(self, sid: str, fresh: bool | None = False) -> None:
        """
        The owner answered the relay's attach; ``fresh``: it did not know the socket (it had dropped it, if attached
        again): its deliveries are numbered from 1 again, and the answers held for it are of requests of before.
        None: an owner of a version before ``f`` answered an attach made again, and whether it had dropped the socket
        is not known: closed (1013), its client reconnects (an answer held sent to a new socket there could confirm
        what that socket never got).
        """
        self._unanswered.pop(sid, None)
        waiting = self._reattaching.pop(sid, None)
        if waiting is None:
            return
        if fresh is None:
            relay = self.by_sid.get(sid)
            if relay is not None:
                self._incomplete.add(sid)
                relay.sink.abandon(ClientError(CloseCode.TRY_AGAIN_LATER, LOST_BETWEEN_DAEMONS))
            return
        if fresh and sid in self.arrived:
            self.arrived[sid] = Arrivals()  # a new socket there: what arrived for the one it dropped was put back
        else:
            for node, asked, received in waiting:
                self._answer(node, sid, asked, received)

    def abandon(self, node: str, sid: str, code: bytes, reason: bytes) -> None:
        """``node`` closes the relay (``code``, ``reason``: the close it gives); it sends that again until detached."""
        relay = self.by_sid.get(sid)
        if relay is None:
            self._outbox.send(node, b"detach", s=sid, r=b"0")  # gone here (its detach lost?): the owner stops asking
        elif sid not in self._abandoned and code.isdigit():  # a repeat while it closes changes nothing
            self._abandoned.add(sid)
            relay.sink.abandon(ClientError(CloseCode(int(code)), text(reason)))

    def dropped(self, node: str, sid: str) -> None:
        """``node`` dropped the relay as gone with this node (its heartbeat late): attached again."""
        relay = self.by_sid.get(sid)
        if relay is not None and relay.owner == node:
            self._reattach(sid, relay)

    # -- in time, and when the nodes change -------------------------------------------------

    def resend(self) -> int:
        """The attaches unanswered at the last call already, sent again; how many."""
        resent = 0
        late = [sid for sid in self._unanswered if sid in self._unanswered_before]
        for sid in late:
            attachment = self.by_sid.get(sid)
            if attachment is None or attachment.owner is None:
                del self._unanswered[sid]
                continue
            self._log.warn(
                "{owner} did not answer the attach of socket {sid} ({uid}); sending it again",
                owner=attachment.owner, sid=sid, uid=attachment.uid,
            )  # fmt: skip
            self._send_attach(attachment.owner, sid, attachment)
            resent += 1
        self._unanswered_before = set(self._unanswered)
        return resent

    def follow(self, restarted: str | None, rejoined: bool = False) -> None:
        """
        The nodes changed: each relay follows its user to its new owner (attached
        again), or becomes a local socket; those of a ``restarted`` node attach to
        it again (it knows nothing of its previous run).  ``rejoined``: this node is
        listed again after its entry lapsed (its owners may have dropped its
        relays meanwhile): the others are attached again, under their ids.
        """
        for sid, attachment in list(self.by_sid.items()):
            owner = self._owners.elsewhere(attachment.uid)
            if owner == attachment.owner and owner != restarted:
                if rejoined:
                    self._reattach(sid, attachment)
                continue
            self.detach(attachment, False)
            if owner is None:
                self._hub.take_over(attachment)
            else:
                attachment.owner = owner
                self.attach(owner, attachment)

    def _reattach(self, sid: str, attachment: Attachment) -> None:
        """
        The relay's owner may have dropped it: attached again under its id (an owner that knows it only answers).  Not
        while an attach of it is unanswered: the owner reads that one after it dropped the socket, or says it did.
        """
        owner = attachment.owner
        if owner is None or sid in self._unanswered or sid in self._incomplete or sid in self._abandoned:
            return
        if not attachment.sink.writable:
            return  # closing
        self.reattached += 1
        self._unanswered[sid] = None
        self._reattaching[sid] = []
        self._send_attach(owner, sid, attachment)


class Arrivals:
    """
    What reached this node for one relay: how many deliveries, and the ids of the messages written to its socket
    (with their delivery numbers) that its owner may not have taken as read yet: a yes to a confirmation request
    lets them go up to the deliveries that request covers, once the owner says it took that yes.
    """

    __slots__ = ("count", "unwritten", "written", "numbers", "_marks")

    def __init__(self) -> None:
        #: Deliveries that arrived (counted by the inbox's reader, redis_edge/peers.py).
        self.count = 0
        #: The number of the first delivery that arrived and could not be written (the socket closing); 0: none.
        self.unwritten = 0
        #: Ids of the messages written to the socket, oldest first, since the owner last took them as read; and the
        #: number of each one's delivery.
        self.written: list[str] = []
        self.numbers: list[int] = []
        #: The deliveries each request not yet known answered covers.
        self._marks: dict[int, int] = {}

    def asked(self, request: int, covers: int) -> None:
        """The owner's confirmation request ``request`` arrived, covering its first ``covers`` deliveries."""
        self._marks.setdefault(request, covers)

    def answered(self, request: int) -> None:
        """
        The owner took the answer yes to ``request`` (and so to every earlier one): what those requests covered is
        forgotten.  Late and repeated news change nothing.
        """
        marks = self._marks
        done = [done for done in marks if done <= request]
        if not done:
            return
        covered = max(marks.pop(each) for each in done)
        forget = bisect_right(self.numbers, covered)
        if forget:
            del self.written[:forget]
            del self.numbers[:forget]
