"""
Routing: a PUBLISH on ``rm.users.$uid`` or ``rm.channels.$cid`` becomes a
message and its list of recipients, in the order the messages were published.

Order (SPEC §3): published messages are delivered strictly in the order the
subscriber received them.  A group message needs its member list from Redis
first; the messages behind it wait in the inbox until it is resolved (the
lookups themselves are pipelined), so a group message published before a user
message reaches that user before it.

Size (issue 12): a payload larger than ``max_payload`` bytes is checked once, as it arrives, and goes to nobody
(a client whose frame limit is below a queued entry refuses it, 1009, at every reconnect and never gets past it):
kept aside in Redis (``rm:oversize:$channel``), logged and counted, never silently dropped.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from redmessenger.core.counters import Counters
from redmessenger.core.members import MemberLookups
from redmessenger.core.ownership import Ownership
from redmessenger.core.ports import Directory
from redmessenger.core.undecided import Undecided
from redmessenger.logs import debugging, make_logger
from redmessenger.model.channels import BadClientPublish, parse_client_publish
from redmessenger.model.envelope import Message, MessageIds, Ticket, decode_payload
from redmessenger.model.keyspace import (
    CLIENT_CHANNEL_PREFIX,
    GROUP_CHANNEL_PREFIX,
    USER_CHANNEL_PREFIX,
    group_channel,
    oversize_key,
    valid_name,
)

#: Bytes of messages (Message.weight) waiting behind a hold (a change of the nodes waiting for the old owners' word)
#: past which the holds are let go at once, as when their time is up: memory stays bounded at any rate.
MAX_HELD_BYTES = 64 * 1024 * 1024

#: Delivers a message to uids (and, for a channel's message, to the channel's subscribers).
Deliver = Callable[[Message, Sequence[str], str | None], None]
#: Keeps a message that is not delivered (its payload is too large) aside: channel, payload as published.
KeepAside = Callable[[str, bytes, Callable[[], None] | None], None]


def _addressee(channel: bytes) -> tuple[str | None, bool] | None:
    """Who a channel addresses: (the uid or group id if valid, whether a group), or None if not rm.users/rm.channels."""
    if channel.startswith(USER_CHANNEL_PREFIX):
        return valid_name(channel[len(USER_CHANNEL_PREFIX) :]), False
    if channel.startswith(GROUP_CHANNEL_PREFIX):
        return valid_name(channel[len(GROUP_CHANNEL_PREFIX) :]), True
    return None


@dataclass(eq=False)
class _Pending:
    """
    A published message waiting for its recipients to be known; or, with no
    message, a step taken in its turn (``action``), which waits while ``uids`` is None.
    """

    message: Message | None
    uids: list[str] | None = None
    label: str = ""
    group: bool = False
    #: Whether this daemon acts on it is decided in its turn (the nodes may change before it).
    decide: bool = False
    action: Callable[[], None] | None = None


class Router:
    """Turns PUBLISHes into (message, recipients), in publish order, and hands them to ``deliver``."""

    log = make_logger()

    def __init__(
        self,
        directory: Directory,
        deliver: Deliver,
        counters: Counters,
        clock: IReactorTime,
        on_settled: Callable[[], None],
        *,
        max_payload: int | None = None,
        keep_aside: KeepAside | None = None,
        run: str | None = None,
    ) -> None:
        if max_payload is not None and keep_aside is None:
            raise ValueError("max_payload needs keep_aside: an oversize message must go somewhere")
        self._deliver = deliver
        self._counters = counters
        self._clock = clock
        self._on_settled = on_settled
        self._max_payload = max_payload
        # One comparison per message on the hot path, whether or not there is a limit.
        self._size_limit = max_payload if max_payload is not None else sys.maxsize
        self._keep_aside = keep_aside
        self._inbox: deque[_Pending] = deque()
        #: Bytes of the messages in the inbox (Message.weight).
        self._waiting_bytes = 0
        #: Holds not let go yet (Router.hold): only they are let go past MAX_HELD_BYTES, and only they are looked for.
        self._holds = 0
        #: Who waits for none to be left (:meth:`unheld`).
        self._unheld: list[Deferred[None]] = []
        #: Whether a step taken in its turn (in_order) is running: a hold it takes goes first, before the messages
        #: published after that step, which may already wait behind it.
        self._in_step = False
        self._ids = MessageIds(run)
        #: Group members read for the group messages in the inbox (core/members.py).
        self._lookups = MemberLookups(directory, clock, self._members_found)
        #: With other daemons on the Redis, this node's view of them (docs/scale-out.md): it acts on users' and
        #: groups' PUBLISHes only while it is listed among the live nodes, and a bare PUBLISH to a user owned
        #: elsewhere is left to its owner.  None: it is alone, and acts on every PUBLISH.
        self.owners: Ownership | None = None
        #: Until this daemon is first listed, and while it is unsure (:meth:`unsure`): the PUBLISHes to users and
        #: groups it heard, decided at its joining (:meth:`joined`) or when it is sure (:meth:`sure`).
        self._undecided: Undecided[_Pending] = Undecided()

    @property
    def max_payload(self) -> int | None:
        """Largest payload delivered, in bytes (None: no limit)."""
        return self._max_payload

    @property
    def waiting(self) -> int:
        """Messages waiting for a group's members (and the messages behind them)."""
        return len(self._inbox)

    def on_publish(self, channel: bytes, payload: bytes) -> None:
        """A PUBLISH arrived on ``rm.users.*``, ``rm.channels.*`` or ``rm.client.channels.*``."""
        self._counters.published += 1
        addressee = _addressee(channel)
        if addressee is None:
            if channel.startswith(CLIENT_CHANNEL_PREFIX):
                self._client_publish(channel, payload)
            return
        name, group = addressee
        if name is None:
            self.log.warn(
                "Ignoring a message on {channel!r}: not a valid {what}", channel=channel, what="group id" if group else "uid"
            )
            return
        if self._inbox:
            # Older messages or a change of the nodes wait: whether this daemon acts is decided in its turn.
            if len(payload) > self._size_limit:
                if self._acts(name, group):
                    self._oversize(channel, payload)
                return
            pending = _Pending(self._message(channel, payload), None if group else [name], name, group, decide=True)
            self._wait(pending)
            if group:
                self._look_up_members(pending, name)
            return
        if not self._acts(name, group):
            if self._undecided.kept is not None and not self._listed():
                self._keep(_Pending(self._message(channel, payload), None if group else [name], name, group, decide=True))
            return  # another daemon acts (docs/scale-out.md)
        if len(payload) > self._size_limit:
            self._oversize(channel, payload)
            return
        if debugging():
            self.log.debug("New message from channel {channel}", channel=channel.decode())
        self._route(self._message(channel, payload), name, group)

    def _acts(self, name: str, group: bool) -> bool:
        """
        Whether this daemon acts on a PUBLISH to user or group ``name``: among the
        live nodes, it acts for a user it owns, and for a group (for the members
        it owns; an oversize message only if it owns the group).
        """
        owners = self.owners  # read directly, not through the ports: this runs for every PUBLISH, dropped ones too
        if owners is None:
            return True
        if not owners.listed or self._undecided.unsure:
            return False  # not among the nodes yet (or any more): their owners act; or not known (unsure)
        return group or owners.elsewhere(name) is None

    def _listed(self) -> bool:
        owners = self.owners
        return owners is None or (owners.listed and not self._undecided.unsure)

    def _keep(self, pending: _Pending) -> None:
        assert pending.message is not None
        owners = self.owners
        if self._undecided.unsure and not pending.group and owners is not None:
            # unsure: a user's message is this node's to act on only if it owned the user then (it acts on it if the
            # others did not act meanwhile), whatever the owners are when it knows
            if owners.elsewhere(pending.label) is not None:
                return
            pending.decide = False
        self._undecided.keep(pending, pending.message.weight)

    @property
    def kept(self) -> int:
        """PUBLISHes heard and kept until this daemon knows whether it acts on them (core/undecided.py)."""
        return len(self._undecided.kept or ())

    def joined(self, alone: bool) -> None:
        """
        This daemon is listed for the first time: called in publish order, at the change of the nodes that lists it.
        The PUBLISHes heard before it were acted on by the other daemons if there were any (``alone`` False); if it
        is alone, nobody did: it acts on them now, before anything published after the change.
        """
        if self._undecided.unsure:
            return  # (a change of the others while this daemon is unsure: sure() decides)
        kept = self._undecided.take()
        if not kept:
            return
        if not alone:
            self.log.debug("{count} messages heard before joining were the other daemons' to act on", count=len(kept))
            return
        self.log.info("Acting on {count} messages heard while nobody else acted on them", count=len(kept))
        self._inbox.extendleft(reversed(kept))
        self._waiting_bytes += sum(p.message.weight for p in kept if p.message is not None)
        for pending in kept:
            if pending.group and pending.uids is None:
                self._look_up_members(pending, pending.label)

    def unsure(self) -> None:
        """
        Whether the other daemons act on this one's users is not known (its subscription was lost while it was listed:
        they may have dropped it meanwhile, redis_edge/nodes.py): the PUBLISHes to users and groups heard from now on
        are kept, as before a first join, until :meth:`sure` says.
        """
        self._undecided.lost_hearing()

    def sure(self, act: bool) -> None:
        """Known again, in publish order: act on what was kept (nobody else did), or leave it (the others did)."""
        self._undecided.unsure = False
        self.joined(alone=act)

    def in_order(self, action: Callable[[], None]) -> None:
        """Run ``action`` once every message published before it was handed on (a change of the nodes)."""
        if not self._inbox:
            action()
            if self._inbox:  # what the action put first (joined)
                self._drain()
            return
        self._inbox.append(_Pending(None, [], action=action))

    def hold(self) -> Callable[[], None]:
        """
        Hold every message published from now on until the function returned is called (at most once matters).
        Taken by a step run in its turn (:meth:`in_order`), "now" is that turn: the messages published after the
        step, already waiting, are held too.
        """
        pending = _Pending(None, None)
        if self._in_step:
            self._inbox.appendleft(pending)
        else:
            self._inbox.append(pending)
        self._holds += 1

        def release() -> None:
            if pending.uids is None:
                pending.uids = []
                self._holds -= 1
                self._drain()
                if not self._holds:
                    self._no_holds()

        return release

    def unheld(self) -> Deferred[None]:
        """Fires once no hold is left (at once if none is): a queue read waits for the old owners' word (handover.py)."""
        if not self._holds:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._unheld.append(waiter)
        return waiter

    def _no_holds(self) -> None:
        waiters, self._unheld = self._unheld, []
        for waiter in waiters:
            waiter.callback(None)

    def on_intake(self, channel: bytes, payload: bytes, timestamp: int, ticket: Ticket) -> str | None:
        """
        An entry of the durable intake: routed as a PUBLISH on ``channel`` would
        be, its id the entry's (``ticket.entry_id``), its timestamp when Redis
        took it.  Returns why it cannot be routed (the caller keeps it aside), or None.
        """
        self._counters.published += 1
        self._counters.intake += 1
        addressee = _addressee(channel)
        if addressee is None:
            return "not an rm.users.* or rm.channels.* channel"
        name, group = addressee
        if name is None:
            return "not a valid uid or group id"
        if len(payload) > self._size_limit:
            self._oversize(channel, payload, lambda: ticket.expect(()))
            return None
        text, valid = decode_payload(payload)
        if not valid:
            self.log.warn(
                "Payload of {length} bytes of intake entry {id} is not valid UTF-8; delivering it with U+FFFD replacements",
                length=len(payload),
                id=ticket.entry_id,
            )
        message = Message(channel.decode("ascii"), timestamp, text, ticket.entry_id)
        message.ticket = ticket
        self._route(message, name, group)
        return None

    def _client_publish(self, channel: bytes, payload: bytes) -> None:
        """What a client published on a channel (SPEC §7.4), as a daemon wrote it: to the channel's members and subscribers."""
        cid = valid_name(channel[len(CLIENT_CHANNEL_PREFIX) :])
        try:
            if cid is None:
                raise BadClientPublish("not a valid channel name")
            sender, text = parse_client_publish(payload)
        except BadClientPublish as e:
            self.log.warn("Ignoring a message on {channel!r}: {why} (only daemons publish there)", channel=channel, why=str(e))
            return
        if len(payload) > self._size_limit:
            self._oversize(channel, payload)
            return
        message = Message(group_channel(cid), int(self._clock.seconds() * 1000), text, self._ids.next(), sender)
        self._route(message, cid, True)

    def _route(self, message: Message, name: str, group: bool) -> None:
        """
        A user's message goes at once unless older ones wait (order); a group's
        waits in the inbox for its members, the lookups pipelined.
        """
        if group:
            pending = _Pending(message, label=name, group=True)
            self._wait(pending)
            self._look_up_members(pending, name)
        elif not self._inbox:
            self._deliver(message, (name,), None)
        else:
            self._wait(_Pending(message, [name]))

    def _wait(self, pending: _Pending) -> None:
        """A message waits in the inbox, behind older ones; past MAX_HELD_BYTES, the holds are let go."""
        self._inbox.append(pending)
        assert pending.message is not None
        self._waiting_bytes += pending.message.weight
        if self._waiting_bytes > MAX_HELD_BYTES and self._holds:  # (without holds, group lookups are what waits)
            self._let_holds_go()

    def _let_holds_go(self) -> None:
        for pending in self._inbox:
            if pending.message is None and pending.uids is None and pending.action is None:
                pending.uids = []
        self._holds = 0
        self._no_holds()
        self.log.warn(
            "{size} bytes of messages waited for another daemon's word after a change of the nodes: going on without it",
            size=self._waiting_bytes,
        )
        self._drain()

    def route_user(self, message: Message, uid: str) -> None:
        """A message for one user that another daemon read (docs/scale-out.md): in order with the others."""
        self._route(message, uid, False)

    def stop(self) -> None:
        """Stop retrying member lookups (the link to Redis is going away); what waits for the holds goes on."""
        self._lookups.stop()
        self._no_holds()

    def _oversize(self, channel: bytes, payload: bytes, written: Callable[[], None] | None = None) -> None:
        name = channel.decode("ascii")  # a valid channel name: ASCII
        self._counters.oversize += 1
        self.log.warn(
            "Message of {size} bytes on {channel} is larger than max_payload_bytes ({limit}): "
            "not delivered, kept aside in {key}",
            size=len(payload),
            channel=name,
            limit=self.max_payload,
            key=oversize_key(name),
        )
        assert self._keep_aside is not None  # checked in __init__
        self._keep_aside(name, payload, written)

    def _message(self, channel: bytes, payload: bytes) -> Message:
        text, valid = decode_payload(payload)
        if not valid:
            self.log.warn(
                "Payload of {length} bytes on {channel} is not valid UTF-8; delivering it with U+FFFD replacements",
                length=len(payload),
                channel=channel.decode("ascii"),
            )
        return Message(channel.decode("ascii"), int(self._clock.seconds() * 1000), text, self._ids.next())

    def _look_up_members(self, pending: _Pending, cid: str) -> None:
        self._lookups.look_up(pending, cid)

    def _members_found(self, pending: _Pending, uids: list[str]) -> None:
        pending.uids = uids
        self._drain()

    def _drain(self) -> None:
        inbox = self._inbox
        while inbox:
            uids = inbox[0].uids
            if uids is None:
                break
            pending = inbox.popleft()
            message = pending.message
            if message is not None:
                self._waiting_bytes -= message.weight
            if message is None:
                if pending.action is not None:
                    self._in_step = True
                    try:
                        pending.action()
                    finally:
                        self._in_step = False
                continue
            if pending.decide and not self._acts(pending.label, pending.group):
                if self._undecided.kept is not None and not self._listed():
                    self._keep(pending)
                continue
            self._deliver(message, uids, pending.label if pending.group else None)
        if not inbox:
            self._on_settled()
