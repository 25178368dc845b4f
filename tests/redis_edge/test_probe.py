"""
The pub/sub probe: a subscription that dies without a word (a proxy or NAT that
stops forwarding and never closes) is noticed, shown in /health, and opened again.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.protocols.portforward import ProxyClient, ProxyClientFactory, ProxyFactory, ProxyServer

from ..conftest import HOST, publish, wait_until
from ..httpclient import http_get


class FreezableProxy:
    """A TCP proxy in front of Redis whose connections can be frozen: nothing more from Redis gets through."""

    def __init__(self, redis_port: int) -> None:
        proxy = self
        self.connections: list[Any] = []

        class Server(ProxyServer):
            said = b""

            def connectionMade(self) -> None:
                proxy.connections.append(self)
                super().connectionMade()

            def dataReceived(self, data: bytes) -> None:
                self.said += data[:200]
                super().dataReceived(data)

        self.factory = ProxyFactory(HOST, redis_port)
        self.factory.protocol = Server
        self.port_number = 0
        self.listening: Any = None

    def listen(self) -> None:
        from twisted.internet import reactor

        self.listening = reactor.listenTCP(self.port_number, self.factory, interface=HOST)
        self.port_number = self.listening.getHost().port

    async def stop_listening(self) -> None:
        await self.listening.stopListening()

    def subscriber(self) -> Any:
        (found,) = [c for c in self.connections if b"PSUBSCRIBE" in c.said and c.transport.connected]
        return found

    def freeze(self, connection: Any) -> None:
        connection.peer.transport.pauseProducing()  # reads nothing more from Redis: the daemon hears nothing

    def close_all(self) -> None:
        for connection in self.connections:
            if connection.transport.connected:
                connection.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_a_silently_dead_subscription_is_noticed_reported_and_opened_again(daemon_factory, redis, redis_server):
    proxy = FreezableProxy(redis_server.port)
    proxy.listen()
    daemon = None
    try:
        daemon = await daemon_factory(redis_port=proxy.port_number, redis_probe_interval=0.3)
        link = daemon.service.link
        await wait_until(lambda: link.state.probe_heard_at is not None, 5, "a probe heard")
        pia = await daemon.client("pia")
        publish(redis, "rm.users.pia", "before")
        assert [m["payload"] for m in await pia.receive(1)] == ["before"]

        frozen = proxy.subscriber()
        await proxy.stop_listening()  # and no new connection gets through for now
        proxy.freeze(frozen)
        await wait_until(lambda: link.state.probe_silences == 1, 5, "the silence noticed")
        await wait_until(lambda: not frozen.transport.connected, 5, "the dead subscription closed")
        code, _, body = await http_get(daemon.port, "/health")
        health = json.loads(body)
        assert code == 503 and "pub/sub silent" in health["reason"] and health["redis"]["probe_silences"] == 1, health

        proxy.listen()  # the network is back
        await wait_until(lambda: link.ready, 10, "subscribed again")
        code, _, body = await http_get(daemon.port, "/health")
        assert code == 200, body
        publish(redis, "rm.users.pia", "after")
        assert [m["payload"] for m in await pia.receive(1)] == ["after"]
        assert [m["payload"] for m in pia.received] == ["before", "after"]
        assert link.state.probe_silences == 1, "a live subscription is never taken for a dead one"
        pia.close()
        await pia.close_code()
    finally:
        if daemon is not None and daemon.service.running:
            await daemon.service.stopService()  # while its connections through the proxy are up
        if proxy.listening is not None and proxy.listening.connected:
            await proxy.stop_listening()
        proxy.close_all()
