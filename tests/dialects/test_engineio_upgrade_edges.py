"""
The upgrade from long-polling to WebSocket as the engine.io-protocol test suite
checks it (its test-suite/test-suite.js, "upgrade"), for clients that do not keep
a poll pending during the probe as socket.io-client does (other languages,
proxies that retry):

1. a new GET after ``3probe`` is answered at once (``6``, noop), so that the
   polling transport can end cleanly;
2. a GET (or POST) with the sid once upgraded is refused with HTTP 400;
3. another WebSocket with the sid of a session that is upgrading or upgraded is
   accepted and closed, and the session goes on undisturbed.

The clients are real: the `websockets` library (its synchronous client, run in
threads so the reactor keeps serving the daemon) and Twisted's HTTP client.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from ..conftest import HOST, publish, wait_until
from ..httpclient import read_body

PATH = "/socket.io/"
NAMESPACE = "/rm"


async def request(
    port: int, method: str, query: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """One HTTP request on its own connection; its answer must come within ``timeout`` seconds."""
    from io import BytesIO

    from twisted.internet import reactor
    from twisted.web.client import Agent, FileBodyProducer, ResponseNeverReceived
    from twisted.web.http_headers import Headers

    agent = Agent(reactor, connectTimeout=5)
    producer = FileBodyProducer(BytesIO(body)) if body is not None else None
    d = agent.request(method.encode(), f"http://{HOST}:{port}{PATH}?{query}".encode(), Headers(), producer)
    d.addTimeout(timeout, reactor)
    try:
        response = await d
    except ResponseNeverReceived:
        raise AssertionError(f"no answer to {method} ?{query} within {timeout}s") from None
    return response.code, await read_body(response)


def packets(version: int, body: bytes) -> list[str]:
    """A polling payload's packets (ASCII content in these tests)."""
    text = body.decode()
    if version >= 4:
        return text.split("\x1e")
    found = []
    while text:
        length, _, rest = text.partition(":")
        found.append(rest[: int(length)])
        text = rest[int(length) :]
    return found


def payload(version: int, *texts: str) -> bytes:
    """A polling payload of ``texts`` (ASCII)."""
    if version >= 4:
        return "\x1e".join(texts).encode()
    return "".join(f"{len(text)}:{text}" for text in texts).encode()


async def handshake(port: int, version: int) -> str:
    """
    Open a polling session, as the suite's ``initLongPollingSession``; no GET is
    left pending.  Revision 3 asks for text payloads (``b64=1``), as the suite's
    Node client does: these tests read them as text.
    """
    code, body = await request(port, "GET", f"EIO={version}&transport=polling" + ("&b64=1" if version == 3 else ""))
    assert code == 200
    return json.loads(packets(version, body)[0][1:])["sid"]


