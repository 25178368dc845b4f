"""
What an HTTP connection may cost the daemon before its request reaches a
resource, whatever its path.  ``conn_limit`` counts clients only from their
handshake (a WebSocket's upgrade, an Engine.IO session's first GET); before it,
a connection is this module's:

- **Bodies** are kept in memory, up to ``max_body`` bytes (the largest body any
  route accepts: Engine.IO's ``maxPayload``).  A request whose Content-Length
  is larger is answered 413 as soon as its headers are in, its body unread; a
  chunked body is counted as it comes and answered the same way once it grows
  past the limit.  Either way the connection is closed after the answer.
  twisted.web would have written any body over 100 kB, of any size, to a
  temporary file first.
- **A deadline**: a connection has ``request_timeout`` seconds from its first
  byte (a new connection: from the connection) until its request (line,
  headers, and a body of at most ``max_body``) has arrived; then it is
  answered 408 and closed.  twisted.web's idle timeout starts again with every
  byte, so a client sending a byte a minute could hold its socket forever.
- **A cap**: at most ``max_unfinished`` connections at a time whose request is
  on its way (a new connection, a kept-alive one whose next request has begun).
  The next one is answered 503 and closed at once.

A request that has arrived is no longer counted nor timed: a WebSocket upgrade
hands the connection to its dialect (and conn_limit), and a long poll may wait
for its answer as long as its session wants.  A kept-alive connection between
two requests is not counted either (twisted.web's idle timeout closes it).

The methods overridden here are twisted.web's own points of extension for
``Request`` (``gotLength``, ``handleContentChunk``, ``process``) and
``HTTPChannel`` (``connectionMade``, ``dataReceived``, ``allHeadersReceived``,
``rawDataReceived``, ``allContentReceived``, ``requestDone``, ``loseConnection``,
``connectionLost``), with its public attributes ``length``, ``persistent`` and
``requests``; the transport is never wrapped (transport/fastpath.py needs
Twisted's own).  tests/transport/test_http_limits.py exercises each of them.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from redmessenger.logs import make_logger, worth_a_line

log = make_logger(__name__)

#: The largest request body when the site is not told (Engine.IO's default ``maxPayload``).
DEFAULT_MAX_BODY = 100_000
#: Seconds from a connection (or a kept-alive connection's next byte) until its request must have arrived.
DEFAULT_REQUEST_TIMEOUT = 10.0
#: Connections whose request is on its way, at most, when the site is not told: unfinished_limit(10000).
DEFAULT_MAX_UNFINISHED = 1000


def unfinished_limit(conn_limit: int) -> int:
    """
    Connections whose request is on its way, at most, for a daemon of
    ``conn_limit``: a tenth of it, and never fewer than 100.  A client's
    request takes a round trip to arrive, so even all of ``conn_limit``
    reconnecting within their few seconds of back-off leave about a tenth
    unfinished at once; and descriptors beyond ``conn_limit`` stay bounded.
    """
    return max(100, conn_limit // 10)


def _response(status: bytes, text: bytes) -> bytes:
    """A whole response, written before a request reached a resource (the connection then closes)."""
    return (
        b"HTTP/1.1 %s\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s"
        % (status, len(text), text)
    )


_TOO_LARGE = b"Payload Too Large"
_TIMED_OUT = _response(b"408 Request Timeout", b"Request Timeout")
_TOO_MANY = _response(b"503 Service Unavailable", b"too many connections opening; try again")


class LimitedRequest(Request):
    """A request whose body is kept in memory up to its site's ``max_body``; past it, answered 413 unread."""

    channel: LimitedChannel
    #: Its body is larger than ``max_body`` (as declared, or as counted): answered 413, never rendered.
    too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        self.content = self._body = BytesIO()
        if length is not None and length > self.channel.site.max_body:
            # no "100 Continue" for a body that will not be read
            self.requestHeaders.removeHeader(b"expect")
            self._too_large()

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_body:
            self._too_large()
            return
        self._body.write(data)

    def _too_large(self) -> None:
        self.too_large = True
        self.content = self._body = BytesIO()  # what was kept of it goes
        self.channel.persistent = False  # closed once answered: the rest of the body is not read

    def process(self) -> None:
        if not self.too_large:
            super().process()
            return
        self.channel.site.body_refused(self)
        self.setResponseCode(413)
        self.setHeader(b"content-type", b"text/plain; charset=utf-8")
        self.setHeader(b"content-length", b"%d" % len(_TOO_LARGE))
        self.setHeader(b"connection", b"close")
        self.write(_TOO_LARGE)
        self.finish()


