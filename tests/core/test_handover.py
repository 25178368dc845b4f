"""
The handover's Redis commands when a reply is lost (pure logic: a recording
stand-in for the connection).  Handovers against a real server, with clients
dropping midway, are in test_delivery.py.
"""

from __future__ import annotations

import json

from twisted.internet.defer import ensureDeferred

from redmessenger.core.hub import Hub
from redmessenger.redis_edge.scripts import TAKE

from ..fakes import MemoryDirectory, Sink, connection_lost, make_store


def entry(n: int) -> bytes:
    return json.dumps({"v": 1, "source": "rm.users.u", "timestamp": n, "payload": f"p{n}"}).encode()


def test_a_batch_whose_trim_may_have_run_is_never_trimmed_again() -> None:
    """A TAKE that trims the confirmed batch loses its reply: trimming again could drop undelivered entries."""
    store, commands, clock = make_store()
    hub = Hub(store, MemoryDirectory(), clock, handover_batch=2)
    sink = Sink(clock)
    handover = ensureDeferred(hub.identify(sink, "u"))
    assert commands.sent[-1] == ("EVAL", TAKE, ["rm:users:u:messages"], [0, 2])
    commands.replies[-1].callback([5, [entry(1), entry(2)]])
    assert sink.log[-3:] == ["0.00 message p1", "0.00 message p2", "0.00 confirm"]
    sink.asked[-1].callback(True)
    assert commands.sent[-1] == ("EVAL", TAKE, ["rm:users:u:messages"], [2, 2]), "the next read trims the batch"
    commands.replies[-1].errback(connection_lost())
    assert [c for c in commands.sent if c[0] == "LTRIM"] == []
    assert handover.called
