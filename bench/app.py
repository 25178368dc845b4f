"""
The application of the channel benchmarks (bench/run.py, cases sub, resub,
pub): the Python application library's blocking flavour
(``clients/python/redmessenger_app/blocking.py``), answering subscription
requests as an application would, in a process of its own (its CPU is its own).

    python bench/app.py REDIS_PORT

Every request is permitted: with the mode named in its ``client_auth`` when
that is one (``read_write``, ``read_only``, ``write_only``), else ``read_write``
(``request.permit()``).  Prints ``{"event": "ready"}`` once the library's
threads run (its consumer group exists: the daemon hands requests on from then
on); then, for each ``{"cmd": "report"}`` line on stdin, one line with the
requests the handler was called for so far (``handled``).  ``{"cmd": "exit"}``
(or the end of stdin) stops the library and exits.

Needs the library: ``.venv/bin/pip install -e './clients/python[blocking]'``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

try:
    from redmessenger_app.blocking import RedMessenger  # type: ignore[import-not-found,unused-ignore]
    from redmessenger_app.protocol import Settings  # type: ignore[import-not-found,unused-ignore]
except ImportError as e:  # pragma: no cover - the runner reports it
    print(json.dumps({"event": "fatal", "error": f"{e}: .venv/bin/pip install -e './clients/python[blocking]'"}), flush=True)
    sys.exit(1)

MODES = ("read_write", "read_only", "write_only")


def main(port: int) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    lock = threading.Lock()
    #: requests handled, and when the first and the last were (epoch ms)
    counts: dict[str, Any] = {"handled": 0, "first": None, "last": None}

    def authorize(request) -> None:  # type: ignore[no-untyped-def]
        now = time.time() * 1000
        with lock:
            counts["handled"] += 1
            if counts["first"] is None:
                counts["first"] = now
            counts["last"] = now
        mode = request.client_auth if request.client_auth in MODES else "read_write"
        request.permit(mode)

    rm = RedMessenger(Settings(redis_url=f"redis://127.0.0.1:{port}/0"))
    rm.on("subscription_request", authorize)
    rm.start()
    print(json.dumps({"event": "ready"}), flush=True)
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd.get("cmd") == "report":
                with lock:
                    print(json.dumps({"event": "report", **counts}), flush=True)
            elif cmd.get("cmd") == "exit":
                break
    finally:
        rm.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]))
