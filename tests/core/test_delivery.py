"""
Delivery rules (SPEC §3 rules 1-2, §2's bubble; pure logic): to every live
socket of a user, the oldest with the bubble, else to the queue; what a socket
leaves unconfirmed goes to the user's other sockets or back to the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import Clock

from redmessenger.core.hub import Hub
from redmessenger.core.presence import Attachment

from ..fakes import MemoryDirectory, MemoryQueues, Socket


def online(hub: Hub, socket: Socket, uid: str = "u") -> Attachment:
    attachment = ensureDeferred(hub.identify(socket, uid)).result
    assert isinstance(attachment, Attachment)
    return attachment


def setting() -> tuple[Hub, MemoryQueues, MemoryDirectory, Clock]:
    queues, directory, clock = MemoryQueues(), MemoryDirectory(), Clock()
    return Hub(queues, directory, clock), queues, directory, clock


def test_every_socket_of_the_user_gets_it_and_only_the_oldest_the_bubble() -> None:
    hub, queues, _, clock = setting()
    a, b, c = Socket(clock, "a"), Socket(clock, "b"), Socket(clock, "c")
    for socket in (a, b, c):
        online(hub, socket)
    hub.on_publish(b"rm.users.u", b"hi")
    assert [s.messages for s in (a, b, c)] == [[("hi", True)], [("hi", False)], [("hi", False)]]
    assert queues.queues == {} and hub.counters.delivered == 1


def test_the_next_oldest_socket_takes_the_bubble_over() -> None:
    hub, _, _, clock = setting()
    a, b = Socket(clock, "a"), Socket(clock, "b")
    first = online(hub, a)
    online(hub, b)
    a.close()
    hub.detach(first, received_all=True)
    hub.on_publish(b"rm.users.u", b"hi")
    assert b.messages == [("hi", True)]


def test_an_offline_user_gets_it_queued() -> None:
    hub, queues, _, _ = setting()
    hub.on_publish(b"rm.users.u", b"hi")
    assert queues.payloads("u") == ["hi"] and hub.counters.queued == 1


def test_a_group_reaches_online_members_live_and_offline_members_queued() -> None:
    hub, queues, directory, clock = setting()
    directory.groups["cats"] = [b"on", b"off"]
    socket = Socket(clock)
    online(hub, socket, "on")
    hub.on_publish(b"rm.channels.cats", b"meow")
    assert socket.messages == [("meow", True)]
    assert queues.payloads("off") == ["meow"] and "on" not in queues.queues


def test_a_message_for_a_closing_socket_waits_for_it_to_go_then_follows_what_it_did_not_confirm() -> None:
    """A socket closing (its close handshake under way) takes nothing more; once gone, its messages go back in order."""
    hub, queues, _, clock = setting()
    socket = Socket(clock)
    attachment = online(hub, socket)
    hub.on_publish(b"rm.users.u", b"sent")
    socket.writable = False  # closing, not detached yet
    hub.on_publish(b"rm.users.u", b"while closing")
    assert queues.queues == {}, "not queued ahead of the unconfirmed one"
    hub.detach(attachment)
    assert queues.payloads("u") == ["sent", "while closing"]
    assert hub.budget.used == 0 and attachment.pending_bytes == 0


def test_a_message_the_other_socket_has_too_is_not_delivered_again() -> None:
    hub, queues, _, clock = setting()
    a, b = Socket(clock, "a"), Socket(clock, "b")
    first = online(hub, a)
    online(hub, b)
    hub.on_publish(b"rm.users.u", b"both")  # b has it too: not delivered again
    a.close()
    hub.detach(first)
    assert b.payloads() == ["both"] and queues.queues == {}


def test_what_the_last_socket_did_not_confirm_is_queued_in_order() -> None:
    hub, queues, _, clock = setting()
    socket = Socket(clock)
    attachment = online(hub, socket)
    for text in (b"1", b"2", b"3"):
        hub.on_publish(b"rm.users.u", text)
    clock.advance(hub.confirmations.confirm_delay)
    socket.close()  # the confirmation is answered False
    hub.detach(attachment)
    assert queues.payloads("u") == ["1", "2", "3"]


def test_confirmed_messages_are_not_delivered_again() -> None:
    hub, queues, _, clock = setting()
    socket = Socket(clock)
    attachment = online(hub, socket)
    hub.on_publish(b"rm.users.u", b"1")
    clock.advance(hub.confirmations.confirm_delay)
    socket.confirm_all()
    hub.on_publish(b"rm.users.u", b"2")
    socket.close()
    hub.detach(attachment)
    assert queues.payloads("u") == ["2"]


def test_a_clean_close_the_daemon_started_confirms_everything() -> None:
    hub, queues, _, clock = setting()
    socket = Socket(clock)
    attachment = online(hub, socket)
    hub.on_publish(b"rm.users.u", b"1")
    hub.detach(attachment, received_all=True)
    assert queues.queues == {}


def test_what_only_the_closed_socket_had_goes_to_the_other_socket() -> None:
    hub, queues, _, clock = setting()
    a = Socket(clock, "a")
    first = online(hub, a)
    hub.on_publish(b"rm.users.u", b"only a")
    b = Socket(clock, "b")
    online(hub, b)
    a.close()
    hub.detach(first)
    assert b.messages == [("only a", True)] and queues.queues == {}


def test_when_idle_waits_for_group_lookups() -> None:
    hub, _, directory, _ = setting()
    directory.hold_members = True
    hub.on_publish(b"rm.channels.cats", b"meow")
    idle = hub.when_idle()
    assert not idle.called
    directory.answer_members("cats")
    assert idle.called


# -- what the log says (issue 12: a line per queued recipient flooded it) --------------


def logged_lines(level: str, publish: Callable[[Hub], None]) -> list[tuple[str, str]]:
    """(level, text) of each event the core logs at ``level`` while ``publish`` runs."""
    from twisted.logger import formatEvent, globalLogPublisher

    from redmessenger.logs import set_level

    hub, _, directory, _ = setting()
    directory.groups["cats"] = [f"user{i}".encode() for i in range(500)]
    directory.groups["solo"] = [b"user1"]
    seen: list[tuple[str, str]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("redmessenger.core"):
            seen.append((event["log_level"].name, formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    try:
        set_level(level)
        publish(hub)
    finally:
        set_level("info")
        globalLogPublisher.removeObserver(observe)
    return seen


def five_to_the_group(hub: Hub) -> None:
    for i in range(5):
        hub.on_publish(b"rm.channels.cats", f"meow {i}".encode())


def test_a_group_message_is_one_info_line_however_many_members_are_offline() -> None:
    lines = logged_lines("info", five_to_the_group)
    assert lines == [("info", "rm.channels.cats: queued for 500 offline members")] * 5


def test_at_debug_each_offline_member_of_a_group_has_its_line() -> None:
    lines = logged_lines("debug", five_to_the_group)
    per_member = [text for level, text in lines if level == "debug" and text.startswith("Client is not online")]
    assert len(per_member) == 2500
    assert per_member[:2] == [
        "Client is not online, queueing message in Redis (rm:users:user0:messages)",
        "Client is not online, queueing message in Redis (rm:users:user1:messages)",
    ]
    assert lines.count(("info", "rm.channels.cats: queued for 500 offline members")) == 5


def test_a_message_to_one_user_keeps_the_seeds_info_line() -> None:
    lines = logged_lines("info", lambda hub: hub.on_publish(b"rm.users.user1", b"hi"))
    assert lines == [("info", "Client is not online, queueing message in Redis (rm:users:user1:messages)")]
    one = logged_lines("info", lambda hub: hub.on_publish(b"rm.channels.solo", b"hi"))
    assert one == [("info", "rm.channels.solo: queued for 1 offline member")]
