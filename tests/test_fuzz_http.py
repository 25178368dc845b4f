"""
Fuzz test of the daemon's HTTP side, for real: raw requests over TCP to a
running daemon (any method, path, query, headers, body; WebSocket upgrades
right and wrong; garbage), each answered with a documented status and no
error logged, and the daemon serving other clients as before after each.
"""

from __future__ import annotations

import itertools
import re
from typing import Any
from urllib.parse import quote

import pytest_twisted
from hypothesis import event, given
from hypothesis import strategies as st

from .conftest import HOST, publish
from .fuzzing import describe, errors_logged, fuzz
from .httpclient import http_get

#: docs/protocol.md and docs/operations.md: 101 (a WebSocket), 200, 204 (a CORS preflight), 304 (a shipped file
#: not modified), 400, 403 (Origin), 404 (no such path), 405 (a method a path does not take), 413, 503 (conn_limit);
#: and 501, twisted.web's answer to a method it does not know on /health and /metrics.
STATUSES = {101, 200, 204, 304, 400, 403, 404, 405, 413, 503, 501}

PATHS = ["/rm", "/rm/", "/socket.io/", "/socket.io", "/health", "/metrics", "/redmessenger-legacy.js", "/", "/nope", "//rm", "/rm/../health", "*", "http://localhost/rm"]
token = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~", min_size=1, max_size=10)
#: A header value: visible ASCII, spaces, Latin-1; never a line end (a request it would split is another test's).
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=30)
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
EXTRA_HEADERS = ["Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions", "If-None-Match", "Content-Type", "Expect", "X-Forwarded-For", "Cookie"]


