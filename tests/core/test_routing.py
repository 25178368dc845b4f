"""
Routing (pure logic, on a fake clock): PUBLISHes become (message, recipients)
in publish order, group members are looked up, and lookups are retried while
Redis is away.  The same against a real server is in tests/test_delivery.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from twisted.internet.testing import Clock

from redmessenger.core.counters import Counters
from redmessenger.core.routing import Router
from redmessenger.redis_edge.nodes import NodeRegistry
from redmessenger.model.envelope import Message

from ..fakes import MemoryDirectory


class Recorder:
    def __init__(self) -> None:
        self.delivered: list[tuple[str, list[str]]] = []
        self.settled = 0

    def deliver(self, message: Message, uids: Sequence[str], channel: str | None = None) -> None:
        self.delivered.append((message.payload, list(uids)))

    def on_settled(self) -> None:
        self.settled += 1


@dataclass
class View:
    """A node's view of the nodes (core.ownership.Ownership), set by hand: whether it is listed, who owns whom."""

    listed: bool = True
    shared: bool = True
    owned_elsewhere: dict[str, str] = field(default_factory=dict)

    def elsewhere(self, key: str) -> str | None:
        return self.owned_elsewhere.get(key)


def router() -> tuple[Router, MemoryDirectory, Recorder, Clock, Counters]:
    directory, recorder, clock, counters = MemoryDirectory(), Recorder(), Clock(), Counters()
    return Router(directory, recorder.deliver, counters, clock, recorder.on_settled), directory, recorder, clock, counters


def test_a_user_message_goes_at_once_with_its_publish_time() -> None:
    routing, _, recorder, clock, counters = router()
    clock.advance(12.5)
    routing.on_publish(b"rm.users.user1", b"hi")
    assert recorder.delivered == [("hi", ["user1"])]
    assert counters.published == 1


def test_a_group_message_waits_for_its_members_and_so_do_the_messages_behind_it() -> None:
    routing, directory, recorder, _, _ = router()
    directory.groups["cats"] = [b"user1", b"user2"]
    directory.hold_members = True
    routing.on_publish(b"rm.channels.cats", b"meow")
    routing.on_publish(b"rm.users.user1", b"after the meow")
    assert recorder.delivered == [] and routing.waiting == 2
    directory.answer_members("cats")
    assert recorder.delivered == [("meow", ["user1", "user2"]), ("after the meow", ["user1"])]
    assert routing.waiting == 0 and recorder.settled == 1


def test_lookups_answered_out_of_order_still_deliver_in_publish_order() -> None:
    routing, directory, recorder, _, _ = router()
    directory.groups = {"a": [b"u"], "b": [b"u"]}
    directory.hold_members = True
    routing.on_publish(b"rm.channels.a", b"first")
    routing.on_publish(b"rm.channels.b", b"second")
    directory.answer_members("b")
    assert recorder.delivered == []
    directory.answer_members("a")
    assert [payload for payload, _ in recorder.delivered] == ["first", "second"]


def test_a_lookup_is_retried_while_redis_is_away_and_nothing_behind_it_overtakes() -> None:
    routing, directory, recorder, clock, _ = router()
    directory.groups["cats"] = [b"user1"]
    directory.unavailable = True
    routing.on_publish(b"rm.channels.cats", b"meow")
    routing.on_publish(b"rm.users.user1", b"later")
    assert directory.lookups == ["cats"] and recorder.delivered == []
    clock.advance(routing._lookups.retry_delay)
    assert directory.lookups == ["cats", "cats"], "retried after MemberLookups.retry_delay"
    directory.unavailable = False
    clock.advance(routing._lookups.retry_delay)
    assert recorder.delivered == [("meow", ["user1"]), ("later", ["user1"])]
    assert not clock.getDelayedCalls()


def test_stop_cancels_the_retries() -> None:
    routing, directory, _, clock, _ = router()
    directory.unavailable = True
    routing.on_publish(b"rm.channels.cats", b"meow")
    assert len(clock.getDelayedCalls()) == 1
    routing.stop()
    assert not clock.getDelayedCalls()


def test_a_lookup_redis_refuses_reaches_nobody_and_lets_the_rest_through() -> None:
    from twisted.internet.defer import fail

    from redmessenger.core.ports import StoreError

    routing, directory, recorder, _, _ = router()
    directory.members = lambda cid: fail(StoreError("WRONGTYPE"))  # type: ignore[method-assign]
    routing.on_publish(b"rm.channels.cats", b"meow")
    routing.on_publish(b"rm.users.user1", b"next")
    assert recorder.delivered == [("meow", []), ("next", ["user1"])]


