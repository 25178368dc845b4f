"""
The browser library (/redmessenger.js, SPEC §9) in headless Chromium, against
the real daemon, with the real Python library as the application: the page is
served from another origin with the two meta tags and the daemon's script tag,
exactly as page_tags() writes them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from redmessenger_app import blocking
from redmessenger_app.protocol import Settings, page_tags

from .browserpage import Browsers, PageServer
from .conftest import HOST, publish
from .sioclients import JS_DIR, ClientProcess, ensure_node_modules, node_binary

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>page</title>
%(head)s
%(tags)s
</head><body>
<script>
  // The page's own code, as a user writes it; the test drives it through window.page.
  window.page = {
    got: [], personal: [], states: [],
    make(options) {
      this.rm = new RedMessenger(options || {});
      this.rm.on("state", (state) => { this.states.push(state); __report({event: "state", state}); });
      return true;
    },
    async subscribe(name) {
      try {
        const channel = await this.rm.subscribe(name, (data, envelope) => {
          this.got.push({channel: name, data, sender: envelope.sender});
          __report({event: "got", channel: name, data, sender: envelope.sender});
        });
        this[name] = channel;
        return {ok: true, mode: channel.mode};
      } catch (error) {
        return {ok: false, code: error.code, reason: error.message};
      }
    },
    async publish(name, message) {
      try { await this[name].publish(message); return {ok: true}; }
      catch (error) { return {ok: false, code: error.code, reason: error.message}; }
    },
  };
</script>
</body></html>
"""


class Page:
    """One browser page: eval() runs code in it and returns its result."""

    _ids = itertools.count(1)

    def __init__(self, process: ClientProcess) -> None:
        self.process = process

    async def eval(self, code: str, timeout: float = 15.0) -> Any:
        call = next(self._ids)
        self.process.command(cmd="eval", id=call, code=code)
        await self.process.until(lambda: any(e.get("id") == call for e in self.process.of("eval")), f"eval {call}", timeout)
        result = next(e for e in self.process.of("eval") if e.get("id") == call)
        assert "error" not in result, result
        return result["result"]

    def got(self) -> list[dict[str, Any]]:
        return self.process.of("got")


@pytest_twisted.async_yield_fixture
async def pages(tmp_path: Path) -> AsyncIterator[Any]:
    ensure_node_modules()
    browsers = Browsers(tmp_path)

    async def open_page(daemon: Any, public_key: str | None = None, address: str | None = None, head: str = "") -> Page:
        url = f"ws://{HOST}:{daemon.port}{daemon.service.config.rm_route}"
        tags = page_tags(Settings(url=url, public_key=public_key))
        server = PageServer({b"/": (b"text/html; charset=utf-8", (PAGE % {"tags": tags, "head": head}).encode())})
        process = browsers.open(address or server.url, server)
        await process.expect("loaded")
        return Page(process)

    yield open_page
    await browsers.close()


@pytest.fixture
def application(redis_server: Any, redis: Any) -> Iterator[blocking.RedMessenger]:
    """The real Python library as the application: permits by client_auth, counts the requests it saw."""
    rm = blocking.RedMessenger(Settings(redis_url=f"redis://127.0.0.1:{redis_server.port}/0"))
    rm.requests = []  # type: ignore[attr-defined]

    @rm.on("subscription_request")
    def authorize(request: Any) -> None:
        rm.requests.append(request.channel)  # type: ignore[attr-defined]
        if request.channel == "secret":
            request.deny("members only")
        else:
            request.permit("read_only" if request.channel == "news" else "read_write")

    rm.start()
    yield rm
    rm.stop()
    rm.redis.close()


