"""
When the core asks a socket to confirm its live messages (pure logic, on
a fake clock).  That confirmations keep nothing from being lost is tested with
real clients in test_delivery.py.
"""

from __future__ import annotations

from twisted.internet.testing import Clock

from redmessenger.core.hub import Hub
from redmessenger.core.presence import Attachment

from ..fakes import MemoryDirectory, Sink, make_store


def online_user() -> tuple[Hub, Sink, Attachment, Clock]:
    store, _, clock = make_store()
    hub = Hub(store, MemoryDirectory(), clock)
    sink = Sink(clock)
    attachment = hub.presence.attach("u", sink)
    return hub, sink, attachment, clock


def publish_at(hub: Hub, clock: Clock, when: float, text: str) -> None:
    clock.advance(when - clock.seconds())
    hub.on_publish(b"rm.users.u", text.encode())


def test_a_socket_with_no_further_messages_is_asked_confirm_delay_after_its_first() -> None:
    hub, sink, attachment, clock = online_user()
    publish_at(hub, clock, 0.0, "a")
    publish_at(hub, clock, 0.2, "b")
    clock.advance(0.29)
    assert sink.log == ["0.00 message a", "0.20 message b"]
    clock.advance(0.02)
    assert sink.log[-1] == "0.51 confirm"
    sink.asked[0].callback(True)
    assert attachment.unconfirmed == [] and not attachment.confirming
    assert not clock.getDelayedCalls()


def test_a_message_in_the_second_half_of_the_delay_carries_the_request() -> None:
    hub, sink, attachment, clock = online_user()
    publish_at(hub, clock, 0.0, "a")
    publish_at(hub, clock, 0.2, "b")
    publish_at(hub, clock, 0.3, "c")
    assert sink.log == ["0.00 message a", "0.20 message b", "0.30 message c", "0.30 confirm"]
    clock.advance(0.5)
    assert sink.log.count("0.30 confirm") == 1 and len(sink.asked) == 1, "the timed request is not made as well"
    sink.asked[0].callback(True)
    assert attachment.unconfirmed == []


def test_a_spent_request_does_not_hurry_the_next_one() -> None:
    hub, sink, attachment, clock = online_user()
    publish_at(hub, clock, 0.0, "a")
    publish_at(hub, clock, 0.3, "b")  # carries the request
    clock.advance(0.01)
    sink.asked[0].callback(True)
    publish_at(hub, clock, 0.35, "c")  # a new round: asked from 0.6, at 0.85 at the latest
    clock.advance(0.5 - clock.seconds() + 0.02)  # past the first round's deadline
    assert len(sink.asked) == 1
    clock.advance(0.86 - clock.seconds())
    assert sink.log[-1] == "0.86 confirm" and len(sink.asked) == 2
    assert [m.payload for m in (s.message for s in attachment.unconfirmed)] == ["c"]
    sink.asked[1].callback(True)
    assert attachment.unconfirmed == []


def test_messages_sent_after_the_request_wait_for_the_next_one() -> None:
    hub, sink, attachment, clock = online_user()
    publish_at(hub, clock, 0.0, "a")
    publish_at(hub, clock, 0.3, "b")  # carries the request for a and b
    publish_at(hub, clock, 0.31, "c")
    sink.asked[0].callback(True)
    assert [s.message.payload for s in attachment.unconfirmed] == ["c"]
    assert attachment.confirming, "c gets a request of its own"
