"""
The Engine.IO server over plain HTTP, as the protocol documents and their
test suites (docs/engine.io-protocol/v3-test-suite, v4-test-suite) describe it:
handshakes, errors, polling, the revision-3 heartbeat, JSONP, CORS, payload
limits.  The client is Twisted's HTTP client, one request per connection.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import pytest_twisted

from ..conftest import HOST, wait_until
from ..httpclient import read_body

PATH = "/socket.io/"


async def request(
    port: int, method: str, query: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    from io import BytesIO

    from twisted.internet import reactor
    from twisted.web.client import Agent, FileBodyProducer
    from twisted.web.http_headers import Headers

    agent = Agent(reactor, connectTimeout=5)
    raw_headers = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
    producer = FileBodyProducer(BytesIO(body)) if body is not None else None
    d = agent.request(method.encode(), f"http://{HOST}:{port}{PATH}?{query}".encode(), raw_headers, producer)
    d.addTimeout(10, reactor)
    response = await d
    content = await read_body(response)
    flat = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, flat, content


def v3_packets(body: bytes) -> list[str]:
    """Split a revision-3 payload (ASCII content only in these tests)."""
    text, packets = body.decode(), []
    while text:
        length, _, rest = text.partition(":")
        packets.append(rest[: int(length)])
        text = rest[int(length) :]
    return packets


def v3_binary_packets(body: bytes) -> list[str]:
    """Split a revision-3 binary payload: ``00 <length in bytes, a byte per digit> ff <packet in UTF-8>`` repeated."""
    packets = []
    while body:
        assert body[0] == 0, "text packets only"
        separator = body.index(0xFF)
        length = int("".join(str(digit) for digit in body[1:separator]))
        packets.append(body[separator + 1 : separator + 1 + length].decode("utf-8"))
        body = body[separator + 1 + length :]
    return packets


async def handshake(port: int, version: int) -> tuple[str, list[str]]:
    """A session with text payloads: revision 3 clients without XHR2 send ``b64=1``."""
    code, headers, body = await request(port, "GET", f"EIO={version}&transport=polling&b64=1")
    assert code == 200
    packets = v3_packets(body) if version == 3 else body.decode().split("\x1e")
    return json.loads(packets[0][1:])["sid"], packets


@pytest_twisted.ensureDeferred
async def test_handshake_v4(daemon):
    code, headers, body = await request(daemon.port, "GET", "EIO=4&transport=polling&t=N8hyd6w")
    assert code == 200
    assert headers["content-type"] == "text/plain; charset=UTF-8"
    assert body.startswith(b"0")
    handshake = json.loads(body[1:])
    assert set(handshake) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
    assert handshake["upgrades"] == ["websocket"]
    assert handshake["maxPayload"] == daemon.service.config.max_frame_bytes
    assert len(handshake["sid"]) == 20
    assert daemon.service.limit.in_use == 1


@pytest_twisted.ensureDeferred
async def test_handshake_v3_connects_to_the_main_namespace_at_once(daemon):
    code, headers, body = await request(daemon.port, "GET", "EIO=3&transport=polling&b64=1")
    assert code == 200
    assert headers["content-type"] == "text/plain; charset=UTF-8"
    packets = v3_packets(body)
    handshake = json.loads(packets[0][1:])
    assert set(handshake) == {"sid", "upgrades", "pingInterval", "pingTimeout"}
    assert packets[1:] == ["40"], "Socket.IO protocol 4: the server connects every client to '/'"


@pytest_twisted.ensureDeferred
async def test_v3_clients_with_xhr2_get_binary_payloads(daemon, redis):
    """
    As engine.io does: a revision-3 handshake without ``b64=1`` comes from a client
    with XHR2, and every response of its session is a binary payload, lengths in
    bytes (issue 12: engine.io-client 1.8 cannot read a large text response).
    """
    code, headers, body = await request(daemon.port, "GET", "EIO=3&transport=polling")
    assert code == 200
    assert headers["content-type"] == "application/octet-stream"
    packets = v3_binary_packets(body)
    sid = json.loads(packets[0][1:])["sid"]
    assert body.startswith(b"\x00" + bytes(int(d) for d in str(len(packets[0]))) + b"\xff0{")
    assert packets[1:] == ["40"]
    query = f"EIO=3&transport=polling&sid={sid}"
    code, _, body = await request(daemon.port, "POST", query, b'6:40/rm,28:42/rm,["identifier","user1"]')
    assert (code, body) == (200, b"ok")
    await wait_until(lambda: daemon.service.presence.get("user1") is not None, 5, "user1 online")
    code, _, body = await request(daemon.port, "GET", query)
    assert v3_binary_packets(body) == ["40/rm,"]
    redis.publish("rm.users.user1", "clef \U0001d11e, caf\u00e9")
    code, headers, body = await request(daemon.port, "GET", query)
    assert headers["content-type"] == "application/octet-stream"
    (event,) = v3_binary_packets(body)
    assert json.loads(event.removeprefix("42/rm,"))[1]["payload"] == "clef \U0001d11e, caf\u00e9"
    assert body[1:4] == bytes(int(d) for d in str(len(event.encode()))) and body[4] == 0xFF, "bytes, not characters"


@pytest_twisted.ensureDeferred
async def test_v3_text_payloads_are_ascii(daemon, redis):
    """``b64=1`` (and JSONP): each packet's non-ASCII characters as JSON escapes, read alike by 1.x and 2.x."""
    sid, _ = await handshake(daemon.port, 3)
    query = f"EIO=3&transport=polling&sid={sid}"
    await request(daemon.port, "POST", query, b'6:40/rm,28:42/rm,["identifier","user1"]')
    await wait_until(lambda: daemon.service.presence.get("user1") is not None, 5, "user1 online")
    assert v3_packets((await request(daemon.port, "GET", query))[2]) == ["40/rm,"]
    redis.publish("rm.users.user1", b"clef \xf0\x9d\x84\x9e, bad \xff")
    code, headers, body = await request(daemon.port, "GET", query)
    assert headers["content-type"] == "text/plain; charset=UTF-8"
    assert body.isascii() and b"clef \\ud834\\udd1e, bad \\ufffd" in body
    (event,) = v3_packets(body)
    assert json.loads(event.removeprefix("42/rm,"))[1]["payload"] == "clef \U0001d11e, bad \ufffd"


