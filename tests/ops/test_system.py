"""
The daemon on a server: the systemd unit (checked by ``systemd-analyze``), the
journal log format, the open-files limit, the plugin cache.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from redmessenger.daemon.config import Config
from redmessenger.ops.journal import JournalObserver
from redmessenger.ops.tuning import FD_MARGIN, fit_open_files_limit
from redmessenger.transport.httplimits import unfinished_limit

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "redmessenger.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package: systemd)"
)


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def installed_unit(directory: Path, text: str | None = None) -> Path:
    """The unit as it would be installed, pointing at this virtualenv instead of /opt/redmessenger."""
    path = directory / "redmessenger.service"
    path.write_text((text if text is not None else UNIT.read_text()).replace("/opt/redmessenger", sys.prefix))
    return path


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True, timeout=60, cwd=path.parent
    )


@needs_systemd_analyze
def test_the_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    result = verify(installed_unit(tmp_path))
    # verify exits 0 on many mistakes (an unknown key, a bad value): its output must be empty too
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd_analyze
@pytest.mark.parametrize(
    "mistake",
    [("KillMode=mixed", "KillMod=mixed"), ("ProtectSystem=strict", "ProtectSystem=sometimes"), ("bin/twistd", "bin/twistdd")],
)
def test_verify_would_notice_a_broken_unit(tmp_path: Path, mistake: tuple[str, str]) -> None:
    broken = UNIT.read_text().replace(*mistake)
    result = verify(installed_unit(tmp_path, broken))
    assert result.returncode != 0 or result.stdout + result.stderr


@needs_systemd_analyze
def test_the_unit_is_hardened(tmp_path: Path) -> None:
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", str(installed_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for redmessenger\.service: ([0-9.]+)", result.stdout)
    if result.returncode != 0 and found is None:
        pytest.skip(f"this systemd-analyze cannot rate a unit offline: {result.stderr.strip()}")
    assert found is not None, result.stdout
    assert float(found.group(1)) <= 2.0, result.stdout  # "OK" on systemd's 0-10 scale


def test_the_unit_runs_twistd_as_the_issue_says() -> None:
    settings = unit_settings()
    (command,) = settings["ExecStart"]
    assert command.startswith("/opt/redmessenger/bin/twistd --nodaemon --pidfile= ")
    assert command.endswith(" redmessenger -c /etc/redmessenger/redmessenger.json")
    assert "--logger=redmessenger.ops.journal.journal_observer" in command
    assert settings["User"] == ["redmessenger"] and settings["Restart"] == ["on-failure"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # the daemon stops the embedded server itself, after its last queue write
    assert settings["KillMode"] == ["mixed"]
    assert int(settings["LimitNOFILE"][0]) >= Config().conn_limit + unfinished_limit(Config().conn_limit) + FD_MARGIN
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "yes"), ("CapabilityBoundingSet", "")]:
        assert settings[key] == [value], key
    assert settings["ExecStartPre"] == ["+/opt/redmessenger/bin/python -I -m redmessenger.daemon.plugincache --quiet"]


# -- journal lines -------------------------------------------------------------------


def journal_lines(**event: Any) -> list[str]:
    out = io.StringIO()
    JournalObserver(out)({"log_time": 1e9, "log_namespace": "redmessenger.x.Thing", **event})
    return out.getvalue().splitlines()


def test_journal_lines_carry_the_priority_and_no_timestamp() -> None:
    lines = journal_lines(log_level=LogLevel.info, log_format="Assigning id {uid} to socket {peer}.", uid="u1", peer="p")
    assert lines == ["<6>[redmessenger.x.Thing] Assigning id u1 to socket p."]
    assert journal_lines(log_level=LogLevel.warn, log_format="slow")[0].startswith("<4>")
    assert journal_lines(log_level=LogLevel.critical, log_format="down")[0].startswith("<2>")
    assert journal_lines(log_level=LogLevel.debug, log_format="detail")[0].startswith("<7>")


def test_every_line_of_a_traceback_keeps_the_priority() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failure = Failure()
    lines = journal_lines(log_level=LogLevel.error, log_format="It failed", log_failure=failure)
    assert len(lines) > 2
    assert all(line.startswith("<3>") for line in lines), lines
    assert any("RuntimeError: boom" in line for line in lines)


# -- open files ---------------------------------------------------------------------


class FakeResource:
    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse

    def getrlimit(self, which: int) -> tuple[int, int]:
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if self.refuse:
            raise OSError(1, "Operation not permitted")
        self.limits = limits


#: Descriptors a daemon of conn_limit 10000 needs: the clients, a tenth more opening (1000), the daemon's own.
NEEDED = 10000 + 1000 + FD_MARGIN


def test_the_soft_open_files_limit_is_raised_to_fit_conn_limit() -> None:
    fake = FakeResource(1024, 1048576)
    assert fit_open_files_limit(10000, fake) == (NEEDED, NEEDED)
    assert fake.limits == (NEEDED, 1048576)


def test_a_hard_limit_too_low_is_reported(capsys: Any) -> None:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert fit_open_files_limit(10000, FakeResource(1024, 4096)) == (4096, NEEDED)
        assert fit_open_files_limit(10000, FakeResource(1024, 1048576, refuse=True)) == (1024, NEEDED)
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [e for e in events if "open-files limit" in e.get("log_format", "")]
    assert [e["soft"] for e in warnings] == [4096, 1024]


# -- the plugin cache ------------------------------------------------------------------


def test_the_plugin_cache_is_regenerated(tmp_path: Path) -> None:
    from redmessenger.daemon import plugincache

    plugin = ROOT / "twisted" / "plugins" / "redmessenger_plugin.py"
    plugin.touch()  # newer than its cache: twistd would rewrite the cache at start
    assert plugin.parent.resolve() in plugincache.stale_caches()
    result = subprocess.run(
        [sys.executable, "-m", "redmessenger.daemon.plugincache"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert plugincache.stale_caches() == []
    assert "plugin cache up to date" in result.stdout


def test_the_garbage_collector_is_tuned_and_the_startup_heap_frozen_once_running() -> None:
    import gc

    from redmessenger.ops.tuning import GC_THRESHOLDS, tune_garbage_collector

    class Reactor:
        when_running: list[Any] = []

        def callWhenRunning(self, f: Any, *args: Any) -> None:
            self.when_running.append((f, args))

    saved = gc.get_threshold()
    reactor = Reactor()
    gc.unfreeze()  # what the tests before this one left, frozen by tests/conftest.py
    try:
        tune_garbage_collector(reactor)
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() == 0, "nothing is frozen before the reactor runs"
        [(f, args)] = reactor.when_running
        f(*args)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)


TEMPLATE = ROOT / "systemd" / "redmessenger@.service"


@needs_systemd_analyze
def test_the_template_unit_verifies_as_an_instance_without_a_warning(tmp_path: Path) -> None:
    instance = tmp_path / "redmessenger@1.service"
    instance.write_text(TEMPLATE.read_text().replace("/opt/redmessenger", sys.prefix))
    result = verify(instance)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_template_unit_is_the_unit_with_a_node_id_per_instance() -> None:
    def settings(path: Path) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for line in path.read_text().splitlines():
            if line and not line.startswith(("#", "[")):
                key, _, value = line.partition("=")
                found.setdefault(key, []).append(value)
        return found

    single, template = settings(UNIT), settings(TEMPLATE)
    differing = {key for key in set(single) | set(template) if single.get(key) != template.get(key)}
    assert differing == {"Description", "SyslogIdentifier", "Environment", "RuntimeDirectory"}, differing
    assert template["Environment"] == ["REDMESSENGER_NODE_ID=%H-%i"] and template["SyslogIdentifier"] == ["redmessenger-%i"]
    assert (single["RuntimeDirectory"], template["RuntimeDirectory"]) == (["redmessenger"], ["redmessenger/%i"])
