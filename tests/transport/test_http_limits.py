"""
What an HTTP connection may cost before its request reaches a resource
(redmessenger/transport/httplimits.py): bodies past ``max_body`` answered 413
unread and nothing kept on disk; a request that has not arrived within
``request_timeout`` answered 408; at most ``max_unfinished`` connections on
their way, the next answered 503.  Over real TCP connections, to the daemon's
site or to a site of the test's own (its timers on a Clock, serving test
resources or the daemon's own), with raw bytes: clients do not send half requests.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from redmessenger.transport.http import RootResource, make_site
from redmessenger.transport.httplimits import unfinished_limit

from ..conftest import HOST, wait_until
from ..httpclient import scrape
from ..wsclient import connect_client


class RawClient(Protocol):
    """A TCP connection to the site: what it sends is the test's, what it gets is kept."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    @property
    def closed(self) -> bool:
        return self.lost.called

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def statuses(self) -> list[int]:
        """The status of each response head received so far (100 Continue included)."""
        return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", self.received)]

    def body(self) -> bytes:
        return self.received.partition(b"\r\n\r\n")[2]

    async def answered(self, what: str = "the answer and the close") -> None:
        """Until the site answered and closed the connection."""
        await wait_until(lambda: self.closed, 5, what)


async def connect(port: int) -> RawClient:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    return await connectProtocol(TCP4ClientEndpoint(reactor, HOST, port, timeout=5), RawClient())


def head(method: str, target: str, *headers: str) -> bytes:
    return "".join(f"{line}\r\n" for line in (f"{method} {target} HTTP/1.1", "Host: localhost", *headers, "")).encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def temporary_files() -> set[str]:
    """This process's open files in the temporary directory (twisted.web's TemporaryFile: a deleted file in /tmp)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(" (deleted)") or target.startswith("/tmp/"):
            found.add(f"{fd} -> {target}")
    return found


class Echo(Resource):
    """POST: answers the body it was given, and what kept it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        self.bodies.append(body)
        return type(request.content).__name__.encode() + b" " + body

    def render_GET(self, request: Request) -> bytes:
        return b"hello"


class Wait(Resource):
    """GET: answered when the test says (a long poll)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Request] = []

    def render_GET(self, request: Request) -> int:
        self.waiting.append(request)
        return NOT_DONE_YET


class OwnSite:
    """A site of the test's own on a real port, its timers on a Clock: ``root``'s resources, or /echo and /wait."""

    def __init__(self, root: RootResource | None, **limits: Any) -> None:
        from twisted.internet import reactor

        self.echo, self.wait = Echo(), Wait()
        if root is None:
            root = RootResource()
            root.route("/echo", self.echo)
            root.route("/wait", self.wait)
        self.clock = Clock()
        self.site = make_site(root, reactor=self.clock, **limits)
        self.listening = reactor.listenTCP(0, self.site, interface=HOST)
        self.port: int = self.listening.getHost().port
        self.clients: list[RawClient] = []

    async def connect(self) -> RawClient:
        client = await connect(self.port)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            if not client.closed:
                client.transport.abortConnection()
            await client.lost
        await self.listening.stopListening()


@pytest_twisted.async_yield_fixture
async def own_site() -> AsyncIterator[Any]:
    """Start sites of the test's own (see OwnSite), limits as given; closed after the test."""
    sites: list[OwnSite] = []

    def start(root: RootResource | None = None, **limits: Any) -> OwnSite:
        site = OwnSite(root, **limits)
        sites.append(site)
        return site

    yield start
    for site in sites:
        await site.close()


# -- bodies -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_body_declared_too_large_is_answered_413_before_it_is_read(daemon):
    """The reviewer's probe, scaled down: 300 MB announced to an unknown Engine.IO session, no session needed."""
    site = daemon.service.listening.factory
    before = temporary_files()
    client = await connect(daemon.port)
    client.send(head("POST", "/socket.io/?EIO=4&transport=polling&sid=nosuchsid", "Content-Length: 314572800") + b"4" * 1000)
    await client.answered()
    assert client.statuses() == [413]
    assert b"\r\nConnection: close\r\n" in client.received
    assert client.body() == b"Payload Too Large"
    assert temporary_files() == before
    assert (site.refused_bodies, site.unfinished) == (1, 0)
    metrics = await scrape(daemon.port)
    assert metrics['redmessenger_http_refusals_total{reason="body_too_large"}'] == 1
    assert metrics['redmessenger_http_refusals_total{reason="request_timeout"}'] == 0
    assert metrics['redmessenger_http_refusals_total{reason="unfinished_limit"}'] == 0
    assert metrics["redmessenger_http_requests_unfinished"] == 0