@pytest.mark.parametrize(
    "method, query, status, code",
    [
        ("GET", "transport=polling", 400, 5),
        ("GET", "EIO=abc&transport=polling", 400, 5),
        ("GET", "EIO=2&transport=polling", 400, 5),
        ("GET", "EIO=4", 400, 0),
        ("GET", "EIO=4&transport=abc", 400, 0),
        ("POST", "EIO=4&transport=polling", 400, 2),
        ("PUT", "EIO=4&transport=polling", 400, 2),
        ("GET", "EIO=4&transport=polling&sid=unknown", 400, 1),
        ("POST", "EIO=3&transport=polling&sid=unknown", 400, 1),
        ("GET", "EIO=4&transport=polling&j=0", 400, 3),  # JSONP is revision 3 only
        ("GET", "EIO=4&transport=websocket", 400, 3),  # no Upgrade header
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests_are_refused_with_engineio_error_codes(daemon, method, query, status, code):
    got, headers, body = await request(daemon.port, method, query)
    assert got == status
    assert json.loads(body)["code"] == code
    assert daemon.service.limit.in_use == 0


@pytest_twisted.ensureDeferred
async def test_v3_polling_heartbeat_and_messages(daemon):
    """The v3 test suite: POST ``1:2`` (ping), the next GET has ``1:3`` (pong)."""
    sid, _ = await handshake(daemon.port, 3)
    for _ in range(3):
        code, _, body = await request(daemon.port, "POST", f"EIO=3&transport=polling&sid={sid}", b"1:2")
        assert (code, body) == (200, b"ok")
        code, _, body = await request(daemon.port, "GET", f"EIO=3&transport=polling&sid={sid}")
        assert (code, body) == (200, b"1:3")
    # a Socket.IO connect to another namespace, answered on the next poll
    code, _, body = await request(daemon.port, "POST", f"EIO=3&transport=polling&sid={sid}", b"9:40/other,")
    assert body == b"ok"
    code, _, body = await request(daemon.port, "GET", f"EIO=3&transport=polling&sid={sid}")
    assert v3_packets(body) == ['44/other,"Invalid namespace"']


@pytest_twisted.ensureDeferred
async def test_v4_namespace_connect_and_identify_over_raw_polling(daemon, redis):
    sid, _ = await handshake(daemon.port, 4)
    query = f"EIO=4&transport=polling&sid={sid}"
    code, _, body = await request(daemon.port, "POST", query, b'40/rm,\x1e42/rm,1["identifier","user1"]')
    assert (code, body) == (200, b"ok")
    await wait_until(lambda: daemon.service.presence.get("user1") is not None, 5, "user1 online")
    code, _, body = await request(daemon.port, "GET", query)
    connect, ack = body.decode().split("\x1e")
    assert connect.startswith('40/rm,{"sid":"')
    assert ack == '43/rm,1[{"uid":"user1"}]'
    redis.publish("rm.users.user1", "over raw polling")
    code, _, body = await request(daemon.port, "GET", query)
    event = json.loads(body.decode().removeprefix("42/rm,"))
    assert event[0] == "message" and event[1]["payload"] == "over raw polling"
    # the client closes: the session ends, the user goes offline
    code, _, body = await request(daemon.port, "POST", query, b"1")
    assert body == b"ok"
    assert daemon.service.presence.get("user1") is None
    assert (await request(daemon.port, "GET", query))[0] == 400


@pytest_twisted.ensureDeferred
async def test_overlapping_polls_end_the_session(daemon):
    from twisted.internet.defer import ensureDeferred

    sid, _ = await handshake(daemon.port, 3)
    query = f"EIO=3&transport=polling&sid={sid}"
    first = ensureDeferred(request(daemon.port, "GET", query))
    await wait_until(lambda: daemon.service.socketio.engine.get(sid)._poll is not None, 5, "the first poll waiting")
    second = await request(daemon.port, "GET", query + "&t=burst")
    assert second[0] == 400
    code, _, body = await first
    assert (code, body) == (200, b"1:1"), "the waiting poll gets the close packet"
    assert (await request(daemon.port, "GET", query))[0] == 400


@pytest_twisted.ensureDeferred
async def test_jsonp_polling_v3(daemon):
    code, headers, body = await request(daemon.port, "GET", "EIO=3&transport=polling&j=2&b64=1")
    assert code == 200
    assert headers["content-type"] == "text/javascript; charset=UTF-8"
    text = body.decode()
    assert text.startswith('___eio[2]("') and text.endswith('");')
    payload = json.loads(text[len("___eio[2](") : -2])
    sid = json.loads(v3_packets(payload.encode())[0][1:])["sid"]
    query = f"EIO=3&transport=polling&sid={sid}&j=2"
    # the hidden form's post: d=<payload>, newlines escaped
    form = b"d=" + quote("1:2").encode()
    code, _, body = await request(
        daemon.port, "POST", query, form, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert (code, body) == (200, b"ok")
    code, _, body = await request(daemon.port, "GET", query)
    assert body == b'___eio[2]("1:3");'


@pytest_twisted.ensureDeferred
async def test_cors(daemon_factory):
    daemon = await daemon_factory(allowed_origins=["http://app.example.com:8000"])
    origin = {"Origin": "http://app.example.com:8000"}
    code, headers, _ = await request(daemon.port, "GET", "EIO=4&transport=polling", headers=origin)
    assert code == 200
    assert headers["access-control-allow-origin"] == "http://app.example.com:8000"
    assert headers["access-control-allow-credentials"] == "true"
    code, headers, _ = await request(
        daemon.port,
        "OPTIONS",
        "EIO=4&transport=polling",
        headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    )
    assert code == 204
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"] == "content-type"
    code, headers, body = await request(
        daemon.port, "GET", "EIO=4&transport=polling", headers={"Origin": "http://evil.example.com"}
    )
    assert code == 403
    assert json.loads(body)["code"] == 4
    assert "access-control-allow-origin" not in headers


@pytest_twisted.ensureDeferred
async def test_a_post_larger_than_max_payload_ends_the_session(daemon):
    sid, _ = await handshake(daemon.port, 4)
    query = f"EIO=4&transport=polling&sid={sid}"
    big = b"4" + b"x" * daemon.service.config.max_frame_bytes
    code, _, _ = await request(daemon.port, "POST", query, big)
    assert code == 413
    assert (await request(daemon.port, "GET", query))[0] == 400
    assert daemon.service.limit.in_use == 0


@pytest_twisted.ensureDeferred
async def test_garbage_ends_the_session(daemon):
    sid, _ = await handshake(daemon.port, 3)
    query = f"EIO=3&transport=polling&sid={sid}"
    assert (await request(daemon.port, "POST", query, b"abc"))[0] == 400
    assert (await request(daemon.port, "GET", query))[0] == 400


@pytest_twisted.ensureDeferred
async def test_conn_limit_refuses_the_handshake_with_503(daemon_factory):
    daemon = await daemon_factory(conn_limit=2)
    await handshake(daemon.port, 4)
    await handshake(daemon.port, 3)
    code, _, _ = await request(daemon.port, "GET", "EIO=4&transport=polling")
    assert code == 503
    assert daemon.service.limit.in_use == 2


@pytest_twisted.ensureDeferred
async def test_an_abandoned_handshake_is_timed_out(daemon_factory):
    """A client that never polls again: revision 3 expects its pings, revision 4 its pongs."""
    daemon = await daemon_factory(ping_interval=0.2)
    await handshake(daemon.port, 3)
    await handshake(daemon.port, 4)
    assert len(daemon.service.socketio.engine) == 2
    await wait_until(lambda: len(daemon.service.socketio.engine) == 0, 5, "both sessions timed out")
    assert daemon.service.limit.in_use == 0


@pytest_twisted.ensureDeferred
async def test_sessions_polling_over_one_connection_are_told_apart_in_the_log(daemon):
    # A browser's polling requests share keep-alive connections: several sessions, one host:port.
    # Their log lines name the session id (issue 12: they showed the same peer and nothing else).
    import re
    from io import BytesIO
    from typing import Any

    from twisted.internet import reactor
    from twisted.logger import formatEvent, globalLogPublisher
    from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1
    agent = Agent(reactor, connectTimeout=5, pool=pool)
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("redmessenger"):
            lines.append(formatEvent(event))

    async def send(method: bytes, query: str, body: bytes | None = None) -> bytes:
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        d = agent.request(method, f"http://{HOST}:{daemon.port}{PATH}?{query}".encode(), None, producer)
        response = await d.addTimeout(10, reactor)
        return await read_body(response)

    globalLogPublisher.addObserver(observe)
    try:
        sids = []
        for uid in ("user1", "user2"):
            sid = json.loads((await send(b"GET", "EIO=4&transport=polling"))[1:])["sid"]
            identify = b'40/rm,\x1e42/rm,["identifier","%s"]' % uid.encode()
            posted = await send(b"POST", f"EIO=4&transport=polling&sid={sid}", identify)
            assert posted == b"ok"
            sids.append(sid)
        await wait_until(lambda: len(daemon.service.presence) == 2, 5, "both users online")
    finally:
        globalLogPublisher.removeObserver(observe)
        await pool.closeCachedConnections()
    opened = [re.fullmatch(r"New connection (\S+) \(Socket\.IO session (\S+)\) on .*", line) for line in lines]
    opened_by = [(m.group(1), m.group(2)) for m in opened if m]
    assert [sid for _, sid in opened_by] == sids
    assert opened_by[0][0] == opened_by[1][0], "one keep-alive connection: one host:port"
    peer = opened_by[0][0]
    for uid, sid in zip(("user1", "user2"), sids):
        assert f"Assigning id {uid} to socket {peer} (Socket.IO session {sid})." in lines