class Socket:
    """A WebSocket of the `websockets` library; every blocking call runs in a thread."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self._context = connect(url, open_timeout=5, close_timeout=5)
        self.connection = self._context.__enter__()

    @classmethod
    async def open(cls, port: int, version: int, sid: str) -> Socket:
        from twisted.internet.threads import deferToThread

        return await deferToThread(cls, f"ws://{HOST}:{port}{PATH}?EIO={version}&transport=websocket&sid={sid}")

    async def send(self, *texts: str) -> None:
        from twisted.internet.threads import deferToThread

        for text in texts:
            await deferToThread(self.connection.send, text)

    async def recv(self, timeout: float = 5.0) -> str:
        from twisted.internet.threads import deferToThread

        return str(await deferToThread(self.connection.recv, timeout))

    async def closed_by_server(self, timeout: float = 5.0) -> int | None:
        """The code of the close the server starts (a frame instead raises AssertionError)."""
        from twisted.internet.threads import deferToThread
        from websockets.exceptions import ConnectionClosed

        try:
            frame = await deferToThread(self.connection.recv, timeout)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None
        raise AssertionError(f"expected the server to close the socket, got {frame!r}")

    async def close(self) -> None:
        from twisted.internet.threads import deferToThread

        await deferToThread(self._context.__exit__, None, None, None)


async def upgrade(ws: Socket) -> None:
    """
    Probe, upgrade, and connect to the namespace over the WebSocket: its answer
    shows the client that the server has switched the session to the WebSocket.
    """
    await ws.send("2probe")
    assert await ws.recv() == "3probe"
    await ws.send("5", f"40{NAMESPACE},")
    assert (await ws.recv()).startswith(f"40{NAMESPACE},")


async def identify(ws: Socket, uid: str) -> None:
    await ws.send(f'42{NAMESPACE},1["identifier","{uid}"]')
    assert await ws.recv() == f'43{NAMESPACE},1[{{"uid":"{uid}"}}]'


def event(frame: str) -> Any:
    assert frame.startswith(f"42{NAMESPACE},"), frame
    return json.loads(frame[len(f"42{NAMESPACE},") :])


# -- 1. a new poll during the probe ---------------------------------------------------------


@pytest.mark.parametrize("version", [4, 3])
@pytest_twisted.ensureDeferred
async def test_a_new_poll_after_the_probe_is_answered_at_once_with_a_noop(daemon, version):
    """The suite's "successfully upgrades from HTTP long-polling to WebSocket"."""
    sid = await handshake(daemon.port, version)
    query = f"EIO={version}&transport=polling&sid={sid}"
    ws = await Socket.open(daemon.port, version, sid)
    await ws.send("2probe")
    assert await ws.recv() == "3probe"
    code, body = await request(daemon.port, "GET", query)
    assert (code, packets(version, body)) == (200, ["6"])
    # the upgrade completes, and the session works on the WebSocket
    await ws.send("5", f"40{NAMESPACE},")
    assert (await ws.recv()).startswith(f"40{NAMESPACE},")
    session = daemon.service.socketio.engine.get(sid)
    assert session is not None and session.transport == "websocket" and session.is_open
    await ws.close()


@pytest.mark.parametrize("version", [4, 3])
@pytest_twisted.ensureDeferred
async def test_a_new_poll_after_the_probe_gets_the_packets_waiting_for_it(daemon, version):
    """What is buffered when the GET comes goes in its answer, as with the GET pending at the probe."""
    sid = await handshake(daemon.port, version)
    query = f"EIO={version}&transport=polling&sid={sid}"
    ws = await Socket.open(daemon.port, version, sid)
    await ws.send("2probe")
    assert await ws.recv() == "3probe"
    # the namespace's connect reply waits in the buffer: no GET is pending
    code, body = await request(daemon.port, "POST", query, payload(version, f"40{NAMESPACE},"))
    assert (code, body) == (200, b"ok")
    code, body = await request(daemon.port, "GET", query)
    assert code == 200
    [connected] = packets(version, body)
    assert connected.startswith(f"40{NAMESPACE},")
    await ws.send("5")
    await identify(ws, "user1")
    await ws.close()


# -- 2. polling once upgraded ----------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 3])
@pytest_twisted.ensureDeferred
async def test_polling_with_an_upgraded_sid_is_refused_with_400(daemon, version):
    """The suite's "ignores HTTP requests with same sid after upgrade"."""
    sid = await handshake(daemon.port, version)
    query = f"EIO={version}&transport=polling&sid={sid}"
    ws = await Socket.open(daemon.port, version, sid)
    await upgrade(ws)
    code, body = await request(daemon.port, "GET", query)
    assert code == 400 and json.loads(body)["code"] == 3
    code, body = await request(daemon.port, "POST", query, payload(version, "6"))
    assert code == 400 and json.loads(body)["code"] == 3
    # the session is undisturbed
    await identify(ws, "user1")
    session = daemon.service.socketio.engine.get(sid)
    assert session is not None and session.transport == "websocket" and session.is_open
    await ws.close()


# -- 3. another WebSocket with the sid -------------------------------------------------------


