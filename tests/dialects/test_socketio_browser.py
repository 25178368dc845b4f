"""
End to end in a real browser: headless Chromium loads a page (served from another
origin, so CORS is exercised) with a Socket.IO client and the seed's client code,
unmodified, and sees a queued message and a live one arrive.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from ..conftest import HOST, publish, wait_until
from ..sioclients import CHROMIUM, JS_DIR, ClientProcess, ensure_node_modules, node_binary, spawn

CLIENT_BUNDLES = {
    "v4": JS_DIR / "node_modules" / "socket.io-client" / "dist" / "socket.io.js",
    "v2": JS_DIR / "node_modules" / "socket.io-client-v2" / "dist" / "socket.io.js",
}

# The page's own code around the seed's client: io() with the test's options,
# and window.__report (provided by tests/js/browser.js) for what arrives.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>RedMessenger</title></head>
<body>
<script src="/socket.io.js"></script>
<script src="/redmessenger-client.js"></script>
<script>
(function () {
  var realIo = io, options = %(options)s;
  io = function (url, more) {
    var socket = realIo(url, Object.assign({}, options, more || {}));
    socket.io.on("open", function () {
      var engine = socket.io.engine, query = engine.transport.query || {};
      __report({event: "open", transport: engine.transport.name, jsonp: query.j !== undefined});
      engine.on("upgrade", function (transport) { __report({event: "upgrade", transport: transport.name}); });
    });
    socket.on("error", function (data) { __report({event: "error", data: data}); });
    return socket;
  };
})();
var messenger = new RedMessenger(%(url)s, "user1");
messenger.onMessage = function (message) { __report({event: "message", message: message}); };
</script>
</body></html>
"""


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


@pytest_twisted.async_yield_fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """Open a page in Chromium; the browser and the page's server are stopped afterwards."""
    ensure_node_modules()
    chromium = chromium_available()
    opened: list[tuple[ClientProcess, PageServer]] = []

    def open_page(generation: str, daemon_url: str, options: dict[str, Any]) -> ClientProcess:
        page = PAGE % {"options": json.dumps(options), "url": json.dumps(daemon_url)}
        server = PageServer(
            {
                b"/": (b"text/html; charset=utf-8", page.encode()),
                b"/socket.io.js": (b"text/javascript", CLIENT_BUNDLES[generation].read_bytes()),
                b"/redmessenger-client.js": (b"text/javascript", (JS_DIR / "redmessenger-client.js").read_bytes()),
            }
        )
        config = {"url": server.url, "userDataDir": str(tmp_path / f"profile{len(opened)}"), "chromium": chromium}
        process = spawn("chromium", [node_binary(), str(JS_DIR / "browser.js"), json.dumps(config)], cwd=JS_DIR)
        opened.append((process, server))
        return process

    yield open_page
    for process, server in opened:
        if not process.ended.called:
            process.command(cmd="exit")
            try:
                await process.until(process.ended_now, "the browser closed", timeout=15)
            except AssertionError:
                pass
        await process.stop()
        await server.stop()


@pytest.mark.parametrize(
    "generation, options, transport, jsonp",
    [
        ("v4", {}, "websocket", False),  # long-polling, then the upgrade to WebSocket
        ("v2", {}, "websocket", False),
        ("v2", {"forceJSONP": True, "transports": ["polling"]}, "polling", True),  # Engine.IO 3 JSONP
        ("v4", {"transports": ["polling"]}, "polling", False),
    ],
    ids=["v4-upgrade", "v2-upgrade", "v2-jsonp", "v4-polling"],
)
@pytest_twisted.ensureDeferred
async def test_the_seed_client_in_chromium(daemon, redis, browser, generation, options, transport, jsonp):
    publish(redis, "rm.users.user1", "queued while away")
    await wait_until(lambda: redis.llen("rm:users:user1:messages") == 1, 5, "the message queued")

    page = browser(generation, f"http://{HOST}:{daemon.port}{daemon.service.config.rm_route}", options)
    await page.expect("message", 1, timeout=30)
    await wait_until(lambda: daemon.service.presence.get("user1") is not None, 10, "user1 online")
    publish(redis, "rm.users.user1", "live")
    messages = [e["message"] for e in await page.expect("message", 2, timeout=15)]
    assert [m["payload"] for m in messages] == ["queued while away", "live"]
    assert all(m["source"] == "rm.users.user1" and m["bubble"] is True for m in messages)
    consoles = [e["text"] for e in page.of("console")]
    assert "Connected to RedMessenger!" in consoles and "Authenticating..." in consoles

    (opened,) = page.of("open")[:1]
    assert opened["jsonp"] is jsonp
    (session,) = daemon.service.socketio.engine.sessions()
    assert session.version == (4 if generation == "v4" else 3)
    if transport == "websocket":
        await page.expect("upgrade", timeout=15)
    await wait_until(lambda: session.transport == transport, 15, f"the session on {transport}")
    assert not page.of("pageerror") and not page.of("error")
