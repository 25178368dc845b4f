"""``twistd --nodaemon redmessenger`` as a child process of the test reactor: signals, output, exit."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet.protocol import ProcessProtocol

from .conftest import HOST, free_port, wait_until
from .httpclient import http_get

TWISTD = str(Path(sys.executable).parent / "twistd")


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended = False
        self.exit_code: int | None = None
        self.signal: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.exit_code = reason.value.exitCode
        self.signal = reason.value.signal
        self.ended = True


class Twistd:
    """One daemon run by the real twistd, configured by a JSON file the test can rewrite."""

    def __init__(self, directory: Path, redis_port: int, **overrides: Any) -> None:
        self.directory = directory
        self.port = free_port()
        self.config_path = directory / "redmessenger.json"
        self.config: dict[str, Any] = {
            "redis_host": HOST,
            "redis_port": redis_port,
            "listen": f"tcp:{self.port}:interface={HOST}",
            **overrides,
        }
        self.write_config()
        self._protocol = _Output()
        self._process: Any = None

    def write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config))

    @property
    def output(self) -> str:
        return self._protocol.output.decode("utf-8", "replace")

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/rm"

    def start(self) -> None:
        from twisted.internet import reactor

        self._process = reactor.spawnProcess(
            self._protocol,
            TWISTD,
            [TWISTD, "--nodaemon", "--pidfile=", "redmessenger", "-c", str(self.config_path)],
            env=dict(os.environ),
            path=str(self.directory),
        )

    async def healthy(self, timeout: float = 20.0) -> None:
        """Until ``GET /health`` answers 200 (the port is open and Redis linked)."""
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        deadline = reactor.seconds() + timeout
        while True:
            try:
                code, _, _ = await http_get(self.port, "/health")
                if code == 200:
                    return
            except Exception:
                pass
            if self._protocol.ended or reactor.seconds() > deadline:
                raise AssertionError(f"twistd did not become healthy; output:\n{self.output}")
            await deferLater(reactor, 0.05, lambda: None)

    def signal(self, name: str) -> None:
        self._process.signalProcess(name)

    @property
    def running(self) -> bool:
        return not self._protocol.ended

    async def ended(self, timeout: float = 60.0) -> str:
        """How it ended: ``exit N``, or ``signal N`` (twistd re-raises SIGTERM on itself after a clean stop)."""
        await wait_until(lambda: self._protocol.ended, timeout, "twistd to exit")
        if self._protocol.signal is not None:
            return f"signal {self._protocol.signal}"
        return f"exit {self._protocol.exit_code}"

    async def stop(self) -> None:
        """At teardown: whatever happened, leave no process behind."""
        if self._process is not None and self.running:
            self.signal("KILL")
            await self.ended(10)
