"""
The HTTP side of the daemon's one port: routes each request to its handler.

``rm_route`` with ``Upgrade: websocket`` becomes a plain-dialect WebSocket; a
plain ``GET rm_route`` answers a short text, as the Node.js program did, so that
a load balancer or a person can check the daemon is reachable.
"""

from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from redmessenger.transport.leanws import upgrade_to_websocket
from redmessenger.dialects.plain.websocket import PlainWebSocketFactory

REACHABLE_TEXT = b"Hey, you're connected!"


class RouteResource(Resource):
    """``rm_route``: a WebSocket when asked to upgrade, else a reachability text."""

    isLeaf = True

    def __init__(self, factory: PlainWebSocketFactory) -> None:
        super().__init__()
        self._websocket = WebSocketResource(factory)

    def render(self, request: Request) -> bytes | int:
        upgrade = request.getHeader(b"upgrade") or b""
        if upgrade.lower() == b"websocket":
            return upgrade_to_websocket(self._websocket, request)
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return b""
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return REACHABLE_TEXT


class RootResource(Resource):
    """Dispatches on the whole path, so that ``rm_route`` may have several segments."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[bytes, Resource] = {}

    def route(self, path: str, resource: Resource) -> None:
        self._routes[path.encode("ascii")] = resource

    def render(self, request: Request) -> bytes | int:
        resource = self._routes.get(request.path.rstrip(b"/") or b"/")
        if resource is None:
            resource = notFound()
        return resource.render(request)  # type: ignore[no-any-return]


class QuietSite(Site):
    """A Site that does not write an access-log line per request (WebSocket upgrades included)."""

    def log(self, request: Request) -> None:
        pass


def make_site(root: RootResource) -> Site:
    site = QuietSite(root)
    site.noisy = False
    return site
