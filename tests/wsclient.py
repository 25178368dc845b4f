"""A real WebSocket client (Autobahn, Twisted) that records what it receives."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, DeferredQueue


class ClientProtocol(WebSocketClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []
        self.queue: DeferredQueue[Any] = DeferredQueue()
        self.closed: Deferred[tuple[int | None, str | None]] = Deferred()

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        self.received.append(message)
        self.queue.put(message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"handshake failed: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback((code, reason))


class WebSocketClient:
    """What tests use: send, receive with a timeout, see the close code."""

    def __init__(self, protocol: ClientProtocol) -> None:
        self.protocol = protocol

    @property
    def received(self) -> list[Any]:
        return self.protocol.received

    def send(self, text: str) -> None:
        self.protocol.sendMessage(text.encode("utf-8"))

    def send_binary(self, data: bytes) -> None:
        self.protocol.sendMessage(data, isBinary=True)

    async def next(self, timeout: float = 5.0) -> Any:
        from twisted.internet import reactor

        d = self.protocol.queue.get()
        d.addTimeout(timeout, reactor)
        return await d

    async def receive(self, count: int, timeout: float = 10.0) -> list[Any]:
        return [await self.next(timeout) for _ in range(count)]

    async def close_code(self, timeout: float = 5.0) -> tuple[int | None, str | None]:
        from twisted.internet import reactor

        d = Deferred()
        self.protocol.closed.addBoth(lambda r: (d.callback(r) if not d.called else None, r)[1])
        d.addTimeout(timeout, reactor)
        return await d

    def close(self) -> None:
        if self.protocol.state == self.protocol.STATE_OPEN:
            self.protocol.sendClose(1000)

    def drop(self) -> None:
        """Vanish without a close handshake, as a crashed browser would."""
        self.protocol.transport.abortConnection()

    def drop_after(self, count: int) -> None:
        """Vanish as soon as ``count`` messages have been read (in the middle of a delivery)."""
        receive = self.protocol.onMessage

        def on_message(payload: bytes, is_binary: bool) -> None:
            receive(payload, is_binary)
            if len(self.received) == count:
                self.drop()

        self.protocol.onMessage = on_message  # type: ignore[method-assign]

    def attached(self, presence: Any, uid: str) -> bool:
        user = presence.get(uid)
        return user is not None and any(a.sink.client_address.endswith(f":{self.local_port}") for a in user.attachments)

    @property
    def local_port(self) -> int:
        return int(self.protocol.transport.getHost().port)


async def connect_client(url: str, origin: str | None = None, timeout: float = 5.0) -> WebSocketClient:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    parsed = urlparse(url)
    factory = WebSocketClientFactory(url, origin=origin)
    # Autobahn's client waits 1 s for the server's close frame, then drops the connection (1006 on the server):
    # on a loaded CI machine a reactor turn can take that long.  The tests that mean to vanish use drop().
    factory.setProtocolOptions(closeHandshakeTimeout=10)
    factory.protocol = ClientProtocol
    factory.opened = Deferred()
    factory.opened.addTimeout(timeout, reactor)
    endpoint = TCP4ClientEndpoint(reactor, parsed.hostname, parsed.port, timeout=timeout)
    await endpoint.connect(factory)
    protocol = await factory.opened
    return WebSocketClient(protocol)


class AckingClient:
    """A version-1 client that acknowledges every message as its code handles it, across daemons."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.received: list[dict] = []
        self.client = None

    async def connect(self, url: str) -> None:
        client = await connect_client(url)
        handle = client.protocol.onMessage

        def on_message(payload: bytes, is_binary: bool) -> None:
            handle(payload, is_binary)
            frame = json.loads(payload)
            if frame.get("type") == "message":
                self.received.append(frame)
                client.send(json.dumps({"type": "ack", "id": frame["id"]}))

        client.protocol.onMessage = on_message  # type: ignore[method-assign]
        client.send(json.dumps({"type": "hello", "v": 1, "uid": self.uid}))
        self.client = client