def test_names_outside_the_grammar_are_skipped() -> None:
    routing, directory, recorder, _, counters = router()
    directory.groups["cats"] = [b"user1", b"not valid", b"\xff", b"user2"]
    routing.on_publish(b"rm.users.not valid", b"x")
    routing.on_publish(b"rm.channels.not/valid", b"x")
    routing.on_publish(b"rm.channels.cats", b"meow")
    assert recorder.delivered == [("meow", ["user1", "user2"])]
    assert counters.published == 3


def test_a_payload_that_is_not_utf8_is_delivered_with_replacements() -> None:
    routing, _, recorder, _, _ = router()
    routing.on_publish(b"rm.users.u", b"caf\xe9")
    assert recorder.delivered == [("caf\ufffd", ["u"])]


# -- max_payload_bytes (issue 12: a queued entry too big for a client blocked its queue) --


def limited(limit: int) -> tuple[Router, MemoryDirectory, Recorder, Counters, dict[str, list[bytes]]]:
    directory, recorder, counters = MemoryDirectory(), Recorder(), Counters()
    aside: dict[str, list[bytes]] = {}
    routing = Router(
        directory,
        recorder.deliver,
        counters,
        Clock(),
        recorder.on_settled,
        max_payload=limit,
        keep_aside=lambda channel, payload, written=None: aside.setdefault(channel, []).append(payload),
    )
    return routing, directory, recorder, counters, aside


def test_a_payload_over_the_limit_is_kept_aside_as_published_and_counted() -> None:
    routing, directory, recorder, counters, aside = limited(10)
    directory.groups["cats"] = [b"user1"]
    routing.on_publish(b"rm.users.user1", b"x" * 11)
    routing.on_publish(b"rm.channels.cats", b"\xff" * 11)  # any bytes: kept as they came
    routing.on_publish(b"rm.users.user1", b"y" * 10)  # at the limit: delivered
    assert recorder.delivered == [("y" * 10, ["user1"])]
    assert aside == {"rm.users.user1": [b"x" * 11], "rm.channels.cats": [b"\xff" * 11]}
    assert directory.lookups == [], "an oversize group message needs no members"
    assert (counters.published, counters.oversize) == (3, 2)


def test_an_oversize_message_does_not_disturb_the_order_of_the_others() -> None:
    routing, directory, recorder, _, aside = limited(10)
    directory.groups["cats"] = [b"user1"]
    directory.hold_members = True
    routing.on_publish(b"rm.channels.cats", b"meow")
    routing.on_publish(b"rm.users.user1", b"z" * 100)
    routing.on_publish(b"rm.users.user1", b"after")
    directory.answer_members("cats")
    assert recorder.delivered == [("meow", ["user1"]), ("after", ["user1"])]
    assert aside == {"rm.users.user1": [b"z" * 100]} and routing.waiting == 0


def test_a_limit_needs_somewhere_to_keep_oversize_messages() -> None:
    with pytest.raises(ValueError, match="keep_aside"):
        Router(MemoryDirectory(), Recorder().deliver, Counters(), Clock(), lambda: None, max_payload=10)


def test_a_change_of_the_nodes_is_taken_in_publish_order_and_decides_for_the_messages_after_it() -> None:
    routing, directory, recorder, _, _ = router()
    view = routing.owners = View()  # this daemon owns user1
    directory.groups["cats"] = [b"user1"]
    directory.hold_members = True
    routing.on_publish(b"rm.channels.cats", b"meow")  # waits for its members
    routing.on_publish(b"rm.users.user1", b"before")
    routing.in_order(lambda: view.owned_elsewhere.update(user1="node-b"))  # user1 moves to node-b here
    routing.on_publish(b"rm.users.user1", b"after")  # node-b's to act on
    assert recorder.delivered == []
    directory.answer_members("cats")
    assert recorder.delivered == [("meow", ["user1"]), ("before", ["user1"])], "decided with the owner of its turn"


