"""The shipped systemd units, read as systemd reads their settings; their commands as they would run here."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNITS = [ROOT / "systemd" / "redmessenger.service", ROOT / "systemd" / "redmessenger@.service"]


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit, values in order (comments and section headers skipped)."""
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def plugin_cache_command(unit: Path, prefix: Path) -> list[str]:
    """The unit's ExecStartPre, its "+" (and other prefixes) dropped, the virtualenv at ``prefix``."""
    (line,) = unit_settings(unit)["ExecStartPre"]
    return shlex.split(line.lstrip("+-@!:").replace("/opt/redmessenger", str(prefix)))


def umask_of(unit: Path) -> int:
    (umask,) = unit_settings(unit)["UMask"]
    return int(umask, 8)


def run_plugin_cache_as_the_unit_does(
    unit: Path, prefix: Path, cwd: Path, environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """As root, in the unit's working directory (``cwd`` here), with its umask and systemd's bare environment."""
    return subprocess.run(
        plugin_cache_command(unit, prefix), cwd=cwd, umask=umask_of(unit), capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", **(environment or {})},
    )  # fmt: skip
