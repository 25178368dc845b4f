"""
The ceiling: a bare PSUBSCRIBE client on the same Redis, receiving the same
stream as the daemon, in the same run.  What it achieves is what Redis (and
the publisher) can feed; the daemon's rate is reported as a ratio of it.

    python bench/ceiling.py PORT

It subscribes to the daemon's patterns and prints ``{"event": "ready"}``; then,
for each ``{"cmd": "report", "phase": ...}`` line on stdin, one JSON line with
what it received in that phase (count, first/last arrival, latency percentiles,
order errors).  It checks order too: a ceiling that lost messages proves nothing.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import time

import hiredis

from resp import command


class Phase:
    __slots__ = ("count", "first", "last", "latencies", "last_seq", "errors")

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies: list[float] = []
        self.last_seq: dict[bytes, int] = {}
        self.errors = 0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.sendall(command(b"PSUBSCRIBE", b"rm.users.*", b"rm.channels.*"))
    reader = hiredis.Reader()
    phases: dict[bytes, Phase] = {}
    subscribed = 0
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "redis")
    selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
    stdin_buffer = b""
    while True:
        for key, _ in selector.select():
            if key.data == "redis":
                data = sock.recv(1 << 20)
                if not data:
                    return
                reader.feed(data)
                now = time.time() * 1000
                while (push := reader.gets()) is not False:
                    kind = push[0]
                    if kind == b"pmessage":
                        body = push[3]
                        fields = body.split(b"|", 3)
                        if len(fields) < 3:
                            continue  # the runner's probes
                        phase = phases.get(fields[0])
                        if phase is None:
                            phase = phases[fields[0]] = Phase()
                        seq = int(fields[1])
                        channel = push[2]
                        if seq != phase.last_seq.get(channel, -1) + 1:
                            phase.errors += 1
                        phase.last_seq[channel] = seq
                        if not phase.count:
                            phase.first = now
                        phase.count += 1
                        phase.last = now
                        phase.latencies.append(now - float(fields[2]))
                    elif kind == b"psubscribe":
                        subscribed += 1
                        if subscribed == 2:
                            print(json.dumps({"event": "ready"}), flush=True)
            else:
                chunk = os.read(sys.stdin.fileno(), 65536)
                if not chunk:
                    return
                stdin_buffer += chunk
                while b"\n" in stdin_buffer:
                    line, stdin_buffer = stdin_buffer.split(b"\n", 1)
                    cmd = json.loads(line)
                    if cmd["cmd"] == "exit":
                        return
                    phase = phases.pop(cmd["phase"].encode("ascii"), Phase())
                    print(
                        json.dumps(
                            {
                                "event": "report",
                                "phase": cmd["phase"],
                                "count": phase.count,
                                "first": phase.first,
                                "last": phase.last,
                                "order_errors": phase.errors,
                                "p50_ms": percentile(phase.latencies, 0.50),
                                "p99_ms": percentile(phase.latencies, 0.99),
                                "max_ms": max(phase.latencies, default=None),
                            }
                        ),
                        flush=True,
                    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
