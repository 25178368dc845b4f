"""
max_payload_bytes (issue 12) against a real valkey-server and a real client,
Python's ``websockets``, whose frame limit (``max_size``, 1 MiB by default) is
what used to block a queue: a queued entry larger than it was refused (1009) at
every reconnect.  A payload over the limit is kept aside, exactly as published,
and everything around it is delivered.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest_twisted

from .conftest import publish
from .httpclient import scrape

LIMIT = 1000
#: The client's own frame limit: above LIMIT plus the envelope (docs/protocol.md, *Message size*).
CLIENT_MAX_SIZE = LIMIT + 512


def receive(
    url: str, identifier: str, count: int, redis: Any, then_publish: list[tuple[str, bytes]], done: threading.Event
) -> tuple[list[dict[str, Any]], int | None]:
    """In a thread: identify, read ``count`` envelopes (publishing ``then_publish`` after the first), close once ``done``."""
    from websockets.sync.client import connect

    with connect(url, max_size=CLIENT_MAX_SIZE, open_timeout=5) as ws:
        ws.send(identifier)
        got = [json.loads(ws.recv(timeout=10))]
        for channel, payload in then_publish:
            redis.publish(channel, payload)
        got += [json.loads(ws.recv(timeout=10)) for _ in range(count - 1)]
        assert done.wait(10), "the test never said it was done"
    return got, ws.close_code


@pytest_twisted.ensureDeferred
async def test_an_oversize_publish_is_kept_aside_and_everything_around_it_is_delivered(daemon_factory, redis):
    from twisted.internet.threads import deferToThread
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if "kept aside" in str(event.get("log_format")):
            lines.append(formatEvent(event))

    daemon = await daemon_factory(max_payload_bytes=LIMIT)
    big = b"\xff\xfe not UTF-8, kept as it came " + b"B" * 2000
    redis.sadd("rm:channels:cats:subscribers", "user1")
    globalLogPublisher.addObserver(observe)
    try:
        publish(redis, "rm.users.user1", "before")
        publish(redis, "rm.users.user1", big)
        publish(redis, "rm.channels.cats", b"M" * (LIMIT + 1))
        publish(redis, "rm.users.user1", "L" * LIMIT)  # at the limit: delivered
        publish(redis, "rm.users.user1", "after")
        await daemon.until(lambda: redis.llen("rm:users:user1:messages") == 3, what="three queued entries")
        await daemon.idle()
    finally:
        globalLogPublisher.removeObserver(observe)

    # kept aside, exactly as published, with the queues' expiry; not in the queue
    assert redis.lrange("rm:oversize:rm.users.user1", 0, -1) == [big]
    assert redis.lrange("rm:oversize:rm.channels.cats", 0, -1) == [b"M" * (LIMIT + 1)]
    assert 0 < redis.ttl("rm:oversize:rm.users.user1") <= 604800
    assert lines == [
        f"Message of {len(big)} bytes on rm.users.user1 is larger than max_payload_bytes ({LIMIT}): "
        "not delivered, kept aside in rm:oversize:rm.users.user1",
        f"Message of {LIMIT + 1} bytes on rm.channels.cats is larger than max_payload_bytes ({LIMIT}): "
        "not delivered, kept aside in rm:oversize:rm.channels.cats",
    ]

    # the client gets its queue, then live messages: an oversize one in between reaches nobody
    done = threading.Event()
    finished = deferToThread(
        receive,
        daemon.url,
        "user1",
        4,
        redis,
        [("rm.users.user1", b"C" * 5000), ("rm.users.user1", b"live")],
        done,
    )
    # confirmed by the client's pongs: the queue is emptied
    await daemon.until(lambda: not redis.exists("rm:users:user1:messages"), what="the queue confirmed")
    done.set()
    got, code = await finished
    assert [m["payload"] for m in got] == ["before", "L" * LIMIT, "after", "live"]
    assert code == 1000, "closed by the client, never refused a frame too big (1009)"
    assert redis.lrange("rm:oversize:rm.users.user1", 0, -1) == [big, b"C" * 5000]

    samples = await scrape(daemon.port)
    assert samples["redmessenger_messages_oversize_total"] == 3
    assert samples["redmessenger_messages_published_total"] == 7