def test_a_hold_keeps_the_messages_after_it_until_released_and_a_node_not_listed_acts_on_none() -> None:
    routing, _, recorder, _, _ = router()
    view = routing.owners = View(listed=False)
    routing.on_publish(b"rm.users.user1", b"not listed yet")
    view.listed = True
    release = routing.hold()
    routing.on_publish(b"rm.users.user1", b"held")
    routing.on_publish(b"rm.users.user2", b"held too")
    assert recorder.delivered == [] and routing.waiting == 3
    release()
    release()  # once is what counts
    assert recorder.delivered == [("held", ["user1"]), ("held too", ["user2"])]
    assert routing.waiting == 0


def heard_before_listed(routing: Router, directory: MemoryDirectory, member: bytes) -> View:
    """PUBLISHes heard by a daemon not listed yet: to user1, to the group cats (of ``member``), to user1, and one
    decided in its turn behind a hold; the view that says whether it is listed."""
    view = routing.owners = View(listed=False)
    directory.groups["cats"] = [member]
    routing.on_publish(b"rm.users.user1", b"first")
    routing.on_publish(b"rm.channels.cats", b"meow")
    routing.on_publish(b"rm.users.user1", b"second")
    release = routing.hold()
    routing.on_publish(b"rm.users.user1", b"held")  # decided in its turn, still before the joining
    release()
    return view


def test_what_a_daemon_hears_before_it_is_listed_is_acted_on_at_its_joining_if_it_is_alone() -> None:
    """
    Between its subscription and the change of the nodes that lists it (its first heartbeat), a daemon hears
    PUBLISHes no other daemon acts on when it is alone: they are delivered at its joining, in publish order, before
    what comes after it; with other daemons there, they were theirs, and it drops them.
    """
    routing, directory, recorder, _, _ = router()
    view = heard_before_listed(routing, directory, b"user2")
    assert recorder.delivered == [] and routing.waiting == 0

    def joining() -> None:
        view.listed = True
        routing.joined(alone=True)

    routing.in_order(joining)
    routing.on_publish(b"rm.users.user1", b"after")
    assert recorder.delivered == [
        ("first", ["user1"]), ("meow", ["user2"]), ("second", ["user1"]), ("held", ["user1"]), ("after", ["user1"])
    ]  # fmt: skip
    view.listed = False  # left, and listed again later: nothing is kept any more
    routing.on_publish(b"rm.users.user1", b"not listed any more")
    view.listed = True
    routing.joined(alone=True)
    assert recorder.delivered[-1] == ("after", ["user1"])


def test_what_a_daemon_hears_before_it_is_listed_is_left_to_the_others_when_it_joins_them() -> None:
    routing, directory, recorder, _, _ = router()
    view = heard_before_listed(routing, directory, b"user1")

    def joining() -> None:
        view.listed = True
        routing.joined(alone=False)

    routing.in_order(joining)
    routing.on_publish(b"rm.users.user1", b"after")
    assert directory.held == [], "no group looked up for messages the daemon may not act on"
    assert recorder.delivered == [("after", ["user1"])], "what came before the joining was the other daemons'"


def test_what_a_daemon_keeps_before_it_is_listed_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import redmessenger.core.undecided as undecided_module

    monkeypatch.setattr(undecided_module, "MAX_UNLISTED", 3)
    routing, _, recorder, _, _ = router()
    view = routing.owners = View(listed=False)
    for i in range(10):
        routing.on_publish(b"rm.users.user1", f"m{i}".encode())
    view.listed = True
    routing.in_order(lambda: routing.joined(alone=True))
    assert [payload for payload, _ in recorder.delivered] == ["m0", "m1", "m2"]


def test_what_a_daemon_keeps_before_it_is_listed_is_bounded_in_bytes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import redmessenger.core.undecided as undecided_module
    from redmessenger.model.envelope import ENVELOPE_OVERHEAD

    monkeypatch.setattr(undecided_module, "MAX_UNLISTED_BYTES", 2 * (1000 + ENVELOPE_OVERHEAD))
    routing, _, recorder, _, _ = router()
    view = routing.owners = View(listed=False)
    for i in range(5):
        routing.on_publish(b"rm.users.user1", b"%d" % i + b"x" * 999)
    view.listed = True
    routing.in_order(lambda: routing.joined(alone=True))
    assert [payload[0] for payload, _ in recorder.delivered] == ["0", "1"]


