"""
Revision 3 on a WebSocket confirms with WebSocket pings (it has no ping the server
can send): only the pong to a ping the client read counts.  RFC 6455 lets a client
send pongs unasked, with any payload, so the ping's token is random: a client cannot
answer a ping it has not read, with the count of packets written before it or
anything else.  In memory first (a Clock, fake WebSockets), then against the daemon
with a real client that stops reading.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, DeferredQueue

from redmessenger.dialects.engineio.codec import Packet, PacketType

from ..conftest import HOST, publish, wait_until
from .test_engineio_session import FakeWebSocket, Poll, make, message

# -- in memory ------------------------------------------------------------------------------------


def test_a_pong_with_the_count_written_or_any_other_guess_confirms_nothing():
    clock, server, session = make(3, ws := FakeWebSocket())
    session.send(message("a"))
    confirmed: list[bool] = []
    session.confirm().addCallback(confirmed.append)
    [token] = ws.pings
    for guess in (session._written, session._receipts.sent + 1, 2**64 - 1, token ^ 1, 0):
        session.websocket_pong(ws, guess)
    assert confirmed == [] and not session.all_confirmed, "no guess answers the ping"
    session.websocket_pong(ws, token)
    assert confirmed == [True] and session.all_confirmed
    session.abort("test")


def test_a_pong_sent_before_the_ping_confirms_nothing():
    """The client answers the next ping before it is even written, with the token the old counting would give it."""
    clock, server, session = make(3, ws := FakeWebSocket())
    session.send(message("a"))
    session.websocket_pong(ws, session._written)
    confirmed: list[bool] = []
    session.confirm().addCallback(confirmed.append)
    assert confirmed == [] and len(ws.pings) == 1
    session.websocket_pong(ws, session._written)  # again, after the ping was written and not read
    assert confirmed == []
    session.websocket_pong(ws, ws.pings[0])
    assert confirmed == [True]
    session.abort("test")


def test_the_pong_to_the_latest_ping_answers_the_ones_before():
    """RFC 6455 (5.5.3): a client may answer only the latest of several pings; an answered token counts once."""
    clock, server, session = make(3, ws := FakeWebSocket())
    waiting: list[list[bool]] = []
    for text in ("a", "b", "c"):
        session.send(message(text))
        waiting.append([])
        session.confirm().addCallback(waiting[-1].append)
    assert len(set(ws.pings)) == 3
    session.websocket_pong(ws, ws.pings[1])
    assert waiting == [[True], [True], []]
    session.websocket_pong(ws, ws.pings[0])  # answered already: nothing more
    assert waiting[2] == [] and session._receipts._tokens == [(ws.pings[2], 4)]
    session.websocket_pong(ws, ws.pings[2])
    assert waiting[2] == [True] and session.all_confirmed
    session.abort("test")


def test_a_client_that_answers_no_ping_holds_the_latest_few_and_the_latest_answer_still_confirms():
    from redmessenger.dialects.engineio.receipts import MAX_PINGS

    clock, server, session = make(3, ws := FakeWebSocket())
    waiting: list[list[bool]] = []
    for n in range(10 * MAX_PINGS):
        session.send(message(f"m{n}"))
        waiting.append([])
        session.confirm().addCallback(waiting[-1].append)
    assert len(ws.pings) == 10 * MAX_PINGS and len(session._receipts._tokens) == MAX_PINGS, "bounded"
    session.websocket_pong(ws, ws.pings[0])  # forgotten: confirms nothing
    assert not any(waiting)
    session.websocket_pong(ws, ws.pings[-1])
    assert all(w == [True] for w in waiting) and session.all_confirmed
    session.abort("test")


def test_the_ping_after_an_upgrade_has_a_random_token_too():
    """What was buffered during the upgrade, with a confirmation waiting: a WebSocket ping after it."""
    clock, server, session = make(3)
    session.poll(Poll())  # the handshake
    session.attach_probe(ws := FakeWebSocket())
    session.websocket_packet(ws, Packet(PacketType.PING, "probe"))
    session.send(message("buffered"))
    confirmed: list[bool] = []
    session.confirm().addCallback(confirmed.append)
    session.websocket_packet(ws, Packet(PacketType.UPGRADE))
    assert ws.written == ["3probe", "4buffered"] and len(ws.pings) == 1
    session.websocket_pong(ws, session._written)
    assert confirmed == []
    session.websocket_pong(ws, ws.pings[0])
    assert confirmed == [True]
    session.abort("test")


# -- against the daemon ---------------------------------------------------------------------------

NAMESPACE = "/rm"


class _Frames(WebSocketClientProtocol):
    """A raw Engine.IO client: the text frames it reads, in a queue; Autobahn answers pings as it reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: DeferredQueue[str] = DeferredQueue()
        self.closed: Deferred[int | None] = Deferred()

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.put(payload.decode("utf-8"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"handshake failed: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback(code)


async def _connect(port: int) -> _Frames:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    factory = WebSocketClientFactory(f"ws://{HOST}:{port}/socket.io/?EIO=3&transport=websocket")
    factory.setProtocolOptions(closeHandshakeTimeout=10)
    factory.protocol = _Frames
    factory.opened = Deferred()
    factory.opened.addTimeout(5, reactor)
    await TCP4ClientEndpoint(reactor, HOST, port, timeout=5).connect(factory)
    return await factory.opened


async def _next(client: _Frames) -> str:
    from twisted.internet import reactor

    frame = client.frames.get()
    frame.addTimeout(5, reactor)
    return await frame


@pytest_twisted.ensureDeferred
async def test_a_client_that_reads_nothing_cannot_confirm_with_a_pong_it_guessed(daemon: Any, redis: Any) -> None:
    """
    A revision-3 client on a WebSocket stops reading; a message is written to it, and
    the ping that asks for its confirmation.  It sends pongs it guessed (the count of
    packets written before the ping, the largest token there is): the message stays
    unconfirmed.  Once it reads again, its own pong to the ping confirms the message.
    """
    client = await _connect(daemon.port)
    assert (await _next(client)).startswith('0{"sid"')
    assert await _next(client) == "40"
    client.sendMessage(f"40{NAMESPACE},".encode())
    assert (await _next(client)).startswith(f"40{NAMESPACE}")
    client.sendMessage(f'42{NAMESPACE},1["identifier","user1"]'.encode())
    assert await _next(client) == f'43{NAMESPACE},1[{{"uid":"user1"}}]'
    (session,) = daemon.service.socketio.engine.sessions()
    attachment = daemon.service.presence.get("user1").attachments[0]
    server = session._websocket
    pongs: list[int] = []
    pong_received = server.pong_received

    def counted(token: int) -> None:
        pongs.append(token)
        pong_received(token)

    server.pong_received = counted

    client.transport.pauseProducing()
    publish(redis, "rm.users.user1", "one")
    await wait_until(lambda: session._receipts.waiting, 5, "the core asking for a confirmation: a ping")
    assert attachment.unconfirmed and not session.all_confirmed
    guesses = [session._written, 2**64 - 1]
    for guess in guesses:
        client.sendPong(struct.pack(">Q", guess))
    await wait_until(lambda: len(pongs) == len(guesses), 5, "the guessed pongs read")
    assert session._receipts.waiting and not session.all_confirmed, "a pong to a ping not read confirms nothing"
    assert attachment.unconfirmed

    client.transport.resumeProducing()
    frame = await _next(client)
    assert frame.startswith(f'42{NAMESPACE},["message",') and '"one"' in frame
    await wait_until(lambda: session.all_confirmed and not attachment.unconfirmed, 5, "the answer to the ping read")
    assert len(pongs) == len(guesses) + 1
    client.sendClose(1000)
    await client.closed
    await wait_until(lambda: daemon.service.presence.get("user1") is None, 5, "user1 offline")
