"""
End to end in a real browser: headless Chromium loads a page (served from another
origin, so CORS is exercised) with a Socket.IO client and the seed's client code,
unmodified, and sees a queued message and a live one arrive; and socket.io-client
1.x and 2.x receive a long queue and every character over each of Engine.IO 3's
long-polling variants (XHR2, forceBase64, JSONP).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from ..browserpage import Browsers, PageServer
from ..conftest import HOST, publish, wait_until
from ..sioclients import (
    HARD_PAYLOADS,
    JS_DIR,
    ClientProcess,
    as_delivered,
    big_queue,
    ensure_node_modules,
)

CLIENT_BUNDLES = {
    "v4": JS_DIR / "node_modules" / "socket.io-client" / "dist" / "socket.io.js",
    "v2": JS_DIR / "node_modules" / "socket.io-client-v2" / "dist" / "socket.io.js",
    "v1": JS_DIR / "node_modules" / "socket.io-client-v1" / "dist" / "socket.io.js",
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
      __report({event: "open", transport: engine.transport.name, jsonp: query.j !== undefined,
                b64: engine.transport.supportsBinary === false});
      engine.on("upgrade", function (transport) { __report({event: "upgrade", transport: transport.name}); });
      engine.on("error", function (e) {
        __report({event: "engine_error", message: String(e && e.message), description: String(e && e.description)});
      });
    });
    socket.on("error", function (data) { __report({event: "error", data: data}); });
    socket.on("disconnect", function (reason) { __report({event: "disconnect", reason: String(reason)}); });
    socket.io.on("reconnect_attempt", function (n) { __report({event: "reconnect_attempt", attempt: n}); });
    return socket;
  };
})();
var messenger = new RedMessenger(%(url)s, "user1");
messenger.onMessage = function (message) { __report({event: "message", message: message}); };
</script>
</body></html>
"""


@pytest_twisted.async_yield_fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """Open a page in Chromium; the browser and the page's server are stopped afterwards."""
    ensure_node_modules()
    browsers = Browsers(tmp_path)

    def open_page(generation: str, daemon_url: str, options: dict[str, Any], page: str | None = None) -> ClientProcess:
        page = (page or PAGE) % {"options": json.dumps(options), "url": json.dumps(daemon_url)}
        server = PageServer(
            {
                b"/": (b"text/html; charset=utf-8", page.encode()),
                b"/socket.io.js": (b"text/javascript", CLIENT_BUNDLES[generation].read_bytes()),
                b"/redmessenger-client.js": (b"text/javascript", (JS_DIR / "redmessenger-client.js").read_bytes()),
            }
        )
        return browsers.open(server.url, server)

    yield open_page
    await browsers.close()


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


#: Events of a page that mean its session broke: the client would reconnect and fetch the queue again.
TROUBLES = {"disconnect", "error", "engine_error", "reconnect_attempt", "pageerror"}


@pytest.mark.parametrize("generation", ["v1", "v2"])
@pytest.mark.parametrize(
    "options, jsonp, b64",
    [
        ({"transports": ["polling"]}, False, False),  # XHR2: binary payloads
        ({"transports": ["polling"], "forceBase64": True}, False, True),  # XHR, b64=1: text payloads
        ({"transports": ["polling"], "forceJSONP": True}, True, True),  # JSONP
    ],
    ids=["xhr2", "b64", "jsonp"],
)
@pytest_twisted.ensureDeferred
async def test_engineio3_polling_in_chromium_delivers_a_big_queue_and_every_character(
    daemon, redis, browser, generation, options, jsonp, b64
):
    """
    Issue 12: socket.io-client 1.x and 2.x over every long-polling variant a
    browser can use receive a queue of 300 KB (engine.io-client 1.8 used to fail
    with "Maximum call stack size exceeded" on a text response that large) and
    payloads with astral characters or published as invalid UTF-8, exactly:
    nothing lost, doubled or reordered, and the messages after them still arrive.
    """
    queue = big_queue()
    for text in queue:
        publish(redis, "rm.users.user1", text)
    await wait_until(lambda: redis.llen("rm:users:user1:messages") == len(queue), 5, "the queue written")

    def troubles() -> list[dict[str, Any]]:
        return [e for e in page.events if e["event"] in TROUBLES]

    page = browser(generation, f"http://{HOST}:{daemon.port}{daemon.service.config.rm_route}", options)
    await page.until(lambda: len(page.of("message")) >= len(queue) or troubles(), "the queue", timeout=60)
    assert not troubles(), f"the session broke: {troubles()[:4]}"
    await wait_until(lambda: daemon.service.presence.get("user1") is not None, 10, "user1 online")
    live = [*HARD_PAYLOADS, "the last one"]
    for text in live:
        publish(redis, "rm.users.user1", text)
    await page.until(lambda: len(page.of("message")) >= len(queue) + len(live) or troubles(), "the live messages")
    assert not troubles(), f"the session broke: {troubles()[:4]}"
    expected = [as_delivered(text) for text in queue + live]
    got = [e["message"]["payload"] for e in page.of("message")]
    assert [text[:16] for text in got] == [text[:16] for text in expected]
    assert got == expected

    (opened,) = page.of("open")
    assert (opened["transport"], opened["jsonp"], opened["b64"]) == ("polling", jsonp, b64)
    (session,) = daemon.service.socketio.engine.sessions()
    assert session.version == 3 and session.transport == "polling"
    assert session.supports_binary is not b64, "XHR2 reads binary payloads"
    await daemon.idle()
    assert not redis.exists("rm:users:user1:messages"), "every message confirmed"


# The legacy client as the daemon serves it, loaded from the daemon by a page of another origin.
SERVED_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>RedMessenger</title></head>
<body>
<script src="/socket.io.js"></script>
<script src="%(script)s"></script>
<script>
var messenger = new RedMessenger(%%(url)s, "user1", "%(key)s");
messenger.onMessage = function (message) { __report({event: "message", message: message}); };
messenger.onError = function (error) { __report({event: "client_error", error: error}); };
</script>
</body></html>
"""


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest_twisted.ensureDeferred
async def test_the_served_legacy_client_delivers_and_shows_a_wrong_key(daemon_factory, redis, browser, generation):
    """Issue 12: the client the README tells users to load is served, and a wrong key reaches the page's onError."""
    daemon = await daemon_factory(secure_mode=True)
    redis.set("rm:users:user1:key", "right")
    publish(redis, "rm.users.user1", "queued while away")
    await wait_until(lambda: redis.llen("rm:users:user1:messages") == 1, 5, "the message queued")
    url = f"http://{HOST}:{daemon.port}{daemon.service.config.rm_route}"
    script = f"http://{HOST}:{daemon.port}/redmessenger-legacy.js"

    wrong = browser(generation, url, {}, SERVED_PAGE % {"script": script, "key": "wrong"})
    (reported,) = await wrong.expect("client_error", timeout=30)
    assert reported["error"]["code"] == 4401 and reported["error"]["name"] == "BAD_KEY"
    assert not wrong.of("message")

    right = browser(generation, url, {}, SERVED_PAGE % {"script": script, "key": "right"})
    (message,) = await right.expect("message", timeout=30)
    assert message["message"]["payload"] == "queued while away"
    assert not right.of("client_error") and not right.of("pageerror")
