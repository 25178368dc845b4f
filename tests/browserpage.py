"""
Headless Chromium for the browser tests: the page's own web server (another
origin than the daemon's), and the browser found where Debian puts it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .conftest import HOST
from .sioclients import CHROMIUM


def chromium_available() -> str:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    return CHROMIUM


class PageServer:
    """The web application's origin: serves the page and the two scripts."""

    def __init__(self, files: dict[bytes, tuple[bytes, bytes]]) -> None:
        from twisted.internet import reactor
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        class Files(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                found = files.get(request.path)
                if found is None:
                    request.setResponseCode(404)
                    return b"not found"
                request.setHeader(b"content-type", found[0])
                return found[1]

        site = Site(Files(), timeout=None)
        site.noisy = False
        self.port = reactor.listenTCP(0, site, interface=HOST)
        self.url = f"http://{HOST}:{self.port.getHost().port}/"

    async def stop(self) -> None:
        await self.port.stopListening()
