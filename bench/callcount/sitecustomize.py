"""
Counts the Python and C function calls a daemon makes for one second: how many
steps each message takes (docs/performance.md, *Steady rates*).  Deterministic,
unlike CPU time on this machine.  A ``sitecustomize`` for the daemon's process:

    RM_CALLCOUNT=/tmp/calls RM_CALLCOUNT_AT=2.5 PYTHONPATH=bench/callcount \\
        .venv/bin/python bench/run.py --cases ap --runs 1 --dialects plain
    .venv/bin/python bench/callcount/report.py /tmp/calls.*.json

Counting starts ``RM_CALLCOUNT_AT`` seconds (default 2.5) after the reactor is
reachable, so that it falls inside the paced publishing of case ap (4 s), and
writes ``$RM_CALLCOUNT.<pid>.json`` a second later.  Counting slows the daemon
several times over; counts per message are what it is for, not times.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
from types import FrameType
from typing import Any

if "twistd" in sys.argv[0] and os.environ.get("RM_CALLCOUNT"):
    counts: collections.Counter[str] = collections.Counter()

    def _count(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            counts[f"{code.co_qualname} {os.path.basename(code.co_filename)}:{code.co_firstlineno}"] += 1
        elif event == "c_call":
            counts["C " + getattr(arg, "__qualname__", repr(arg))] += 1

    def _start() -> None:
        from twisted.internet import reactor

        def on() -> None:
            sys.setprofile(_count)
            reactor.callLater(1.0, off)  # type: ignore[attr-defined]

        def off() -> None:
            sys.setprofile(None)
            with open(f"{os.environ['RM_CALLCOUNT']}.{os.getpid()}.json", "w") as f:
                json.dump(counts, f)

        reactor.callLater(float(os.environ.get("RM_CALLCOUNT_AT", "2.5")), on)  # type: ignore[attr-defined]

    def _when_installed() -> None:
        # twistd installs its reactor soon after start; importing it earlier would install the default one.
        from twisted.internet import reactor

        reactor.callFromThread(_start)  # type: ignore[attr-defined]

    threading.Timer(2.0, _when_installed).start()
