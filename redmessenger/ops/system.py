"""
The daemon's side of its contract with the machine: log lines for the journal,
an open-files limit that fits ``conn_limit``, and a garbage collector tuned
for a process that holds many long-lived connections.

``twistd --logger=redmessenger.ops.system.journal_observer`` writes one line per
event to stdout without a timestamp (journald adds its own: no doubled
timestamps) and with an ``sd-daemon`` priority prefix (``<6>``), so that
``journalctl -p warning`` filters by level.  Each line keeps the event's
namespace: ``<6>[redmessenger.core.dispatcher.Dispatcher] Assigning id user1 ...``.
"""

from __future__ import annotations

import gc
import sys
from typing import IO, Any

from twisted.logger import ILogObserver, LogLevel, eventAsText
from zope.interface import implementer

from redmessenger.logs import make_logger

#: syslog priorities (sd-daemon(3)) for Twisted's levels.
PRIORITIES = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}

#: File descriptors the daemon needs besides its clients' sockets: Redis links,
#: the listening ports, the manhole, the embedded server's pipes, log files.
FD_MARGIN = 64

#: Young-generation threshold of the garbage collector (CPython's default: 700
#: allocations).  Most of what the daemon allocates is freed by reference
#: counting within a second (messages waiting for their confirmation), but at
#: the default threshold it lives through two young collections and is moved
#: to the old generation, whose growth then triggers full collections: pauses
#: that grow with the number of connections (13-15 ms with 1,000).
GC_THRESHOLDS = (50_000, 20, 100)

_log = make_logger(__name__)


def tune_garbage_collector(reactor: Any) -> None:
    """
    Collect young objects less often (GC_THRESHOLDS), and once the reactor runs
    freeze what exists then (modules, classes, the service tree, alive as long
    as the process): the collector's full passes stop walking it.

    Measured by bench/: freezing took full collections during cases a and b
    from 1.7 s with pauses up to 276 ms to 0.4 s and 51 ms; the thresholds took
    case a' (5,000 messages/s to 1,000 sockets) from a median p99 of 3.4 ms and
    maximum of 10.6-17 ms to 2.35 ms and 5.7-10.7 ms (six runs each), with
    the same memory per idle connection in case d.
    """
    gc.set_threshold(*GC_THRESHOLDS)
    reactor.callWhenRunning(gc.freeze)


@implementer(ILogObserver)
class JournalObserver:
    """Formats events for journald's stdout stream: priority prefix, no timestamp."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is None:
            level = LogLevel.critical if event.get("isError") else LogLevel.info
        priority = PRIORITIES.get(level, 6)
        system = event.get("log_system") or event.get("log_namespace") or "-"
        event = dict(event, log_system=system)
        text = eventAsText(event, includeTimestamp=False, includeSystem=True)
        if not text:
            return
        prefix = f"<{priority}>"
        # every line of a traceback keeps the event's priority
        self._out.write("".join(f"{prefix}{line}\n" for line in text.splitlines()))
        self._out.flush()


def journal_observer() -> JournalObserver:
    """The factory ``twistd --logger`` calls: events to stdout, which systemd sends to the journal."""
    return JournalObserver(sys.stdout)


def fit_open_files_limit(conn_limit: int, resource_module: Any = None) -> tuple[int, int]:
    """
    Raise the soft open-files limit to fit ``conn_limit`` sockets (up to the hard
    limit, which only root or systemd's ``LimitNOFILE=`` can raise), and warn if it
    still does not fit: past it, accept() fails with EMFILE and clients are dropped.
    Returns the (soft, needed) pair.
    """
    if resource_module is None:
        import resource as resource_module
    needed = conn_limit + FD_MARGIN
    soft, hard = resource_module.getrlimit(resource_module.RLIMIT_NOFILE)
    if soft != resource_module.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource_module.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            try:
                resource_module.setrlimit(resource_module.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (OSError, ValueError):  # a seccomp filter, a container: warn below
                pass
    if soft != resource_module.RLIM_INFINITY and soft < needed:
        _log.warn(
            "The open-files limit ({soft}) is below conn_limit + {margin} ({needed}): raise LimitNOFILE "
            "(systemd) or ulimit -n, or lower conn_limit",
            soft=soft,
            margin=FD_MARGIN,
            needed=needed,
        )
    return soft, needed
