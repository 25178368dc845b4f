"""
The embedded server's child process as the daemon sees it: its output, line
by line, into the daemon's log at the level each line deserves (its banner and
notices are debug, its warnings warnings), the last lines kept for error
messages, and its exit reported to the service; and how it is started: in a
session of its own, ended with the daemon (:func:`detached`).
"""

from __future__ import annotations

import os
import re
import sys
from collections import deque
from collections.abc import Callable

from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from redmessenger.logs import make_logger

log = make_logger("redmessenger.redis_edge.embedded")

#: How many of the child's last output lines to keep for error messages.
_OUTPUT_LINES_KEPT = 20

#: A line of valkey-server's log, ``<pid>:<role> 30 Nov 2026 02:13:40.182 <level> <text>``, whose
#: level is ``.`` debug, ``-`` verbose, ``*`` notice or ``#`` warning; or a line its signal
#: handler writes, ``<pid>:signal-handler (<time>) <text>`` (a notice).
SERVER_LINE = re.compile(r"\d+:(?:[A-Z] \d{1,2} [A-Za-z]{3} \d{4} [\d:.]+ ([.*#-])|signal-handler \(\d+\)) ")


#: Run by this Python between the spawn and the server's exec (the spawn API has no pre-exec hook).
#: A session of its own: a terminal's Ctrl-C (SIGINT to its process group) reaches the daemon only,
#: which stops the server last.  SIGTERM when the daemon dies (PR_SET_PDEATHSIG, kept across exec):
#: a killed daemon's server flushes its AOF and exits, instead of holding the port and the data, so the
#: next start succeeds.  Chosen over a pidfile checked at the next start: the kernel acts at once,
#: with no file to trust and no pid that may have been reused.  ``argv[1]``: the daemon's pid, checked
#: after the prctl (had the daemon died before it, no signal would come); ``argv[2:]``: the command.
_DETACH = """
import os, signal, sys
os.setsid()
if sys.platform.startswith("linux"):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        sys.exit("prctl(PR_SET_PDEATHSIG) failed: " + os.strerror(ctypes.get_errno()))
if os.getppid() != int(sys.argv[1]):
    sys.exit("the daemon that started this server is gone")
os.execv(sys.argv[2], sys.argv[2:])
"""


def detached(argv: list[str]) -> list[str]:
    """The command line running ``argv`` (``argv[0]`` a path) in a session of its own, ended with the daemon."""
    return [sys.executable, "-I", "-S", "-c", _DETACH, str(os.getpid()), *argv]


class ServerProcess(ProcessProtocol):
    """Forwards the child's output to the log, line by line, and reports its exit."""

    def __init__(self, stopping: Callable[[], bool], ended: Callable[[ServerProcess, Failure], None]) -> None:
        #: Whether the service is stopping the server (its goodbye lines are then no warning).
        self._stopping = stopping
        self._ended = ended
        self.pid: int | None = None
        self._partial: dict[int, bytes] = {}
        self.lines: deque[str] = deque(maxlen=_OUTPUT_LINES_KEPT)

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        self.transport.closeStdin()  # the server never reads it

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *complete, rest = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = rest
        for raw in complete:
            self._line(childFD, raw)

    def _line(self, childFD: int, raw: bytes) -> None:
        line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
        if not line:
            return
        self.lines.append(line)
        # The server's own lines are debug, but its warnings: at info, its start-up banner and
        # notices flooded the log (issue 12); the daemon says itself when it is started, ready, stopped.
        if childFD == 2:
            log.warn("valkey-server: {line}", line=line, pid=self.pid)
            return
        match = SERVER_LINE.match(line)
        if match is None:  # not in its log format (a crash report's raw lines): shown as it was
            log.info("valkey-server: {line}", line=line, pid=self.pid)
        elif match.group(1) != "#":
            log.debug("valkey-server: {line}", line=line, pid=self.pid)
        elif self._stopping():  # its warning level also says "ready to exit, bye bye" when told to stop
            log.info("valkey-server: {line}", line=line, pid=self.pid)
        else:
            log.warn("valkey-server: {line}", line=line, pid=self.pid)

    def processEnded(self, reason: Failure) -> None:
        for childFD, rest in sorted(self._partial.items()):
            self._line(childFD, rest)
        self._partial.clear()
        self._ended(self, reason)