@pytest_twisted.ensureDeferred
async def test_the_served_script_subscribes_publishes_and_is_refused_with_reasons(daemon_factory, pages, application):
    daemon = await daemon_factory(public_key="pk-1", secret_key="sk-1")
    alice, bob = await pages(daemon, "pk-1"), await pages(daemon, "pk-1")
    for page, auth in ((alice, "alice's session"), (bob, "bob's session")):
        assert await page.eval(f"page.make({{clientAuth: {json.dumps(auth)}}})") is True
    assert await alice.eval("page.rm.state") == "disconnected", "lazy: no connection before the first subscribe"
    assert await alice.eval("page.subscribe('room')") == {"ok": True, "mode": "read_write"}
    assert await bob.eval("page.subscribe('room')") == {"ok": True, "mode": "read_write"}
    assert await bob.eval("page.subscribe('secret')") == {"ok": False, "code": "denied", "reason": "members only"}
    assert await bob.eval("page.subscribe('news')") == {"ok": True, "mode": "read_only"}
    refused = await bob.eval("page.publish('news', 'from bob')")
    assert refused["ok"] is False and refused["code"] == "read_only"

    assert await alice.eval("page.publish('room', {text: 'hi bob'})") == {"ok": True}
    await bob.process.expect("got")
    [got] = bob.got()
    assert (got["channel"], got["data"]) == ("room", {"text": "hi bob"})
    assert got["sender"]["uid"] is None and got["sender"]["client_id"]

    application.publish("room", ["from", "the", "app"])
    for page, count in ((alice, 1), (bob, 2)):
        await page.process.expect("got", count)
    assert [g["data"] for g in alice.got()] == [["from", "the", "app"]], "alice did not get her own message"

    assert await alice.eval("page.room.unsubscribe().then(() => page.rm.state)") == "disconnected", (
        "the last unsubscribe closes the connection"
    )
    assert sorted(application.requests) == ["news", "room", "room", "secret"]  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_a_restarted_daemon_is_rejoined_with_grants_and_the_queue_arrives(daemon_factory, pages, application, redis):
    daemon = await daemon_factory(secret_key="sk-1")
    page = await pages(daemon)
    assert await page.eval("page.make({uid: 'alice'}) && (page.rm.onMessage((e) => __report({event: 'personal', e})), true)")
    assert await page.eval("page.subscribe('room')") == {"ok": True, "mode": "read_write"}
    await page.process.until(lambda: page.process.of("state")[-1:] == [{"event": "state", "state": "connected"}], "connected")
    port = daemon.port
    await daemon.service.stopService()
    publish(redis, "rm.users.alice", "queued while the daemon was down")  # nobody hears it: a bare PUBLISH is lost
    application.publish_to_user("alice", "kept by the intake")  # the durable path: delivered when a daemon is back
    again = await daemon_factory(secret_key="sk-1", listen=f"tcp:{port}:interface={HOST}")
    await page.process.until(lambda: len([s for s in page.process.of("state") if s["state"] == "connected"]) == 2,
                             "the page reconnected", timeout=30)  # fmt: skip
    await page.process.expect("personal")
    assert [e["e"]["payload"] for e in page.process.of("personal")] == ['"kept by the intake"']
    assert application.requests == ["room"], "resubscribed with its grant: the application was not asked again"  # type: ignore[attr-defined]
    publish(redis, "rm.channels.room", "after the restart")
    await page.process.expect("got")
    assert [g["data"] for g in page.got()] == ["after the restart"]
    assert again.service.hub.counters.subscriptions_by_grant == 1


