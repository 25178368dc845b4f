"""
The package as users get it: ``pip install .`` into a fresh virtualenv, then
``twistd`` finds the plugin, refuses a bad configuration naming the key, and
serves the seed's scenario on the embedded server.  And as developers get it:
``pip install -e .`` (what scripts/test and scripts/bench run), with no
deprecated editable mode, still lets ``twistd`` find the plugin.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import valkey

from ..conftest import free_port, install_into_fresh_venv

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the project installed the way users install it."""
    return install_into_fresh_venv(tmp_path_factory.mktemp("venv"))


@pytest.fixture(scope="module")
def editable(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A fresh virtualenv with this checkout installed the way scripts/test installs it (and pip's output)."""
    venv = tmp_path_factory.mktemp("editable")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-e", str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return venv, result.stdout + result.stderr


def test_the_scripts_use_a_plain_editable_install() -> None:
    for script in ("scripts/test", "scripts/bench"):
        text = (ROOT / script).read_text()
        assert "pip install --quiet -e " in text, script
        assert "editable_mode" not in text, f"{script} asks for a particular editable mode"


def test_a_plain_editable_install_lets_twistd_find_the_plugin(editable: tuple[Path, str], tmp_path: Path) -> None:
    venv, pip_output = editable
    assert "editable mode is transitional" not in pip_output and "Compat editable" not in pip_output, pip_output
    listed = twistd(venv, "--help", cwd=tmp_path)  # cwd elsewhere: only the install can make it visible
    assert listed.returncode == 0 and "redmessenger" in listed.stdout, listed.stdout + listed.stderr
    # the code runs from the checkout: an edit needs no reinstall
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import redmessenger.daemon.tap as t; print(t.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert Path(where.stdout.strip()).resolve() == ROOT / "redmessenger" / "daemon" / "tap.py", where.stderr


def test_the_test_venv_finds_the_plugin(tmp_path: Path) -> None:
    listed = twistd(Path(sys.executable).parent.parent, "--help", cwd=tmp_path)
    assert "redmessenger" in listed.stdout, listed.stdout + listed.stderr


def twistd(venv: Path, *args: str, cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "twistd"), *args], cwd=cwd, capture_output=True, text=True, timeout=60, **kwargs
    )


def test_twistd_lists_the_plugin(installed: Path, tmp_path: Path) -> None:
    result = twistd(installed, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "redmessenger" in result.stdout
    plugin_help = twistd(installed, "redmessenger", "--help", cwd=tmp_path)
    assert "--config" in plugin_help.stdout


def test_a_bad_configuration_stops_twistd_with_the_key_named(installed: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"redis_port": "six", "ws_port": 8080}))
    result = twistd(installed, "-n", "--pidfile=", "redmessenger", "-c", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert "redis_port" in result.stderr + result.stdout

    config.write_text(json.dumps({"redis_prot": 6379}))
    result = twistd(installed, "-n", "--pidfile=", "redmessenger", "-c", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert "redis_prot: unknown configuration key" in result.stderr + result.stdout


@pytest.fixture
def running_daemon(installed: Path, tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """The installed twistd, run as the README says, with the shipped config on free ports."""
    ws_port, redis_port = free_port(), free_port()
    config = json.loads((ROOT / "etc" / "redmessenger.json").read_text())
    config.update(ws_port=ws_port, redis_port=redis_port, embedded_redis_dir=str(tmp_path / "redis"))
    (tmp_path / "redmessenger.json").write_text(json.dumps(config))
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(installed / "bin" / "twistd"), "-n", "--pidfile=", "redmessenger", "-c", "redmessenger.json"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "Subscribed to rm.users.*" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield ws_port, redis_port, log
    finally:
        process.send_signal(signal.SIGTERM)
        # twistd re-raises the signal once stopped, so that its status says "terminated by SIGTERM"
        assert process.wait(30) in (0, -signal.SIGTERM), log.read_text()
    assert "valkey-server" in log.read_text()


def test_the_installed_daemon_serves_the_seed_scenario(running_daemon: tuple[int, int, Path]) -> None:
    ws_port, redis_port, log = running_daemon
    redis = valkey.Valkey(port=redis_port)
    redis.publish("rm.users.user1", "Hello, world!")
    redis.publish("rm.users.user1", "My life is a spicy pepper...")
    deadline = time.monotonic() + 10
    while redis.llen("rm:users:user1:messages") < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    async def browse() -> list[dict]:
        from websockets.asyncio.client import connect

        async with connect(f"ws://127.0.0.1:{ws_port}/rm") as ws:
            await ws.send("user1")
            queued = [json.loads(await ws.recv()) for _ in range(2)]
            redis.publish("rm.users.user1", "live")
            live = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return queued + [live]

    got = asyncio.run(browse())
    assert [m["payload"] for m in got] == ["Hello, world!", "My life is a spicy pepper...", "live"]
    text = log.read_text()
    for line in (
        "Waiting for ID...",
        "Assigning id user1 to socket 127.0.0.1:",
        "Client is not online, queueing message in Redis (rm:users:user1:messages)",
        "rm.users.user1 has 2 messages enqueued, purging!",
    ):
        assert line in text, line
