"""
Whether a starting embedded server is ready: a connection that asks ``PING``
and ``INFO server`` (after ``AUTH`` if needed) in raw RESP, and reports the
``process_id`` the server gives once it answered ``+PONG`` (so that an answer
from another process on the port is told apart).  The embedded server's
service (:mod:`redmessenger.redis_edge.embedded`) probes until it is ready.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure


def resp_command(*parts: bytes) -> bytes:
    """One command in RESP (the Redis wire protocol), safe for any argument bytes."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class ReadinessProbe(Protocol):
    """
    Asks the server for ``PING`` and ``INFO server`` (after ``AUTH`` if needed).

    ``result`` fires with the ``process_id`` the server reports once it answered
    ``+PONG``, or with ``None`` if it is not ready (``-LOADING``, an error...).
    The pid tells our child apart from some other server that already holds the
    port (a leftover instance, say), which would answer PING just as well.

    ``open_probes`` holds the probe while its connection is open, so that
    stopService() can wait for it to be closed for good (an aborted TCP
    connection finishes closing in a later reactor turn).
    """

    def __init__(self, password: str | None, open_probes: set[ReadinessProbe]) -> None:
        self.result: Deferred[int | None] = Deferred(self._cancel)
        self._password = password
        self._buffer = b""
        self._open_probes = open_probes
        self._closed_waiters: list[Deferred[None]] = []

    def whenClosed(self) -> Deferred[None]:
        """Fires once the connection is closed."""
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        return d

    def connectionMade(self) -> None:
        self._open_probes.add(self)
        commands = []
        if self._password is not None:
            commands.append(resp_command(b"AUTH", self._password.encode("utf-8")))
        commands.append(resp_command(b"PING"))
        commands.append(resp_command(b"INFO", b"server"))
        assert self.transport is not None
        self.transport.write(b"".join(commands))

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        replies = self._parse()
        if replies is None:
            return  # need more bytes
        *early, ping, info = replies
        pid: int | None = None
        if ping == b"+PONG" and isinstance(info, bytes) and not info.startswith(b"-"):
            for line in info.splitlines():
                if line.startswith(b"process_id:"):
                    pid = int(line.split(b":", 1)[1])
        self._finish(pid)

    def _parse(self) -> list[bytes] | None:
        """The expected replies (status/error lines, or the bulk body), or None if incomplete."""
        expected = 3 if self._password is not None else 2
        replies: list[bytes] = []
        buffer = self._buffer
        while len(replies) < expected:
            end = buffer.find(b"\r\n")
            if end < 0:
                return None
            line, buffer = buffer[:end], buffer[end + 2 :]
            if line.startswith(b"$"):
                length = int(line[1:])
                if length < 0:
                    replies.append(b"-nil")
                    continue
                if len(buffer) < length + 2:
                    return None
                replies.append(buffer[:length])
                buffer = buffer[length + 2 :]
            else:
                replies.append(line)
        return replies

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._open_probes.discard(self)
        if not self.result.called:
            self.result.callback(None)
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)

    def _finish(self, pid: int | None) -> None:
        if not self.result.called:
            self.result.callback(pid)
        if self.transport is not None:
            self.transport.loseConnection()

    def _cancel(self, result: Deferred[int | None]) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class ProbeFactory(Factory):
    """Builds the one probe; quiet, or it would log two lines every 0.1 s while starting."""

    noisy = False

    def __init__(self, probe: ReadinessProbe) -> None:
        self._probe = probe

    def buildProtocol(self, addr: Any) -> ReadinessProbe:
        return self._probe
