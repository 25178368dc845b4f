"""
The shipped systemd units (both): what their root-run ExecStartPre may import,
and the runtime directory a manhole's Unix socket needs under ProtectSystem=strict.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from .unitfile import UNITS, plugin_cache_command, run_plugin_cache_as_the_unit_does, unit_settings


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_the_plugin_cache_runs_as_root_in_isolated_mode(unit: Path) -> None:
    settings = unit_settings(unit)
    (line,) = settings["ExecStartPre"]
    assert line.startswith("+"), "privileged: it writes into the root-owned virtualenv"
    command = plugin_cache_command(unit, Path("/opt/redmessenger"))
    assert command[-3:] == ["-m", "redmessenger.daemon.plugincache", "--quiet"], command
    assert "-I" in command[1:-3], "without -I, python -m puts the working directory first on sys.path"
    # ...and that directory is the service user's
    assert settings["WorkingDirectory"] == ["/var/lib/redmessenger"] and settings["StateDirectory"] == ["redmessenger"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the unit runs it as root; as another user the caches are not written")
@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_a_plugin_in_the_working_directory_is_not_imported(unit: Path, tmp_path: Path) -> None:
    """What the service user (or a manhole session) can write into its home must not run as root at the next start."""
    marker = tmp_path / "imported"
    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('as uid %d' % __import__('os').getuid())\n")
    # PYTHONPATH as a drop-in's Environment= could set it: ignored too
    result = run_plugin_cache_as_the_unit_does(unit, Path(sys.prefix), tmp_path, {"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), f"twisted/plugins/evil.py in the working directory was imported ({marker.read_text()})"


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_the_unit_has_a_runtime_directory_for_a_manhole_socket(unit: Path) -> None:
    """ProtectSystem=strict makes /run read-only: /run/redmessenger exists only as the unit's RuntimeDirectory."""
    settings = unit_settings(unit)
    assert settings["ProtectSystem"] == ["strict"]
    expected = "redmessenger/%i" if "@" in unit.name else "redmessenger"  # one per instance
    assert settings["RuntimeDirectory"] == [expected]
    assert settings["RuntimeDirectoryMode"] == ["0750"], "the manhole's socket: the service user (and root) only"
