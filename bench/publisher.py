"""
The application side of a benchmark: PUBLISHes to Redis (or XADDs to the
durable intake), as one burst or paced.

    python bench/publisher.py '{"port": 6379, "phase": "a", "users": ["u0", "u1"], "count": 20000}'

Message ``i`` goes to ``rm.users.<users[i % len(users)]>`` (its seq there is
``i // len(users)``), or to ``rm.channels.<group>`` (seq ``i``).  Each payload
carries the time it was written to Redis (epoch ms): ``phase|seq|ms|padding``.

With ``"intake": true`` every message is an ``XADD rm:intake * channel <channel>
payload <payload>`` instead of a PUBLISH (docs/protocol.md, *The durable
intake*); with ``"intake_users": [indexes]`` only the messages of those users
(indexes into ``users``) are, the others PUBLISHed.

A burst (``rate`` 0) is written in chunks of pipelined commands without
waiting for replies; a paced run writes what is due every millisecond.  Every
reply is read and checked: a PUBLISH's is the number of receivers, an XADD's
an entry id.  Prints one JSON line: what was sent, when, and this process's CPU
time.

``"progress": true`` (the soak, bench/soak.py): replies are read as they come
(a run of hours would otherwise pile them up in Redis), and a line
``{"event": "progress", "sent": N, ...}`` is printed every second; the summary
line then has ``"event": "summary"``.
"""

from __future__ import annotations

import json
import select
import sys
import time
from typing import Any

from resp import Redis, command

CHUNK = 500
#: Seconds between writes of a paced run, at least.
TICK = 0.001
#: Seconds between progress lines.
PROGRESS_EVERY = 1.0


def payload(phase: str, seq: int, stamp: str, pad: str) -> bytes:
    return f"{phase}|{seq}|{stamp}|{pad}".encode("ascii")


class Replies:
    """Every reply read and tallied: receivers of PUBLISHes, ids of XADDs, anything else."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.read = 0
        self.receivers_min: int | None = None
        self.receivers_max: int | None = None
        self.entry_ids = 0
        self.odd: list[str] = []

    def take(self, reply: Any) -> None:
        self.read += 1
        if isinstance(reply, int):
            self.receivers_min = reply if self.receivers_min is None else min(self.receivers_min, reply)
            self.receivers_max = reply if self.receivers_max is None else max(self.receivers_max, reply)
        elif isinstance(reply, bytes) and b"-" in reply:
            self.entry_ids += 1
        elif len(self.odd) < 5:
            self.odd.append(repr(reply)[:200])

    def read_all(self, count: int) -> None:
        while self.read < count:
            self.take(self.redis.read())

    def read_ready(self) -> None:
        """The replies that have arrived already, without waiting."""
        redis = self.redis
        while True:
            reply = redis.reader.gets()
            if reply is not False:
                self.take(reply)
                continue
            if not select.select([redis.sock], [], [], 0)[0]:
                return
            data = redis.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("Redis closed the connection")
            redis.reader.feed(data)


def main(spec: dict) -> dict:
    redis = Redis(spec["port"])
    phase: str = spec["phase"]
    count: int = spec["count"]
    rate: float = spec.get("rate", 0)
    pad = "x" * spec.get("pad", 40)
    progress: bool = spec.get("progress", False)
    users: list[str] | None = spec.get("users")
    intake_all: bool = spec.get("intake", False)
    if users is not None:
        channels = [f"rm.users.{uid}".encode("ascii") for uid in users]
        n = len(channels)
        via_intake = [intake_all] * n
        for index in spec.get("intake_users", ()):
            via_intake[index] = True

        if not any(via_intake):

            def one(i: int, stamp: str) -> bytes:
                return command(b"PUBLISH", channels[i % n], payload(phase, i // n, stamp, pad))

        else:

            def one(i: int, stamp: str) -> bytes:
                k = i % n
                body = payload(phase, i // n, stamp, pad)
                if via_intake[k]:
                    return command(b"XADD", b"rm:intake", b"*", b"channel", channels[k], b"payload", body)
                return command(b"PUBLISH", channels[k], body)

    else:
        channel = f"rm.channels.{spec['group']}".encode("ascii")

        def one(i: int, stamp: str) -> bytes:
            body = payload(phase, i, stamp, pad)
            if intake_all:
                return command(b"XADD", b"rm:intake", b"*", b"channel", channel, b"payload", body)
            return command(b"PUBLISH", channel, body)

    replies = Replies(redis)
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
        next_progress = start + PROGRESS_EVERY
        while sent < count:
            now = time.time()
            due = min(count, int((now - start) * rate) + 1)
            if due > sent:
                stamp = f"{now * 1000:.3f}"
                redis.send(b"".join([one(i, stamp) for i in range(sent, due)]))
                sent = due
            if progress:
                replies.read_ready()
                if now >= next_progress:
                    next_progress += PROGRESS_EVERY
                    print(json.dumps({"event": "progress", "sent": sent, "replies": replies.read, "t": now * 1000}), flush=True)
            # Wake at most every TICK: an application publishing 5,000 a second
            # writes a few at a time, and each wake-up costs CPU the daemon shares.
            delay = max(start + sent / rate, now + TICK) - time.time()
            if delay > 0:
                time.sleep(delay)
    t_last = time.time() * 1000
    replies.read_all(count)
    redis.close()
    summary = {
        "sent": sent,
        "t_first": t_first,
        "t_last": t_last,
        "receivers_min": replies.receivers_min,
        "receivers_max": replies.receivers_max,
        # XADDs answered with an entry id
        "entry_ids": replies.entry_ids,
        # replies that were neither (none expected)
        "odd_replies": replies.odd,
        "cpu_s": time.process_time(),
    }
    if progress:
        summary["event"] = "summary"
    return summary


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
