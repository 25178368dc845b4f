"""
The application side of a benchmark: PUBLISHes to Redis, as one burst or paced.

    python bench/publisher.py '{"port": 6379, "phase": "a", "users": ["u0", "u1"], "count": 20000}'

Message ``i`` goes to ``rm.users.<users[i % len(users)]>`` (its seq there is
``i // len(users)``), or to ``rm.channels.<group>`` (seq ``i``).  Each payload
carries the time it was written to Redis (epoch ms): ``phase|seq|ms|padding``.

A burst (``rate`` 0) is written in chunks of pipelined commands without
waiting for replies; a paced run writes what is due every millisecond.  Every reply (the number of receivers) is read and checked at the
end.  Prints one JSON line: what was sent, when, and this process's CPU time.
"""

from __future__ import annotations

import json
import sys
import time

from resp import Redis, command

CHUNK = 500
#: Seconds between writes of a paced run, at least.
TICK = 0.001


def payload(phase: str, seq: int, stamp: str, pad: str) -> bytes:
    return f"{phase}|{seq}|{stamp}|{pad}".encode("ascii")


def main(spec: dict) -> dict:
    redis = Redis(spec["port"])
    phase: str = spec["phase"]
    count: int = spec["count"]
    rate: float = spec.get("rate", 0)
    pad = "x" * spec.get("pad", 40)
    users: list[str] | None = spec.get("users")
    if users is not None:
        channels = [f"rm.users.{uid}".encode("ascii") for uid in users]
        n = len(channels)

        def one(i: int, stamp: str) -> bytes:
            return command(b"PUBLISH", channels[i % n], payload(phase, i // n, stamp, pad))

    else:
        channel = f"rm.channels.{spec['group']}".encode("ascii")

        def one(i: int, stamp: str) -> bytes:
            return command(b"PUBLISH", channel, payload(phase, i, stamp, pad))

    sent = 0
    t_first = time.time() * 1000
    if rate <= 0:
        while sent < count:
            stamp = f"{time.time() * 1000:.3f}"
            end = min(count, sent + CHUNK)
            redis.send(b"".join([one(i, stamp) for i in range(sent, end)]))
            sent = end
    else:
        start = time.time()
        while sent < count:
            now = time.time()
            due = min(count, int((now - start) * rate) + 1)
            if due > sent:
                stamp = f"{now * 1000:.3f}"
                redis.send(b"".join([one(i, stamp) for i in range(sent, due)]))
                sent = due
            # Wake at most every TICK: an application publishing 5,000 a second
            # writes a few at a time, and each wake-up costs CPU the daemon shares.
            delay = max(start + sent / rate, now + TICK) - time.time()
            if delay > 0:
                time.sleep(delay)
    t_last = time.time() * 1000
    receivers = [redis.read() for _ in range(count)]
    redis.close()
    return {
        "sent": sent,
        "t_first": t_first,
        "t_last": t_last,
        "receivers_min": min(receivers) if receivers else None,
        "receivers_max": max(receivers) if receivers else None,
        "cpu_s": time.process_time(),
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
