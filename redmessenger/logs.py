"""
Log levels for the daemon's own events.

twistd prints every event it is given, debug included, and starts logging only
after the service is built; so the level filter sits in front of our loggers
instead: each of them publishes through :data:`OBSERVER`.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogPublisher,
)

LEVELS = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
OBSERVER = FilteringLogObserver(globalLogPublisher, [LEVELS])


def make_logger(namespace: str | None = None) -> Logger:
    """A Logger whose events below the configured level are dropped before formatting."""
    return Logger(namespace=namespace, observer=OBSERVER)


def set_level(name: str) -> None:
    """Set the level of every ``redmessenger.*`` logger (``debug`` shows payload metadata)."""
    LEVELS.setLogLevelForNamespace("redmessenger", LogLevel.levelWithName(name))