@pytest_twisted.ensureDeferred
async def test_the_limit_is_the_largest_body_accepted(own_site):
    site = own_site(max_body=1000)
    client = await site.connect()
    client.send(head("POST", "/echo", "Content-Length: 1000", "Connection: close") + b"x" * 1000)
    await client.answered()
    assert client.statuses() == [200] and client.body().endswith(b"BytesIO " + b"x" * 1000)
    # one byte more: answered at once, no "100 Continue" first, the body not waited for
    client = await site.connect()
    client.send(head("POST", "/echo", "Content-Length: 1001", "Expect: 100-continue"))
    await client.answered()
    assert client.statuses() == [413]
    assert site.echo.bodies == [b"x" * 1000]
    assert (site.site.refused_bodies, site.site.unfinished) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_is_counted_as_it_comes(own_site):
    site = own_site(max_body=1000)
    client = await site.connect()
    client.send(head("POST", "/echo", "Transfer-Encoding: chunked", "Connection: close") + chunk(b"a" * 600))
    client.send(chunk(b"b" * 400) + b"0\r\n\r\n")
    await client.answered()
    assert client.statuses() == [200] and client.body().endswith(b"BytesIO " + b"a" * 600 + b"b" * 400)
    # the same, one byte more: answered once that byte came, the terminal chunk not waited for
    client = await site.connect()
    client.send(head("POST", "/echo", "Transfer-Encoding: chunked") + chunk(b"a" * 600))
    client.send(chunk(b"b" * 401))
    await client.answered()
    assert client.statuses() == [413]
    assert site.echo.bodies == [b"a" * 600 + b"b" * 400]
    assert (site.site.refused_bodies, site.site.unfinished) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_an_accepted_body_is_kept_in_memory_whatever_its_size_or_framing(own_site):
    """twisted.web writes a body of 100 kB or more, or of unknown length (chunked), to a temporary file."""
    site = own_site(max_body=300_000)
    before = temporary_files()
    body = b"y" * 150_000
    for framing in ("Content-Length: 150000", "Transfer-Encoding: chunked"):
        client = await site.connect()
        client.send(head("POST", "/echo", framing, "Expect: 100-continue", "Connection: close"))
        # "100 Continue" comes once the site has decided where the body goes
        await wait_until(lambda: client.statuses() == [100], 5, "100 Continue")
        assert temporary_files() == before
        client.send(chunk(body) + b"0\r\n\r\n" if "chunked" in framing else body)
        await client.answered()
        assert client.statuses() == [100, 200] and client.body().endswith(b"BytesIO " + body)
    assert temporary_files() == before


@pytest_twisted.ensureDeferred
async def test_the_route_is_told_of_a_body_refused(own_site):
    """What a dialect needs to end the session a too large POST names (the daemon's /socket.io/ does)."""
    told: list[tuple[bytes, bytes]] = []
    root = RootResource()
    root.route("/told", Echo(), on_body_refused=lambda request: told.append((request.method, request.uri)))
    root.route("/echo", Echo())
    site = own_site(root, max_body=10)
    for target in ("/told/?sid=abc", "/echo?sid=def"):
        client = await site.connect()
        client.send(head("POST", target, "Content-Length: 11"))
        await client.answered()
        assert client.statuses() == [413]
    assert told == [(b"POST", b"/told/?sid=abc")]


# -- the deadline -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_headers_trickled_meet_an_absolute_deadline(own_site):
    """twisted.web's idle timeout starts again with each byte; the deadline does not."""
    site = own_site(request_timeout=10.0)
    client = await site.connect()
    await wait_until(lambda: site.site.unfinished == 1, 5, "the connection counted")
    for byte in head("GET", "/echo")[:9]:
        client.send(bytes([byte]))
        site.clock.advance(1.0)
    assert site.site.timed_out_requests == 0
    site.clock.advance(1.0)
    await client.answered()
    assert client.statuses() == [408]
    assert client.body() == b"Request Timeout"
    assert (site.site.timed_out_requests, site.site.unfinished) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_a_kept_alive_connection_is_timed_from_its_next_request(own_site):
    site = own_site(request_timeout=10.0)
    client = await site.connect()
    client.send(head("GET", "/echo"))
    await wait_until(lambda: client.body().endswith(b"hello"), 5, "the first answer")
    assert site.site.unfinished == 0
    site.clock.advance(30.0)  # idle between requests: twisted.web's idle timeout (60 s) is its limit
    client.send(head("GET", "/echo")[:10])
    await wait_until(lambda: site.site.unfinished == 1, 5, "the next request counted")
    site.clock.advance(9.9)
    assert site.site.timed_out_requests == 0
    site.clock.advance(0.1)
    await client.answered()
    assert client.statuses() == [200, 408]
    assert (site.site.timed_out_requests, site.site.unfinished) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_a_long_poll_is_not_timed_once_its_request_arrived(own_site):
    site = own_site(request_timeout=10.0)
    client = await site.connect()
    client.send(head("GET", "/wait"))
    waiting = site.wait.waiting
    await wait_until(lambda: len(waiting) == 1, 5, "the poll to arrive")
    assert site.site.unfinished == 0
    site.clock.advance(50.0)
    assert not client.closed
    waiting[0].write(b"late")
    waiting[0].finish()
    await wait_until(lambda: client.body().endswith(b"late\r\n0\r\n\r\n"), 5, "the answer")
    assert client.statuses() == [200]
    assert site.site.timed_out_requests == 0


