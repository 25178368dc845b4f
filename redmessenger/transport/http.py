"""
The HTTP side of the daemon's one port: each request goes to the resource
registered for its whole path (``rm_route``, ``/socket.io/``, ``/health``, ``/metrics``,
the browser client), and the files the daemon ships for browsers.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site


class RootResource(Resource):
    """Dispatches on the whole path, so that ``rm_route`` may have several segments."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[bytes, IResource] = {}

    def route(self, path: str, resource: IResource) -> None:
        self._routes[path.encode("ascii")] = resource

    def render(self, request: Request) -> bytes | int:
        path = request.path or b"/"
        resource = self._routes.get(path.rstrip(b"/") or b"/")
        if resource is None:
            resource = notFound()
        rendered: bytes | int = resource.render(request)
        return rendered


class QuietSite(Site):
    """A Site that does not write an access-log line per request (WebSocket upgrades included)."""

    def log(self, request: object) -> None:
        pass


def make_site(root: RootResource) -> Site:
    site = QuietSite(root)
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
