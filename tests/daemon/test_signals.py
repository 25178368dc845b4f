"""
Signals to the real daemon outside the time its SIGHUP handler is installed, and
a terminal's Ctrl-C: SIGHUP while it starts or stops is ignored (its default
action would end the daemon, which systemd counts as a clean stop and does not
restart), and SIGINT to the whole process group reaches the daemon, not the
embedded server, which the daemon stops last.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ..conftest import HOST, RedisServer, free_port
from .spawned import Spawned, poll, signals_ignored

HUP = 1 << (signal.SIGHUP - 1)


def test_a_sighup_while_the_daemon_starts_is_ignored(redis_server: RedisServer, tmp_path: Path) -> None:
    daemon = Spawned(tmp_path, {"redis_host": HOST, "redis_port": redis_server.port})
    daemon.start()
    try:
        # twistd makes the service (and ignores SIGHUP from then on) well before the service starts
        poll(
            lambda: signals_ignored(daemon.pid) & HUP or "RedMessenger listening on" in daemon.output
            or daemon.ended_early("SIGHUP was ignored"),
            30, "twistd to make the service",
        )  # fmt: skip
        assert signals_ignored(daemon.pid) & HUP, "SIGHUP not ignored before the reload handler is installed"
        # from then on until the service runs (its reload handler taking over on the way): SIGHUP after SIGHUP
        sent = 0

        def started() -> bool:
            nonlocal sent
            if "RedMessenger listening on" in daemon.output:
                return True
            daemon.ended_early("it started")
            os.kill(daemon.pid, signal.SIGHUP)
            sent += 1
            return False

        poll(started, 30, "the start", poll_every=0.002)
        daemon.healthy()
        assert sent > 0
        daemon.send(signal.SIGTERM)
        assert daemon.ended() == -signal.SIGTERM, daemon.output
    finally:
        daemon.stop()
    assert "RedMessenger stopped" in daemon.output


def test_a_sighup_during_the_graceful_stop_is_ignored(private_redis: RedisServer, tmp_path: Path) -> None:
    assert private_redis.process is not None
    daemon = Spawned(tmp_path, {"redis_host": HOST, "redis_port": private_redis.port})
    daemon.start()
    try:
        daemon.healthy()
        # Redis stops answering: the stop waits for it (5 s at most per step) after the SIGHUP handler is gone
        private_redis.process.send_signal(signal.SIGSTOP)
        daemon.send(signal.SIGTERM)
        daemon.wait_for(f"(TCP Port {daemon.port} Closed)")  # stopped after the SIGHUP step, the first one
        assert "RedMessenger stopped" not in daemon.output, "mid-stop: the frozen Redis holds it"
        daemon.send(signal.SIGHUP)  # ignored, or the kernel ends the process as it delivers it
        private_redis.process.send_signal(signal.SIGCONT)  # the stop may go on now
        status = daemon.ended()
    finally:
        private_redis.process.send_signal(signal.SIGCONT)
        daemon.stop()
    assert status == -signal.SIGTERM, daemon.output
    assert "RedMessenger stopped" in daemon.output


@contextmanager
def unanswering_websocket(port: int) -> Iterator[socket.socket]:
    """An open WebSocket whose client never reads again: a graceful stop waits for its close handshake."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            f"GET /rm HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 101"), answer
        yield s


@pytest.mark.slow
def test_ctrl_c_reaches_the_daemon_which_stops_the_embedded_server_last(tmp_path: Path) -> None:
    config = {"embedded_redis": True, "redis_port": free_port(), "embedded_redis_dir": str(tmp_path / "redis")}
    daemon = Spawned(tmp_path, config)
    daemon.start(new_session=True)  # as from a terminal: the daemon leads its process group
    try:
        daemon.healthy()
        server = daemon.embedded_pid()
        # the stop then takes a while (the socket's close handshake, 5 s at most): long enough for a
        # server that got the SIGINT too to have exited on its own before the daemon stops it
        with unanswering_websocket(daemon.port):
            os.killpg(daemon.pid, signal.SIGINT)
            status = daemon.ended()
    finally:
        daemon.stop()
    output = daemon.output
    assert status == -signal.SIGINT, output
    assert "exited unexpectedly" not in output, output
    stopping = output.index(f"Stopping valkey-server (pid {server})")
    assert output.index("Nodes on this Redis: 0") < stopping, "after leaving Redis"
    assert output.index(f"valkey-server (pid {server}) stopped") > stopping
    assert "Started" not in output[output.index("Received SIGINT"):], "not restarted"
