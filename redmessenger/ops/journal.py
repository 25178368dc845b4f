"""
Log lines for the journal.

``twistd --logger=redmessenger.ops.journal.journal_observer`` writes one line per
event to stdout without a timestamp (journald adds its own: no doubled
timestamps) and with an ``sd-daemon`` priority prefix (``<6>``), so that
``journalctl -p warning`` filters by level.  Each line keeps the event's
namespace: ``<6>[redmessenger.core.engine.Engine] Assigning id user1 ...``.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import ILogObserver, LogLevel, eventAsText
from zope.interface import implementer

#: syslog priorities (sd-daemon(3)) for Twisted's levels.
PRIORITIES = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}


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