def test_the_library_logic_in_nodes_test_runner() -> None:
    """tests/js/redmessenger_unit.test.js: ids, acks after the handler, grants on reconnect, refusals, notify()."""
    import subprocess

    result = subprocess.run(
        [node_binary(), "--test", str(JS_DIR / "redmessenger_unit.test.js")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    written = (JS_DIR / "redmessenger_unit.test.js").read_text().count("\ntest(")
    assert written >= 8 and "# fail 0" in result.stdout and f"# pass {written}\n" in result.stdout, result.stdout[-600:]


@pytest_twisted.ensureDeferred
async def test_the_script_is_served_with_an_etag_and_is_the_file_in_the_repository(daemon_factory):
    from .httpclient import http_get

    daemon = await daemon_factory()
    shipped = (Path(__file__).resolve().parent.parent / "redmessenger" / "static" / "redmessenger.js").read_bytes()
    code, headers, body = await http_get(daemon.port, "/redmessenger.js")
    assert (code, body) == (200, shipped)
    assert headers.getRawHeaders(b"content-type") == [b"application/javascript; charset=utf-8"]
    etag = headers.getRawHeaders(b"etag")[0]
    code, _, body = await http_get(daemon.port, "/redmessenger.js", {b"if-none-match": [etag]})
    assert (code, body) == (304, b"")


def test_the_typings_compile_with_typescripts_strict_checks(tmp_path: Path) -> None:
    """redmessenger.d.ts against tests/js/typings_check.ts (the README's usage); and a misuse is caught."""
    import shutil
    import subprocess

    tsc = JS_DIR / "node_modules" / ".bin" / "tsc"
    flags = ["--noEmit", "--strict", "--target", "es2017", "--lib", "es2017,dom,dom.iterable", "--moduleResolution", "node"]
    result = subprocess.run([str(tsc), *flags, "typings_check.ts"], cwd=JS_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    misuse = tmp_path / "misuse.ts"
    shutil.copy(JS_DIR / "typings_check.ts", misuse)
    static = (Path(__file__).resolve().parent.parent / "redmessenger" / "static" / "redmessenger").as_posix()
    misuse.write_text(
        misuse.read_text().replace("../../redmessenger/static/redmessenger", static).replace('rm.subscribe<{ text: string }>("room"', "rm.subscribe<{ text: string }>(42")
    )
    result = subprocess.run([str(tsc), *flags, str(misuse)], cwd=JS_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "TS2345" in result.stdout, result.stdout


BLOCKED_WEBSOCKET = """
  // A network that lets no WebSocket through: the connection fails before it opens, as behind such a proxy.
  window.WebSocket = function () {
    const socket = {readyState: 0, send() {}, close() {}};
    setTimeout(() => socket.onclose && socket.onclose({code: 1006, reason: ""}), 10);
    return socket;
  };
  true
"""


@pytest_twisted.ensureDeferred
async def test_where_websockets_are_blocked_long_polling_takes_over(daemon_factory, pages, application):
    daemon = await daemon_factory(public_key="pk-1")
    open_page, blocked = await pages(daemon, "pk-1"), await pages(daemon, "pk-1")
    assert await blocked.eval(BLOCKED_WEBSOCKET) is True
    for page in (open_page, blocked):
        assert await page.eval("page.make({uid: 'u' + Math.random().toString(36).slice(2)})") is True
    assert await blocked.eval("page.subscribe('room')") == {"ok": True, "mode": "read_write"}
    assert await blocked.eval("page.rm.transport") == "polling"
    assert await open_page.eval("page.subscribe('room')") == {"ok": True, "mode": "read_write"}
    assert await open_page.eval("page.rm.transport") == "websocket"
    assert await blocked.eval("page.subscribe('secret')") == {"ok": False, "code": "denied", "reason": "members only"}
    assert await blocked.eval("page.subscribe('news').then(() => page.publish('news', 'no'))") == {
        "ok": False, "code": "read_only", "reason": "the subscription to news is read_only"
    }  # fmt: skip
    assert await open_page.eval("page.publish('room', 'from the websocket page')") == {"ok": True}
    assert await blocked.eval("page.publish('room', 'from the polling page')") == {"ok": True}
    application.publish("room", "from the app")
    await blocked.process.expect("got", 2)
    await open_page.process.expect("got", 2)
    assert [g["data"] for g in blocked.got()] == ["from the websocket page", "from the app"]
    assert [g["data"] for g in open_page.got()] == ["from the polling page", "from the app"]


@pytest_twisted.ensureDeferred
async def test_over_long_polling_a_handler_awaiting_its_own_publish_gets_the_reply(daemon_factory, pages, application, redis):
    """
    The next poll waits for the handlers (it confirms what came before it); a handler that awaits a request's reply
    waited for that very poll: the request lets the poll go, and the reply comes.
    """
    daemon = await daemon_factory(public_key="pk-1")
    page = await pages(daemon, "pk-1")
    assert await page.eval(BLOCKED_WEBSOCKET) is True
    assert await page.eval("page.make({uid: 'poller'})") is True
    assert await page.eval("page.subscribe('room')") == {"ok": True, "mode": "read_write"}
    assert await page.eval("page.rm.transport") == "polling"
    echo = (
        "page.rm.onMessage(async (envelope) => { __report({event: 'handling', p: envelope.payload});"
        " __report({event: 'echoed', result: await page.publish('room', 'echo ' + envelope.payload)}); }); true"
    )
    assert await page.eval(echo) is True
    publish(redis, "rm.users.poller", "ping")
    await page.process.until(lambda: page.process.of("echoed"), "the publish's reply", 10)
    assert [e["result"] for e in page.process.of("echoed")] == [{"ok": True}]


# A page that may load scripts from the daemon but not connect to it (no WebSocket, no fetch): its CSP says so.
NO_CONNECTIONS = """<meta http-equiv="Content-Security-Policy" content="connect-src 'self'">"""
AWKWARD_TEXT = "line one\nline two, a backslash-n \\n, C:\\new, \"quotes\", </script>, € and 𝄞"


@pytest_twisted.ensureDeferred
async def test_a_page_that_may_not_connect_to_the_daemon_gets_its_channels_over_jsonp(daemon_factory, pages, application):
    daemon = await daemon_factory(public_key="pk-1", ping_interval=1)  # a JSONP page silent for 2 s is gone
    open_page, fenced = await pages(daemon, "pk-1"), await pages(daemon, "pk-1", head=NO_CONNECTIONS)
    for page in (open_page, fenced):
        assert await page.eval("page.make({uid: 'u' + Math.random().toString(36).slice(2), reconnectDelay: 50})") is True
    assert await fenced.eval("page.subscribe('room')") == {"ok": True, "mode": "read_write"}
    assert await fenced.eval("page.rm.transport") == "jsonp"
    assert await fenced.eval("page.states") == ["connecting", "reconnecting", "connecting", "reconnecting", "connecting", "connected"]
    assert await open_page.eval("page.subscribe('room')") == {"ok": True, "mode": "read_write"}
    assert await open_page.eval("page.rm.transport") == "websocket"
    assert await fenced.eval("page.subscribe('secret')") == {"ok": False, "code": "denied", "reason": "members only"}
    assert await fenced.eval("page.subscribe('news').then(() => page.publish('news', 'no'))") == {
        "ok": False, "code": "read_only", "reason": "the subscription to news is read_only"
    }  # fmt: skip
    assert await fenced.eval(f"page.publish('room', {json.dumps({'text': AWKWARD_TEXT})})") == {"ok": True}
    await open_page.process.expect("got")
    application.publish("room", {"text": AWKWARD_TEXT, "from": "the app"})
    await fenced.process.expect("got")
    await open_page.process.expect("got", 2)
    assert [g["data"] for g in open_page.got()] == [{"text": AWKWARD_TEXT}, {"text": AWKWARD_TEXT, "from": "the app"}]
    assert [g["data"] for g in fenced.got()] == [{"text": AWKWARD_TEXT, "from": "the app"}]
    # Engine.IO 3's client pings: the page's session outlives its 2 s silence timeout, several times over
    from redmessenger.dialects.engineio.codec import PacketType

    (session,) = daemon.service.socketio.engine.sessions()
    pings, receive = [], session.receive
    session.receive = lambda packets: (pings.extend(p for p in packets if p.type is PacketType.PING), receive(packets))[1]
    await daemon.until(lambda: len(pings) >= 4, 15, "four pings from the page")
    assert session.is_open and daemon.service.socketio.engine.sessions() == [session], "the same session throughout"
    assert await fenced.eval("page.states.length") == 6, "no reconnection"
    assert await fenced.eval("page.room.unsubscribe().then(() => page.news.unsubscribe()).then(() => page.rm.state)") == "disconnected"
    await daemon.until(lambda: not daemon.service.socketio.engine.sessions(), 5, "the JSONP session closed by the page")


@pytest_twisted.ensureDeferred
async def test_the_demo_page_chats_between_tabs_queues_personal_messages_and_notifies_one_tab(daemon_factory, pages, redis):
    import os

    daemon = await daemon_factory(demo=True)
    demo = f"http://{HOST}:{daemon.port}/demo"
    redis.publish("rm.users.alice", "while no tab was open")  # alice is offline: queued
    await daemon.idle()
    alice = await pages(daemon, address=demo + "?uid=alice")
    bob = await pages(daemon, address=demo + "?uid=bob")
    assert await alice.eval("new Promise((r) => { const t = () => window.demo.personal.length ? r(window.demo.personal) : setTimeout(t, 20); t(); })") == [
        {"payload": "while no tab was open", "bubble": True}
    ]
    # both joined demo.chat (permitted by the demo application); alice says something with markup in it
    joined = "new Promise((r) => { const t = () => window.demo.rm.state === 'connected' && Object.keys(window.demo.rm._channels).length && window.demo.rm._channels['demo.chat'].mode ? r(true) : setTimeout(t, 20); t(); })"
    for page in (alice, bob):
        assert await page.eval(joined) is True
    say = "document.getElementById('text').value = %s; document.querySelector('#chat button').click(); true"
    lines = "new Promise((r) => { const t = () => window.demo.lines.length >= %d ? r(window.demo.lines) : setTimeout(t, 20); t(); })"
    await alice.eval(say % json.dumps("Hello Bob, this is Alice's tab."))
    assert await bob.eval(lines % 1) == [{"who": "alice", "text": "Hello Bob, this is Alice's tab."}]
    await bob.eval(say % json.dumps("Hi Alice! Heard you on demo.chat."))
    assert (await alice.eval(lines % 2))[1] == {"who": "bob", "text": "Hi Alice! Heard you on demo.chat."}
    shot = os.environ.get("REDMESSENGER_DEMO_SCREENSHOT")  # set to docs/demo.png to refresh the docs' picture
    if shot:
        alice.process.command(cmd="screenshot", path=str(Path(shot).resolve()))
        await alice.process.expect("screenshot")
    # markup in a message is shown as text, never run
    text = "hi <img src=x onerror=\"__report({event: 'xss'})\">"
    await alice.eval(say % json.dumps(text))
    assert (await bob.eval(lines % 3))[2] == {"who": "alice", "text": text}
    assert await bob.eval("document.querySelectorAll('#log img').length") == 0, "message text is text, never markup"
    assert text in await bob.eval("document.getElementById('log').textContent")
    # a second tab of alice's: a personal message notifies on one tab only, the oldest (the bubble's)
    second = await pages(daemon, address=demo + "?uid=alice")
    assert await second.eval(joined) is True
    stub = "window.Notification = function () {}; Notification.permission = 'granted'; true"
    for page in (alice, second):
        assert await page.eval(stub) is True
    redis.publish("rm.users.alice", "ding")
    latest = "new Promise((r) => { const t = () => window.demo.personal.some((m) => m.payload === 'ding') ? r(window.demo.notified) : setTimeout(t, 20); t(); })"
    assert (await alice.eval(latest), await second.eval(latest)) == (1, 0)
    assert alice.process.of("xss") == bob.process.of("xss") == []


SELF_STARTING_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>inbox</title>
%(tags)s
</head><body>
<script>
  // A page that listens to its user's messages from the moment it loads (and again if it is loaded again).
  window.addEventListener("pageshow", (event) => __report({event: "pageshow", persisted: event.persisted}));
  const rm = new RedMessenger({uid: "alice"});
  rm.on("state", (state) => __report({event: "state", state}));
  rm.onMessage((envelope) => __report({event: "personal", payload: envelope.payload, id: envelope.id}));
</script>
</body></html>
"""


@pytest_twisted.ensureDeferred
async def test_a_page_left_and_come_back_to_gets_what_was_sent_meanwhile_once(daemon_factory, redis, tmp_path):
    """With the back/forward cache on (Playwright turns it off by default): frozen or reloaded, nothing lost or doubled."""
    ensure_node_modules()
    daemon = await daemon_factory()
    url = f"ws://{HOST}:{daemon.port}{daemon.service.config.rm_route}"
    page_html = SELF_STARTING_PAGE % {"tags": page_tags(Settings(url=url))}
    server = PageServer({
        b"/": (b"text/html; charset=utf-8", page_html.encode()),
        b"/elsewhere": (b"text/html; charset=utf-8", b"<!doctype html><title>elsewhere</title><p>another page"),
    })  # fmt: skip
    browsers = Browsers(tmp_path)
    process = browsers.open(server.url, server, bfcache=True)
    try:
        await process.until(lambda: {"event": "state", "state": "connected"} in process.events, "connected")
        publish(redis, "rm.users.alice", "before leaving")
        await process.expect("personal")
        process.command(cmd="goto", url=server.url + "elsewhere")
        await process.expect("navigated")
        publish(redis, "rm.users.alice", "while away")  # to a frozen page's open socket, or queued if it closed
        await daemon.idle()

        def kept() -> bool:  # not confirmed by a page that is not running: still in the daemon's keeping, or queued
            user = daemon.service.presence.get("alice")
            held = [s.message.payload for a in (user.attachments if user else []) for s in a.unconfirmed + (a.held or [])]
            return "while away" in held or redis.llen("rm:users:alice:messages") == 1

        await daemon.until(kept, what="the message kept, unconfirmed, while the page is away")
        process.command(cmd="back")
        await process.expect("navigated", 2)
        await process.until(lambda: any(e.get("payload") == "while away" for e in process.of("personal")), "the message", 30)
        shows = process.of("pageshow")
        restored_from_cache = shows[-1]["persisted"]
        payloads = [e["payload"] for e in process.of("personal")]
        assert payloads.count("while away") == 1, payloads
        assert payloads.count("before leaving") == 1, "acknowledged before leaving: not delivered again"
        print("back/forward cache:", "restored from the cache" if restored_from_cache else "the page was loaded again")
    finally:
        await browsers.close()


HELD_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>held</title>
%(tags)s
</head><body>
<script>
  // A page whose handler for "first" takes its time (it waits for window.release()), as a handler saving to IndexedDB may.
  const held = new Promise((resolve) => { window.release = () => { resolve(); return true; }; });
  const rm = new RedMessenger({uid: "carol"});
  rm.on("state", (state) => __report({event: "state", state}));
  rm.onMessage((envelope) => {
    __report({event: "handled", payload: envelope.payload, id: envelope.id});
    return envelope.payload === "first" ? held : null;
  });
  rm.connect();
  window.rm = rm;
</script>
</body></html>
"""


def _abort_server_connections(port: int) -> int:
    """A network cut as the daemon sees it: every connection accepted on ``port`` is dropped (RST, no close frame)."""
    from twisted.internet import reactor, tcp

    dropped = 0
    for selectable in set(reactor.getReaders()) | set(reactor.getWriters()):
        if isinstance(selectable, tcp.Server) and selectable.connected and selectable.getHost().port == port:
            selectable.abortConnection()
            dropped += 1
    return dropped


@pytest_twisted.ensureDeferred
async def test_a_message_delivered_again_after_a_cut_while_its_handler_runs_is_handled_once(daemon_factory, redis, tmp_path):
    """
    The connection is cut while the page's handler for a message still runs: the daemon sends the message (not
    acknowledged) again on the next connection, the wire carries it twice, and the handler runs once, in order.
    """
    ensure_node_modules()
    daemon = await daemon_factory()
    url = f"ws://{HOST}:{daemon.port}{daemon.service.config.rm_route}"
    server = PageServer({b"/": (b"text/html; charset=utf-8", (HELD_PAGE % {"tags": page_tags(Settings(url=url))}).encode())})
    browsers = Browsers(tmp_path)
    process = browsers.open(server.url, server, frames=True)
    try:
        connected = {"event": "state", "state": "connected"}
        await process.until(lambda: connected in process.events, "connected")
        publish(redis, "rm.users.carol", "first")
        publish(redis, "rm.users.carol", "second")
        await process.expect("handled")  # "first" is in its handler, which waits
        assert _abort_server_connections(daemon.port) >= 1
        await process.until(lambda: process.events.count(connected) == 2, "connected again", 30)

        def came(payload: str) -> int:
            return sum(1 for f in process.of("frame") if f'"payload":"{payload}"' in f["data"])

        await process.until(lambda: came("first") == 2 and came("second") == 2, "both sent again on the new socket", 15)
        assert await Page(process).eval("window.release()") is True
        await process.until(lambda: len(process.of("handled")) >= 2, "the second message handled")
        assert await Page(process).eval("rm.disconnect(); true") is True
        await daemon.until(lambda: daemon.service.presence.get("carol") is None, what="carol offline")
        await daemon.idle()
        handled = [e["payload"] for e in process.of("handled")]
        assert handled == ["first", "second"], handled  # once each, in order
        assert redis.llen("rm:users:carol:messages") == 0, "both acknowledged: nothing back in the queue"
    finally:
        await browsers.close()


# The same page over long-polling, where the next poll is what confirms the messages before it (docs/protocol.md).
POLLING_HELD_PAGE = HELD_PAGE.replace('{uid: "carol"}', '{uid: "carol", transports: ["polling"], reconnectDelay: 50}')


async def _open_polling_held_page(daemon: Any, browsers: Browsers) -> ClientProcess:
    url = f"ws://{HOST}:{daemon.port}{daemon.service.config.rm_route}"
    page_html = POLLING_HELD_PAGE % {"tags": page_tags(Settings(url=url))}
    assert page_html != HELD_PAGE % {"tags": page_tags(Settings(url=url))}
    server = PageServer({b"/": (b"text/html; charset=utf-8", page_html.encode())})
    process = browsers.open(server.url, server)
    await process.until(lambda: {"event": "state", "state": "connected"} in process.events, "connected")
    assert await Page(process).eval("rm.transport") == "polling"
    return process


async def _two_queued_then_the_polling_page(daemon: Any, browsers: Browsers, redis: Any) -> ClientProcess:
    """"first" and "second" queued for carol, then the page: its first poll brings both."""
    publish(redis, "rm.users.carol", "first")
    publish(redis, "rm.users.carol", "second")
    await daemon.until(lambda: redis.llen("rm:users:carol:messages") == 2, what="both queued")
    return await _open_polling_held_page(daemon, browsers)


@pytest_twisted.ensureDeferred
async def test_over_long_polling_a_message_waiting_behind_a_running_handler_comes_again_after_a_cut(
    daemon_factory, redis, tmp_path
):
    """
    Over long-polling the next poll confirms what the last one brought: it must wait for the handlers. The
    connection is cut while "first" is in its handler and "second" waits behind it: both come again, each is
    handled once, in order.
    """
    ensure_node_modules()
    daemon = await daemon_factory(ping_interval=1)  # a session not polled (or ponged) for 2 s is gone
    browsers = Browsers(tmp_path)
    try:
        process = await _two_queued_then_the_polling_page(daemon, browsers, redis)
        connected = {"event": "state", "state": "connected"}
        await process.expect("handled")  # "first" is in its handler, which waits; "second" waits behind it
        # The network cut: the connections go, and the daemon ends the session (as it does when a poll's connection
        # drops, or when the heartbeat goes unanswered; done here at once, whether a poll was in flight or not).
        _abort_server_connections(daemon.port)
        for session in daemon.service.socketio.engine.sessions():
            session.abort("the network cut")
        await process.until(lambda: process.events.count(connected) >= 2, "connected again", 30)
        assert await Page(process).eval("window.release()") is True
        publish(redis, "rm.users.carol", "third")  # behind the others
        await process.until(lambda: any(e["payload"] == "third" for e in process.of("handled")), "the third message")
        assert await Page(process).eval("rm.disconnect(); true") is True
        await daemon.until(lambda: daemon.service.presence.get("carol") is None, what="carol offline")
        await daemon.idle()
        handled = [e["payload"] for e in process.of("handled")]
        assert handled == ["first", "second", "third"], handled  # none lost, none twice, in order
        assert redis.llen("rm:users:carol:messages") == 0, "all confirmed: nothing back in the queue"
    finally:
        await browsers.close()


@pytest_twisted.ensureDeferred
async def test_over_long_polling_a_page_closed_while_its_handler_runs_leaves_its_messages_unconfirmed(
    daemon_factory, redis, tmp_path
):
    """The page goes away while "first" is in its handler: neither it nor "second" was confirmed; the next page gets both."""
    ensure_node_modules()
    daemon = await daemon_factory(ping_interval=1)
    browsers = Browsers(tmp_path)
    try:
        process = await _two_queued_then_the_polling_page(daemon, browsers, redis)
        await process.expect("handled")
        process.command(cmd="exit")  # the tab (the browser) closes with the handler still running
        await process.until(process.ended_now, "the browser closed")
        await daemon.until(lambda: daemon.service.presence.get("carol") is None, 10, "carol offline")
        await daemon.idle()
        assert redis.llen("rm:users:carol:messages") == 2, "neither was confirmed: both back in the queue"
        again = await _open_polling_held_page(daemon, browsers)
        await again.expect("handled")
        assert await Page(again).eval("window.release()") is True
        await again.until(lambda: len(again.of("handled")) >= 2, "the second message")
        assert await Page(again).eval("rm.disconnect(); true") is True
        await daemon.until(lambda: daemon.service.presence.get("carol") is None, what="carol offline")
        await daemon.idle()
        assert [e["payload"] for e in again.of("handled")] == ["first", "second"]
        assert redis.llen("rm:users:carol:messages") == 0
    finally:
        await browsers.close()