class LimitedChannel(HTTPChannel):
    """An HTTP connection counted and timed by its :class:`LimitedSite` until its request has arrived."""

    site: LimitedSite
    #: Counted among the site's unfinished connections (and timed).
    _unfinished = False
    #: Kept alive between two requests: counted again from the next one's first byte.
    _idle = False
    _closing = False
    _deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._request_begins()

    def dataReceived(self, data: bytes) -> None:
        if self._idle and data:
            self._idle = False
            if not self._request_begins():
                return
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        request = self.requests[-1]
        if isinstance(request, LimitedRequest) and request.too_large:
            # a request of length 0 is handled at once (HTTPChannel.lineReceived): its body is never read
            self.length = 0

    def rawDataReceived(self, data: bytes) -> None:
        super().rawDataReceived(data)
        if self._unfinished and not self._closing and self.requests:
            request = self.requests[-1]
            if isinstance(request, LimitedRequest) and request.too_large:
                # a chunked body grew past max_body in this read: answered now, the rest not read
                self.allContentReceived()

    def allContentReceived(self) -> None:
        self._arrived()
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        self._idle = bool(self.persistent)  # before: HTTPChannel reads what was pipelined behind it right away
        super().requestDone(request)

    def loseConnection(self) -> None:
        self._closing = True
        super().loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._arrived()
        super().connectionLost(reason)

    def _request_begins(self) -> bool:
        """A request is on its way: counted and timed, or refused (503) when too many are."""
        site = self.site
        if not site.admit():
            self._answer(_TOO_MANY)
            return False
        self._unfinished = True
        site.unfinished += 1
        self._deadline = site.reactor.callLater(site.request_timeout, self._timed_out)
        return True

    def _arrived(self) -> None:
        """The request has arrived (or will not): no longer counted nor timed."""
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
        if self._unfinished:
            self._unfinished = False
            self.site.unfinished -= 1

    def _timed_out(self) -> None:
        self._deadline = None
        self.site.timed_out()
        self._answer(_TIMED_OUT)

    def _answer(self, response: bytes) -> None:
        """A whole response, written before the request reached a resource; then closed."""
        self._arrived()
        if self.transport is not None:
            self.transport.write(response)
            self.loseConnection()


class LimitedSite(Site):
    """
    A Site whose connections are :class:`LimitedChannel` and requests
    :class:`LimitedRequest`: see the module's description.  ``on_body_refused``
    is told of each request answered 413 (after its line and headers were
    read), before the answer is written.
    """

    #: The channel itself, not twisted.web's proxy in front of it (which only switches to HTTP/2: not offered here).
    protocol = LimitedChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest

    def __init__(
        self,
        resource: IResource,
        max_body: int = DEFAULT_MAX_BODY,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_unfinished: int = DEFAULT_MAX_UNFINISHED,
        on_body_refused: Callable[[Request], object] | None = None,
        reactor: IReactorTime | None = None,
    ) -> None:
        super().__init__(resource, reactor=reactor)
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.max_unfinished = max_unfinished
        self._on_body_refused = on_body_refused
        #: Connections whose request is on its way, now.
        self.unfinished = 0
        #: Since start: connections refused because ``max_unfinished`` were unfinished; requests
        #: that missed ``request_timeout``; bodies larger than ``max_body``.
        self.refused_unfinished = 0
        self.timed_out_requests = 0
        self.refused_bodies = 0

    def acceptableProtocols(self) -> list[bytes]:
        # HTTP/2 (over TLS, with h2 installed) would bypass the channel above
        return [b"http/1.1"]

    def refusals(self) -> dict[str, int]:
        """The requests refused since start, by reason (as /metrics labels them)."""
        return {
            "unfinished_limit": self.refused_unfinished,
            "request_timeout": self.timed_out_requests,
            "body_too_large": self.refused_bodies,
        }

    def admit(self) -> bool:
        """Whether one more connection may have its request on its way; else counted (and logged now and then)."""
        if self.unfinished < self.max_unfinished:
            return True
        self.refused_unfinished += 1
        _warn_sometimes(
            self.refused_unfinished,
            "HTTP: {unfinished} connections are waiting for their request (the most allowed): refusing more "
            "with 503 ({count} so far)",
            unfinished=self.unfinished,
        )
        return False

    def timed_out(self) -> None:
        """A request missed ``request_timeout``: counted (and logged now and then)."""
        self.timed_out_requests += 1
        _warn_sometimes(
            self.timed_out_requests,
            "HTTP: a request did not arrive within {timeout}s of its first byte: answered 408 ({count} so far)",
            timeout=self.request_timeout,
        )

    def body_refused(self, request: Request) -> None:
        """A body larger than ``max_body``: counted (and logged now and then), and ``on_body_refused`` told."""
        self.refused_bodies += 1
        _warn_sometimes(
            self.refused_bodies,
            "HTTP: a request body larger than {limit} bytes was answered 413 unread ({count} so far)",
            limit=self.max_body,
        )
        if self._on_body_refused is not None:
            try:
                self._on_body_refused(request)
            except Exception:
                log.failure("Telling the route of a refused body of {uri!r} failed", uri=request.uri)


def _warn_sometimes(count: int, text: str, **fields: Any) -> None:
    if worth_a_line(count):
        log.warn(text, count=count, **fields)
