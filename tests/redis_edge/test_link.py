"""
The Redis link when Redis cannot be reached at start: a warning with the cause
(then one a minute, not one per retry), the cause kept for ``/health``, and
retries until Redis answers, even when it accepted connections without answering.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.testing import Clock
from twisted.logger import LogLevel, globalLogPublisher

from redmessenger.redis_edge.link import RedisLink, RedisSettings
from redmessenger.redis_edge.replies import SUBSCRIBER_MIN_READ_SIZE, SUBSCRIBER_READ_SIZE, next_read_size
from redmessenger.redis_edge.outage import UNREACHABLE_REMINDER, Outage

from ..conftest import HOST, RedisServer, free_port, wait_until


def test_an_outage_warns_at_first_on_a_new_cause_and_then_once_a_minute() -> None:
    clock = Clock()
    outage = Outage(clock)
    assert outage.failed("refused")  # the first
    assert not outage.failed("refused")  # the other connection, or the next retry
    clock.advance(UNREACHABLE_REMINDER - 1)
    assert not outage.failed("refused")
    assert outage.failed("timed out")  # a new cause
    clock.advance(UNREACHABLE_REMINDER)
    assert outage.failed("timed out")  # a minute on
    assert (outage.failures, outage.began) == (5, 0.0)
    assert outage.over() == 5
    assert outage.over() == 0
    assert outage.failed("timed out"), "a new outage warns again"


def test_the_subscriber_read_size_jumps_to_the_most_in_a_burst_and_halves_back_when_reads_are_small() -> None:
    low, high = SUBSCRIBER_MIN_READ_SIZE, SUBSCRIBER_READ_SIZE
    assert next_read_size(low, low) == high, "a full read: a burst, read the most at once"
    assert next_read_size(high, high) == high
    assert next_read_size(high, 700) == high >> 1, "a small read halves"
    assert next_read_size(high, high >> 3) == high, "an eighth or more keeps the size"
    assert next_read_size(low, 700) == low, "never below the least"
    assert next_read_size(low + 1, 10) == low
    sizes = [high]
    while sizes[-1] > low:
        sizes.append(next_read_size(sizes[-1], 700))
    assert sizes == [high >> n for n in range(len(sizes))] and sizes[-1] == low


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def link_to(port: int, timeout: float = 10.0) -> RedisLink:
    from twisted.internet import reactor

    return RedisLink(reactor, RedisSettings(host=HOST, port=port, timeout=timeout), on_message=lambda c, p: None)


def texts(events: list[dict[str, Any]], level: LogLevel) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if e.get("log_level") == level]


@pytest_twisted.ensureDeferred
async def test_redis_unreachable_at_start_is_one_warning_with_its_cause(events: list[dict[str, Any]]) -> None:
    port = free_port()  # nothing listens there
    link = link_to(port)
    link.start()
    try:
        retries = lambda: [e for e in events if "Scheduling retry" in str(e.get("log_format"))]
        await wait_until(lambda: len(retries()) >= 4, 15, "two failed attempts per connection")
        warnings = texts(events, LogLevel.warn)
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith(f"Cannot reach Redis at {HOST}:{port} (Connection was refused"), warnings
        assert link.state.last_error is not None and "Connection refused" in link.state.last_error
    finally:
        stopped = len(events)
        await link.stop()
    after = events[stopped:]
    assert not [e for e in after if "log_failure" in e or e.get("log_level", LogLevel.info) >= LogLevel.warn], after


@pytest_twisted.ensureDeferred
async def test_a_redis_that_accepts_but_does_not_answer_at_start_is_retried_until_it_does(
    events: list[dict[str, Any]], tmp_path: Path
) -> None:
    # A port that accepts connections and never answers (say, a proxy whose Redis is not up yet)...
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind((HOST, 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    link = link_to(port, timeout=0.5)
    link.start()
    server = RedisServer(tmp_path)
    try:
        await wait_until(lambda: texts(events, LogLevel.warn), 10, "a warning")
        assert "Not received Redis response in 0.5 seconds" in str(link.state.last_error), texts(events, LogLevel.warn)
        # ...then Redis itself, on that port
        silent.close()
        server.port = port
        server.start()
        await wait_until(lambda: link.ready, 20, "the link to reach Redis")
        assert f"Reached Redis at {HOST}:{port} after" in " ".join(texts(events, LogLevel.info))
    finally:
        silent.close()
        await link.stop()
        server.stop()
