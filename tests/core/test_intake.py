"""
Messages from the durable intake (pure logic): acknowledged once every
recipient's copy is safe, never before; and the copies of a user's several
sockets, so that nothing is lost when all of them go unconfirmed.
"""

from __future__ import annotations

import json

from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import Clock

from redmessenger.core.hub import Hub
from redmessenger.core.presence import Attachment

from ..fakes import MemoryDirectory, MemoryQueues, Socket


def setting() -> tuple[Hub, MemoryQueues, MemoryDirectory, Clock, list[str]]:
    queues, directory, clock = MemoryQueues(), MemoryDirectory(), Clock()
    hub = Hub(queues, directory, clock)
    acked: list[str] = []
    hub.intake_done = acked.append
    return hub, queues, directory, clock, acked


def online(hub: Hub, socket: Socket, uid: str = "u") -> Attachment:
    attachment = ensureDeferred(hub.identify(socket, uid)).result
    assert isinstance(attachment, Attachment)
    return attachment


def test_an_entry_for_an_offline_user_is_acknowledged_once_queued_with_its_id_and_time() -> None:
    hub, queues, _, _, acked = setting()
    assert hub.on_intake("1700000000000-0", b"rm.users.u", b"hi", 1700000000000, again=False) is None
    assert acked == ["1700000000000-0"]
    (entry,) = [json.loads(e) for e in queues.queues["u"]]
    assert entry["id"] == "1700000000000-0" and entry["timestamp"] == 1700000000000 and entry["payload"] == "hi"


def test_an_entry_for_an_online_user_is_acknowledged_once_a_socket_confirms_it() -> None:
    hub, _, _, clock, acked = setting()
    socket = Socket(clock)
    online(hub, socket)
    hub.on_intake("1-0", b"rm.users.u", b"hi", 1, again=False)
    assert socket.payloads() == ["hi"] and acked == []
    clock.advance(hub.confirmations.confirm_delay)
    socket.confirm_all()
    assert acked == ["1-0"]


def test_an_entry_whose_socket_goes_unconfirmed_is_acknowledged_once_queued() -> None:
    hub, queues, _, clock, acked = setting()
    socket = Socket(clock)
    attachment = online(hub, socket)
    hub.on_intake("1-0", b"rm.users.u", b"hi", 1, again=False)
    socket.close()
    hub.detach(attachment)
    assert acked == ["1-0"] and queues.payloads("u") == ["hi"]


def test_a_group_entry_waits_for_every_member() -> None:
    hub, queues, directory, clock, acked = setting()
    directory.groups["g"] = [b"on", b"off"]
    socket = Socket(clock)
    online(hub, socket, "on")
    hub.on_intake("1-0", b"rm.channels.g", b"meow", 1, again=False)
    assert queues.payloads("off") == ["meow"] and acked == [], "the online member has not confirmed yet"
    clock.advance(hub.confirmations.confirm_delay)
    socket.confirm_all()
    assert acked == ["1-0"]


def test_an_entry_with_no_recipient_or_oversize_is_acknowledged_at_once() -> None:
    hub, _, directory, _, acked = setting()
    directory.groups["empty"] = []
    hub.on_intake("1-0", b"rm.channels.empty", b"x", 1, again=False)
    assert acked == ["1-0"]


def test_an_entry_that_cannot_be_routed_says_why() -> None:
    hub, _, _, _, acked = setting()
    assert hub.on_intake("1-0", b"other.channel", b"x", 1, again=False) is not None
    assert hub.on_intake("2-0", b"rm.users.not valid", b"x", 1, again=False) is not None
    assert acked == []


def test_an_entry_read_again_after_a_crash_is_not_queued_twice() -> None:
    hub, queues, _, _, acked = setting()
    hub.on_intake("1-0", b"rm.users.u", b"hi", 1, again=False)
    hub.on_intake("1-0", b"rm.users.u", b"hi", 1, again=True)
    assert queues.payloads("u") == ["hi"] and acked == ["1-0", "1-0"]


def test_a_message_two_sockets_got_goes_again_only_when_the_last_goes_unconfirmed() -> None:
    """Before, the second socket's copy counted as 'delivered elsewhere' even when that socket was gone too: lost."""
    hub, queues, _, clock, _ = setting()
    a, b = Socket(clock, "a"), Socket(clock, "b")
    first, second = online(hub, a), online(hub, b)
    hub.on_publish(b"rm.users.u", b"both")
    a.close()
    hub.detach(first)
    assert queues.queues == {}, "b still holds it"
    b.close()
    hub.detach(second)
    assert queues.payloads("u") == ["both"], "nobody confirmed it: queued, not lost"


def test_a_message_one_socket_confirmed_is_not_delivered_again_when_the_other_goes() -> None:
    hub, queues, _, clock, _ = setting()
    a, b = Socket(clock, "a"), Socket(clock, "b")
    first = online(hub, a)
    online(hub, b)
    hub.on_publish(b"rm.users.u", b"both")
    clock.advance(hub.confirmations.confirm_delay)
    b.confirm_all()
    a.close()
    hub.detach(first)
    assert queues.queues == {} and b.payloads() == ["both"]


def test_only_an_entry_every_client_confirmed_is_marked_as_needing_no_second_delivery() -> None:
    """A queue write may be lost in a Redis failover: an entry safe because queued must be routed again if read again."""
    hub, queues, directory, clock, acked = setting()
    delivered: list[str] = []
    hub.intake_delivered = delivered.append
    socket = Socket(clock)
    online(hub, socket, "on")
    directory.groups["g"] = [b"on", b"off"]
    hub.on_intake("1-0", b"rm.users.on", b"live", 1, again=False)
    hub.on_intake("2-0", b"rm.users.off", b"queued", 2, again=False)
    hub.on_intake("3-0", b"rm.channels.g", b"both", 3, again=False)
    clock.advance(hub.confirmations.confirm_delay)
    socket.confirm_all()
    assert sorted(acked) == ["1-0", "2-0", "3-0"]
    assert delivered == ["1-0"]