@pytest.mark.parametrize("when", ["upgraded", "probing"])
@pytest.mark.parametrize("version", [4, 3])
@pytest_twisted.ensureDeferred
async def test_another_websocket_with_the_sid_is_closed_and_the_session_goes_on(daemon, redis, version, when):
    """
    The suite's "ignores WebSocket connection with same sid after upgrade"
    ("probing": opened between ``3probe`` and ``5``).  The first WebSocket keeps
    the session: a message published to its user arrives there once.
    """
    sid = await handshake(daemon.port, version)
    first = await Socket.open(daemon.port, version, sid)
    if when == "upgraded":
        await upgrade(first)
    else:
        await first.send("2probe")
        assert await first.recv() == "3probe"
    second = await Socket.open(daemon.port, version, sid)
    assert await second.closed_by_server() == 1000
    if when == "probing":
        await first.send("5", f"40{NAMESPACE},")
        assert (await first.recv()).startswith(f"40{NAMESPACE},")
    await identify(first, "user1")
    session = daemon.service.socketio.engine.get(sid)
    assert session is not None and session.transport == "websocket" and session.is_open
    user = daemon.service.presence.get("user1")
    assert user is not None and len(user.attachments) == 1
    assert daemon.service.limit.in_use == 1
    publish(redis, "rm.users.user1", "one")
    publish(redis, "rm.users.user1", "two")
    received = [event(await first.recv()), event(await first.recv())]
    assert [(name, envelope["payload"]) for name, envelope in received] == [("message", "one"), ("message", "two")]
    # nothing else is on its way: the answer to a round trip comes next, with no duplicate before it
    await first.send("40/other,")
    assert (await first.recv()).startswith("44/other,")
    await first.close()
    await wait_until(lambda: daemon.service.presence.get("user1") is None, 5, "user1 offline")


@pytest.mark.parametrize("sid", ["unknown", "other-revision"])
@pytest_twisted.ensureDeferred
async def test_a_websocket_with_an_unknown_sid_is_still_refused_with_400(daemon, sid):
    from websockets.exceptions import InvalidStatus

    if sid == "other-revision":
        sid = await handshake(daemon.port, 3)
    with pytest.raises(InvalidStatus) as refused:
        await Socket.open(daemon.port, 4, sid)
    assert refused.value.response.status_code == 400
    assert len(daemon.service.socketio.engine) == (1 if sid != "unknown" else 0)


# -- 4. a probe that sends what is not Engine.IO ---------------------------------------------


@pytest.mark.parametrize("frame", ["empty text", "binary"])
@pytest.mark.parametrize("version", [4, 3])
@pytest_twisted.ensureDeferred
async def test_a_probe_that_sends_what_is_not_engineio_is_closed_and_the_session_goes_on_polling(daemon, version, frame):
    """
    An empty text frame or a binary frame on the probe (after ``3probe``) closes the
    probe (1002, 1003), as any other packet out of place does; the session goes on
    polling: it connects to the namespace and identifies over its polls.
    """
    from twisted.internet.threads import deferToThread

    sid = await handshake(daemon.port, version)
    query = f"EIO={version}&transport=polling&sid={sid}"
    ws = await Socket.open(daemon.port, version, sid)
    await ws.send("2probe")
    assert await ws.recv() == "3probe"
    await deferToThread(ws.connection.send, "" if frame == "empty text" else b"5")
    assert await ws.closed_by_server() == (1002 if frame == "empty text" else 1003)
    session = daemon.service.socketio.engine.get(sid)
    assert session is not None and session.is_open and session.transport == "polling"
    code, body = await request(daemon.port, "POST", query, payload(version, f"40{NAMESPACE},", f'42{NAMESPACE},1["identifier","user1"]'))
    assert (code, body) == (200, b"ok")
    await wait_until(lambda: daemon.service.presence.get("user1") is not None, 5, "user1 online")
    code, body = await request(daemon.port, "GET", query)
    assert code == 200
    connected, acknowledged = packets(version, body)
    assert connected.startswith(f"40{NAMESPACE},") and acknowledged == f'43{NAMESPACE},1[{{"uid":"user1"}}]'
    assert daemon.service.limit.in_use == 1
    await ws.close()