# -- the cap ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_connections_past_max_unfinished_are_answered_503(own_site):
    site = own_site(max_unfinished=2)
    first, second = await site.connect(), await site.connect()
    first.send(b"GET /ec")
    await wait_until(lambda: site.site.unfinished == 2, 5, "two connections counted")
    third = await site.connect()
    await third.answered()
    assert third.statuses() == [503]
    assert (site.site.refused_unfinished, site.site.unfinished) == (1, 2)
    # a request that arrives frees its place; a kept-alive connection between requests holds none
    first.send(b"ho HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await wait_until(lambda: first.body().endswith(b"hello"), 5, "the first answer")
    assert site.site.unfinished == 1
    fourth = await site.connect()
    await wait_until(lambda: site.site.unfinished == 2, 5, "the fourth connection counted")
    fourth.send(head("GET", "/echo", "Connection: close"))
    await fourth.answered()
    assert fourth.statuses() == [200]
    # the kept-alive one's next request finds no place while two are on their way
    fifth = await site.connect()
    await wait_until(lambda: site.site.unfinished == 2, 5, "the fifth connection counted")
    first.send(head("GET", "/echo"))
    await first.answered()
    assert first.statuses() == [200, 503]
    assert (site.site.refused_unfinished, site.site.unfinished) == (2, 2)
    assert not second.closed and not fifth.closed


def test_max_unfinished_follows_conn_limit() -> None:
    assert [unfinished_limit(n) for n in (1, 1000, 10000, 50000)] == [100, 100, 1000, 5000]


# -- the daemon's own resources behind a limited site --------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_websocket_is_the_dialects_once_upgraded(daemon, redis, own_site):
    """The upgrade hands the connection to Autobahn: neither counted nor timed by the site from then on."""
    site = own_site(daemon.service.root, request_timeout=10.0, max_unfinished=1)
    client = await connect_client(f"ws://{HOST}:{site.port}/rm")
    client.send("user1")
    await daemon.until(lambda: client.attached(daemon.service.presence, "user1"))
    assert (site.site.unfinished, daemon.service.limit.in_use) == (0, 1)
    site.clock.advance(60.0)
    redis.publish("rm.users.user1", "still open")
    assert (await client.next())["payload"] == "still open"
    assert site.site.timed_out_requests == 0
    client.close()
    await client.close_code()


@pytest_twisted.ensureDeferred
async def test_an_engineio_long_poll_outlives_the_deadline(daemon, own_site):
    site = own_site(daemon.service.root, request_timeout=10.0)
    client = await site.connect()
    client.send(head("GET", "/socket.io/?EIO=3&transport=polling&b64=1", "Connection: close"))
    await client.answered()
    length, _, packets = client.body().decode().partition(":")
    sid = json.loads(packets[1 : int(length)])["sid"]
    query = f"/socket.io/?EIO=3&transport=polling&b64=1&sid={sid}"
    poll = await site.connect()
    poll.send(head("GET", query, "Connection: close"))
    await wait_until(lambda: site.site.unfinished == 0, 5, "the poll to arrive")
    site.clock.advance(15.0)
    assert not poll.closed
    ping = await site.connect()
    ping.send(head("POST", query, "Content-Length: 3", "Connection: close") + b"1:2")
    await ping.answered()
    assert ping.statuses() == [200] and ping.body() == b"ok"
    await poll.answered()
    assert poll.statuses() == [200] and poll.body() == b"1:3"
    assert site.site.timed_out_requests == 0
