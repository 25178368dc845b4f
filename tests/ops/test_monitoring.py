"""
``GET /health`` and ``GET /metrics`` on the daemon's port, read with a real HTTP
client (Twisted's Agent) and parsed with prometheus-client's own parser.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
import valkey

from ..conftest import HOST
from ..httpclient import http_get, scrape


async def health(daemon: Any) -> tuple[int, dict[str, Any]]:
    code, headers, body = await http_get(daemon.port, "/health")
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    return code, json.loads(body)


@pytest_twisted.ensureDeferred
async def test_health_follows_the_redis_link(daemon_factory: Any, private_redis: Any) -> None:
    daemon = await daemon_factory(redis_port=private_redis.port)
    code, body = await health(daemon)
    assert (code, body["status"]) == (200, "ok"), body
    assert body["redis"]["subscribed"] and body["redis"]["commands_connected"]

    private_redis.stop()
    await daemon.until(lambda: not daemon.service.link.ready, what="the link to notice Redis went away")
    code, body = await health(daemon)
    assert (code, body["status"]) == (503, "unavailable"), body
    assert "Redis" in body["reason"] or "subscribed" in body["reason"], body

    private_redis.start()
    await daemon.until(lambda: daemon.service.link.ready, 15, "the link to come back")
    code, body = await health(daemon)
    assert (code, body["status"]) == (200, "ok"), body
    samples = await scrape(daemon.port)
    assert samples["redmessenger_redis_reconnects_total"] >= 1
    assert samples['redmessenger_redis_connected{connection="subscriber"}'] == 1
    assert samples['redmessenger_redis_connected{connection="commands"}'] == 1


@pytest_twisted.ensureDeferred
async def test_health_is_503_before_redis_is_reached() -> None:
    from twisted.internet import reactor

    from redmessenger.daemon.config import parse_config
    from redmessenger.daemon.service import RedMessengerService

    from ..conftest import Daemon, free_port

    port = free_port()
    config = parse_config({"redis_port": free_port(), "listen": f"tcp:{port}:interface={HOST}"})  # no Redis there
    service = RedMessengerService(config, reactor)
    service.privilegedStartService()
    service.startService()
    try:
        code, body = await health(Daemon(service, port))
        assert code == 503
        assert body["reason"].startswith("Redis command connection down"), body
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_metrics_count_what_happened(daemon_factory: Any, redis: valkey.Valkey) -> None:
    redis.rpush("rm:users:bob:messages", *[json.dumps({"v": 1, "source": "rm.users.bob", "timestamp": 1, "payload": f"q{n}"}) for n in range(4)])
    daemon = await daemon_factory()
    before = await scrape(daemon.port)
    assert before["redmessenger_messages_delivered_total"] == 0
    assert before["redmessenger_delivery_latency_seconds_count"] == 0
    assert before['redmessenger_refusals_total{reason="INVALID_IDENTIFIER"}'] == 0

    alice = await daemon.client("alice")
    published_at = daemon.service.reactor.seconds()
    for n in range(3):
        redis.publish("rm.users.alice", f"live {n}")
    redis.publish("rm.users.carol", "for later")
    await alice.receive(3)
    received_at = daemon.service.reactor.seconds()
    bob = await daemon.client("bob")
    await bob.receive(4)
    refused = await daemon.client()
    refused.send("not a valid uid!")
    code, _ = await refused.close_code()
    assert code == 4400
    await daemon.idle()

    after = await scrape(daemon.port)
    assert after["redmessenger_messages_published_total"] == 4
    assert after["redmessenger_messages_delivered_total"] == 3
    assert after["redmessenger_messages_queued_total"] == 1
    assert after["redmessenger_messages_handed_over_total"] == 4
    assert after["redmessenger_identifications_total"] == 2
    assert after['redmessenger_refusals_total{reason="INVALID_IDENTIFIER"}'] == 1
    assert after['redmessenger_sockets_open{dialect="websocket"}'] == 2
    assert after['redmessenger_sockets_open{dialect="socketio"}'] == 0
    assert after["redmessenger_connections"] == 2
    assert after["redmessenger_connections_refused_total"] == 0
    assert after["redmessenger_sockets_identified"] == 2
    assert after["redmessenger_users_online"] == 2
    assert after["redmessenger_connection_limit"] == daemon.service.config.conn_limit
    # one latency observation per live message, from publish time: well inside the last bucket
    assert after["redmessenger_delivery_latency_seconds_count"] == 3
    assert after['redmessenger_delivery_latency_seconds_bucket{le="10.0"}'] == 3
    # each from its PUBLISH (timestamps in whole milliseconds) to its delivery, within what the test saw
    assert 0 < after["redmessenger_delivery_latency_seconds_sum"] <= 3 * (received_at - published_at + 0.001)
    assert after['redmessenger_info{version="0.1.0"}'] == 1
    assert after["process_open_fds"] > 0
    alice.close()
    bob.close()


@pytest_twisted.ensureDeferred
async def test_each_daemon_has_its_own_metrics(daemon_factory: Any, redis: valkey.Valkey) -> None:
    first = await daemon_factory()
    second = await daemon_factory()
    await first.until(lambda: len(first.service.peers.nodes) == 2, 5, "the first daemon to hear the second")
    uid = next(u for u in (f"alice{i}" for i in range(100)) if first.service.peers.owner(u) is None)  # the first's
    client = await first.client(uid)
    redis.publish(f"rm.users.{uid}", "one")
    await client.next()
    assert (await scrape(first.port))["redmessenger_identifications_total"] == 1
    assert (await scrape(second.port))["redmessenger_identifications_total"] == 0
    client.close()


@pytest_twisted.ensureDeferred
async def test_openmetrics_when_the_scraper_asks(daemon_factory: Any, redis: valkey.Valkey) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

    daemon = await daemon_factory()
    code, headers, body = await http_get(
        daemon.port, "/metrics", {b"accept": [b"application/openmetrics-text; version=1.0.0"]}
    )
    assert code == 200
    assert headers.getRawHeaders(b"content-type")[0].startswith(b"application/openmetrics-text")
    names = {family.name for family in parse_openmetrics(body.decode("utf-8"))}
    assert {"redmessenger_messages_delivered", "redmessenger_delivery_latency_seconds"} <= names
