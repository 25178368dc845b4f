"""
Who may connect, for every wire dialect alike: ``conn_limit`` and ``allowed_origins``.

``conn_limit`` (SPEC §3.6) is counted over every wire dialect together.

A plain WebSocket and a Socket.IO session each hold one slot from their
accepted handshake until they are gone; the next handshake beyond the limit is
refused with HTTP 503 before anything is accepted.  A Socket.IO session holds
one slot whatever its transports: the HTTP requests of long-polling and the
WebSocket it upgrades to are one client, not three.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from redmessenger.logs import make_logger, worth_a_line


class OriginPolicy:
    """
    ``allowed_origins``: wildcards matched against the whole Origin header.
    Requests without one (not from a browser) are let in: the check protects
    users' browsers, it is not authentication.
    """

    def __init__(self, allowed: Sequence[str]) -> None:
        self._patterns = None if "*" in allowed else [_wildcard(origin) for origin in allowed]

    def allows(self, origin: str | None) -> bool:
        if self._patterns is None or origin is None:
            return True
        return any(pattern.fullmatch(origin) for pattern in self._patterns)


class ConnectionLimit:
    """A counter of client slots shared by the dialects; no I/O."""

    log = make_logger()

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"conn_limit must be >= 1, got {limit}")
        self.limit = limit
        self._in_use = 0
        #: Handshakes refused because the limit was reached, since start.
        self.refused = 0

    @property
    def in_use(self) -> int:
        """Slots held right now: clients connected, of any dialect."""
        return self._in_use

    def acquire(self) -> bool:
        """Take a slot for a new client; False (and counted) when the limit is reached."""
        if self._in_use >= self.limit:
            self.refused += 1
            if worth_a_line(self.refused):
                self.log.warn(
                    "conn_limit ({limit}) reached: refusing new clients ({refused} so far)",
                    limit=self.limit,
                    refused=self.refused,
                )
            return False
        self._in_use += 1
        return True

    def release(self) -> None:
        """Give a slot back; each successful :meth:`acquire` is matched by exactly one call."""
        if self._in_use <= 0:
            raise RuntimeError("ConnectionLimit.release() without a matching acquire()")
        self._in_use -= 1


def _wildcard(pattern: str) -> re.Pattern[str]:
    """``https://*.example.com``: ``*`` matches anything, every other character itself."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)
