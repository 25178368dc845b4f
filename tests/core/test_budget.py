"""
Bounded memory (pure logic): a socket that confirms nothing is given up past
``max_pending_bytes``, the slowest are given up past ``memory_budget_bytes``,
and what they held goes on in order.  With a real client that stops reading:
tests/test_faults.py.
"""

from __future__ import annotations

from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import Clock

from redmessenger.core.hub import Hub
from redmessenger.core.presence import Attachment
from redmessenger.model.envelope import ENVELOPE_OVERHEAD
from redmessenger.model.errors import CloseCode

from ..fakes import Link, MemoryDirectory, MemoryQueues


class SlowLink(Link):
    """Records what the core tells it when it is given up."""

    def __init__(self, clock: Clock, name: str = "") -> None:
        super().__init__(clock, name)
        self.abandoned: list[CloseCode] = []

    def abandon(self, error: object) -> None:
        self.abandoned.append(error.code)  # type: ignore[attr-defined]
        self.writable = False


def online(hub: Hub, link: Link, uid: str = "u") -> Attachment:
    attachment = ensureDeferred(hub.identify(link, uid)).result
    assert isinstance(attachment, Attachment)
    return attachment


PAYLOAD = b"x" * (1000 - ENVELOPE_OVERHEAD)  # weighs 1000


def setting(per_socket: int, total: int) -> tuple[Hub, MemoryQueues, Clock]:
    queues, clock = MemoryQueues(), Clock()
    hub = Hub(queues, MemoryDirectory(), clock, max_pending_bytes=per_socket, memory_budget_bytes=total)
    return hub, queues, clock


def test_a_socket_past_its_limit_is_given_up_and_what_it_held_is_queued_in_order() -> None:
    hub, queues, clock = setting(per_socket=5000, total=10**9)
    link = SlowLink(clock)
    online(hub, link)
    for i in range(8):
        hub.on_publish(b"rm.users.u", PAYLOAD + str(i).encode())
    assert link.abandoned == [CloseCode.TOO_SLOW]
    assert len(link.messages) == 5, "the fifth (1001 bytes each) went past 5000: nothing more was written"
    assert [p[-1] for p in queues.payloads("u")] == [str(i) for i in range(8)], "all of it, in order"
    assert hub.presence.get("u") is None and hub.budget.used == 0


def test_a_socket_that_confirms_stays_within_its_limit() -> None:
    hub, queues, clock = setting(per_socket=5000, total=10**9)
    link = SlowLink(clock)
    attachment = online(hub, link)
    for i in range(50):
        hub.on_publish(b"rm.users.u", PAYLOAD)
        clock.advance(hub.confirmations.confirm_delay)
        link.confirm_all()
    assert link.abandoned == [] and len(link.messages) == 50
    assert attachment.pending_bytes == 0 and hub.budget.used == 0
    assert queues.queues == {}


def test_past_the_budget_only_slow_sockets_are_given_up_until_it_is_back_under() -> None:
    # Each socket may hold 8000; all together 10000; past the budget, a socket holding over 1000 is slow.
    hub, queues, clock = setting(per_socket=8000, total=10000)
    slow = [SlowLink(clock, f"s{i}") for i in range(3)]
    healthy = SlowLink(clock, "healthy")
    for i, link in enumerate(slow):
        online(hub, link, f"slow{i}")
    online(hub, healthy, "healthy")
    rounds = 6
    for _ in range(rounds):
        for i in range(3):
            hub.on_publish(f"rm.users.slow{i}".encode(), PAYLOAD)
        hub.on_publish(b"rm.users.healthy", PAYLOAD)
        assert hub.budget.used <= 10000 + 1000, "past the budget by at most the message that bit"
        clock.advance(hub.confirmations.confirm_delay)
        healthy.confirm_all()
    assert healthy.abandoned == [] and len(healthy.messages) == rounds, "a socket that keeps up is never given up"
    given_up = [i for i, link in enumerate(slow) if link.abandoned]
    assert given_up and all(slow[i].abandoned == [CloseCode.TOO_SLOW] for i in given_up)
    assert hub.budget.bites == len(given_up)
    for i, link in enumerate(slow):
        if i in given_up:
            assert len(queues.payloads(f"slow{i}")) == rounds, "everything a given-up socket was meant to get is queued"
        else:
            assert len(link.messages) == rounds and f"slow{i}" not in queues.queues


def test_messages_held_during_a_handover_count_too() -> None:
    hub, queues, clock = setting(per_socket=3000, total=10**9)
    queues.hold_takes = True
    queues.enqueue(["u"], b'{"v":1,"id":"a","source":"rm.users.u","timestamp":1,"payload":"q"}')
    link = SlowLink(clock)
    online(hub, link)
    for i in range(4):
        hub.on_publish(b"rm.users.u", PAYLOAD + str(i).encode())
    assert link.abandoned == [CloseCode.TOO_SLOW]
    assert [p[-1] for p in queues.payloads("u")] == ["q", "0", "1", "2", "3"]


def test_charge_counts_the_socket_and_the_daemon_and_says_when_a_socket_is_past_its_share() -> None:
    from redmessenger.core.budget import SLOW_SHARE, Budget
    from redmessenger.core.presence import Attachment

    budget = Budget(per_socket=800, total=1000)
    a, b = Attachment("a", None), Attachment("b", None)  # type: ignore[arg-type]  # no sink needed
    assert budget.charge(a, 800) is False and (a.pending_bytes, budget.used) == (800, 800)
    assert budget.charge(a, 1) is True, "past its own limit"
    assert budget.charge(b, 200) is True, "the daemon past its budget, and b holds more than its floor"
    assert 200 > 800 // SLOW_SHARE and budget.used == 1001
    budget.give_back(a, 801)
    assert budget.charge(b, 1) is False and budget.used == 201
