"""
Several daemons on one Redis (docs/scale-out.md, step 2): the owner of each
user, and the inboxes through which the nodes talk about the sockets they hold.

Every node computes a user's owner alone, by rendezvous hashing over the live
nodes (``rm:nodes``, core/ownership.py).  A socket that identifies on a node
that does not own its user is a *relay*: the node tells the owner (``attach``),
and the owner treats it as one of the user's sockets through a
:class:`RemoteSink`: it decides the bubble, hands it the queue, delivers live
messages and asks for confirmations, each an entry in the holding node's inbox;
the holding node writes to the socket and answers (``confirmed``), and tells the
owner of the client's acks and of the close (``ack``, ``detach``).  Messages of
the durable intake for a user owned elsewhere go to the owner the same way
(``intake``), and the reader acknowledges the entry once the owner says the
user's copy is safe (``settled``).  The owner answers an ``attach`` with
``attached``; a holder whose ``attach``, or an owner whose ``confirm``, has no
answer after ``RESEND_AFTER`` seconds sends it again (a Redis failover can lose
the last entries of an inbox), and a ``confirm`` for a socket its holder no
longer has is answered with a ``detach``: no lost entry leaves a socket unknown
to its owner, or one that is gone held by it.

The holding node's side is redis_edge/relays.py, the owner's
redis_edge/remotesockets.py; this module is the link between them: the core's
port, the inbox read and each item given to the side it is for, the users moved
when the nodes change, and what is sent again.

An inbox is a stream, ``rm:nodes:$node:inbox``, read by its node alone: what a
node has for another in one reactor turn goes in one entry, a batch
(redis_edge/batches.py).  A node
empties its inbox when it starts, before it joins (what was there was about
sockets of its previous run; what the others write once they hear it join must
not go with it), and renews its expiry while it runs (INBOX_TTL: the inbox of a
node that is gone goes too).  When the nodes change, users move: the old
owner queues what it held unconfirmed and turns the sockets it holds into relays
of the new owner; relays follow their user to its new owner, or become local.

txredisapi is not imported here; the connections are the link's.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred

from redmessenger.core.hub import Hub
from redmessenger.core.ownership import Owners
from redmessenger.core.presence import Attachment
from redmessenger.logs import make_logger
from redmessenger.model.envelope import Message
from redmessenger.model.keyspace import inbox_key
from redmessenger.redis_edge.batches import (
    INBOX_RENEW,
    INBOX_TTL,
    BatchWriter,
    entry_message,
    item_fields,
    message_of,
    read_batch,
    text,
)
from redmessenger.redis_edge.commands import RedisCommands
from redmessenger.redis_edge.handoff import Handoffs
from redmessenger.redis_edge.nodes import NodesChange
from redmessenger.redis_edge.relays import Relays
from redmessenger.redis_edge.forwarding import Forwarding
from redmessenger.redis_edge.remotesockets import RemoteSockets

#: Entries read from the inbox per call, and how long a read waits for one (ms).
INBOX_BATCH = 500
INBOX_BLOCK_MS = 1000
#: Hex digits of a daemon's run in its socket ids.
RUN_PREFIX = 6
#: Seconds (between this and twice this) before an unanswered ``attach`` or ``confirm`` is sent again.
RESEND_AFTER = 5.0


class PeerLink:
    """This node among the others: owners, the inbox, and both sides of a relay (implements core.ports.Peers)."""

    log = make_logger()

    def __init__(
        self, hub: Hub, commands: RedisCommands, reading: RedisCommands, node_id: str, clock: Any, run: str = ""
    ) -> None:
        self._hub = hub
        self._clock = clock
        self._retry: Any = None  # the pause before reading again after a failure
        self._commands = commands
        self._reading = reading
        self.node = node_id
        self._inbox = inbox_key(node_id)
        self._owners = Owners(node_id)
        #: Socket ids are ``{run}.{n}``: an owner tells the sockets of a node's runs apart (RUN_PREFIX of its run).
        run_id = run[:RUN_PREFIX] or secrets.token_hex(RUN_PREFIX // 2)
        #: Holding side: the relays (redis_edge/relays.py); by sid, and the deliveries that arrived for each, read
        #: here on the hot path (_unpack).
        self._holding = Relays(self, hub, self._owners, run_id, self.log)
        self._relays = self._holding.by_sid
        self._arrived = self._holding.arrived
        self._resend_call: Any = None
        #: Owner side: the sockets other nodes hold, by (node, sid) (redis_edge/remotesockets.py).
        self._owning = RemoteSockets(self, hub, self._owners)
        self._remote = self._owning.by_key
        # reader side: intake entries given to owners (and to which), until they settle
        self._forwarding = Forwarding(self, hub, clock, self.log)
        self._stopping = False
        self._running: Deferred[None] | None = None
        #: Whether the last list this node took left it out (its relays are attached again once it is back in); and
        #: whether it was listed before in this run (at its first join, no other node had its users meanwhile).
        self._out = False
        self._was_listed = False
        #: Whether this run's inbox was emptied of the previous run's entries: this node joins only then, or what
        #: the others write to it once they hear it join (attaches, barriers) could be emptied with them.
        self.ready = False
        #: Called once the inbox is emptied (the service beats then, rather than at the next beat).
        self.on_ready: Callable[[], object] | None = None
        #: What goes to the other nodes' inboxes, a batch per node and reactor turn.
        self._writer = BatchWriter(commands, node_id, clock, run_id)
        #: The run of each node that wrote to this inbox, and the number of the last batch read from it.
        self._numbers: dict[str, tuple[str, int]] = {}
        #: Batches written to this inbox that never arrived (their numbers skipped).
        self.lost_batches = 0
        self.received = 0
        #: Attaches and confirmation requests sent again for want of an answer (RESEND_AFTER): each a lost inbox entry.
        self.resent = 0
        #: The order of the changes of the nodes between this node and the others.
        self.handoffs = Handoffs(node_id, hub, self, clock)

    # -- core.ports.Peers ------------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        """The live nodes as this node last heard them (its own included)."""
        return list(self._owners.nodes)

    @property
    def shared(self) -> bool:
        return self._owners.shared

    @property
    def listed(self) -> bool:
        return self._owners.listed

    def owner(self, key: str) -> str | None:
        """None when this node owns ``key``, which it does of every key while it is alone (or knows no node yet)."""
        return self._owners.elsewhere(key)

    @property
    def owners(self) -> Owners:
        return self._owners

    def attach(self, owner: str, attachment: Attachment) -> None:
        self._holding.attach(owner, attachment)

    def detach(self, attachment: Attachment, received_all: bool) -> None:
        self._holding.detach(attachment, received_all)

    def acknowledged(self, attachment: Attachment, message_id: str) -> None:
        self._holding.acknowledged(attachment, message_id)

    def forward(self, owner: str, message: Message, uid: str) -> None:
        self._forwarding.forward(owner, message, uid)

    @property
    def forwarded_again(self) -> int:
        """Intake entries given to their owner again (unsettled for a minute), since start."""
        return self._forwarding.again

    @property
    def relays(self) -> int:
        """Sockets held here for users another node owns."""
        return len(self._relays)

    @property
    def remote(self) -> int:
        """Sockets of users this node owns, held by other nodes."""
        return len(self._remote)

    # -- the nodes -----------------------------------------------------------------------

    def nodes_changed(self, nodes: list[str], change: NodesChange | None = None) -> None:
        """
        The live nodes changed (in the order of the messages: ``change`` as
        published, or None when a heartbeat told it): users whose owner changed
        move, and the nodes handing users on tell their new owners once their
        writes landed (redis_edge/handoff.py).  A node killed and started again
        before its entry expired (``restarted``) knows nothing of its previous
        run: its sockets here are as if closed, relays attach to it again.
        """
        self._owners.set_nodes(nodes)
        live = set(nodes)
        # Listed again after this node's entry lapsed (it took a list without itself, or its own join told it): the
        # owners of its relays may have dropped them meanwhile (redis_edge/relays.py).
        out, self._out = self._out, self.node not in live
        rejoined = not self._out and (out or (change is not None and change.node == self.node and change.joined))
        for gone in [node for node in self._numbers if node not in live]:
            del self._numbers[gone]  # one that comes back is heard as new
        self._writer.forget(nodes)
        if self._owners.listed:
            # the first time: what was heard before this node was listed is acted on if nobody else could have
            self._hub.router.joined(alone=self._owners.nodes == (self.node,))
        restarted = None
        run = ""  # the restarted node's new run (its sockets here, if any attached already, stay)
        if change is not None and change.restarted and change.node != self.node:
            restarted, run = change.node, change.run[:RUN_PREFIX]
        hub = self._hub
        kept: list[str] = []
        for user in hub.presence.users():
            owner = self.owner(user.uid)
            if owner is not None:
                hub.give_away(user.uid, owner)
            elif rejoined and self._was_listed:
                kept.append(user.uid)
        self._was_listed = self._was_listed or self._owners.listed
        if change is not None:
            # after the users were given away: the word to their new owners waits for what that puts back in the
            # queue (Hub.written), even when nothing else is under way and it would be sent in this very call
            self.handoffs.changed(change)
        self._owning.nodes_changed(restarted, run)
        self._forwarding.owners_changed(lambda owner: owner not in self._owners.nodes or owner == restarted)
        self._holding.follow(restarted, rejoined)
        for uid in kept:
            # listed again: others may have owned them while this node was out of their lists (its subscription
            # down: it never heard it was) and queued their messages, read once those nodes' word came (Router.unheld)
            # by the sockets still here (those of the nodes gone were dropped just above)
            hub.hand_queue_again(uid)

    # -- the inbox -----------------------------------------------------------------------

    def send(self, node: str, kind: bytes, **fields: bytes | str) -> None:
        """An item for ``node``'s inbox, written with the others of this turn (redis_edge/batches.py)."""
        self._writer.send(node, kind, **fields)

    def deliver(self, node: str, sid: str, message: Message, bubble: bool, number: int) -> None:
        """A message for a socket ``node`` holds (its ``number``-th delivery), in this turn's batch for it."""
        self._writer.deliver(node, sid, message, bubble, number)

    def flush(self) -> Deferred[None]:
        """Write this turn's batches now; fires once every write was answered (or failed)."""
        return self._writer.flush()

    @property
    def sent(self) -> int:
        """Batches written to the other nodes' inboxes."""
        return self._writer.sent

    def _resend(self) -> None:
        """
        Every ``RESEND_AFTER`` seconds: the attaches, and the owner's confirmation requests, that were unanswered at
        the last check already, sent again (each side takes a repeat as the first: docs/scale-out.md).
        """
        self._resend_call = self._clock.callLater(RESEND_AFTER, self._resend)
        self.resent += self._holding.resend()
        self.resent += self._owning.ask_again()
        self._forwarding.forward_again()

    def start(self) -> None:
        self._stopping = False
        if self._resend_call is None:
            self._resend_call = self._clock.callLater(RESEND_AFTER, self._resend)
        self._running = ensureDeferred(self._run())
        self._running.addErrback(lambda f: self.log.failure("Reading this node's inbox stopped", f))

    def stop(self) -> None:
        self._stopping = True
        self._writer.stop()  # what this turn had, written now
        resend, self._resend_call = self._resend_call, None
        if resend is not None and resend.active():
            resend.cancel()
        retry, self._retry = self._retry, None
        if retry is not None and retry.active():
            retry.cancel()
        self.handoffs.stop()

    async def _run(self) -> None:
        last: Any = None
        renew = 0.0
        while not self._stopping:
            try:
                if last is None:
                    await self._reading.execute_command("DEL", self._inbox)  # about sockets of a previous run
                    # there, and expiring unless renewed (redis_edge/batches.py), even if this node dies before it
                    # renews it: a write to it then creates no key that stays
                    await self._reading.execute_command("XADD", self._inbox, "MAXLEN", 0, "*", "k", "opened")
                    await self._reading.execute_command("EXPIRE", self._inbox, INBOX_TTL)
                    last = b"0-0"
                    renew = self._clock.seconds() + INBOX_RENEW
                    self.ready = True
                    if self.on_ready is not None:
                        self.on_ready()
                elif self._clock.seconds() >= renew:
                    await self._reading.execute_command("EXPIRE", self._inbox, INBOX_TTL)
                    renew = self._clock.seconds() + INBOX_RENEW
                reply = await self._reading.execute_command(
                    "XREAD", "COUNT", INBOX_BATCH, "BLOCK", INBOX_BLOCK_MS, "STREAMS", self._inbox, last
                )
                for _stream, entries in reply or ():
                    for entry_id, raw in entries:
                        last = entry_id
                        self.received += 1
                        try:
                            self._unpack(dict(zip(raw[::2], raw[1::2])))
                        except Exception:
                            self.log.failure("Handling inbox entry {id!r} failed", id=entry_id)
                if reply:
                    await self._reading.execute_command("XTRIM", self._inbox, "MINID", last)
            except Exception as e:
                if self._stopping:
                    break
                self.log.warn("Reading this node's inbox failed ({why}); trying again", why=str(e) or type(e).__name__)
                paused: Deferred[None] = Deferred()
                self._retry = self._clock.callLater(1.0, paused.callback, None)
                await paused

    def _unpack(self, entry: dict[bytes, bytes]) -> None:
        """One inbox entry: a batch of items from one node, each handled in order."""
        batch = read_batch(entry)
        if batch is None:
            return
        node, messages, items, run, number = batch
        if number:
            heard = self._numbers.get(node)
            self._numbers[node] = (run, number)
            if heard is not None and number != 1 and number != (heard[1] + 1 if heard[0] == run else 1):
                # batches lost on the way (the sockets they had deliveries for see their numbers skip); a first one:
                # its writer counts again (this node had left its list, or it started again)
                self.lost_batches += max(number - (heard[1] if heard[0] == run else 0) - 1, 1)
        parsed: dict[int, Message | None] = {}
        relays = self._relays
        for item in items:
            kind = item[0]
            if kind == "D":  # the many: a message for sockets held here, without the general path's conversions
                place = item[1]
                if place not in parsed:
                    parsed[place] = message_of(messages[place]) if type(place) is int and 0 <= place < len(messages) else None
                message = parsed[place]  # parsed once, its frames built once, for every socket it goes to
                if message is None:
                    continue
                arrived = self._arrived
                # each socket's deliveries numbered (not by a version before the numbers)
                numbered = (
                    len(item) == 6 and type(item[4]) is list and type(item[5]) is list
                    and len(item[4]) == len(item[2]) and len(item[5]) == len(item[3])
                )  # fmt: skip
                sockets = ((True, item[2], item[4] if numbered else ()), (False, item[3], item[5] if numbered else ()))
                for bubble, sids, numbers in sockets:
                    for index, sid in enumerate(sids):
                        relay = relays.get(sid)
                        if relay is None:
                            continue  # gone: its owner hears it (detach, or the answer to its next confirm)
                        arrivals = arrived[sid]
                        arrivals.count += 1
                        if numbered and numbers[index] != arrivals.count:
                            # deliveries for it lost on the way: nothing after them is written to it
                            self._holding.lost(node, sid, numbers[index])
                        if relay.attached and relay.sink.writable and relay.sink.send_message(message, bubble):
                            arrivals.written.append(message.id)
                            arrivals.numbers.append(arrivals.count)
                        elif not arrivals.unwritten:
                            arrivals.unwritten = arrivals.count  # (closing) no request covering it is answered yes
                continue
            self._handle(item_fields(node, item))

    def _handle(self, fields: dict[bytes, bytes]) -> None:
        kind = fields.get(b"k")
        node = text(fields.get(b"n", b""))
        sid = text(fields.get(b"s", b""))
        # the holding side's items go to the relays (redis_edge/relays.py), the owner's side's to the sockets other
        # nodes hold (redis_edge/remotesockets.py); those that come once per message are handled here, without a call
        if kind == b"confirm":
            self._holding.confirm(node, sid, fields.get(b"q", b"0"), fields.get(b"c", b""), fields.get(b"a"))
        elif kind == b"confirmed":
            found = self._remote.get((node, sid))
            if found is not None:
                found[1].confirmed(int(fields.get(b"q", b"0")), fields.get(b"o") == b"1")
        elif kind == b"attached":
            flag = fields.get(b"f")
            self._holding.attached(sid, None if flag is None else flag == b"1")
        elif kind == b"attach":
            self._owning.attach(node, sid, text(fields.get(b"u", b"")), fields.get(b"a") == b"1", text(fields.get(b"p", b"")))
        elif kind == b"detach":
            self._owning.detach(node, sid, fields.get(b"r") == b"1", written_ids(fields.get(b"w")))
        elif kind == b"ack":
            found = self._remote.get((node, sid))
            if found is not None:
                self._hub.acknowledged(found[0], text(fields.get(b"i", b"")))
        elif kind == b"abandon":
            self._holding.abandon(node, sid, fields.get(b"c", b"4413"), fields.get(b"r", b""))
        elif kind == b"dropped":
            self._holding.dropped(node, sid)
        elif kind == b"intake":
            message = entry_message(fields.get(b"e", b""))
            uid = text(fields.get(b"u", b""))
            if message is not None and uid:
                self._forwarding.given(node, message, uid)
        elif kind == b"barrier":
            epoch = fields.get(b"e", b"")
            if epoch.isdigit():
                self.handoffs.barrier(node, int(epoch))
        elif kind == b"settled":
            self._forwarding.settled(text(fields.get(b"i", b"")), text(fields.get(b"u", b"")), fields.get(b"q") == b"1")


def written_ids(field: bytes | None) -> frozenset[str]:
    """The ids a ``detach`` names as written to its socket (a JSON list of strings); none if it names none."""
    if not field:
        return frozenset()
    try:
        ids = json.loads(field)
    except ValueError:
        return frozenset()
    return frozenset(i for i in ids if type(i) is str) if type(ids) is list else frozenset()
