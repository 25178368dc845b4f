"""
What a refused or misbehaving Socket.IO client costs the daemon, against the daemon
with a raw WebSocket client (RFC 6455 frames written and read by tests/fuzzing.py's
codec, independent of Autobahn) or Twisted's HTTP client:

- after a refusal the session waits for the client to confirm the report, at most
  ``ping_timeout`` seconds: a client that never answers a WebSocket ping does not keep
  its ``conn_limit`` slot by pinging on its own;
- a WebSocket client that sends while too much written to it waits unread is told
  (the error object), counted as a refusal and closed with 4413, as over long-polling;
- packets out of place and connects to other namespaces, however many, are a few log lines.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

from ..conftest import HOST
from ..fuzzing import CLOSE, PING, TEXT, Frame, close_code, decode_frames, encode_frame, events_logged
from .test_engineio_http import request

NAMESPACE = "/rm"


class RawWebSocket(Protocol):
    """A WebSocket client that answers no ping and records every frame it reads."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.frames: list[Frame] = []
        self.opened: Deferred[bytes] = Deferred()
        self._handshaken = False
        self._unread = b""

    @classmethod
    async def open(cls, port: int, path: str) -> RawWebSocket:
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        client = cls(path)
        await connectProtocol(TCP4ClientEndpoint(reactor, HOST, port, timeout=5), client)
        status = await client.opened.addTimeout(5, reactor)
        assert status.startswith(b"HTTP/1.1 101"), status
        return client

    def connectionMade(self) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def dataReceived(self, data: bytes) -> None:
        self._unread += data
        if not self._handshaken:
            head, separator, rest = self._unread.partition(b"\r\n\r\n")
            if not separator:
                return
            self._handshaken, self._unread = True, rest
            self.opened.callback(head.split(b"\r\n")[0])
        frames, self._unread = decode_frames(self._unread)
        self.frames.extend(frames)

    def send(self, text: str) -> None:
        self.transport.write(encode_frame(TEXT, text.encode()))

    @property
    def texts(self) -> list[str]:
        return [frame.payload.decode() for frame in self.frames if frame.opcode == TEXT]

    def count(self, opcode: int) -> int:
        return sum(1 for frame in self.frames if frame.opcode == opcode)

    @property
    def close_code(self) -> int | None:
        (close,) = [frame for frame in self.frames if frame.opcode == CLOSE]
        return close_code(close)


def report(frame: str) -> tuple[str, Any]:
    """A Socket.IO packet's head (``42/rm``) and its JSON data."""
    head, _, data = frame.partition(",")
    return head, json.loads(data)


# -- 1. the wait for the report's confirmation is bounded ----------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_refused_engineio3_websocket_that_answers_no_ping_gives_its_slot_back_after_ping_timeout(daemon_factory):
    """
    The reviewer's client: refused (a wrong key), it never answers the WebSocket ping
    that asks it to confirm the report, and keeps sending its own Engine.IO 3 pings,
    each of which keeps a revision-3 WebSocket session alive.  The session ends anyway,
    ``ping_timeout`` seconds after the refusal, and gives its ``conn_limit`` slot back.
    """
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    daemon = await daemon_factory(ping_interval=0.5, secure_mode=True)  # pingTimeout 0.5 s; silent for 1 s: gone
    engine, limit = daemon.service.socketio.engine, daemon.service.limit
    ws = await RawWebSocket.open(daemon.port, "/socket.io/?EIO=3&transport=websocket")
    heartbeat = LoopingCall(ws.send, "2")  # the client's heartbeat, every 0.2 s: the session never times out
    heartbeat.clock = reactor
    heartbeat.start(0.2)
    try:
        ws.send(f"40{NAMESPACE},")
        ws.send(f'42{NAMESPACE},["identifier","user1:wrong"]')
        await daemon.until(lambda: ws.count(CLOSE) == 1, 5, "the server to end the session")
    finally:
        heartbeat.stop()
    assert ws.close_code == 1000
    assert ws.count(PING) == 1, "the one ping asking for a confirmation, never answered"
    texts = [text for text in ws.texts if text != "3"]  # (the answers to its pings)
    assert texts[1:3] == ["40", f"40{NAMESPACE},"] and texts[0].startswith("0{")
    error = {"code": 4401, "name": "BAD_KEY", "message": "authentication failed: wrong or missing key"}
    assert report(texts[3]) == (f"44{NAMESPACE}", error) and texts[4:] == [f"41{NAMESPACE},"]
    assert len(engine) == 0 and limit.in_use == 0, "the session ended and its slot is free"
    assert daemon.service.hub.counters.refused == {"BAD_KEY": 1}
    ws.transport.abortConnection()


