"""
Starting the real daemon under ``twistd`` when something is in the way: every
failed start exits non-zero (so systemd's ``Restart=on-failure`` retries and
scripts see the failure) with one line naming what failed and where, and no
traceback.  Run with the unit's log format, where a line's priority is its
prefix: exactly one line at error or worse.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from redmessenger.redis_edge.embedded import find_server_binary

from ..conftest import HOST, free_port, wait_until
from ..twistdprocess import TWISTD


def run_twistd(config: dict, directory: Path) -> tuple[int, str]:
    path = directory / "redmessenger.json"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [TWISTD, "--nodaemon", "--pidfile=", "--logger=redmessenger.ops.journal.journal_observer",
         "redmessenger", "-c", str(path)],
        cwd=directory, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def serious(output: str) -> list[str]:
    """The lines at error, critical (or alert, emergency) priority."""
    return [line for line in output.splitlines() if re.match(r"<[0-3]>", line)]


@pytest.fixture
def squatter() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        s.listen(5)
        yield int(s.getsockname()[1])


def test_a_busy_client_port_is_one_line_and_exit_1(squatter: int, tmp_path: Path) -> None:
    code, output = run_twistd({"redis_port": free_port(), "listen": f"tcp:{squatter}:interface={HOST}"}, tmp_path)
    assert code == 1, output
    assert "Traceback" not in output, output
    [line] = serious(output)
    assert f"listen tcp:{squatter}:interface={HOST}: cannot listen on {HOST}:{squatter}: Address already in use" in line


def test_a_busy_ws_port_names_ws_port(squatter: int, tmp_path: Path) -> None:
    code, output = run_twistd({"redis_port": free_port(), "ws_port": squatter}, tmp_path)
    assert code == 1, output
    [line] = serious(output)
    assert f"ws_port tcp:{squatter}:backlog=1024: cannot listen on *:{squatter}: Address already in use" in line


def test_a_busy_manhole_port_names_manhole(squatter: int, tmp_path: Path) -> None:
    passwords = tmp_path / "manhole.passwd"
    passwords.write_text("ops:secret\n")
    passwords.chmod(0o600)
    config = {
        "redis_port": free_port(),
        "listen": f"tcp:{free_port()}:interface={HOST}",
        "manhole": squatter,
        "manhole_password_file": str(passwords),
    }
    code, output = run_twistd(config, tmp_path)
    assert code == 1, output
    [line] = serious(output)
    assert f"manhole tcp:{squatter}:interface=127.0.0.1: cannot listen on 127.0.0.1:{squatter}: Address already in use" in line


def test_a_busy_embedded_redis_port_is_one_line_and_exit_1(squatter: int, tmp_path: Path) -> None:
    config = {
        "embedded_redis": True,
        "redis_port": squatter,
        "embedded_redis_dir": str(tmp_path / "redis"),
        "listen": f"tcp:{free_port()}:interface={HOST}",
    }
    code, output = run_twistd(config, tmp_path)
    assert code == 1, output
    assert "Traceback" not in output, output
    [line] = serious(output)
    assert f"embedded_redis: cannot listen on {HOST}:{squatter} (redis_port): Address already in use" in line


def unloadable_data_dir(data: Path) -> Path:
    """A data directory valkey-server refuses to load: it starts, then exits 1."""
    (data / "appendonlydir").mkdir(parents=True)
    (data / "appendonlydir" / "appendonly.aof.manifest").write_text("not a manifest\n")
    return data


def test_an_embedded_server_that_exits_at_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    data = unloadable_data_dir(tmp_path / "redis")
    redis_port = free_port()
    config = {
        "embedded_redis": True,
        "redis_port": redis_port,
        "embedded_redis_dir": str(data),
        "listen": f"tcp:{free_port()}:interface={HOST}",
    }
    code, output = run_twistd(config, tmp_path)
    assert code == 1, output
    assert "Traceback" not in output, output
    [line] = serious(output)
    binary = Path(find_server_binary()).name
    assert f"embedded_redis: {binary} on {HOST}:{redis_port} exited (exit code 1) before answering PING" in line
    assert "Invalid AOF manifest file format" in line  # its last words
    assert "RedMessenger stopped" in output  # a graceful stop, not a crash


@pytest_twisted.ensureDeferred
async def test_in_process_a_failed_start_stops_the_service_and_says_why(tmp_path: Path) -> None:
    """Outside twistd (as in these tests), a failed start stops the service and leaves the reactor alone."""
    from twisted.internet import reactor

    from redmessenger.daemon.config import parse_config
    from redmessenger.daemon.service import RedMessengerService

    config = parse_config({
        "embedded_redis": True,
        "redis_port": free_port(),
        "embedded_redis_dir": str(unloadable_data_dir(tmp_path / "redis")),
        "listen": f"tcp:{free_port()}:interface={HOST}",
    })  # fmt: skip
    service = RedMessengerService(config, reactor)
    service.privilegedStartService()
    service.startService()
    try:
        await wait_until(lambda: not service.running, 15, "the service to stop")
        assert service.start_failure is not None and "before answering PING" in service.start_failure
        assert reactor.running
    finally:
        if service.running:
            await service.stopService()


# -- Redis unreachable at start: not a failed start, but said clearly ---------------------------------


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_redis_unreachable_at_start_is_a_warning_with_its_cause_and_a_stop_logs_no_traceback(
    tmp_path: Path,
) -> None:
    from ..httpclient import http_get
    from ..twistdprocess import Twistd
    from ..wsclient import connect_client

    redis_port = free_port()  # nothing listens there
    daemon = Twistd(tmp_path, redis_port)
    daemon.start()
    try:
        await wait_until(lambda: "Scheduling retry 2 " in daemon.output, 20, "two failed attempts per connection")
        warnings = [line for line in daemon.output.splitlines() if "#warn]" in line]
        assert len(warnings) == 1, daemon.output  # the retries are not each a warning
        assert f"Cannot reach Redis at {HOST}:{redis_port} (" in warnings[0] and "Connection refused" in warnings[0]

        code, _, body = await http_get(daemon.port, "/health")
        reason = json.loads(body)["reason"]
        assert code == 503 and reason.startswith("Redis command connection down (last error: "), reason
        assert "Connection refused" in reason, reason

        # a user comes: their queue handover waits for Redis when the stop comes
        client = await connect_client(daemon.url)
        client.send("user1")
        await wait_until(lambda: "Assigning id user1" in daemon.output, 10, "the identification")
        daemon.signal("TERM")
        assert await daemon.ended(30) == f"signal {signal.SIGTERM}", daemon.output
        await client.close_code()
    finally:
        await daemon.stop()
    assert "RedMessenger stopped" in daemon.output
    assert "Traceback" not in daemon.output, daemon.output
    assert "#critical]" not in daemon.output and "#error]" not in daemon.output, daemon.output
