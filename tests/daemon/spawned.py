"""
``twistd --nodaemon redmessenger`` as a plain child process (``subprocess``), for
tests that need what the reactor's ``spawnProcess`` cannot give: a session of its
own (to signal its whole process group, as a terminal's Ctrl-C does), or no
reactor at all (SIGKILL, then a second start).  Its output goes to a file the
test polls; every wait is a condition polled until a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..conftest import HOST, free_port
from ..twistdprocess import TWISTD


def poll(condition: Callable[[], Any], timeout: float, what: str, poll_every: float = 0.01) -> Any:
    """Until ``condition()`` is true (and return it), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll_every)


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def signals_ignored(pid: int) -> int:
    """The mask of signals ``pid`` ignores (``SigIgn`` in /proc), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except FileNotFoundError:
        return 0
    found = re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.MULTILINE)
    return int(found.group(1), 16) if found else 0


class Spawned:
    """One daemon under the real twistd, its configuration in ``directory``."""

    def __init__(self, directory: Path, config: dict[str, Any], name: str = "redmessenger") -> None:
        self.directory = directory
        self.port = free_port()
        self.config = {"listen": f"tcp:{self.port}:interface={HOST}", **config}
        self.config_path = directory / f"{name}.json"
        self.config_path.write_text(json.dumps(self.config))
        self.log_path = directory / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, new_session: bool = False) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [TWISTD, "--nodaemon", "--pidfile=", "redmessenger", "-c", str(self.config_path)],
                cwd=self.directory, stdout=out, stderr=subprocess.STDOUT, start_new_session=new_session,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def send(self, number: int) -> None:
        """A signal to the twistd process."""
        assert self.process is not None
        self.process.send_signal(number)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        poll(lambda: text in self.output or self.ended_early(text), timeout, repr(text))

    def ended_early(self, what: str) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"twistd exited ({self.process.returncode}) before {what}; output:\n{self.output}")
        return False

    def healthy(self, timeout: float = 30.0) -> None:
        """Until ``GET /health`` answers 200."""

        def answered() -> bool:
            self.ended_early("it was healthy")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/health", timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, ConnectionError):
                return False

        poll(answered, timeout, "/health to answer 200", poll_every=0.05)

    def embedded_pid(self) -> int:
        """The embedded server's pid, from the line saying it started (the latest one)."""
        found = re.findall(r"Started \S+ \(pid (\d+)\) on ", self.output)
        assert found, self.output
        return int(found[-1])

    def ended(self, timeout: float = 60.0) -> int:
        """The exit status as ``Popen`` says it: ``-N`` for death by signal N."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"twistd still running after {timeout}s; output:\n{self.output}") from None

    def stop(self) -> None:
        """At teardown: leave no process behind (its embedded server goes with it, or is stopped here)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        for pid in map(int, re.findall(r"Started \S+ \(pid (\d+)\) on ", self.output)):
            if not process_gone(pid) and _working_directory(pid).startswith(str(self.directory)):  # not a reused pid
                os.kill(pid, signal.SIGKILL)


def _working_directory(pid: int) -> str:
    """Where ``pid`` runs (the embedded server: in its data directory), "" if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""
