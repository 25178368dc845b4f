"""
Installing for a service: ``pip install .`` into a root-owned virtualenv, the
plugin cache regenerated, then the daemon started as an unprivileged user with
the systemd unit's command line (journal log format included).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ..conftest import HOST, RedisServer, free_port
from .unitfile import UNITS, run_plugin_cache_as_the_unit_does

SETPRIV = shutil.which("setpriv")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv (util-linux) to start the daemon as nobody"
    ),
]


@pytest.fixture
def venv(installed: Path) -> Path:
    """
    A virtualenv as a server has it: owned by root, readable by all, the project pip-installed; and no plugin cache,
    as straight after ``pip install`` (twistd run as root by the other tests of this virtualenv wrote one).
    """
    for cache in installed.glob("lib/python*/site-packages/twisted/plugins/dropin.cache"):
        cache.unlink()
    return installed


def run_as_nobody(venv: Path, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """The unit's ExecStart, as User=nobody would run it (setpriv execs: signals reach twistd itself)."""
    assert SETPRIV is not None
    command = [
        SETPRIV, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
        str(venv / "bin" / "twistd"), "--nodaemon", "--pidfile=", "--logger=redmessenger.ops.journal.journal_observer",
        "redmessenger", "-c", str(config),
    ]  # fmt: skip
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=config.parent, stdout=out, stderr=subprocess.STDOUT)


def serve_once(venv: Path, redis_server: RedisServer, directory: Path) -> str:
    """Start as nobody, wait for /health to say 200, SIGTERM, return the log."""
    port = free_port()
    config = directory / "redmessenger.json"
    config.write_text(json.dumps({"redis_host": HOST, "redis_port": redis_server.port, "listen": f"tcp:{port}:interface={HOST}"}))
    config.chmod(0o644)
    log = directory / "daemon.log"
    process = run_as_nobody(venv, config, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(30)
    assert status in (0, -signal.SIGTERM), log.read_text()
    return log.read_text()


def test_a_non_root_service_starts_cleanly_once_the_plugin_cache_is_regenerated(
    venv: Path, redis_server: RedisServer
) -> None:
    work = Path(tempfile.mkdtemp(prefix="rm-run-"))
    work.chmod(0o755)
    try:
        # Straight after pip install, the cache is missing and nobody cannot write it: every start rescans.
        before = serve_once(venv, redis_server, work)
        assert "Unable to write to plugin cache" in before

        # The unit's ExecStartPre, as systemd runs it: as root, with the unit's UMask=0027. The cache it writes
        # must still be readable by the daemon's user (else: a rescan, and that line, at every start).
        result = run_plugin_cache_as_the_unit_does(UNITS[0], venv, work)
        assert result.returncode == 0, result.stderr

        after = serve_once(venv, redis_server, work)
        assert "Unable to write to plugin cache" not in after, after
        (cache,) = venv.glob("lib/python*/site-packages/twisted/plugins/dropin.cache")
        assert cache.stat().st_mode & 0o444 == 0o444, oct(cache.stat().st_mode)
        # an up-to-date cache an earlier version left unreadable (root:root 0750) is made readable too
        cache.chmod(0o750)
        assert run_plugin_cache_as_the_unit_does(UNITS[0], venv, work).returncode == 0
        assert cache.stat().st_mode & 0o444 == 0o444, oct(cache.stat().st_mode)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # journald's format: a priority prefix, the namespace, and no timestamp of our own
    lines = after.splitlines()
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), after
    assert not any(re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line) for line in lines), after
    assert any(line.startswith("<6>[redmessenger.redis_edge.link.RedisLink] Subscribed to rm.users.*") for line in lines)
    assert any(line.startswith("<6>[redmessenger.daemon.service.RedMessengerService] RedMessenger stopped") for line in lines)
