"""Run a snippet in Node (installed on every machine this project runs on): JavaScript's own answers as test vectors."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest


def run_node(script: str, argument: Any) -> str:
    """Run ``script`` with ``argument`` as JSON in ``process.argv[1]``; its standard output."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is required: the test setup installs Node 20")
    result = subprocess.run([node, "-e", script, json.dumps(argument)], capture_output=True, text=True, check=True)
    return result.stdout
