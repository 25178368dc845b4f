"""
The operators' telnet manhole: configuration checks, and real telnet sessions
against a running daemon that log in and read ``status()``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import valkey

from redmessenger.daemon.config import ConfigError, parse_config

from ..conftest import HOST, free_port
from ..telnetclient import connect_telnet


def password_file(directory: Path, text: str = "ops:s3cret\n", mode: int = 0o600) -> Path:
    path = directory / "manhole.passwd"
    path.write_text(text)
    path.chmod(mode)
    return path


# -- configuration ---------------------------------------------------------------------


def test_manhole_is_off_unless_configured() -> None:
    config = parse_config({})
    assert config.manhole is None


def test_a_bare_port_listens_on_loopback(tmp_path: Path) -> None:
    config = parse_config({"manhole": 8023, "manhole_password_file": str(password_file(tmp_path))})
    assert config.manhole == "tcp:8023:interface=127.0.0.1"


@pytest.mark.parametrize(
    "endpoint",
    ["tcp:8023:interface=127.0.0.1", "tcp:8023:interface=localhost", "tcp6:8023:interface=\\:\\:1", "unix:/tmp/rm-manhole"],
)
def test_loopback_and_unix_endpoints_are_accepted(tmp_path: Path, endpoint: str) -> None:
    assert parse_config({"manhole": endpoint, "manhole_password_file": str(password_file(tmp_path))}).manhole == endpoint


@pytest.mark.parametrize("endpoint", ["tcp:8023", "tcp:8023:interface=0.0.0.0", "tcp:8023:interface=192.0.2.7"])
def test_other_interfaces_need_an_explicit_allow_remote(tmp_path: Path, endpoint: str) -> None:
    passwords = str(password_file(tmp_path))
    with pytest.raises(ConfigError, match=r"^manhole: .*loopback.*manhole_allow_remote"):
        parse_config({"manhole": endpoint, "manhole_password_file": passwords})
    config = parse_config({"manhole": endpoint, "manhole_password_file": passwords, "manhole_allow_remote": True})
    assert config.manhole == endpoint


def test_the_manhole_needs_a_password_file() -> None:
    with pytest.raises(ConfigError, match=r"^manhole_password_file: needed"):
        parse_config({"manhole": 8023})


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_password_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = password_file(tmp_path, mode=mode)
    with pytest.raises(ConfigError, match=r"^manhole_password_file: .*chmod 600"):
        parse_config({"manhole": 8023, "manhole_password_file": str(path)})


def test_a_missing_or_empty_password_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^manhole_password_file: cannot read"):
        parse_config({"manhole": 8023, "manhole_password_file": str(tmp_path / "nowhere")})
    empty = password_file(tmp_path, text="# nobody yet\n\n")
    with pytest.raises(ConfigError, match=r"^manhole_password_file: .*no user:password line"):
        parse_config({"manhole": 8023, "manhole_password_file": str(empty)})
    broken = password_file(tmp_path, text="just-a-name\n")
    with pytest.raises(ConfigError, match=r"^manhole_password_file: .*line 1: expected user:password"):
        parse_config({"manhole": 8023, "manhole_password_file": str(broken)})


def test_a_bad_manhole_endpoint_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^manhole: not a Twisted endpoint string"):
        parse_config({"manhole": "carrier-pigeon:8023", "manhole_password_file": str(password_file(tmp_path))})


# -- sessions ----------------------------------------------------------------------------


async def manhole_daemon(daemon_factory: Any, tmp_path: Path) -> tuple[Any, int]:
    port = free_port()
    daemon = await daemon_factory(
        manhole=f"tcp:{port}:interface={HOST}",
        manhole_password_file=str(password_file(tmp_path, "# operators\nops:s3cret\nother:pw\n")),
    )
    return daemon, port


async def log_in(port: int, user: str = "ops", password: str = "s3cret") -> Any:
    session = await connect_telnet(HOST, port)
    await session.expect("Username: ")
    session.type(user)
    await session.expect("Password: ")
    session.type(password)
    return session


async def status_screen(session: Any) -> str:
    """At the prompt: type ``status()`` and return what it printed, up to the next prompt."""
    await session.expect(">>> ")
    session.type("status()")
    screen = await session.expect("Longest queues")
    return screen + await session.expect(">>> ")


def entry(source: str, payload: str) -> str:
    return json.dumps({"v": 1, "source": source, "timestamp": 1438480701712, "payload": payload})


@pytest_twisted.ensureDeferred
async def test_status_over_telnet_answers_what_an_operator_asks(
    daemon_factory: Any, redis: valkey.Valkey, tmp_path: Path
) -> None:
    # two offline users with queues, of different lengths
    for n in range(7):
        redis.rpush("rm:users:alice:messages", entry("rm.users.alice", f"a{n}"))
    redis.rpush("rm:users:bob:messages", entry("rm.users.bob", "b0"), entry("rm.users.bob", "b1"))
    daemon, port = await manhole_daemon(daemon_factory, tmp_path)
    carol = await daemon.client("carol")
    redis.publish("rm.users.carol", "hello")
    assert (await carol.next())["payload"] == "hello"
    redis.publish("rm.users.dave", "queued for later")
    await daemon.idle()

    session = await log_in(port)
    await session.expect("status() for a summary")
    screen = await status_screen(session)

    assert "subscriber up, commands up" in screen
    assert "Health:     ok" in screen
    assert "1 open" in screen and "1 identified" in screen
    assert "Users:      1 online" in screen
    assert "HTTP:       0 requests on their way; since start refused: unfinished_limit 0, request_timeout 0, body_too_large 0" in screen
    assert "2 published, 1 delivered live, 1 queued, 0 handed over" in screen
    lines = [line.split() for line in screen.splitlines() if line.startswith("  ")]
    assert lines[:3] == [["alice", "7"], ["bob", "2"], ["dave", "1"]], screen
    assert len(screen.splitlines()) <= 24, "one screen"

    # the namespace offers the running service itself
    session.type("service.presence.get('carol').uid")
    await session.expect("'carol'")
    session.close()
    await session.closed()
    carol.close()


@pytest_twisted.ensureDeferred
async def test_status_says_when_redis_is_down(daemon_factory: Any, private_redis: Any, tmp_path: Path) -> None:
    daemon, port = await manhole_daemon_on(daemon_factory, private_redis.port, tmp_path)
    private_redis.stop()
    await daemon.until(lambda: not daemon.service.link.state.commands_connected, what="the link to notice")
    session = await log_in(port)
    screen = await status_screen(session)
    assert "UNAVAILABLE: Redis command connection down" in screen
    assert "commands DOWN" in screen
    assert "Longest queues: unknown" in screen
    session.close()
    await session.closed()
    private_redis.start()
    await daemon.until(lambda: daemon.service.link.ready, 15, "the link to come back")


async def manhole_daemon_on(daemon_factory: Any, redis_port: int, tmp_path: Path) -> tuple[Any, int]:
    port = free_port()
    daemon = await daemon_factory(
        redis_port=redis_port,
        manhole=f"tcp:{port}:interface={HOST}",
        manhole_password_file=str(password_file(tmp_path)),
    )
    return daemon, port


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_gets_three_tries_then_the_door(
    daemon_factory: Any, redis: valkey.Valkey, tmp_path: Path
) -> None:
    daemon, port = await manhole_daemon(daemon_factory, tmp_path)
    session = await log_in(port, "ops", "wrong")
    await session.expect("Authentication failed")
    await session.expect("Username: ")
    session.type("nobody")
    await session.expect("Password: ")
    session.type("s3cret")  # right password, unknown user
    await session.expect("Authentication failed")
    await session.expect("Username: ")
    session.type("ops")
    await session.expect("Password: ")
    session.type("")
    await session.expect("Authentication failed")
    await session.closed()
    assert ">>> " not in session.screen


@pytest_twisted.ensureDeferred
async def test_stopping_the_daemon_closes_manhole_sessions(
    daemon_factory: Any, redis: valkey.Valkey, tmp_path: Path
) -> None:
    daemon, port = await manhole_daemon(daemon_factory, tmp_path)
    session = await log_in(port, "other", "pw")
    await session.expect(">>> ")
    await daemon.service.stopService()
    await session.closed()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=2).close()


@pytest.mark.parametrize("echo", [True, False], ids=["client-lets-server-echo", "client-refuses-echo"])
@pytest_twisted.ensureDeferred
async def test_logins_log_clean_lines_and_no_telnet_warning(
    daemon_factory: Any, redis: valkey.Valkey, tmp_path: Path, echo: bool
) -> None:
    # A login logged conch's "state changed and new state returned" warning (when the login
    # ended before the password line's handler returned), and a refused one showed the user
    # as b'...' (issue 12); the session's end was never logged.
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[tuple[str, str]] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append((event["log_level"].name, formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    try:
        daemon, port = await manhole_daemon(daemon_factory, tmp_path)
        session = await connect_telnet(HOST, port, echo=echo)
        for password in ("wrong", "s3cret"):
            await session.expect("Username: ")
            session.type("ops")
            await session.expect("Password: ")
            session.type(password)
        await session.expect(">>> ")
        session.type("1 + 1")
        await session.expect("2")
        session.close()
        await session.closed()
        await daemon.until(lambda: ("info", "Manhole session closed for ops") in lines, what="the session's end")
    finally:
        globalLogPublisher.removeObserver(observe)
    manhole = [line for line in lines if "anhole" in line[1] and "listening" not in line[1]]
    assert manhole == [
        ("warn", "Manhole login refused for 'ops'"),
        ("info", "Manhole session opened for ops"),
        ("info", "Manhole session closed for ops"),
    ]
    assert not [line for line in lines if "state changed" in line[1]]
