"""``rm_route`` over HTTP: the plain dialect's WebSocket when asked to upgrade, else a reachability text."""

from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource
from twisted.web.resource import Resource
from twisted.web.server import Request

from redmessenger.dialects.plain.websocket import PlainWebSocketFactory
from redmessenger.transport.fastpath import upgrade_to_websocket

REACHABLE_TEXT = b"Hey, you're connected!"


class RouteResource(Resource):
    """``rm_route``: a WebSocket when asked to upgrade, else a reachability text (as the Node.js program answered)."""

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
