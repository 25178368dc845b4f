"""
Log levels for the daemon's own events.

twistd prints every event it is given, debug included, and starts logging only
after the service is built; so the level filter sits in front of our loggers
instead: each of them publishes through :data:`OBSERVER`.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

LEVELS = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
OBSERVER = FilteringLogObserver(globalLogPublisher, [LEVELS])


#: Whether debug and info events can pass LEVELS; kept by set_level.
_debug = False
_info = True


class _Logger(Logger):
    """
    A Logger whose ``debug()`` and ``info()`` return at once while their level
    is off: they are called per message (info once per message queued, debug
    once per offline member of a group), and a filtered event still cost ~3 µs
    to build (a dict, a clock read, the predicate's namespace walk).
    """

    def debug(self, format: str | None = None, **kwargs: object) -> None:
        if _debug:
            self.emit(LogLevel.debug, format, **kwargs)

    def info(self, format: str | None = None, **kwargs: object) -> None:
        if _info:
            self.emit(LogLevel.info, format, **kwargs)


def debugging() -> bool:
    """Whether debug events are kept: guard a per-message debug() whose arguments cost something to compute."""
    return _debug


def informing() -> bool:
    """Whether info events are kept: guard a per-message info() whose arguments cost something to compute."""
    return _info


def worth_a_line(count: int) -> bool:
    """Whether the ``count``-th of a repeated event is logged: the first, then every 1000th (a flood stays a few lines)."""
    return count == 1 or count % 1000 == 0


def make_logger(namespace: str | None = None) -> Logger:
    """A Logger whose events below the configured level are dropped before formatting."""
    return _Logger(namespace=namespace, observer=OBSERVER)


def quiet_namespace(namespace: str, level: str = "warn") -> None:
    """Keep only events at ``level`` and above from loggers of ``namespace`` made with :func:`make_logger`."""
    LEVELS.setLogLevelForNamespace(namespace, LogLevel.levelWithName(level))


def set_level(name: str) -> None:
    """Set the level of every ``redmessenger.*`` logger (``debug`` shows payload metadata)."""
    global _debug, _info
    level = LogLevel.levelWithName(name)
    LEVELS.setLogLevelForNamespace("redmessenger", level)
    _debug = level == LogLevel.debug
    _info = level in (LogLevel.debug, LogLevel.info)
