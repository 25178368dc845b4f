"""
The application library installs alone (``pip install ./clients/python[blocking]``)
into a fresh virtualenv, and a WSGI application imports it with neither Twisted
nor Autobahn installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

LIBRARY = Path(__file__).resolve().parent.parent / "clients" / "python"

CHECK = """
import importlib.util, sys
import redmessenger_app, redmessenger_app.blocking
from redmessenger_app.blocking import RedMessenger
from redmessenger_app.protocol import Settings
assert importlib.util.find_spec("twisted") is None, "Twisted came along"
assert importlib.util.find_spec("autobahn") is None, "Autobahn came along"
rm = RedMessenger(Settings(redis_url="redis://127.0.0.1:1/0"))  # no connection until used
print(type(rm.redis).__module__.split(".")[0])
"""


def test_the_blocking_library_installs_and_imports_without_twisted(tmp_path: Path) -> None:
    venv = tmp_path / "app-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", f"{LIBRARY}[blocking]"],
        check=True,
        timeout=600,
    )
    # away from the checkout, whose twisted/plugins/ directory would pass for a package
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", CHECK], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "valkey"
