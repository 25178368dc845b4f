"""The daemon's tests' shared fixture: the project installed as users install it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import install_into_fresh_venv


@pytest.fixture(scope="session")
def installed() -> Iterator[Path]:
    """
    A fresh virtualenv with the project installed the way users install it (``pip install .``), in a directory
    anyone may read (test_install.py runs it as a service user); one for the session: each costs half a minute.
    """
    top = Path(tempfile.mkdtemp(prefix="rm-install-"))
    top.chmod(0o755)
    try:
        yield install_into_fresh_venv(top / "venv")
    finally:
        shutil.rmtree(top, ignore_errors=True)
