"""
Real Socket.IO clients in child processes, driven from the reactor (spawnProcess,
never blocking it): Node's socket.io-client 4.x, 2.x and 1.x running the seed's client
code (tests/js/seed_client.js), python-socketio (tests/py_sio_client.py), and
headless Chromium (tests/js/browser.js).  Each prints one JSON event per line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

JS_DIR = Path(__file__).parent / "js"
CHROMIUM = "/usr/bin/chromium"

#: What every client must receive exactly, whatever its framing (issue 12): characters outside the
#: Basic Multilingual Plane (two UTF-16 code units, four UTF-8 bytes), characters of two and three
#: UTF-8 bytes, JavaScript's line separators, JSON's escapes, and published bytes that are not UTF-8
#: (delivered with U+FFFD, the second one an encoded lone surrogate).
HARD_PAYLOADS: list[str | bytes] = [
    "emoji \U0001f600 and \U0001f4a9",
    "clef \U0001d11e",
    b"not UTF-8: \xff\xfe \xc3( end",
    b"a surrogate: \xed\xa0\x80 end",
    "caf\u00e9 \u20ac \u00ff",
    "separators \u2028 \u2029",
    'nul \x00, "quotes", \\n and a newline\n',
]


def as_delivered(payload: str | bytes) -> str:
    """The payload a client receives for ``payload`` published as is (invalid UTF-8 replaced by U+FFFD)."""
    return payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload


def big_queue(count: int = 500, size: int = 600) -> list[str | bytes]:
    """``count`` payloads of about ``size`` characters (300 KB of envelopes by default), HARD_PAYLOADS among them."""
    texts: list[str | bytes] = [f"q{i:04d} " + "x" * size for i in range(count)]
    step = count // (len(HARD_PAYLOADS) + 1)
    for n, hard in enumerate(HARD_PAYLOADS):
        texts.insert((n + 1) * step + n, hard)
    return texts


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: apt-get install -y nodejs npm")
    return node


def ensure_node_modules() -> None:
    """The test clients come from tests/js/package-lock.json: installed once if missing."""
    node_binary()
    if (
        not (JS_DIR / "node_modules" / "socket.io-client-v2").is_dir()
        or not (JS_DIR / "node_modules" / "socket.io-client-v1").is_dir()
        or not (JS_DIR / "node_modules" / "playwright-core").is_dir()
    ):
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not installed: apt-get install -y npm")
        subprocess.run([npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund"], check=True, timeout=300)


class ClientProcess(ProcessProtocol):
    """A client process: its events, its stderr, its end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.stderr = bytearray()
        self.ended: Deferred[int | None] = Deferred()
        self.exit_code: int | None = None
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    self.events.append({"event": "garbage", "text": line.decode("utf-8", "replace")})

    def errReceived(self, data: bytes) -> None:
        if len(self.stderr) < 64_000:
            self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.ended.callback(self.exit_code)

    # -- what tests use ----------------------------------------------------------------

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    def messages(self) -> list[dict[str, Any]]:
        return [e["message"] for e in self.of("message")]

    async def expect(self, kind: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Until ``count`` events of ``kind`` arrived; returns them all."""
        from .conftest import wait_until

        await wait_until(
            lambda: len(self.of(kind)) >= count or self.ended.called,
            timeout,
            f"{count} {kind!r} events from {self.name} (so far: {self.events[-8:]}, stderr: {self.stderr[-2000:]!r})",
        )
        found = self.of(kind)
        assert len(found) >= count, (
            f"{self.name} ended early ({self.exit_code}); events {self.events}, stderr {bytes(self.stderr[-4000:])!r}"
        )
        return found

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        from .conftest import wait_until

        await wait_until(condition, timeout, f"{what} ({self.name}: {self.events[-8:]})")

    def ended_now(self) -> bool:
        return self.ended.called

    def command(self, **command: Any) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(command).encode() + b"\n")

    def freeze(self) -> None:
        """SIGSTOP: the client stays connected but answers nothing, as a suspended laptop."""
        assert self.transport is not None
        self.transport.signalProcess("STOP")

    def thaw(self) -> None:
        assert self.transport is not None
        self.transport.signalProcess(signal.SIGCONT)

    async def stop(self) -> None:
        """Kill the process (a vanished client, as far as the daemon can tell) and wait for its end."""
        if not self.ended.called:
            try:
                assert self.transport is not None
                self.transport.signalProcess("KILL")
            except Exception:
                pass
        from twisted.internet import reactor

        waiting: Deferred[Any] = Deferred()
        self.ended.addBoth(lambda r: (waiting.called or waiting.callback(r), r)[1])
        waiting.addTimeout(10, reactor)
        await waiting


def spawn(name: str, argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> ClientProcess:
    from twisted.internet import reactor

    process = ClientProcess(name)
    environment = dict(os.environ)
    environment.update(env or {})
    reactor.spawnProcess(process, argv[0], argv, env=environment, path=str(cwd) if cwd else None)
    return process


def node_client(url: str, uid: str, key: str = "", generation: str = "v4", **options: Any) -> ClientProcess:
    """The seed's client code in Node.js with socket.io-client 4.x ("v4"), 2.x ("v2") or 1.x ("v1")."""
    config = {"url": url, "uid": uid, "key": key, "generation": generation, "options": options}
    return spawn(f"node-{generation}", [node_binary(), str(JS_DIR / "seed_client.js"), json.dumps(config)], cwd=JS_DIR)


def python_client(base_url: str, namespace: str, uid: str, key: str = "", **options: Any) -> ClientProcess:
    config = {"url": base_url, "namespace": namespace, "uid": uid, "key": key, **options}
    script = Path(__file__).parent / "py_sio_client.py"
    return spawn("python-socketio", [sys.executable, str(script), json.dumps(config)])
