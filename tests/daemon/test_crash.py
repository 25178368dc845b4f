"""
After a daemon was killed (SIGKILL: no graceful stop), the next start succeeds:
its embedded server went with it instead of holding the port, and a manhole's
Unix socket it left behind does not block the new one.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from ..conftest import HOST, RedisServer, free_port
from .spawned import Spawned, poll, process_gone


@pytest.mark.slow
def test_a_killed_daemons_embedded_server_exits_and_the_next_start_succeeds(tmp_path: Path) -> None:
    config = {"embedded_redis": True, "redis_port": free_port(), "embedded_redis_dir": str(tmp_path / "redis")}
    first = Spawned(tmp_path, config, name="first")
    second = Spawned(tmp_path, config, name="second")
    first.start()
    try:
        first.healthy()
        server = first.embedded_pid()
        first.send(signal.SIGKILL)
        assert first.ended(10) == -signal.SIGKILL
        poll(lambda: process_gone(server), 10, "the embedded server to exit with the daemon")

        second.start()
        second.healthy()
        assert second.embedded_pid() != server
        second.send(signal.SIGTERM)
        assert second.ended() == -signal.SIGTERM, second.output
    finally:
        first.stop()
        second.stop()
    assert "RedMessenger stopped" in second.output


def manhole_on_a_socket(redis_server: RedisServer, tmp_path: Path) -> tuple[dict[str, object], Path]:
    """A configuration with a manhole on a Unix socket in ``tmp_path`` (and its password file); the socket's path."""
    passwords = tmp_path / "manhole.passwd"
    passwords.write_text("ops:secret\n")
    passwords.chmod(0o600)
    path = tmp_path / "manhole.sock"
    config = {"redis_host": HOST, "redis_port": redis_server.port, "manhole": f"unix:{path}",
              "manhole_password_file": str(passwords)}  # fmt: skip
    return config, path


def test_a_manhole_socket_left_by_a_killed_daemon_does_not_block_the_next_start(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    config, path = manhole_on_a_socket(redis_server, tmp_path)
    first = Spawned(tmp_path, config, name="first")
    second = Spawned(tmp_path, config, name="second")
    first.start()
    try:
        first.healthy()
        first.send(signal.SIGKILL)
        first.ended(10)
        assert path.is_socket(), "left behind"

        second.start()
        second.healthy()
        second.wait_for(f"Manhole listening on unix:{path}")
        second.send(signal.SIGTERM)
        assert second.ended() == -signal.SIGTERM, second.output
    finally:
        first.stop()
        second.stop()
    assert not path.exists(), "removed by a graceful stop"


def test_a_manhole_socket_a_running_daemon_holds_is_one_line_and_exit_1(redis_server: RedisServer, tmp_path: Path) -> None:
    """Not taken over: the lock beside it names a live process."""
    config, path = manhole_on_a_socket(redis_server, tmp_path)
    first = Spawned(tmp_path, config, name="first")
    second = Spawned(tmp_path, config, name="second")
    first.start()
    try:
        first.wait_for(f"Manhole listening on unix:{path}")
        second.start()
        assert second.ended(30) == 1, second.output
    finally:
        first.stop()
        second.stop()
    [line] = [line for line in second.output.splitlines() if "#critical]" in line or "#error]" in line]
    assert line.endswith(f"RedMessenger cannot start: manhole unix:{path}: cannot listen on {path}: Cannot acquire lock"), line
