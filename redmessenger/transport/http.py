"""
The HTTP side of the daemon's one port: each request goes to the resource
registered for its whole path (``rm_route``, ``/socket.io/``, ``/health``, ``/metrics``,
the browser client), and the files the daemon ships for browsers.  What a
connection may cost before its request gets there (body size, a deadline, how
many at once): transport/httplimits.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from importlib import resources

from twisted.internet.interfaces import IReactorTime
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from redmessenger.transport.httplimits import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_UNFINISHED,
    DEFAULT_REQUEST_TIMEOUT,
    LimitedSite,
)


class RootResource(Resource):
    """Dispatches on the whole path, so that ``rm_route`` may have several segments."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[bytes, IResource] = {}
        self._body_refused: dict[bytes, Callable[[Request], object]] = {}

    def route(self, path: str, resource: IResource, on_body_refused: Callable[[Request], object] | None = None) -> None:
        """``on_body_refused``: told of a request to ``path`` the site answered 413 (its body too large, unread)."""
        self._routes[path.encode("ascii")] = resource
        if on_body_refused is not None:
            self._body_refused[path.encode("ascii")] = on_body_refused

    def render(self, request: Request) -> bytes | int:
        resource = self._routes.get(_key(request))
        if resource is None:
            resource = notFound()
        rendered: bytes | int = resource.render(request)
        return rendered

    def body_refused(self, request: Request) -> None:
        """A request answered 413 without reaching its resource: its route is told, if it asked to be."""
        tell = self._body_refused.get(_key(request))
        if tell is not None:
            tell(request)


def _key(request: Request) -> bytes:
    return (request.path or b"/").rstrip(b"/") or b"/"


class QuietSite(LimitedSite):
    """A Site that does not write an access-log line per request (WebSocket upgrades included)."""

    def log(self, request: object) -> None:
        pass


def make_site(
    root: RootResource,
    max_body: int = DEFAULT_MAX_BODY,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    max_unfinished: int = DEFAULT_MAX_UNFINISHED,
    reactor: IReactorTime | None = None,
) -> LimitedSite:
    """
    The daemon's site: ``max_body`` the largest body any route accepts,
    ``max_unfinished`` usually :func:`~redmessenger.transport.httplimits.unfinished_limit`
    of ``conn_limit`` (see transport/httplimits.py).
    """
    site = QuietSite(root, max_body, request_timeout, max_unfinished, on_body_refused=root.body_refused, reactor=reactor)
    site.noisy = False
    return site


class StaticFile(Resource):
    """
    A file shipped with the daemon (``redmessenger/static/``), read once at
    start: GET and HEAD, with an ETag so that browsers revalidate cheaply
    (``If-None-Match`` answers 304) and a short max-age so that an upgrade
    reaches pages within minutes.
    """

    isLeaf = True

    def __init__(self, content: bytes, content_type: bytes, max_age: int = 300) -> None:
        super().__init__()
        self.content = content
        self._content_type = content_type
        self._etag = b'"' + hashlib.sha256(content).hexdigest()[:32].encode("ascii") + b'"'
        self._cache_control = b"public, max-age=%d" % max_age

    @classmethod
    def shipped(cls, name: str, content_type: bytes) -> StaticFile:
        return cls(resources.files("redmessenger").joinpath("static", name).read_bytes(), content_type)

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return b""
        request.setHeader(b"etag", self._etag)
        request.setHeader(b"cache-control", self._cache_control)
        if self._etag in (request.getHeader(b"if-none-match") or b"").replace(b"W/", b"").split(b", "):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", self._content_type)
        return self.content
