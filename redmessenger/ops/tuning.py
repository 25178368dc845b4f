"""
What the daemon adjusts of its host at start: an open-files limit that fits
``conn_limit``, and a garbage collector tuned for a process that holds many
long-lived connections.
"""

from __future__ import annotations

import gc
from typing import Any

from redmessenger.logs import make_logger
from redmessenger.transport.httplimits import unfinished_limit

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


def fit_open_files_limit(conn_limit: int, resource_module: Any = None) -> tuple[int, int]:
    """
    Raise the soft open-files limit to fit ``conn_limit`` sockets (up to the hard
    limit, which only root or systemd's ``LimitNOFILE=`` can raise), and warn if it
    still does not fit: past it, accept() fails with EMFILE and clients are dropped.
    Returns the (soft, needed) pair.
    """
    if resource_module is None:
        import resource as resource_module
    # the clients, the connections still sending their request (transport/httplimits.py), the daemon's own
    needed = conn_limit + unfinished_limit(conn_limit) + FD_MARGIN
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
            "The open-files limit ({soft}) is below conn_limit, a tenth of it for connections opening, and {margin} "
            "({needed}): raise LimitNOFILE "
            "(systemd) or ulimit -n, or lower conn_limit",
            soft=soft,
            margin=FD_MARGIN,
            needed=needed,
        )
    return soft, needed