def test_messages_held_for_a_change_of_the_nodes_go_on_past_a_size_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hold waits for another daemon's word for 2 s at most; at a high rate, memory bounds it first."""
    import redmessenger.core.routing as routing_module
    from redmessenger.model.envelope import ENVELOPE_OVERHEAD

    monkeypatch.setattr(routing_module, "MAX_HELD_BYTES", 3 * (100 + ENVELOPE_OVERHEAD))
    routing, _, recorder, _, _ = router()
    release = routing.hold()
    for i in range(3):
        routing.on_publish(b"rm.users.user1", b"%d" % i + b"x" * 99)
    assert recorder.delivered == [] and routing.waiting == 4, "held, within the bound"
    routing.on_publish(b"rm.users.user1", b"3" + b"x" * 99)
    assert [payload[0] for payload, _ in recorder.delivered] == ["0", "1", "2", "3"], "past it: in order, at once"
    assert routing.waiting == 0
    release()  # its time up later: nothing left to let go
    routing.on_publish(b"rm.users.user1", b"after")
    assert recorder.delivered[-1] == ("after", ["user1"])


def test_a_hold_taken_by_a_change_in_its_turn_holds_the_messages_published_after_the_change() -> None:
    """
    A change of the nodes waits behind a group message looking up its members; the new owner holds what comes after
    the change until the old owner's word: the messages published after it, already waiting, are held too.
    """
    routing, directory, recorder, _, _ = router()
    directory.groups["cats"] = [b"user9"]
    directory.hold_members = True
    routing.on_publish(b"rm.channels.cats", b"before the change")
    releases = []
    routing.in_order(lambda: releases.append(routing.hold()))
    routing.on_publish(b"rm.users.user1", b"after the change")
    directory.answer_members("cats")
    assert recorder.delivered == [("before the change", ["user9"])] and len(releases) == 1
    assert routing.waiting == 2, "the hold, and the message behind it"
    releases[0]()
    assert recorder.delivered == [("before the change", ["user9"]), ("after the change", ["user1"])]
    assert routing.waiting == 0


def test_what_an_unsure_daemon_kept_is_decided_with_the_owners_of_when_it_was_heard() -> None:
    """
    Unsure (its subscription came back), a daemon keeps its own users' messages; the owners change meanwhile
    (another daemon joined): sure, it acts on what was its own when heard, not on what it owns at that moment.
    """
    routing, _, recorder, _, _ = router()
    view = routing.owners = View(owned_elsewhere={"user2": "b"})
    routing.joined(alone=True)
    routing.unsure()
    routing.on_publish(b"rm.users.user1", b"mine then")
    routing.on_publish(b"rm.users.user2", b"b's")
    view.owned_elsewhere = {"user1": "c"}  # user1 moved to a daemon that joined, user2 came here
    routing.in_order(lambda: routing.sure(act=True))
    routing.on_publish(b"rm.users.user2", b"mine now")
    assert recorder.delivered == [("mine then", ["user1"]), ("mine now", ["user2"])]


def test_what_an_unsure_daemon_kept_is_left_when_the_others_acted_on_it() -> None:
    routing, _, recorder, _, _ = router()
    routing.owners = View()
    routing.joined(alone=True)
    routing.unsure()
    routing.on_publish(b"rm.users.user1", b"theirs meanwhile")
    routing.in_order(lambda: routing.sure(act=False))
    routing.on_publish(b"rm.users.user1", b"after")
    assert recorder.delivered == [("after", ["user1"])]


def test_what_was_heard_before_the_subscription_was_lost_and_still_waits_is_decided_as_before_it() -> None:
    """A user's message waiting behind a group's lookup when the subscription is lost: acted on, whatever follows."""
    routing, directory, recorder, _, _ = router()
    routing.owners = View()
    routing.joined(alone=True)
    directory.groups["g"] = [b"member"]
    directory.hold_members = True
    routing.on_publish(b"rm.channels.g", b"g0")
    routing.on_publish(b"rm.users.user1", b"before the loss")
    registry = NodeRegistry(None, Clock(), "node-a", in_order=routing.in_order)  # type: ignore[arg-type]
    registry.nodes, registry.on_unsure = ["node-a", "node-b"], routing.unsure
    registry.unheard()  # the subscription lost
    directory.answer_members("g")
    routing.in_order(lambda: routing.sure(act=False))  # the others acted on what came after the loss
    assert recorder.delivered == [("g0", ["member"]), ("before the loss", ["user1"])]
