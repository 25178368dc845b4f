"""
The page-reload handover path of ``Handovers.identified``: a socket identifies
while the queue handover to the user's previous socket is still running, after
that socket went away.  The new socket takes the rest of the queue over once
the old handover has settled (``_Handover.waiting``), and the live messages that
arrive meanwhile wait for it (``held``), so that the queue still comes first.

The old handover outlives its socket only while it waits for Redis (a drop
while it waits for the client's pong ends it in the same turn), so the test
holds it there deterministically: the daemon talks to the real valkey-server
through a TCP relay, and the relay holds back Redis's replies on the command
connection (not on the subscriber's) while the page "reloads".  The client's
pong for the first batch is held until then, so the reply held is the TAKE's
that trims the first batch and reads the next one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.protocols import portforward

from .conftest import HOST, RedisServer, publish

QUEUE = "rm:users:{}:messages"
BATCH = 50
TOTAL = 500


class _FromDaemon(portforward.ProxyServer):
    #: Whether this connection is the daemon's subscriber (its replies are never held).
    subscriber = False

    def dataReceived(self, data: bytes) -> None:
        if b"SUBSCRIBE" in data.upper():
            self.subscriber = True
        super().dataReceived(data)


class _FromRedis(portforward.ProxyClient):
    def dataReceived(self, data: bytes) -> None:
        relay: RedisRelay = self.peer.factory
        if relay.holding and not self.peer.subscriber:
            relay.held.append((self, data))
        else:
            super().dataReceived(data)


class _FromRedisFactory(portforward.ProxyClientFactory):
    protocol = _FromRedis
    noisy = False


class RedisRelay(portforward.ProxyFactory):
    """A TCP relay to Redis that can hold back the replies on command connections."""

    protocol = _FromDaemon
    noisy = False

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.holding = False
        self.held: list[tuple[_FromRedis, bytes]] = []

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        held, self.held = self.held, []
        for connection, data in held:
            portforward.ProxyClient.dataReceived(connection, data)


_FromDaemon.clientProtocolFactory = _FromRedisFactory


@pytest_twisted.async_yield_fixture
async def relay(redis_server: RedisServer) -> AsyncIterator[tuple[RedisRelay, int]]:
    """Set up before (so torn down after) the daemons that use it."""
    from twisted.internet import reactor

    factory = RedisRelay(HOST, redis_server.port)
    port = reactor.listenTCP(0, factory, interface=HOST)
    yield factory, port.getHost().port
    factory.release()
    await port.stopListening()


def entry(n: int) -> str:
    return json.dumps({"v": 1, "source": "rm.users.user1", "timestamp": n, "payload": f"q{n}"})


def payloads(messages: list[dict[str, Any]]) -> list[str]:
    return [m["payload"] for m in messages]


@pytest_twisted.ensureDeferred
async def test_a_socket_identifying_after_the_receiving_one_dropped_takes_the_rest_of_the_queue(relay, daemon_factory, redis):
    relay, relay_port = relay
    daemon = await daemon_factory(redis_port=relay_port, handover_batch=BATCH)
    hub = daemon.service.hub
    presence = daemon.service.presence
    redis.rpush(QUEUE.format("user1"), *[entry(n) for n in range(TOTAL)])
    everything = [f"q{n}" for n in range(TOTAL)]

    first = await daemon.client()
    pings: list[bytes] = []
    first.protocol.onPing = pings.append  # the pong that confirms the first batch waits for the test
    first.send("user1")
    await daemon.until(lambda: len(first.received) == BATCH and pings, what="the first batch and its ping")

    relay.hold()
    first.protocol.sendPong(pings[0])
    await daemon.until(lambda: relay.held, what="the reply to the TAKE that trims the first batch, held back")
    first.drop()  # the page reloads: no close handshake
    await daemon.until(lambda: presence.get("user1") is None, what="the daemon to see the old socket gone")
    assert hub.handovers.running == 1, "the old handover is still waiting for Redis"

    second = await daemon.client("user1")  # identifies while the old handover has not settled
    publish(redis, "rm.users.user1", "live")  # arrives before the queue: must wait for it
    await daemon.until(lambda: hub.counters.delivered == 1, what="the live message given to the new socket")
    relay.release()

    assert payloads(await second.receive(TOTAL - BATCH + 1)) == everything[BATCH:] + ["live"]
    assert payloads(first.received) == everything[:BATCH]
    await daemon.idle()
    (attachment,) = presence.get("user1").attachments
    await daemon.until(lambda: not attachment.unconfirmed and not attachment.confirming, what="the live message confirmed")
    assert len(second.received) == TOTAL - BATCH + 1, "nothing delivered twice"
    assert not redis.exists(QUEUE.format("user1")), "the confirmed queue leaves Redis"
    second.close()
