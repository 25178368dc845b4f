"""
The layout holds (docs/architecture.md): imports point one way between the
rooms, the core and the model stay free of I/O, and the type hints check.
Each check is also shown to fail on a planted mistake, so it cannot pass by
checking nothing.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: What the core (rules, Deferreds, a clock) and the model (no Twisted at all) never import:
#: the edges' libraries, the reactor and the network.  (import-linter covers the
#: third-party packages; this covers parts of Twisted and the standard library.)
CORE_FORBIDDEN = ("twisted.web", "twisted.internet.reactor", "twisted.internet.tcp", "socket", "txredisapi", "autobahn")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "lint-imports"), "--config", str(root / "setup.cfg"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(BIN)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_imports_point_one_way() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_an_import_against_the_layers_is_caught(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "redmessenger", tmp_path / "redmessenger", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    (tmp_path / "redmessenger" / "core" / "planted.py").write_text("from redmessenger.daemon import service\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "redmessenger.core.planted -> redmessenger.daemon.service" in result.stdout


def forbidden_imports(package: Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                if any(name == bad or name.startswith(bad + ".") for bad in CORE_FORBIDDEN):
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno} imports {name}")
    return found


def test_the_core_and_the_model_do_no_io() -> None:
    assert forbidden_imports(ROOT / "redmessenger" / "core") == []
    assert forbidden_imports(ROOT / "redmessenger" / "model") == []


def test_the_io_check_sees_a_reactor_import(tmp_path: Path) -> None:
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "x.py").write_text("def f():\n    from twisted.internet import reactor\n")
    assert forbidden_imports(tmp_path / "core") == ["core/x.py:2 imports twisted.internet.reactor"]


def run_mypy(*arguments: str) -> tuple[str, int]:
    from mypy import api

    out, err, status = api.run(["--config-file", str(ROOT / "setup.cfg"), *arguments])
    return out + err, status


@pytest.mark.slow
def test_type_hints_check() -> None:
    output, status = run_mypy(
        "--cache-dir",
        str(ROOT / ".mypy_cache"),
        str(ROOT / "redmessenger"),
        str(ROOT / "twisted" / "plugins" / "redmessenger_plugin.py"),
        str(ROOT / "clients" / "python" / "redmessenger_app"),  # the application library
    )
    assert status == 0, output


def test_the_type_check_is_strict_enough_to_fail(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("def untyped(x):\n    return x\n\n\ndef wrong() -> int:\n    return 'a'\n")
    output, status = run_mypy("--cache-dir", str(tmp_path / "cache"), str(planted))
    assert status == 1
    assert "Function is missing a type annotation" in output
    assert 'Incompatible return value type (got "str", expected "int")' in output
