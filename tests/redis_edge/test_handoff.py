"""
The order of a change of the nodes between daemons (redis_edge/handoff.py), as pure logic on a fake clock: who
tells whom that its writes landed, and what the new owner holds meanwhile. With real daemons: tests/test_scale_out.py.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import Clock

from redmessenger.redis_edge.handoff import BARRIER_TIMEOUT, Handoffs
from redmessenger.redis_edge.nodes import NodesChange


class Hub:
    def __init__(self) -> None:
        self.held = 0
        self.released = 0

    def written(self) -> Deferred[None]:
        return succeed(None)

    def hold(self) -> Any:
        self.held += 1

        def release() -> None:
            self.released += 1

        return release


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []

    def send(self, node: str, kind: bytes, **fields: Any) -> None:
        self.sent.append((node, kind, fields))

    def flush(self) -> Deferred[None]:
        return succeed(None)


def node(name: str) -> tuple[Handoffs, Hub, Outbox, Clock]:
    hub, outbox, clock = Hub(), Outbox(), Clock()
    return Handoffs(name, hub, outbox, clock), hub, outbox, clock  # type: ignore[arg-type]


def change(epoch: int, who: str, nodes: list[str], joined: bool = False, left: bool = False) -> NodesChange:
    return NodesChange(epoch, who, joined, left, False, sorted(nodes))


def test_a_newcomer_holds_the_messages_until_every_other_node_said_its_writes_landed() -> None:
    newcomer, hub, _, clock = node("c")
    newcomer.barrier("a", 7)  # its word can come before the change itself is heard
    newcomer.changed(change(7, "c", ["a", "b", "c"], joined=True))
    assert (hub.held, hub.released) == (1, 0), "b has not said so yet"
    newcomer.barrier("b", 7)
    assert (hub.held, hub.released) == (1, 1) and not clock.getDelayedCalls()


def test_the_others_tell_the_newcomer_and_one_that_says_nothing_is_waited_for_two_seconds_at_most() -> None:
    old, old_hub, outbox, _ = node("a")
    old.changed(change(3, "c", ["a", "c"], joined=True))
    assert outbox.sent == [("c", b"barrier", {"e": b"3"})] and old_hub.held == 0, "a only hands users on"
    newcomer, hub, _, clock = node("c")
    newcomer.changed(change(3, "c", ["a", "c"], joined=True))
    clock.advance(BARRIER_TIMEOUT - 0.1)
    assert hub.released == 0
    clock.advance(0.1)
    assert hub.released == 1, "a node that died says nothing: going on"


def test_a_leaving_node_tells_every_other_and_is_gone_once_it_has_told_them_asked_before_or_after() -> None:
    leaving, hub, outbox, _ = node("b")
    waiting = leaving.gone(2.0)
    assert not waiting.called
    leaving.changed(change(5, "b", ["a", "c"], left=True))
    assert sorted(to for to, _, _ in outbox.sent) == ["a", "c"] and hub.held == 0
    assert waiting.called
    assert leaving.gone(2.0).called, "told already (its own leave heard before the leave's reply): no wait"
    other, other_hub, _, _ = node("a")
    other.changed(change(5, "b", ["a", "c"], left=True))
    assert other_hub.held == 1, "b's users come to a: held until b says its writes landed"
    other.barrier("b", 5)
    assert other_hub.released == 1


def test_the_word_waits_for_the_intake_readers_last_read_and_the_new_reader_for_the_word() -> None:
    """
    The durable intake's reader moves with the nodes too: what the old reader read before it saw the change is
    forwarded before its word, and the new owner's reader reads only once every word came (or the time is up).
    """
    old, _, outbox, _ = node("a")
    reading: Deferred[None] = Deferred()
    old.reader_quiet = lambda: reading
    old.changed(change(4, "c", ["a", "c"], joined=True))
    assert outbox.sent == [], "its read under way first"
    reading.callback(None)
    assert outbox.sent == [("c", b"barrier", {"e": b"4"})]

    newcomer, hub, _, clock = node("c")
    released: list[bool] = []
    newcomer.on_released = lambda: released.append(True)
    newcomer.changed(change(4, "c", ["a", "c"], joined=True))
    assert newcomer.holding and not released
    newcomer.barrier("a", 4)
    assert not newcomer.holding and released == [True]
    newcomer.changed(change(5, "d", ["a", "c", "d"], joined=True))  # c hands users to d: no hold
    assert not newcomer.holding
    late, _, _, late_clock = node("d")
    late.on_released = lambda: released.append(True)
    late.changed(change(5, "d", ["a", "c", "d"], joined=True))
    late_clock.advance(BARRIER_TIMEOUT)
    assert not late.holding and released == [True, True], "the time up lets the reader read too"
