"""
``twistd redmessenger`` on the command line, run for real: ``--version`` and
``--help`` speak of RedMessenger, and a configuration error is one line naming
the file and the key, with a "did you mean" for a misspelt key.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
import twisted

import redmessenger
from redmessenger.daemon.config import Config

from ..twistdprocess import TWISTD


def twistd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TWISTD, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_version_is_redmessengers(tmp_path: Path) -> None:
    result = twistd("redmessenger", "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(f"RedMessenger {redmessenger.__version__}"), result.stdout
    assert f"Twisted {twisted.__version__}" in result.stdout


def test_help_points_to_the_configuration_reference_and_lists_every_key(tmp_path: Path) -> None:
    result = twistd("redmessenger", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "README.md" in result.stdout and "Configuration" in result.stdout, result.stdout
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ") and line.split()}
    keys = {f.name for f in fields(Config) if f.name != "source"}
    assert keys <= listed, keys - listed
    defaults = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines() if len(line.split()) == 2}
    assert defaults["redis_port"] == "6379", result.stdout


def run_with(config: object, tmp_path: Path) -> tuple[int, list[str]]:
    path = tmp_path / "redmessenger.json"
    if isinstance(config, bytes):
        path.write_bytes(config)
    else:
        path.write_text(config if isinstance(config, str) else json.dumps(config))
    result = twistd("-n", "--pidfile=", "redmessenger", "-c", str(path), cwd=tmp_path)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return result.returncode, lines


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"redis_port": "six"}, "redis_port: expected an integer, got 'six'"),
        ({"redis_prot": 6379}, "redis_prot: unknown configuration key; did you mean redis_port?"),
        ({"Secure_Mode": True}, "Secure_Mode: unknown configuration key; did you mean secure_mode?"),
        ("{ nope", "not valid JSON"),
        ('{"identify_timeout": NaN}', "identify_timeout: expected a number of seconds, got nan"),
        ('{"ping_interval": 1e999}', "ping_interval: expected a number of seconds, got inf"),
        ({"embedded_redis": True, "redis_username": "ops", "redis_password": "pw"}, "redis_username: the embedded server"),
        ({"embedded_redis": True, "redis_tls": True}, "redis_tls: the embedded server does not speak TLS"),
        ({"demo": True, "rm_route": "/demo"}, "rm_route: \"/demo\" is the demo page's route"),
        (b'{"rm_route": "/r\xe9"}', "not UTF-8 text: byte 0xe9 at offset 16"),
    ],
)
def test_a_configuration_error_is_one_line_naming_the_file_and_the_key(
    config: object, expected: str, tmp_path: Path
) -> None:
    code, lines = run_with(config, tmp_path)
    assert code == 1
    assert len(lines) == 1, lines  # no usage text before it
    assert lines[0].startswith("redmessenger: ") and str(tmp_path / "redmessenger.json") in lines[0], lines
    assert expected in lines[0], lines


def test_a_missing_configuration_file_is_one_line(tmp_path: Path) -> None:
    result = twistd("-n", "--pidfile=", "redmessenger", "-c", "nowhere.json", cwd=tmp_path)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 1
    assert lines == ["redmessenger: cannot read configuration file nowhere.json: No such file or directory"], lines
