"""
The machine's floor for a steady rate: what one wake-up of a Python event loop
costs here, with nothing else to do.

A child process sends one byte over a socketpair at a steady rate; the parent
waits in epoll (Python's selectors, as Twisted's epoll reactor does) and reads
it.  The parent's CPU (user + system, getrusage) per wake-up is printed for each
rate.  A daemon at a steady rate pays at least this per Redis read and per pong
it wakes up for, before any work of its own (docs/performance.md, *Steady rates*).

    .venv/bin/python bench/wakeup.py [--rates 1000,5000,10000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import time


def sender(sock: socket.socket, rate: int, seconds: float) -> None:
    interval = 1.0 / rate
    due = time.perf_counter()
    for _ in range(int(rate * seconds)):
        due += interval
        while (left := due - time.perf_counter()) > 0:
            if left > 0.0002:
                time.sleep(left - 0.0001)
        sock.send(b"x")
    sock.send(b"q")


def receiver(sock: socket.socket) -> tuple[int, float, float]:
    selector = selectors.EpollSelector()
    selector.register(sock, selectors.EVENT_READ)
    before = resource.getrusage(resource.RUSAGE_SELF)
    wakeups, done = 0, False
    while not done:
        for _key, _events in selector.select():
            wakeups += 1
            done = b"q" in sock.recv(4096)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return wakeups, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def measure(rate: int, seconds: float) -> str:
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        parent.close()
        sender(child, rate, seconds)
        os._exit(0)
    child.close()
    wakeups, user, system = receiver(parent)
    os.waitpid(pid, 0)
    parent.close()
    per = 1e6 / wakeups
    return f"{rate:>6}/s: {wakeups} wake-ups, {per * (user + system):.1f} µs of CPU each (user {per * user:.1f}, system {per * system:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1000,5000,10000")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    for rate in (int(r) for r in args.rates.split(",")):
        print(measure(rate, args.seconds), flush=True)


if __name__ == "__main__":
    main()
