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

from ..conftest import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


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


def test_the_installed_package_brings_the_reuseport_endpoint(installed: Path, tmp_path: Path) -> None:
    code = (
        "from twisted.internet.endpoints import serverFromString; from twisted.internet import reactor; "
        "print(type(serverFromString(reactor, 'reuseport:8080:interface=127.0.0.1')).__name__)"
    )
    result = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ReusePortEndpoint", result.stderr


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


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def code_blocks(section: str, language: str) -> list[list[str]]:
    """The lines of each fenced block of ``language`` ("" for a block with none)."""
    blocks, current, inside = [], [], None
    for line in section.splitlines():
        if line.startswith("```"):
            if inside is None:
                inside, current = line[3:].strip(), []
            else:
                if inside == language:
                    blocks.append(current)
                inside = None
        elif inside is not None:
            current.append(line)
    return blocks


def test_the_readmes_trying_it_works_copied_line_by_line(installed: Path, running_daemon: tuple[int, int, Path]) -> None:
    """
    Issue 12: its websocat step failed, and it needed redis-cli. Every command of
    the README's "Trying it", run as written in the freshly installed virtualenv
    (its ports made the test's own), does what the text says; the log tells the
    story the README shows.
    """
    import queue
    import re
    import threading

    ws_port, redis_port, log = running_daemon
    section = readme_section("Trying it")

    def as_here(command: str) -> str:
        return command.replace(".venv/", f"{installed}/").replace("6390", str(redis_port)).replace("8080", str(ws_port))

    commands = [as_here(line) for block in code_blocks(section, "sh") for line in block]
    client_commands = [c for c in commands if " -m websockets " in c]
    assert len(client_commands) == 1, commands
    received: queue.Queue[str] = queue.Queue()
    client = None

    def envelopes(count: int) -> list[dict]:
        got = []
        while len(got) < count:
            line = received.get(timeout=20)
            match = re.search(r"< (\{.*\})", line)
            if match:
                got.append(json.loads(match.group(1)))
        return got

    try:
        for command in commands:
            if command in client_commands:
                client = subprocess.Popen(
                    command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
                threading.Thread(target=lambda: [received.put(line) for line in client.stdout], daemon=True).start()
                client.stdin.write("user1\n")  # "type user1 and Enter"
                client.stdin.flush()
                queued = envelopes(2)
                assert [m["payload"] for m in queued] == ["Hello, world!", "My life is a spicy pepper..."]
                assert all(m["source"] == "rm.users.user1" for m in queued)
                continue
            subprocess.run(command, shell=True, check=True, timeout=300, capture_output=True)
            if "rm.channels.cats" in command:
                (meow,) = envelopes(1)
                assert (meow["source"], meow["payload"], meow["bubble"]) == ("rm.channels.cats", "Meow!", True)
        assert client is not None
        client.stdin.close()  # Ctrl-D
        assert client.wait(20) == 0
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
    queue_ = valkey.Valkey(port=redis_port).lrange("rm:users:user2:messages", 0, -1)
    assert [json.loads(entry)["payload"] for entry in queue_] == ["Meow!"]

    (story,) = [block for block in code_blocks(section, "") if any("Assigning id" in line for line in block)]
    patterns = [
        re.escape(line).replace(re.escape("127.0.0.1:63769"), r"127\.0\.0\.1:\d+").replace(re.escape(":8080"), f":{ws_port}")
        for line in story
    ]
    deadline = time.monotonic() + 10
    while not all(re.search(pattern, log.read_text()) for pattern in patterns):
        assert time.monotonic() < deadline, [p for p in patterns if not re.search(p, log.read_text())]
        time.sleep(0.1)