#: What clients send: (method, target, headers, body), each valid as it is.
TEMPLATES: list[tuple[str, str, list[tuple[str, str]], bytes]] = [
    ("GET", "/rm", [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", WS_KEY), ("Sec-WebSocket-Version", "13")], b""),
    ("GET", "/socket.io/?EIO=4&transport=websocket", [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", WS_KEY), ("Sec-WebSocket-Version", "13")], b""),
    ("GET", "/socket.io/?EIO=3&transport=websocket", [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", WS_KEY), ("Sec-WebSocket-Version", "13")], b""),
    ("GET", "/socket.io/?EIO=4&transport=polling&t=Ab1", [], b""),
    ("GET", "/socket.io/?EIO=3&transport=polling&b64=1", [], b""),
    ("GET", "/socket.io/?EIO=3&transport=polling&j=0", [], b""),
    ("POST", "/socket.io/?EIO=4&transport=polling&sid=unknown", [("Content-Type", "text/plain;charset=UTF-8")], b'40/rm,\x1e42/rm,["identifier","user1"]'),
    ("OPTIONS", "/socket.io/?EIO=4&transport=polling", [("Origin", "http://good.example"), ("Access-Control-Request-Headers", "content-type")], b""),
    ("GET", "/rm", [], b""),
    ("HEAD", "/rm", [], b""),
    ("POST", "/rm", [("Content-Type", "text/plain;charset=UTF-8")], b"user1"),
    ("GET", "/health", [], b""),
    ("GET", "/metrics", [], b""),
    ("GET", "/redmessenger-legacy.js", [], b""),
]

#: One thing changed in a valid request.
FAULTS = ["method", "path", "query", "drop a header", "header value", "more headers", "version", "body", "chunked", "request line"]


@st.composite
def http_requests(draw: Any) -> bytes:
    """A request as bytes: what a client sends with up to two things changed; Content-Length (or chunks) ours."""
    method, target, headers, body = draw(st.sampled_from(TEMPLATES))
    headers = [("Host", "localhost"), *headers]
    origin = draw(st.sampled_from([None, "http://good.example", "http://evil.example", "null"]))  # browsers send one
    if origin is not None and not any(name == "Origin" for name, _ in headers):
        headers.append(("Origin", origin))
    version, garbage = "HTTP/1.1", None
    for fault in draw(st.lists(st.sampled_from(FAULTS), max_size=2)):
        if fault == "method":
            method = draw(st.sampled_from(["POST", "PUT", "DELETE", "BREW", "get", "GET\x01", "G\xe9T", "M-SEARCH"]) | token)
        elif fault == "path":
            path, _, query = target.partition("?")
            path = draw(st.sampled_from(PATHS) | st.text(max_size=12).map(lambda t: "/" + quote(t)))
            target = path + ("?" + query if query else "")
        elif fault == "query":
            path, _, query = target.partition("?")
            params = query.split("&") if query else []
            params.append(draw(st.sampled_from(["EIO=5", "EIO=x", "transport=flashsocket", "sid=nope", "j=x", "sid="])))
            if draw(st.booleans()):
                params.append(quote(draw(st.text(max_size=10)), safe="=&%"))
            target = path + "?" + "&".join(draw(st.permutations(params)))
        elif fault == "drop a header" and headers:
            del headers[draw(st.integers(0, len(headers) - 1))]
        elif fault == "header value" and headers:
            at = draw(st.integers(0, len(headers) - 1))
            headers[at] = (headers[at][0], draw(st.sampled_from(["", "x", "8", "short", "a, a", "upgrade, websocket"]) | header_values))
        elif fault == "more headers":
            headers.extend(draw(st.lists(st.tuples(st.sampled_from(EXTRA_HEADERS) | token, header_values), min_size=1, max_size=3)))
        elif fault == "version":
            version = draw(st.sampled_from(["HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "HTTP/9.9"]))
        elif fault == "body":
            body = draw(st.binary(max_size=60) | st.sampled_from([b"6:40/rm,", b"d=" + quote("6:40/rm,").encode(), b"4" * 5000]))
        elif fault == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        elif fault == "request line":
            garbage = draw(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))
    if not any(name == "Connection" for name, _ in headers):
        headers.append(("Connection", "close"))
    chunked = any(name == "Transfer-Encoding" for name, _ in headers)
    if chunked:
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    elif body or method in ("POST", "PUT"):
        headers.append(("Content-Length", str(len(body))))
    headers = draw(st.permutations(headers))
    line = garbage if garbage is not None else f"{method} {target} {version}".encode("latin-1")
    head = line + b"\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1") + b"\r\n"
    return head + body


async def exchange(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send ``request`` on a connection of its own; the status and head of the (final) response, then the connection dropped."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    answered: Deferred[tuple[int, bytes]] = Deferred()

    class Client(Protocol):
        buffer = b""

        def connectionMade(self) -> None:
            self.transport.write(request)

        def dataReceived(self, data: bytes) -> None:
            self.buffer += data
            while not answered.called and b"\r\n\r\n" in self.buffer:
                head, _, rest = self.buffer.partition(b"\r\n\r\n")
                match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
                assert match is not None, f"not an HTTP response: {head[:80]!r}"
                status = int(match.group(1))
                if 100 <= status < 200 and status != 101:  # 100 Continue: the answer follows
                    self.buffer = rest
                    continue
                answered.callback((status, head))
                self.transport.abortConnection()

        def connectionLost(self, reason: Any = None) -> None:
            if not answered.called:
                answered.errback(AssertionError(f"connection closed without an answer: {self.buffer[:80]!r}"))

    protocol = await connectProtocol(TCP4ClientEndpoint(reactor, HOST, port, timeout=5), Client())
    answered.addTimeout(timeout, reactor)
    try:
        return await answered
    finally:
        if protocol.transport.connected:
            protocol.transport.abortConnection()


async def others_keep_working(daemon: Any, redis: Any, n: int) -> None:
    """A WebSocket client identifies and gets a message; /health answers 200."""
    code, _, _ = await http_get(daemon.port, "/health")
    assert code == 200
    uid = f"witness{n}"
    client = await daemon.client(uid, origin="http://good.example")
    publish(redis, f"rm.users.{uid}", "still here")
    assert (await client.next())["payload"] == "still here"
    client.close()
    await client.close_code()


@pytest_twisted.async_fixture
async def guarded_daemon(daemon_factory: Any, redis: Any) -> Any:
    """A daemon that lets in one Origin (every example of the test shares it)."""
    return await daemon_factory(allowed_origins=["http://good.example"])


_witnesses = itertools.count(1)


@fuzz(150)
@given(request=http_requests())
@pytest_twisted.ensureDeferred
async def test_the_daemon_answers_any_http_request_with_a_documented_status(guarded_daemon: Any, redis: Any, request: bytes) -> None:
    with errors_logged() as errors:
        status, head = await exchange(guarded_daemon.port, request)
        event(f"answered {status}")
        await others_keep_working(guarded_daemon, redis, next(_witnesses))
    assert not errors, describe(errors)
    assert status in STATUSES, f"{request[:120]!r} answered {head[:200]!r}"
