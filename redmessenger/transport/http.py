"""
The HTTP side of the daemon's one port: each request goes to the resource
registered for its whole path (``rm_route``, ``/socket.io/``, ``/health``, ``/metrics``).
"""

from __future__ import annotations

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
