"""
Headless Chromium for the browser tests: the page's own web server (another
origin than the daemon's), and the browser found where Debian puts it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .conftest import HOST
from .sioclients import CHROMIUM, JS_DIR, ClientProcess, node_binary, spawn


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


class Browsers:
    """Chromium processes (tests/js/browser.js) opened by a test, each with its page's server; all closed at the end."""

    def __init__(self, profiles: Path) -> None:
        self._profiles = profiles
        self._opened: list[tuple[ClientProcess, PageServer]] = []

    def open(self, url: str, server: PageServer, **options: Any) -> ClientProcess:
        config = {
            "url": url, "userDataDir": str(self._profiles / f"profile{len(self._opened)}"), "chromium": chromium_available(),
            **options,
        }  # fmt: skip
        process = spawn("chromium", [node_binary(), str(JS_DIR / "browser.js"), json.dumps(config)], cwd=JS_DIR)
        self._opened.append((process, server))
        return process

    async def close(self) -> None:
        for process, server in self._opened:
            if not process.ended.called:
                process.command(cmd="exit")
                try:
                    await process.until(process.ended_now, "the browser closed", timeout=15)
                except AssertionError:
                    pass
            await process.stop()
            await server.stop()
