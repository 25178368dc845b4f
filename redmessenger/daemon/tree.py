"""
The service tree's parts: children started in order and stopped in reverse,
each stop awaited (:class:`OrderedServices`); a child made of two functions
(:class:`Step`); the one-line failure of a start (:class:`StartFailed`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred


class StartFailed(SystemExit, Exception):
    """
    The daemon cannot start, raised before the reactor runs; ``str()`` is one line
    naming what failed and where (logged, critical, before it is raised).

    Both an ``Exception`` and a ``SystemExit`` with status 1: twistd catches
    ``Exception`` around the start to tell a daemonizing parent (which prints
    ``str()`` and exits 1) and remove its pid file, then re-raises it, and
    Python ends on a ``SystemExit`` without printing a traceback.
    """

    def __init__(self, line: str) -> None:
        super().__init__(1)
        self.line = line

    def __str__(self) -> str:
        return self.line


class OrderedServices(MultiService):
    """Children start in the order they were added and stop in reverse order, one after the other."""

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return ensureDeferred(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            await maybeDeferred(child.stopService)


class Step(Service):
    """A child service made of a start and a stop function (the wiring's small steps)."""

    def __init__(self, name: str, start: Callable[[], None], stop: Callable[[], Deferred[Any] | None]) -> None:
        self.setName(name)
        self._start = start
        self._stop = stop

    def startService(self) -> None:
        super().startService()
        self._start()

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        return self._stop()