# -- 2. too slow on a WebSocket: reported and counted --------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_websocket_client_that_sends_while_too_much_waits_unread_gets_the_error_and_4413(daemon):
    """
    The reviewer's client: identified, it stops reading and floods connects to another
    namespace, each answered with a refusal that piles up unread.  Past the factory's
    ``max_unsent_bytes`` (``max_pending_bytes`` + 1 MiB in production, lowered here) its
    next frame makes it too slow: as over long-polling, it gets the error object, the
    refusal is counted, and the WebSocket closes with 4413.
    """
    from redmessenger.transport.fastpath import unsent_bytes

    limit = 20_000
    socketio = daemon.service.socketio
    socketio.websockets.max_unsent_bytes = limit
    ws = await RawWebSocket.open(daemon.port, "/socket.io/?EIO=4&transport=websocket")
    ws.send(f"40{NAMESPACE},")
    ws.send(f'42{NAMESPACE},["identifier","user1"]')
    await daemon.until(lambda: daemon.service.presence.get("user1") is not None, 5, "user1 online")
    (session,) = socketio.engine.sessions()
    server = session._websocket
    server.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ws.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws.transport.pauseProducing()
    # Refusals (140 bytes each) until more than the limit waits unsent, ten at a time, each ten read before the next:
    # a frame the daemon reads once it has closed the socket drops the connection, and the report with it.
    flood = b"".join(encode_frame(TEXT, b"40/" + b"x" * 100 + b",") for _ in range(10))
    for sent in range(10, 100_000, 10):
        ws.transport.write(flood)
        await daemon.until(lambda: socketio.refused_namespaces == sent, 5, "the daemon to read them")
        if unsent_bytes(server.transport) > limit:
            break
    assert server.state == server.STATE_OPEN
    ws.send("6")  # anything (a noop)
    await daemon.until(lambda: server.state != server.STATE_OPEN, 5, "the daemon to close the socket")
    ws.transport.resumeProducing()
    await daemon.until(lambda: ws.count(CLOSE) == 1, 10, "the close frame read")
    assert ws.close_code == 4413
    texts = [text for text in ws.texts if not text.startswith("44/x")]
    assert len(texts) == 4, f"the open packet, the namespace's, the report, the ping asking to confirm it: {texts}"
    assert texts[0].startswith("0{") and texts[1].startswith(f"40{NAMESPACE},{{") and texts[3] == "2"
    head, (name, error) = report(texts[2])
    assert (head, name) == (f"42{NAMESPACE}", "error")
    unread = int(error["message"].removeprefix("too slow: it sends while ").removesuffix(" bytes sent to it wait unread"))
    assert unread > limit
    assert error == {"code": 4413, "name": "TOO_SLOW", "message": f"too slow: it sends while {unread} bytes sent to it wait unread"}
    assert daemon.service.hub.counters.refused == {"TOO_SLOW": 1}
    assert daemon.service.presence.get("user1") is None
    assert len(daemon.service.socketio.engine) == 0 and daemon.service.limit.in_use == 0
    ws.transport.abortConnection()


# -- 3. a flood of mistakes is a few log lines ----------------------------------------------------


def _lines(events: list[dict[str, Any]], words: str) -> list[int]:
    """The ``count`` field of the events logged whose format has ``words``."""
    return [event.get("count", 0) for event in events if words in str(event.get("log_format"))]


@pytest_twisted.ensureDeferred
async def test_open_and_upgrade_packets_out_of_place_are_a_few_log_lines_however_many(daemon_factory):
    """2500 open and upgrade packets in one POST are ignored, and logged as the 1st, the 1000th and the 2000th."""
    daemon = await daemon_factory(max_frame_bytes=65536)
    code, _, body = await request(daemon.port, "GET", "EIO=4&transport=polling")
    sid = json.loads(body[1:])["sid"]
    with events_logged() as events:
        code, _, body = await request(daemon.port, "POST", f"EIO=4&transport=polling&sid={sid}", "\x1e".join(["0", "5"] * 1250).encode())
    assert (code, body) == (200, b"ok")
    assert _lines(events, "unexpected {type} packet") == [1, 1000, 2000]
    session = daemon.service.socketio.engine.get(sid)
    assert session is not None and session.is_open, "ignored"


@pytest_twisted.ensureDeferred
async def test_connects_to_other_namespaces_are_a_few_log_lines_however_many(daemon_factory):
    """2500 connects to another namespace in one POST are each refused, and logged as the 1st, 1000th and 2000th."""
    daemon = await daemon_factory(max_frame_bytes=65536)
    code, _, body = await request(daemon.port, "GET", "EIO=4&transport=polling")
    query = f"EIO=4&transport=polling&sid={json.loads(body[1:])['sid']}"
    with events_logged() as events:
        code, _, body = await request(daemon.port, "POST", query, "\x1e".join(["40/x,"] * 2500).encode())
    assert (code, body) == (200, b"ok")
    assert _lines(events, "refusing namespace") == [1, 1000, 2000]
    code, _, body = await request(daemon.port, "GET", query)
    assert (code, body.decode().split("\x1e")) == (200, ['44/x,{"message":"Invalid namespace"}'] * 2500)
