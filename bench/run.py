"""
The RedMessenger benchmarks: the daemon as a real process, a real Redis, real clients.

    .venv/bin/python bench/run.py [--runs 5] [--cases a,ap1k,ap,ap10k,b,bubbles,c,d,i,sub,pub,resub]
                                  [--dialects plain,plain-v1,socketio]
                                  [--socketio-client lean|socket.io-client] [--v1-ack every|burst|sync]

(``scripts/bench`` prepares everything and runs this.)  Daemon, Redis
(valkey-server) and load generator share one machine and talk over loopback.
Every run starts a fresh Redis and a fresh daemon, then:

a   1,000 identified users, 20,000 direct messages in one pipelined burst:
    delivered messages/s, end-to-end latency p50/p99 (publish time in the payload).
ap  (a') the same paced at 5,000 messages/s: latency p50/p99/max, server CPU per message;
    ap1k (5,000 messages at 1,000/s) and ap10k (20,000 at 10,000/s) the same at two more
    rates, so that the curve from steady to burst shows (issue 16).
b   one group of the same 1,000 online users, 200 messages: deliveries/s.
bubbles  not timed: 50 users open a second tab, then close the first; the
    bubble must sit on the oldest socket and move when it closes.
c   10,000 queued messages for one user: time from identify to the last delivered.
d   (plain and plain-v1, its own daemon) 10,000 idle identified connections:
    server memory per connection (VmRSS growth over the fresh idle daemon's),
    connections set up per second.
i   (not in the default --cases; runs last) case a through the durable intake:
    the same 20,000 messages pipelined the same way, each ``XADD rm:intake *
    channel rm.users.$uid payload ...`` instead of a PUBLISH: delivered
    messages/s and latency (to the last message received, as a), and the CPU
    of the daemon and of Redis per message until the daemon has acknowledged
    and deleted every entry (XREADGROUP, XACK + XDEL: the stream's whole
    cost); checked at the end: the stream empty, nothing pending in the group
    (``XPENDING rm:intake redmessenger``), nothing set aside as invalid.  Its
    ratios to a (``ratio_to_a``) are against case a of the same run, and a's
    lines carry Redis's CPU per message (``redis_us_per_msg``) to compare.

The channel cases (docs/protocol.md, *Channels*): plain-v1 only, not in the
default --cases; their daemon has a ``secret_key`` (so a permitted subscribe's
reply carries a grant) and lets a client publish 100,000 messages a second
(``client_publish_rate``; CHANNEL_CONFIG).  The application is the Python
application library (clients/python, blocking flavour) in a process of its own
(bench/app.py), permitting every request; its CPU is reported apart
(``app_us_per_request``).  Every reply must be ok, with the mode asked for.

sub  the 1,000 users' sockets each send one subscribe, all at once: the time
    from each subscribe sent to its reply received (p50/p99/max), subscriptions
    answered per second (first sent to last answered), the CPU of the daemon,
    Redis and the application per request; then 200 more, one at a time (the
    round trip unloaded: ``rtt_p50_ms``, ``rtt_p99_ms``).  Checked: the
    application was asked exactly once per request, every reply carries a grant.
    The sockets unsubscribe afterwards (checked too).
pub  the 1,000 users subscribe read_write to one channel (not timed), one more
    socket subscribes write_only and publishes 200 messages at once (each a
    JSON string ``phase|seq|ms|padding``): deliveries/s (first publish sent to
    the last message received), server CPU per delivery, latency, and the ratio
    to case b of the same run (``ratio_to_b``; issue 10's target: at least
    80%).  Checked: all 200 publishes answered ok, every subscriber got every
    message once and in order, with bubble false and the publisher as sender.
resub  (its own daemon, four Node workers as d) 10,000 clients each subscribe
    to 3 channels through the application, keeping the grants the replies carry;
    the daemon restarts (SIGTERM, then started again on the same Redis and
    port); all 10,000 reconnect at once (50 handshakes at a time per worker, as
    d) and each resubscribes to its 3 channels as soon as it is welcomed,
    presenting its grants: the time from the first connection to the last
    subscription granted, and how many requests reached the application during
    the burst (``app_requests``, counted by the library process; also
    ``stream_added``: ``XINFO STREAM rm:requests`` entries-added), both
    expected 0.  Checked: every resubscribe ok, then one message PUBLISHed on
    each channel reaches every client once.  (``--profile`` records the burst.)

Dialects (``--dialects``, default plain,socketio): ``plain`` (the identifier
frame; pongs confirm), ``plain-v1`` (protocol version 1, docs/protocol.md: a
JSON hello, the welcome awaited, every message carries an id and is confirmed
only by the client's ack; cases a, ap, b, bubbles, c, d, i all run, with the
same checks; in c the queue goes batch by batch, each confirmed by the ack of
its last message), ``socketio``.  plain-v1 clients ack every message once they
have checked it (``--v1-ack every``, the default: what the browser library does,
an ack after each handler returns), or once per socket and event-loop turn, the
last id received (``--v1-ack burst``: acks are cumulative), or only when the
server asks for one (``--v1-ack sync``: an ack of the last id per ``{"type":"sync"}``,
the cheapest, as legacy clients answer pings); each line records
``ack`` and ``acks_sent``.  The table holds plain-v1's server CPU per message
(a) and per delivery (b) to within 15% of plain's (issue 13: acks and ids).

Every phase is checked: each socket got exactly its messages, in order, none
doubled, bubbles right; a run that fails a check is reported as failed, however
fast.  In the same run a bare PSUBSCRIBE client (bench/ceiling.py) receives the
same stream: the daemon's rate is given as a ratio of it.  The load generator
is bench/client.js, one Node process by default (four for d): Node's ``ws`` for
the plain dialects; for Socket.IO a lean Engine.IO 4 / Socket.IO 5 client of its
own on ``ws`` (WebSocket transport), or socket.io-client 4 with
``--socketio-client socket.io-client`` (about a third more CPU per envelope:
in b it saturates its core and becomes the bottleneck).  Each result line names
the one that ran (``client``).  CPU of the daemon, Redis and the load generator comes
from /proc/<pid>/stat, the whole machine's busy and steal time from /proc/stat,
memory from /proc/<pid>/status.  The load generator also reports how late its
event loop ran (it adds to the latencies it measures).

Output: one JSON line per case and run (``--out``), then a table of medians and
spreads (also written next to it as ``.md``).

The soak (an hour at a steady rate, the daemon's memory over time) is
bench/soak.py, not part of these runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hiredis
from resp import Redis

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
GROUP = "bench"
WAIT = 120.0  # seconds any one step may take before the run is declared failed
#: bench/client.js's Socket.IO drivers, the default first
SOCKETIO_CLIENTS = ("lean", "socket.io-client")
#: How the plain-v1 load generator acknowledges (bench/client.js), the default first: an ack per
#: message, or one per socket and event-loop turn (the last id of what arrived: acks are cumulative)
V1_ACKS = ("every", "burst", "sync")
#: The dialects bench/client.js speaks
DIALECTS = ("plain", "plain-v1", "socketio")
#: The durable intake (docs/protocol.md): the stream and the daemons' consumer group
INTAKE_STREAM = "rm:intake"
INTAKE_GROUP = "redmessenger"

USERS = 1000
DIRECT = 20000
PACED_RATE = 5000
#: The paced cases: a′ at three steady rates (messages/s, messages), from steady towards burst
PACED = {"ap1k": (1000, 5000), "ap": (PACED_RATE, DIRECT), "ap10k": (10000, DIRECT)}
GROUP_MESSAGES = 200
QUEUED = 10000
IDLE = 10000
TABS_USERS = 50
TABS_MESSAGES = 10
#: The channel cases (plain-v1 only, not in the default --cases): see the module's docstring
CHANNEL_CASES = ("sub", "pub", "resub")
SUB_CHANNEL = "benchsub"
#: sub: subscribes sent one at a time after the burst (the round trip unloaded)
SUB_ONE_AT_A_TIME = 200
PUB_CHANNEL = "benchpub"
PUB_MESSAGES = 200
#: pub: the publishing client's uid (a socket of its own, on the first worker)
PUB_SENDER = "pubsender"
RESUB_CLIENTS = IDLE
RESUB_CHANNELS = 3
#: resub, before the restart: sockets per worker waiting for the application's answers at once
RESUB_ASKING = 100
#: The channels' stream of subscription requests (docs/protocol.md, *Channels: the application's side*)
REQUESTS_STREAM = "rm:requests"
#: The daemon configuration of the channel cases (over the benchmark's own): grants signed with a
#: secret key (a permitted subscribe's reply carries one), a publishing client not held to 20
#: messages a second, and room for what it publishes (the frame must hold the message).
CHANNEL_CONFIG: dict[str, Any] = {
    "secret_key": "bench-secret-key-not-for-production",
    "client_publish_rate": 100000,
    "client_publish_max_bytes": 8192,
    "max_frame_bytes": 16384,
}

TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    # (case, metric): (comparison, target)
    ("a", "msgs_per_s"): (">=", 40000),
    ("ap", "p99_ms"): ("<=", 3.0),
    # issue 16: the steady rate as lean as the burst
    ("ap", "server_us_per_msg"): ("<=", 35.0),
    ("b", "deliveries_per_s"): (">=", 150000),
    ("c", "seconds"): ("<=", 0.2),
    ("d", "kb_per_conn"): ("<=", 8.0),
    # a client presenting grants after a restart is resubscribed without asking the application
    ("resub", "app_requests"): ("<=", 0),
}
#: pub against b (a client's publish against the application's PUBLISH to a group): deliveries/s
PUB_SHARE_OF_B = 0.8


class BenchError(Exception):
    """A step of the benchmark could not be carried out (not a failed check)."""


# -- processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_ticks() -> tuple[int, int]:
    """(busy, steal) CPU ticks of the whole machine so far, from /proc/stat: how loaded and how noisy it was."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


def background_pct(seconds: float = 1.0) -> float:
    """CPU the rest of the machine uses while the bench is idle (200% = both cores of a 2-core machine): the noise."""
    busy0, _ = machine_ticks()
    time.sleep(seconds)
    busy1, _ = machine_ticks()
    return round(100 * (busy1 - busy0) / CLK_TCK / seconds, 1)


def wait_for_quiet(limit_pct: float, patience: float) -> float:
    """Wait (at most ``patience`` seconds) until other processes use less than ``limit_pct``; the last reading."""
    deadline = time.monotonic() + patience
    while True:
        busy = background_pct()
        if busy < limit_pct or time.monotonic() > deadline:
            return busy
        print(f"# waiting for a quieter machine: {busy:.0f}% CPU busy elsewhere", file=sys.stderr, flush=True)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


class Child:
    """A child process that takes JSON commands on stdin and answers JSON events on stdout."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=BENCH, bufsize=0
        )
        self.pid = self.proc.pid
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._events.put(json.loads(line))
            except ValueError:
                self._events.put({"event": "garbage", "line": line.decode(errors="replace")})
        self._events.put(None)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")

    def wait(self, event: str, timeout: float = WAIT, phase: str | None = None) -> dict[str, Any]:
        """The next event of that name (and phase); earlier events of other names are kept."""
        def matches(e: dict[str, Any]) -> bool:
            return e.get("event") == event and (phase is None or e.get("phase") == phase)

        for i, e in enumerate(self._seen):
            if matches(e):
                return self._seen.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {event!r} event within {timeout:g}s")
            try:
                e = self._events.get(timeout=left)
            except queue.Empty:
                continue
            if e is None:
                raise BenchError(f"{self.name} exited (code {self.proc.poll()}); see {self._log.name}")
            if e.get("event") == "fatal":
                raise BenchError(f"{self.name}: {e.get('error')}")
            if matches(e):
                return e
            self._seen.append(e)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="exit")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- one daemon, its Redis and its clients ---------------------------------------------------


class Stack:
    """A fresh valkey-server, the daemon (twistd), the ceiling client and the load generator."""

    def __init__(
        self,
        workdir: Path,
        dialect: str,
        workers: int,
        client: str | None = None,
        *,
        ack: str | None = None,
        worker_dialects: list[str] | None = None,
        ceiling: bool = True,
        config: dict[str, Any] | None = None,
        daemons: int = 1,
        placement: str = "kernel",
    ) -> None:
        self.workdir = workdir
        #: daemon processes sharing the Redis (docs/scale-out.md); 1: one as always
        self.n_daemons = daemons
        #: with several daemons, where each user's sockets go (PLACEMENTS): ``kernel``, one port (SO_REUSEPORT)
        #: and the kernel spreads them; ``owner``, a port per daemon and each user on its owner, as a balancer
        #: hashing users the daemons' way would place them (no relays); ``relay``, as ``kernel`` with
        #: ``pass_sockets`` off (every socket off its owner is a relay)
        self.by_owner = placement == "owner" and daemons > 1
        self.dialect = dialect
        #: the client driver of bench/client.js (None: the dialect's default); set to the one running once started
        self.client = client
        #: plain-v1: how its clients acknowledge (V1_ACKS; None: bench/client.js's default)
        self.ack = ack
        #: each worker's dialect (the soak mixes them); default: ``dialect`` for all.  Placed by owner,
        #: each daemon has workers of its own (``workers`` each), daemon by daemon
        self.worker_dialects = (worker_dialects or [dialect] * workers) * (daemons if self.by_owner else 1)
        #: the bare PSUBSCRIBE client (the soak runs without it)
        self.with_ceiling = ceiling
        #: daemon configuration keys over the benchmark's own
        self.extra_config = {**(config or {}), **({"pass_sockets": False} if placement == "relay" else {})}
        self.redis_port = free_port()
        #: each daemon's port (one shared port unless placed by owner)
        self.ports = [free_port() for _ in range(daemons if self.by_owner else 1)]
        self.port = self.ports[0]
        self.base = f"http://{HOST}:{self.port}"
        self.n_workers = len(self.worker_dialects)
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        #: every daemon process (``daemon`` is the first)
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.ceiling: Child | None = None
        self.workers: list[Child] = []
        self.redis: Redis | None = None
        #: the application (bench/app.py: the Python application library), while a channel case runs
        self.app: Child | None = None
        self._config_paths: list[Path] = []
        #: the daemons' node ids (REDMESSENGER_NODE_ID)
        self.node_ids = [f"bench-{k}" for k in range(daemons)]

    def __enter__(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        from redmessenger.redis_edge.embedded import find_server_binary

        self.redis_proc = subprocess.Popen(
            [find_server_binary(), "--bind", HOST, "--port", str(self.redis_port), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--daemonize", "no", "--logfile", str(self.workdir / "valkey.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.redis = self._connect_redis()
        if self.with_ceiling:
            self.ceiling = Child("ceiling", [sys.executable, "ceiling.py", str(self.redis_port)], self.workdir / "ceiling.log")
            self.ceiling.wait("ready", 10)
        endpoint = "reuseport" if self.n_daemons > 1 and not self.by_owner else "tcp"
        self._config_paths = []
        for port in self.ports:
            config = {
                "redis_host": HOST,
                "redis_port": self.redis_port,
                "listen": f"{endpoint}:{port}:interface={HOST}:backlog=1024",
                "log_level": "warn",
                "conn_limit": 2 * IDLE,
                **self.extra_config,
            }
            path = self.workdir / f"redmessenger{len(self._config_paths) or ''}.json"
            path.write_text(json.dumps(config))
            self._config_paths.append(path)
        self._start_daemon()
        per_daemon = len(self.worker_dialects) // len(self.ports)
        for i, dialect in enumerate(self.worker_dialects):
            spec = {"base": f"http://{HOST}:{self.ports[i // per_daemon]}", "route": "/rm", "dialect": dialect}
            if self.client is not None and dialect == self.dialect:
                spec["client"] = self.client
            if self.ack is not None and dialect == "plain-v1":
                spec["ack"] = self.ack
            worker = Child(f"client{i}", ["node", "client.js", json.dumps(spec)], self.workdir / f"client{i}.log")
            self.workers.append(worker)
        for worker, dialect in zip(self.workers, self.worker_dialects):
            started = worker.wait("started", 10)
            if dialect == self.dialect:
                self.client = started.get("client", self.client)
                if dialect == "plain-v1":
                    self.ack = started.get("ack", self.ack)

    def _start_daemon(self) -> None:
        self.daemons = []
        for k in range(self.n_daemons):
            env = dict(os.environ, REDMESSENGER_NODE_ID=self.node_ids[k])
            config = self._config_paths[k % len(self._config_paths)]
            with (self.workdir / f"daemon{k or ''}.log").open("ab") as log:
                self.daemons.append(subprocess.Popen(
                    [str(BIN / "twistd"), "-n", "--pidfile=", "redmessenger", "-c", str(config)],
                    stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
                ))  # fmt: skip
        self.daemon = self.daemons[0]
        self._wait_daemon()

    def restart_daemon(self) -> float:
        """Stop the daemon (SIGTERM: it closes every socket) and start it again, same config; seconds it took."""
        assert self.daemon is not None
        t = time.monotonic()
        for daemon in self.daemons:
            stop_process(daemon)
        self._start_daemon()
        return time.monotonic() - t

    def _connect_redis(self) -> Redis:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis = Redis(self.redis_port)
                redis.call("PING")
                return redis
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError("valkey-server did not start") from None
                time.sleep(0.02)

    def _wait_daemon(self) -> None:
        """Until the daemon listens and is subscribed (a probe PUBLISH reaches it and the ceiling client)."""
        assert self.redis is not None and self.daemon is not None
        subscribers = self.n_daemons + (1 if self.with_ceiling else 0)
        deadline = time.monotonic() + 20
        while True:
            if any(daemon.poll() is not None for daemon in self.daemons):
                raise BenchError(f"a daemon exited; see {self.workdir / 'daemon.log'}")
            try:
                for port in self.ports:
                    with socket.create_connection((HOST, port), timeout=1):
                        pass
                if self.redis.call("PUBLISH", f"rm.channels.{GROUP}-probe", "probe") >= subscribers:
                    if self.n_daemons > 1:
                        # every daemon listed, and a heartbeat more (1 s) for each to have seen the others
                        while int(self.redis.call("ZCARD", "rm:nodes")) < self.n_daemons:
                            if time.monotonic() > deadline:
                                raise BenchError("the daemons did not all list themselves in rm:nodes")
                            time.sleep(0.05)
                        time.sleep(2.5)
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"the daemon did not become ready; see {self.workdir / 'daemon.log'}")
            time.sleep(0.05)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.stop_app()
        if self.ceiling is not None:
            self.ceiling.stop()
        for daemon in self.daemons:
            stop_process(daemon)
        if self.redis is not None:
            self.redis.close()
        if self.redis_proc is not None:
            stop_process(self.redis_proc)

    # -- what the cases use ---------------------------------------------------------------

    def split(self, uids: list[str]) -> list[list[str]]:
        """uids dealt to the workers, round robin (placed by owner: to the workers of each uid's owner)."""
        if not self.by_owner:
            return [uids[i :: self.n_workers] for i in range(self.n_workers)]
        from redmessenger.core.ownership import owner

        per_daemon = self.n_workers // self.n_daemons
        parts: list[list[str]] = [[] for _ in range(self.n_workers)]
        dealt = [0] * self.n_daemons
        for uid in uids:
            k = self.node_ids.index(owner(uid, self.node_ids) or self.node_ids[0])
            parts[k * per_daemon + dealt[k] % per_daemon].append(uid)
            dealt[k] += 1
        return parts

    def connect(self, parts: list[list[str]], concurrency: int = 50, subscribe: dict[str, Any] | None = None) -> dict[str, Any]:
        """
        A socket more for each uid.  ``subscribe`` (plain-v1): the channel requests each socket
        sends as soon as it is welcomed (see :meth:`requests`); their outcome is ``requests``.
        """
        busy = [(w, p) for w, p in zip(self.workers, parts) if p]
        extra = {"subscribe": subscribe} if subscribe is not None else {}
        for worker, part in busy:
            worker.send(cmd="connect", uids=part, concurrency=concurrency, **extra)
        events = [worker.wait("connected") for worker, _ in busy]
        out: dict[str, Any] = {
            "t0": min(e["t0"] for e in events),
            "t1": max(e["t1"] for e in events),
            "failed": sum(e["failed"] for e in events),
        }
        if subscribe is not None:
            out["requests"] = merge_requests([w.wait("requests_done", phase=subscribe["phase"]) for w, _ in busy])
        return out

    def expect(
        self, phase: str, parts: list[list[str]], per_socket: int, tabs: int = 1, latency: bool = False, **extra: Any
    ) -> None:
        """Announce a phase; ``extra``: ``channel=True`` (a channel's messages: bubble false), ``sender`` (its uid)."""
        busy = [(w, p) for w, p in zip(self.workers, parts) if p]
        for worker, part in busy:
            worker.send(cmd="expect", phase=phase, uids=part, per_socket=per_socket, tabs=tabs, latency=latency, **extra)
        for worker, _ in busy:
            worker.wait("expecting", phase=phase)

    def requests(
        self, phase: str, parts: list[list[str]], kind: str, channels: list[str], concurrency: int = 0, **spec: Any
    ) -> dict[str, Any]:
        """
        Channel requests (plain-v1): each uid's newest socket sends ``kind`` for each of
        ``channels``, at most ``concurrency`` sockets waiting at once per worker (0: all at
        once).  ``spec``: ``mode`` (expected in every subscribe's reply), ``expect_grant``,
        ``grants`` (present the grants kept from earlier replies), ``client_auth``,
        ``latencies`` (each request's time to its reply).  The workers' outcomes merged.
        """
        busy = [(w, p) for w, p in zip(self.workers, parts) if p]
        for worker, part in busy:
            worker.send(cmd="requests", phase=phase, kind=kind, channels=channels, uids=part, concurrency=concurrency, **spec)
        return merge_requests([worker.wait("requests_done", phase=phase) for worker, _ in busy])

    def start_app(self) -> None:
        """The application (bench/app.py, the Python application library), permitting every request."""
        if self.app is None:
            self.app = Child("app", [sys.executable, "app.py", str(self.redis_port)], self.workdir / "app.log")
            self.app.wait("ready", 20)

    def stop_app(self) -> None:
        if self.app is not None:
            self.app.stop()
            self.app = None

    def app_handled(self) -> int:
        """Subscription requests the application's handler was called for so far."""
        assert self.app is not None
        self.app.send(cmd="report")
        return int(self.app.wait("report", 10)["handled"])

    def requests_added(self) -> int:
        """Entries ever added to the requests stream (``XINFO STREAM``'s entries-added; 0 before it exists)."""
        assert self.redis is not None
        try:
            info = self.redis.call("XINFO", "STREAM", REQUESTS_STREAM)
        except hiredis.ReplyError:  # no stream yet
            return 0
        fields = dict(zip(info[::2], info[1::2]))
        return int(fields.get(b"entries-added") or fields.get(b"length") or 0)

    def finish(self, phase: str, parts: list[list[str]], latencies: bool = False, timeout: float = WAIT) -> dict[str, Any]:
        """Wait until every worker got its share of the phase (or time runs out), then merge their reports."""
        busy = [w for w, p in zip(self.workers, parts) if p]
        deadline = time.monotonic() + timeout
        timed_out = False
        for worker in busy:
            try:
                worker.wait("done", max(0.1, deadline - time.monotonic()), phase=phase)
            except TimeoutError:
                timed_out = True
        for worker in busy:
            worker.send(cmd="report", phase=phase, latencies=latencies)
        reports = [worker.wait("report", phase=phase) for worker in busy]
        merged: dict[str, Any] = {
            "count": sum(r["count"] for r in reports),
            "expect": sum(r["expect"] for r in reports),
            "first": min((r["first"] for r in reports if r["first"] is not None), default=None),
            "last": max((r["last"] for r in reports if r["last"] is not None), default=None),
            "ident_first": min((r["ident_first"] for r in reports if r["ident_first"]), default=None),
            "errors": [e for r in reports for e in r["errors"]][:20],
            "error_count": sum(r["error_count"] for r in reports),
            "latencies": [x for r in reports for x in (r.get("latencies") or [])],
            "loop_delay_p99_ms": max(r["loop_delay_p99_ms"] for r in reports),
            "loop_delay_max_ms": max(r["loop_delay_max_ms"] for r in reports),
            # plain-v1: acks the clients sent in the phase
            "acks_sent": sum(r.get("acks_sent") or 0 for r in reports),
        }
        if timed_out:
            merged["errors"].insert(0, f"timed out after {timeout:g}s")
        return merged

    def publish(self, **spec: Any) -> dict[str, Any]:
        """Run bench/publisher.py (its own process, so its CPU is its own) and return its summary."""
        spec["port"] = self.redis_port
        out = subprocess.run(
            [sys.executable, "publisher.py", json.dumps(spec)], cwd=BENCH, capture_output=True, check=False, timeout=WAIT
        )
        if out.returncode:
            raise BenchError(f"publisher failed: {out.stderr.decode(errors='replace')[-2000:]}")
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def ceiling_report(self, phase: str) -> dict[str, Any]:
        assert self.ceiling is not None
        self.ceiling.send(cmd="report", phase=phase)
        return self.ceiling.wait("report", 30, phase=phase)

    def usage(self) -> Usage:
        assert self.daemon is not None and self.redis_proc is not None
        return Usage(
            time.time(),
            sum(cpu_seconds(daemon.pid) for daemon in self.daemons),
            cpu_seconds(self.redis_proc.pid),
            sum(cpu_seconds(w.pid) for w in self.workers),
            cpu_seconds(self.ceiling.pid) if self.ceiling is not None else 0.0,
            *machine_ticks(),
            app=cpu_seconds(self.app.pid) if self.app is not None else 0.0,
        )

    def intake_state(self) -> tuple[int, int]:
        """(entries in the intake stream, entries pending in the daemons' consumer group)."""
        assert self.redis is not None
        length = self.redis.call("XLEN", INTAKE_STREAM)
        try:
            pending = self.redis.call("XPENDING", INTAKE_STREAM, INTAKE_GROUP)[0]
        except Exception as e:  # no group yet: the daemon never read the stream
            raise BenchError(f"XPENDING {INTAKE_STREAM} {INTAKE_GROUP}: {e}") from None
        return int(length), int(pending)

    def wait_intake_settled(self, timeout: float = 30.0) -> tuple[int, int]:
        """Until the intake stream is empty and nothing is pending (or time runs out); the last reading."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.intake_state()
            if state == (0, 0) or time.monotonic() > deadline:
                return state
            time.sleep(0.01)

    def daemon_rss_kb(self) -> int:
        assert self.daemon is not None
        return rss_kb(self.daemon.pid)

    def serves_socketio(self) -> bool:
        """Whether the daemon answers an Engine.IO 4 handshake (the Socket.IO dialect is there)."""
        try:
            with urllib.request.urlopen(f"{self.base}/socket.io/?EIO=4&transport=polling", timeout=5) as response:
                return bool(response.status == 200 and response.read(1) == b"0")
        except OSError:
            return False


@dataclass
class Usage:
    """CPU seconds used so far by each party, at one moment."""

    at: float
    daemon: float
    redis: float
    loadgen: float
    ceiling: float
    machine_busy: int  # ticks, every CPU together
    machine_steal: int
    app: float = 0.0  # the application (bench/app.py), in the channel cases

    def since(self, before: Usage) -> dict[str, float]:
        wall = max(self.at - before.at, 1e-9)
        return {
            # every process on the machine, ours included (200% = both cores of a 2-core machine busy)
            "machine_pct": round(100 * (self.machine_busy - before.machine_busy) / CLK_TCK / wall, 1),
            # time the hypervisor gave our virtual CPUs to someone else
            "steal_pct": round(100 * (self.machine_steal - before.machine_steal) / CLK_TCK / wall, 1),
            "wall_s": round(wall, 4),
            "server_pct": round(100 * (self.daemon - before.daemon) / wall, 1),
            "server_cpu_s": round(self.daemon - before.daemon, 3),
            "redis_pct": round(100 * (self.redis - before.redis) / wall, 1),
            "redis_cpu_s": round(self.redis - before.redis, 3),
            "loadgen_pct": round(100 * (self.loadgen - before.loadgen) / wall, 1),
            "ceiling_pct": round(100 * (self.ceiling - before.ceiling) / wall, 1),
            **({"app_pct": round(100 * (self.app - before.app) / wall, 1), "app_cpu_s": round(self.app - before.app, 3)}
               if self.app or before.app else {}),
        }


# -- checks and numbers ---------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


@dataclass
class Result:
    """One case of one run: its numbers and every check that failed."""

    case: str
    dialect: str
    run: int
    #: the load generator's client driver (bench/client.js DRIVERS): ws, lean, socket.io-client
    client: str | None = None
    numbers: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: CPU busy elsewhere on the machine just before the run started (see background_pct)
    background_pct: float | None = None

    def check(self, condition: bool, text: str) -> None:
        if not condition:
            self.errors.append(text)

    def check_received(self, what: str, report: dict[str, Any]) -> None:
        if report.get("acks_sent"):  # plain-v1: how many messages an ack covered
            self.numbers["acks_sent"] = self.numbers.get("acks_sent", 0) + report["acks_sent"]
        self.check(report["count"] == report["expect"], f"{what}: received {report['count']} of {report['expect']}")
        self.check(report["error_count"] == 0, f"{what}: {report['error_count']} errors: {report['errors'][:5]}")
        if report["count"] == report["expect"] and report["error_count"] == 0:
            return
        self.errors.extend(report["errors"][:10])

    def check_published(self, pub: dict[str, Any], count: int) -> None:
        self.check(pub["sent"] == count, f"publisher sent {pub['sent']} of {count}")
        # the daemons and the ceiling client: all subscribed for every message
        wanted = self.numbers.get("daemons", 1) + 1
        self.check(pub["receivers_min"] == wanted, f"a PUBLISH reached {pub['receivers_min']} subscribers, not {wanted}")

    def check_ceiling(self, ceiling: dict[str, Any], count: int) -> None:
        self.check(ceiling["count"] == count, f"ceiling client received {ceiling['count']} of {count}")
        self.check(ceiling["order_errors"] == 0, f"ceiling client: {ceiling['order_errors']} order errors")

    def line(self, machine: dict[str, Any]) -> dict[str, Any]:
        return {
            "case": self.case,
            "dialect": self.dialect,
            "client": self.client,
            "run": self.run,
            "ok": not self.errors,
            **self.numbers,
            "errors": self.errors,
            "background_pct": self.background_pct,
            "load_avg": machine_load(),
            "host": machine["host"],
        }


def rate(count: int, start_ms: float | None, end_ms: float | None) -> float | None:
    if start_ms is None or end_ms is None or end_ms <= start_ms:
        return None
    return round(count / ((end_ms - start_ms) / 1000), 1)


def merge_requests(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' ``requests_done`` events (bench/client.js) as one."""
    return {
        "sent": sum(e["sent"] for e in events),
        "ok": sum(e["ok"] for e in events),
        "grants": sum(e["grants"] for e in events),
        "t0": min((e["t0"] for e in events if e.get("t0") is not None), default=None),
        "first": min((e["first"] for e in events if e["first"] is not None), default=None),
        "last": max((e["last"] for e in events if e["last"] is not None), default=None),
        "errors": [x for e in events for x in e["errors"]][:20],
        "error_count": sum(e["error_count"] for e in events),
        "latencies": [x for e in events for x in (e.get("latencies") or [])],
        "loop_delay_p99_ms": max(e["loop_delay_p99_ms"] for e in events),
    }


def check_requests(result: Result, what: str, outcome: dict[str, Any], expected: int) -> None:
    """Every request of a batch sent and answered ok (with the mode asked for)."""
    result.check(outcome["sent"] == expected, f"{what}: {outcome['sent']} requests sent of {expected}")
    result.check(outcome["ok"] == expected, f"{what}: {outcome['ok']} of {expected} answered ok")
    if outcome["error_count"]:
        result.errors.append(f"{what}: {outcome['error_count']} errors: {outcome['errors'][:5]}")


# -- the cases ----------------------------------------------------------------------------------


def warm_up(stack: Stack, uids: list[str], phase: str, concurrency: int = 50) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    Connect and identify a socket per uid.  Each uid is sent one message first
    (queued, as it is offline): once every socket has received it, every socket
    is identified and its queue handed over, whatever the dialect.
    """
    parts = stack.split(uids)
    stack.expect(phase, parts, per_socket=1)
    stack.publish(phase=phase, users=uids, count=len(uids))
    stack.ceiling_report(phase)
    connected = stack.connect(parts, concurrency)
    report = stack.finish(phase, parts)
    return connected, report


def case_direct(stack: Stack, result: Result, uids: list[str], phase: str, count: int, rate_per_s: float) -> None:
    """a and a': direct messages to online users, as one burst or paced."""
    parts = stack.split(uids)
    stack.expect(phase, parts, per_socket=count // len(uids), latency=True)
    before = stack.usage()
    pub = stack.publish(phase=phase, users=uids, count=count, rate=rate_per_s)
    report = stack.finish(phase, parts, latencies=True)
    after = stack.usage()
    ceiling = stack.ceiling_report(phase)
    result.check_published(pub, count)
    result.check_received(phase, report)
    result.check_ceiling(ceiling, count)
    cpu = after.since(before)
    lat = report["latencies"]
    result.numbers.update(
        messages=count,
        msgs_per_s=rate(count, pub["t_first"], report["last"]),
        p50_ms=percentile(lat, 0.50),
        p99_ms=percentile(lat, 0.99),
        max_ms=percentile(lat, 1.0),
        ceiling_msgs_per_s=rate(count, pub["t_first"], ceiling["last"]),
        ceiling_p50_ms=ceiling["p50_ms"] and round(ceiling["p50_ms"], 3),
        ceiling_p99_ms=ceiling["p99_ms"] and round(ceiling["p99_ms"], 3),
        publish_s=round((pub["t_last"] - pub["t_first"]) / 1000, 3),
        server_us_per_msg=round(1e6 * cpu["server_cpu_s"] / count, 1),
        # PUBLISH's share of Redis's work (compare case i, the durable intake)
        redis_us_per_msg=round(1e6 * cpu["redis_cpu_s"] / count, 1),
        cpu=cpu,
        publisher_cpu_s=round(pub["cpu_s"], 3),
        # how late the load generator's event loop ran: it adds to the latencies above
        client_loop_delay_p99_ms=round(report["loop_delay_p99_ms"], 2),
        client_loop_delay_max_ms=round(report["loop_delay_max_ms"], 2),
    )
    if result.numbers["msgs_per_s"] and result.numbers["ceiling_msgs_per_s"]:
        result.numbers["ratio"] = round(result.numbers["msgs_per_s"] / result.numbers["ceiling_msgs_per_s"], 3)


def case_intake(stack: Stack, result: Result, uids: list[str], reference: Result | None) -> None:
    """
    i: case a through the durable intake: the same 20,000 direct messages,
    pipelined the same way, each an ``XADD rm:intake * channel rm.users.$uid
    payload ...`` instead of a PUBLISH.  Timed to the last message received, as
    a; the CPU of the daemon and of Redis until the daemon has acknowledged and
    deleted every entry (the stream empty, nothing pending in its group): the
    stream's whole cost (XADD, XREADGROUP, XACK + XDEL).  ``reference``: case a
    of the same run, if it ran and passed (the ratios).
    """
    assert stack.redis is not None
    count = DIRECT
    parts = stack.split(uids)
    stack.expect("i", parts, per_socket=count // len(uids), latency=True)
    before = stack.usage()
    pub = stack.publish(phase="i", users=uids, count=count, intake=True)
    report = stack.finish("i", parts, latencies=True)
    delivered = stack.usage()
    length, pending = stack.wait_intake_settled()
    settled_at = time.time() * 1000
    after = stack.usage()
    result.check(pub["sent"] == count, f"publisher sent {pub['sent']} of {count}")
    result.check(pub["entry_ids"] == count, f"{pub['entry_ids']} of {count} XADDs answered with an entry id: {pub['odd_replies']}")
    result.check_received("i", report)
    # once every message was received (and, for plain-v1, acknowledged): nothing left in Redis
    result.check(length == 0, f"i: {length} entries still in {INTAKE_STREAM}")
    result.check(pending == 0, f"i: {pending} entries still pending (XPENDING {INTAKE_STREAM} {INTAKE_GROUP})")
    invalid = stack.redis.call("LLEN", f"{INTAKE_STREAM}:invalid")
    result.check(invalid == 0, f"i: {invalid} entries set aside in {INTAKE_STREAM}:invalid")
    cpu = after.since(before)
    at_last = delivered.since(before)
    lat = report["latencies"]
    result.numbers.update(
        messages=count,
        msgs_per_s=rate(count, pub["t_first"], report["last"]),
        p50_ms=percentile(lat, 0.50),
        p99_ms=percentile(lat, 0.99),
        max_ms=percentile(lat, 1.0),
        publish_s=round((pub["t_last"] - pub["t_first"]) / 1000, 3),
        # from the first XADD until the stream is empty and nothing pending (confirmations, XACK + XDEL)
        settled_s=round((settled_at - pub["t_first"]) / 1000, 3),
        # until settled: every part of the intake's work
        server_us_per_msg=round(1e6 * cpu["server_cpu_s"] / count, 1),
        redis_us_per_msg=round(1e6 * cpu["redis_cpu_s"] / count, 1),
        # until the last message was received, as case a counts
        server_us_per_msg_at_last=round(1e6 * at_last["server_cpu_s"] / count, 1),
        redis_us_per_msg_at_last=round(1e6 * at_last["redis_cpu_s"] / count, 1),
        cpu=cpu,
        cpu_at_last=at_last,
        publisher_cpu_s=round(pub["cpu_s"], 3),
        client_loop_delay_p99_ms=round(report["loop_delay_p99_ms"], 2),
        client_loop_delay_max_ms=round(report["loop_delay_max_ms"], 2),
    )
    ref = reference.numbers if reference is not None and not reference.errors else None
    if ref and ref.get("msgs_per_s") and result.numbers["msgs_per_s"]:
        # against case a, PUBLISH, in the same run on the same daemon
        result.numbers["ratio_to_a"] = round(result.numbers["msgs_per_s"] / ref["msgs_per_s"], 3)
        result.numbers["a_msgs_per_s"] = ref["msgs_per_s"]
        result.numbers["a_server_us_per_msg"] = ref["server_us_per_msg"]
        result.numbers["a_redis_us_per_msg"] = ref.get("redis_us_per_msg")


def case_group(stack: Stack, result: Result, uids: list[str]) -> None:
    """b: one group of online members; each message goes to all of them."""
    assert stack.redis is not None
    key = f"rm:channels:{GROUP}:subscribers"
    stack.redis.call("DEL", key)
    for i in range(0, len(uids), 500):
        stack.redis.call("SADD", key, *uids[i : i + 500])
    parts = stack.split(uids)
    stack.expect("b", parts, per_socket=GROUP_MESSAGES)
    before = stack.usage()
    pub = stack.publish(phase="b", group=GROUP, count=GROUP_MESSAGES)
    report = stack.finish("b", parts)
    after = stack.usage()
    ceiling = stack.ceiling_report("b")
    result.check_published(pub, GROUP_MESSAGES)
    result.check_received("b", report)
    result.check_ceiling(ceiling, GROUP_MESSAGES)
    deliveries = GROUP_MESSAGES * len(uids)
    cpu = after.since(before)
    msgs_per_s = rate(GROUP_MESSAGES, pub["t_first"], report["last"])
    ceiling_rate = rate(GROUP_MESSAGES, pub["t_first"], ceiling["last"])
    result.numbers.update(
        messages=GROUP_MESSAGES,
        members=len(uids),
        deliveries=deliveries,
        deliveries_per_s=rate(deliveries, pub["t_first"], report["last"]),
        msgs_per_s=msgs_per_s,
        ceiling_msgs_per_s=ceiling_rate,
        ratio=round(msgs_per_s / ceiling_rate, 4) if msgs_per_s and ceiling_rate else None,
        server_us_per_delivery=round(1e6 * cpu["server_cpu_s"] / deliveries, 2),
        cpu=cpu,
    )


def case_bubbles(stack: Stack, result: Result, uids: list[str]) -> None:
    """
    Not timed: a second tab for each of ``uids`` gets the same messages with
    bubble false; once the first tabs close, the second ones carry the bubble.
    """
    parts = stack.split(uids)
    stack.connect(parts)
    time.sleep(0.5)  # the second tabs' identification: nothing tells a plain client it is done
    stack.expect("t1", parts, per_socket=TABS_MESSAGES, tabs=2)
    pub = stack.publish(phase="t1", users=uids, count=TABS_MESSAGES * len(uids))
    result.check_published(pub, TABS_MESSAGES * len(uids))
    result.check_received("two tabs", stack.finish("t1", parts))
    busy = [(w, p) for w, p in zip(stack.workers, parts) if p]
    for worker, part in busy:
        worker.send(cmd="close_oldest", uids=part)
    for worker, _ in busy:
        worker.wait("closed")
    stack.expect("t2", parts, per_socket=TABS_MESSAGES, tabs=1)
    pub = stack.publish(phase="t2", users=uids, count=TABS_MESSAGES * len(uids))
    result.check_published(pub, TABS_MESSAGES * len(uids))
    result.check_received("first tabs closed", stack.finish("t2", parts))
    for phase in ("t1", "t2"):
        stack.ceiling_report(phase)
    result.numbers.update(users=len(uids), messages=2 * TABS_MESSAGES * len(uids))


def case_queue(stack: Stack, result: Result) -> None:
    """c: a queue of QUEUED messages (queued by the daemon itself), handed to the user as it identifies."""
    assert stack.redis is not None
    uid = "cuser"
    key = f"rm:users:{uid}:messages"
    t0 = time.monotonic()
    pub = stack.publish(phase="c", users=[uid], count=QUEUED)
    result.check_published(pub, QUEUED)
    while stack.redis.call("LLEN", key) < QUEUED:
        if time.monotonic() - t0 > WAIT:
            raise BenchError(f"the daemon did not queue {QUEUED} messages")
        time.sleep(0.01)
    queued_s = (time.monotonic() - t0)
    stack.ceiling_report("c")
    # ceiling: a bare client reading the same queue, 500 entries a round trip, as the daemon's handover does
    reader = Redis(stack.redis_port)
    t = time.perf_counter()
    read = 0
    while read < QUEUED:
        read += len(reader.call("LRANGE", key, read, read + 499))
    ceiling_s = time.perf_counter() - t
    reader.close()
    parts = stack.split([uid])  # on its owner's workers when placed by owner
    stack.expect("c", parts, per_socket=QUEUED)
    before = stack.usage()
    stack.connect(parts)
    report = stack.finish("c", parts)
    after = stack.usage()
    result.check_received("c", report)
    seconds = (report["last"] - report["ident_first"]) / 1000 if report["last"] and report["ident_first"] else None
    # the last batch leaves Redis once the client confirmed it
    deadline = time.monotonic() + 5
    while (left := stack.redis.call("LLEN", key)) and time.monotonic() < deadline:
        time.sleep(0.01)
    result.check(left == 0, f"c: {left} entries still queued after the handover")
    result.numbers.update(
        messages=QUEUED,
        seconds=seconds and round(seconds, 4),
        msgs_per_s=rate(QUEUED, report["ident_first"], report["last"]),
        ceiling_seconds=round(ceiling_s, 4),
        ratio=round(ceiling_s / seconds, 3) if seconds else None,
        queueing_s=round(queued_s, 3),
        cpu=after.since(before),
    )


def case_idle(stack: Stack, result: Result) -> None:
    """
    d: IDLE identified connections held open: server memory per connection
    (VmRSS growth over the idle daemon's, all of it counted against the
    connections), and connections set up per second.  Once all are open, each
    user is sent one message (live, or queued and handed over if its socket
    is not identified yet): every socket receiving it shows every socket identified.
    """
    uids = [f"d{i}" for i in range(IDLE)]
    parts = stack.split(uids)
    time.sleep(0.5)
    rss_before = stack.daemon_rss_kb()
    stack.expect("d", parts, per_socket=1)
    before = stack.usage()
    connected = stack.connect(parts, concurrency=50)
    pub = stack.publish(phase="d", users=uids, count=len(uids))
    report = stack.finish("d", parts)
    after = stack.usage()
    stack.ceiling_report("d")
    result.check(connected["failed"] == 0, f"d: {connected['failed']} connections failed")
    result.check_published(pub, IDLE)
    result.check_received("d", report)
    time.sleep(1.0)  # let the last confirmations settle
    rss_after = stack.daemon_rss_kb()
    result.numbers.update(
        connections=IDLE,
        # WebSocket handshakes completed and identifiers sent, per second
        conns_per_s=rate(IDLE, connected["t0"], connected["t1"]),
        # from the first connection to the last socket having its message
        all_delivered_s=round((report["last"] - connected["t0"]) / 1000, 3) if report["last"] else None,
        rss_before_kb=rss_before,
        rss_after_kb=rss_after,
        kb_per_conn=round((rss_after - rss_before) / IDLE, 2),
        cpu=after.since(before),
    )


def case_subscribe(stack: Stack, result: Result, uids: list[str]) -> None:
    """
    sub: each of the users' sockets sends one subscribe, all at once; the Python
    application library answers (bench/app.py).  Then SUB_ONE_AT_A_TIME more, one
    at a time: the round trip unloaded.  Every socket unsubscribes afterwards.
    """
    stack.start_app()
    parts = stack.split(uids)
    asked_before, added_before = stack.app_handled(), stack.requests_added()
    before = stack.usage()
    burst = stack.requests("sub", parts, "subscribe", [SUB_CHANNEL], mode="read_write", expect_grant=True, latencies=True)
    after = stack.usage()
    asked_burst = stack.app_handled() - asked_before
    few: list[list[str]] = [[] for _ in stack.workers]
    few[0] = parts[0][:SUB_ONE_AT_A_TIME]  # sockets of the first worker
    single = stack.requests(
        "sub1", few, "subscribe", [SUB_CHANNEL + "1"], concurrency=1, mode="read_write", expect_grant=True, latencies=True
    )
    asked = stack.app_handled() - asked_before
    added = stack.requests_added() - added_before
    n = len(uids)
    check_requests(result, "sub", burst, n)
    check_requests(result, "sub, one at a time", single, SUB_ONE_AT_A_TIME)
    result.check(burst["grants"] == n, f"sub: {burst['grants']} of {n} replies carried a grant (secret_key is set)")
    result.check(asked_burst == n, f"sub: the application was asked {asked_burst} times for {n} subscribes")
    result.check(asked == n + SUB_ONE_AT_A_TIME, f"sub: the application was asked {asked} times in all")
    result.check(added == asked, f"sub: {added} requests added to {REQUESTS_STREAM}, {asked} handled")
    # leave the sockets as they were
    gone = stack.requests("unsub", parts, "unsubscribe", [SUB_CHANNEL])
    check_requests(result, "sub: unsubscribing", gone, n)
    gone = stack.requests("unsub1", few, "unsubscribe", [SUB_CHANNEL + "1"])
    check_requests(result, "sub: unsubscribing the one-at-a-time ones", gone, SUB_ONE_AT_A_TIME)
    stack.stop_app()
    cpu = after.since(before)
    lat, rtt = burst["latencies"], single["latencies"]
    result.numbers.update(
        requests=n,
        requests_per_s=rate(n, burst["first"], burst["last"]),
        seconds=burst["last"] and burst["first"] and round((burst["last"] - burst["first"]) / 1000, 4),
        p50_ms=percentile(lat, 0.50),
        p99_ms=percentile(lat, 0.99),
        max_ms=percentile(lat, 1.0),
        rtt_requests=SUB_ONE_AT_A_TIME,
        rtt_p50_ms=percentile(rtt, 0.50),
        rtt_p99_ms=percentile(rtt, 0.99),
        rtt_max_ms=percentile(rtt, 1.0),
        server_us_per_request=round(1e6 * cpu["server_cpu_s"] / n, 1),
        redis_us_per_request=round(1e6 * cpu["redis_cpu_s"] / n, 1),
        app_us_per_request=round(1e6 * cpu.get("app_cpu_s", 0.0) / n, 1),
        cpu=cpu,
        client_loop_delay_p99_ms=round(burst["loop_delay_p99_ms"], 2),
    )


def case_client_publish(stack: Stack, result: Result, uids: list[str], reference: Result | None) -> None:
    """
    pub: the users subscribe read_write to PUB_CHANNEL (not timed); one more socket
    subscribes write_only and publishes PUB_MESSAGES at once.  ``reference``: case b
    of the same run (the application's PUBLISH to a group of the same users).
    """
    stack.start_app()
    parts = stack.split(uids)
    n = len(uids)
    subscribed = stack.requests("pubsub", parts, "subscribe", [PUB_CHANNEL], mode="read_write")
    check_requests(result, "pub: subscribing", subscribed, n)
    sender: list[list[str]] = [[] for _ in stack.workers]
    sender[0] = [PUB_SENDER]
    connected = stack.connect(sender)
    result.check(connected["failed"] == 0, "pub: the publishing socket did not connect")
    writer = stack.requests("pubsender", sender, "subscribe", [PUB_CHANNEL], client_auth="write_only", mode="write_only")
    check_requests(result, "pub: the publisher subscribing", writer, 1)
    if result.errors:
        raise BenchError(f"pub: not subscribed: {result.errors[:3]}")
    stack.expect("pub", parts, per_socket=PUB_MESSAGES, latency=True, channel=True, sender=PUB_SENDER)
    before = stack.usage()
    stack.workers[0].send(cmd="client_publish", uid=PUB_SENDER, channel=PUB_CHANNEL, phase="pub", count=PUB_MESSAGES)
    pub = stack.workers[0].wait("client_published", phase="pub")
    report = stack.finish("pub", parts, latencies=True)
    after = stack.usage()
    check_requests(result, "pub: publishing", pub, PUB_MESSAGES)
    result.check_received("pub", report)
    # leave the sockets as they were
    stack.workers[0].send(cmd="close_oldest", uids=[PUB_SENDER])
    stack.workers[0].wait("closed")
    gone = stack.requests("pubunsub", parts, "unsubscribe", [PUB_CHANNEL])
    check_requests(result, "pub: unsubscribing", gone, n)
    stack.stop_app()
    deliveries = PUB_MESSAGES * n
    cpu = after.since(before)
    lat = report["latencies"]
    result.numbers.update(
        messages=PUB_MESSAGES,
        subscribers=n,
        deliveries=deliveries,
        deliveries_per_s=rate(deliveries, pub["first"], report["last"]),
        msgs_per_s=rate(PUB_MESSAGES, pub["first"], report["last"]),
        # the publisher's own view: its last publish answered ok (Redis took it)
        publish_replies_s=pub["last"] and pub["first"] and round((pub["last"] - pub["first"]) / 1000, 4),
        # first publish sent to the first message received by any subscriber
        first_delivery_ms=report["first"] and pub["first"] and round(report["first"] - pub["first"], 3),
        p50_ms=percentile(lat, 0.50),
        p99_ms=percentile(lat, 0.99),
        max_ms=percentile(lat, 1.0),
        server_us_per_delivery=round(1e6 * cpu["server_cpu_s"] / deliveries, 2),
        cpu=cpu,
        client_loop_delay_p99_ms=round(report["loop_delay_p99_ms"], 2),
    )
    ref = reference.numbers if reference is not None and not reference.errors else None
    if ref and ref.get("deliveries_per_s") and result.numbers["deliveries_per_s"]:
        # against case b, the application's PUBLISH to a group of the same users, same run and daemon
        result.numbers["ratio_to_b"] = round(result.numbers["deliveries_per_s"] / ref["deliveries_per_s"], 3)
        result.numbers["b_deliveries_per_s"] = ref["deliveries_per_s"]
        result.numbers["b_server_us_per_delivery"] = ref["server_us_per_delivery"]


def case_resubscribe(stack: Stack, result: Result, profile: Path | None, name: str) -> None:
    """
    resub: RESUB_CLIENTS clients subscribe to RESUB_CHANNELS channels each through
    the application and keep the grants; the daemon restarts; all reconnect at
    once and resubscribe presenting them: none of it should reach the application.
    """
    uids = [f"r{i}" for i in range(RESUB_CLIENTS)]
    channels = [f"resub-{k}" for k in range(RESUB_CHANNELS)]
    n = len(uids) * len(channels)
    parts = stack.split(uids)
    stack.start_app()
    connected = stack.connect(parts, concurrency=50)
    result.check(connected["failed"] == 0, f"resub: {connected['failed']} connections failed before the restart")
    first = stack.requests(
        "resub-ask", parts, "subscribe", channels, concurrency=RESUB_ASKING, mode="read_write", expect_grant=True
    )
    check_requests(result, "resub: subscribing through the application", first, n)
    result.check(first["grants"] == n, f"resub: {first['grants']} of {n} replies carried a grant")
    if result.errors:
        raise BenchError(f"resub: not subscribed before the restart: {result.errors[:3]}")
    # the restart: the daemon closes every socket (1001); the clients know it is coming
    for worker in stack.workers:
        worker.send(cmd="server_closes")
    for worker in stack.workers:
        worker.wait("awaiting_close")
    restart_s = stack.restart_daemon()
    for worker in stack.workers:
        worker.wait("closed")
    asked_before, added_before = stack.app_handled(), stack.requests_added()
    spec = {"phase": "resub", "kind": "subscribe", "channels": channels, "grants": True, "mode": "read_write"}
    with Profiler(profile, stack, name):
        before = stack.usage()
        burst = stack.connect(parts, concurrency=50, subscribe=spec)
        after = stack.usage()
    asked = stack.app_handled() - asked_before
    added = stack.requests_added() - added_before
    result.check(burst["failed"] == 0, f"resub: {burst['failed']} connections failed after the restart")
    check_requests(result, "resub: resubscribing with grants", burst["requests"], n)
    # the subscriptions hold: one message on each channel reaches every client once
    stack.expect("resubmsg", parts, per_socket=len(channels), channel=True, sender=None)
    for channel in channels:
        pub = stack.publish(phase="resubmsg", group=channel, count=1)
        result.check(pub["sent"] == 1 and pub["receivers_min"] == 1, f"resub: PUBLISH on {channel}: {pub}")
    result.check_received("resub: a message on each channel", stack.finish("resubmsg", parts))
    stack.stop_app()
    requests = burst["requests"]
    seconds = (requests["last"] - burst["t0"]) / 1000 if requests["last"] else None
    result.numbers.update(
        clients=len(uids),
        channels=len(channels),
        subscriptions=n,
        # requests that reached the application during the burst: expected none (the grants stand in)
        app_requests=asked,
        stream_added=added,
        # from the first connection to the last subscription granted
        seconds=seconds and round(seconds, 3),
        subs_per_s=rate(n, burst["t0"], requests["last"]),
        conns_per_s=rate(len(uids), burst["t0"], burst["t1"]),
        restart_s=round(restart_s, 2),
        # before the restart: every subscription through the application (RESUB_ASKING sockets a worker waiting)
        asked_per_s=rate(n, first["first"], first["last"]),
        # the last subscription granted after the last client was welcomed
        tail_s=round((requests["last"] - burst["t1"]) / 1000, 3) if requests["last"] else None,
        # per client: its handshake, hello and three subscribes with grants
        server_us_per_client=round(1e6 * (after.daemon - before.daemon) / len(uids), 1),
        cpu=after.since(before),
    )


# -- runs -----------------------------------------------------------------------------------------


def run_case(stack: Stack, result: Result, uids: list[str], done: dict[str, Result]) -> None:
    """One of the cases that run on the 1,000 connected users' daemon (``done``: the cases run before, this run)."""
    if result.case == "a":
        case_direct(stack, result, uids, "a", DIRECT, 0)
    elif result.case in PACED:
        paced_rate, paced_count = PACED[result.case]
        case_direct(stack, result, uids, result.case, paced_count, paced_rate)
    elif result.case == "b":
        case_group(stack, result, uids)
    elif result.case == "bubbles":
        case_bubbles(stack, result, uids[:TABS_USERS])
    elif result.case == "c":
        case_queue(stack, result)
    elif result.case == "sub":
        case_subscribe(stack, result, uids)
    elif result.case == "pub":
        case_client_publish(stack, result, uids, done.get("b"))
    elif result.case == "i":
        case_intake(stack, result, uids, done.get("a"))


class Profiler:
    """
    py-spy recording the daemon during one case (``--profile DIR``): collapsed stacks, for flame graphs;
    ``RM_PYSPY_RATE`` samples per second (default 250).
    """

    def __init__(self, directory: Path | None, stack: Stack, name: str) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        if directory is None or stack.daemon is None:
            return
        py_spy = shutil.which("py-spy") or str(BIN / "py-spy")
        directory.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [py_spy, "record", "--pid", str(stack.daemon.pid), "--rate", os.environ.get("RM_PYSPY_RATE", "250"), "--nonblocking", "--format", "raw",
             "--output", str(directory / f"{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # attached before the case starts

    def __enter__(self) -> Profiler:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)
            self._proc.wait(30)


def run_dialect(
    dialect: str,
    run: int,
    cases: list[str],
    workdir: Path,
    workers: int,
    emit: Callable[[Result], None],
    profile: Path | None = None,
    quiet: tuple[float, float] = (25.0, 60.0),
    socketio_client: str | None = None,
    v1_ack: str | None = None,
    daemons: int = 1,
    placement: str = "kernel",
) -> bool:
    """
    One run of the cases that need the 1,000 users (and c, the channel cases sub and pub, and i
    last), then d and resub on daemons of their own.  The channel cases run for plain-v1 only.
    """
    main_cases = [
        c for c in ("a", "ap1k", "ap", "ap10k", "b", "bubbles", "c", "sub", "pub", "i")
        if c in cases and (c not in CHANNEL_CASES or dialect == "plain-v1")
    ]
    ack = v1_ack if dialect == "plain-v1" else None
    if main_cases:
        background = wait_for_quiet(*quiet)
        path = workdir / f"{dialect}-{run}"
        path.mkdir()
        client = socketio_client if dialect == "socketio" else None
        config = CHANNEL_CONFIG if any(c in CHANNEL_CASES for c in main_cases) else None
        with Stack(path, dialect, workers, client, ack=ack, config=config, daemons=daemons, placement=placement) as stack:
            if dialect == "socketio" and not stack.serves_socketio():
                return False
            uids = [f"u{i}" for i in range(USERS)]
            before = stack.usage()
            connected, report = warm_up(stack, uids, "warm")
            if connected["failed"] or report["count"] != report["expect"] or report["error_count"]:
                raise BenchError(f"{USERS} users did not all connect: {connected}, {report['errors'][:5]}")
            # The users' connections (open, identify, one queued message each; with several daemons by the
            # kernel, passing or relaying the sockets off their owner): recorded with every case of the run.
            warm = {
                "warm_up_s": round((report["last"] - connected["t0"]) / 1000, 3) if report["last"] else None,
                "warm_up_server_us_per_user": round(1e6 * stack.usage().since(before)["server_cpu_s"] / USERS, 1),
            }
            done: dict[str, Result] = {}
            for case in main_cases:
                result = Result(case, dialect, run, stack.client, background_pct=background)
                result.numbers.update(warm)
                if daemons > 1:
                    result.numbers["daemons"] = daemons
                    result.numbers["placement"] = placement
                if stack.ack is not None:
                    result.numbers["ack"] = stack.ack
                try:
                    with Profiler(profile, stack, f"{case}-{dialect}-{run}"):
                        run_case(stack, result, uids, done)
                except (BenchError, TimeoutError) as e:
                    result.errors.append(f"{type(e).__name__}: {e}")
                done[case] = result
                emit(result)
    if "d" in cases and dialect in ("plain", "plain-v1"):
        path = workdir / f"{dialect}-{run}-d"
        path.mkdir()
        background = wait_for_quiet(*quiet)
        with Stack(path, dialect, max(4, workers), ack=ack) as stack:
            result = Result("d", dialect, run, stack.client, background_pct=background)
            if stack.ack is not None:
                result.numbers["ack"] = stack.ack
            try:
                with Profiler(profile, stack, f"d-{dialect}-{run}"):
                    case_idle(stack, result)
            except (BenchError, TimeoutError) as e:
                result.errors.append(f"{type(e).__name__}: {e}")
            emit(result)
    if "resub" in cases and dialect == "plain-v1":
        path = workdir / f"{dialect}-{run}-resub"
        path.mkdir()
        background = wait_for_quiet(*quiet)
        with Stack(path, dialect, max(4, workers), ack=ack, ceiling=False, config=CHANNEL_CONFIG) as stack:
            result = Result("resub", dialect, run, stack.client, background_pct=background)
            if stack.ack is not None:
                result.numbers["ack"] = stack.ack
            try:
                case_resubscribe(stack, result, profile, f"resub-{dialect}-{run}")
            except (BenchError, TimeoutError) as e:
                result.errors.append(f"{type(e).__name__}: {e}")
            emit(result)
    return True


# -- the machine and the table ----------------------------------------------------------------------


def machine_load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    import autobahn
    import twisted

    return {
        "host": platform.node(),
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "autobahn": autobahn.__version__,
        "node": node,
        "load_avg": machine_load(),
    }


#: (case, metric, label, unit) rows of the table, in order
ROWS = [
    ("a", "msgs_per_s", "a: delivered messages/s", ""),
    ("a", "p50_ms", "a: latency p50", "ms"),
    ("a", "p99_ms", "a: latency p99", "ms"),
    ("a", "ratio", "a: ratio to bare PSUBSCRIBE", ""),
    ("a", "server_us_per_msg", "a: server CPU per message", "µs"),
    ("a", "redis_us_per_msg", "a: Redis CPU per message (shown when i ran)", "µs"),
    ("ap1k", "server_us_per_msg", "a′: server CPU per message @1k/s", "µs"),
    ("ap", "server_us_per_msg", "a′: server CPU per message @5k/s", "µs"),
    ("ap10k", "server_us_per_msg", "a′: server CPU per message @10k/s", "µs"),
    ("ap1k", "p99_ms", "a′: latency p99 @1k/s", "ms"),
    ("ap", "p50_ms", "a′: latency p50 @5k/s", "ms"),
    ("ap", "p99_ms", "a′: latency p99 @5k/s", "ms"),
    ("ap", "max_ms", "a′: latency max @5k/s", "ms"),
    ("ap10k", "p99_ms", "a′: latency p99 @10k/s", "ms"),
    ("b", "deliveries_per_s", "b: deliveries/s", ""),
    ("b", "server_us_per_delivery", "b: server CPU per delivery", "µs"),
    ("c", "seconds", "c: identify → last of 10,000 queued", "s"),
    ("c", "ceiling_seconds", "c: bare client reading the queue", "s"),
    ("i", "msgs_per_s", "i: delivered messages/s, XADD rm:intake", ""),
    ("i", "ratio_to_a", "i: ratio to a (PUBLISH), same run", ""),
    ("i", "p50_ms", "i: latency p50", "ms"),
    ("i", "p99_ms", "i: latency p99", "ms"),
    ("i", "server_us_per_msg", "i: server CPU per message (until settled)", "µs"),
    ("i", "redis_us_per_msg", "i: Redis CPU per message (until settled)", "µs"),
    ("i", "settled_s", "i: first XADD → stream empty, nothing pending", "s"),
    ("d", "kb_per_conn", "d: server memory per idle connection", "KB"),
    ("d", "conns_per_s", "d: connections set up/s", ""),
    ("bubbles", "ok", "bubbles: second tabs, then the oldest closed (not timed)", ""),
    ("sub", "requests_per_s", "sub: subscribes answered/s (1,000 at once, Python app)", ""),
    ("sub", "p50_ms", "sub: subscribe → reply p50", "ms"),
    ("sub", "p99_ms", "sub: subscribe → reply p99", "ms"),
    ("sub", "max_ms", "sub: subscribe → reply max", "ms"),
    ("sub", "rtt_p50_ms", "sub: one at a time, p50", "ms"),
    ("sub", "rtt_p99_ms", "sub: one at a time, p99", "ms"),
    ("sub", "server_us_per_request", "sub: server CPU per request", "µs"),
    ("sub", "app_us_per_request", "sub: application (library) CPU per request", "µs"),
    ("pub", "deliveries_per_s", "pub: deliveries/s, a client's publish to 1,000", ""),
    ("pub", "ratio_to_b", "pub: ratio to b (PUBLISH to a group), same run", ""),
    ("pub", "server_us_per_delivery", "pub: server CPU per delivery", "µs"),
    ("pub", "p50_ms", "pub: latency p50 (publish sent → received)", "ms"),
    ("pub", "p99_ms", "pub: latency p99", "ms"),
    ("resub", "seconds", "resub: first connection → last of 30,000 granted", "s"),
    ("resub", "app_requests", "resub: requests reaching the application in the burst", ""),
    ("resub", "subs_per_s", "resub: subscriptions granted/s in the burst", ""),
    ("resub", "conns_per_s", "resub: connections set up/s in the burst", ""),
]


#: rows shown only along with a case: (case, metric) -> that case
ROWS_WITH = {("a", "redis_us_per_msg"): "i"}
#: with several daemons, where the users' sockets go (Stack.by_owner)
PLACEMENTS = ("kernel", "owner", "relay")
#: plain-v1 (acks and ids) against plain: server CPU per message and per delivery within 15%
V1_CPU_SHARE = 1.15


def metric(line: dict[str, Any], name: str) -> float | None:
    value = line.get(name)
    if value is None and name.endswith("_pct"):
        value = (line.get("cpu") or {}).get(name)
    return value if isinstance(value, (int, float)) else None


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(lines: list[dict[str, Any]], dialects: list[str], pending: list[str]) -> str:
    out = [
        "| case | dialect | median | spread (min–max) | runs ok | server CPU % | load gen CPU % | target | holds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case, name, label, unit in ROWS:
        along = ROWS_WITH.get((case, name))
        if along is not None and not any(l["case"] == along for l in lines):
            continue
        for dialect in dialects:
            runs = [l for l in lines if l["case"] == case and l["dialect"] == dialect]
            if dialect in pending and case in ("a", *PACED, "b", "c"):
                if name in ("msgs_per_s", "deliveries_per_s", "seconds"):
                    out.append(f"| {label} | {dialect} | pending | | | | | | |")
                continue
            if not runs:
                continue
            good = [l for l in runs if l["ok"]]
            if name == "ok":  # a check, not a number
                verdict = "all checks passed" if len(good) == len(runs) else "FAILED"
                out.append(f"| {label} | {dialect} | {verdict} | | {len(good)}/{len(runs)} | | | | |")
                continue
            values = [v for l in good if (v := metric(l, name)) is not None]
            median = statistics.median(values) if values else None
            spread = f"{fmt(min(values))}–{fmt(max(values))}" if values else "–"
            cpu_server = statistics.median([l["cpu"]["server_pct"] for l in good if "cpu" in l] or [0])
            cpu_load = statistics.median([l["cpu"]["loadgen_pct"] for l in good if "cpu" in l] or [0])
            target = TARGETS.get((case, name))
            if dialect == "socketio" and case in ("a", "b", "c") and name in ("msgs_per_s", "deliveries_per_s", "seconds"):
                plain = [v for l in lines if l["case"] == case and l["dialect"] == "plain" and l["ok"]
                         if (v := metric(l, name)) is not None]
                if plain and median is not None:
                    ref = statistics.median(plain)
                    share = median / ref if name != "seconds" else ref / median
                    target_text, holds = "≥ 80% of plain", f"{'yes' if share >= 0.8 else 'NO'} ({share:.0%})"
                else:
                    target_text, holds = "≥ 80% of plain", "?"
            elif case == "pub" and name == "deliveries_per_s":
                b = [v for l in lines if l["case"] == "b" and l["dialect"] == dialect and l["ok"]
                     if (v := metric(l, name)) is not None]
                target_text = f"≥ {PUB_SHARE_OF_B:.0%} of b"
                if b and median is not None:
                    share = median / statistics.median(b)
                    holds = f"{'yes' if share >= PUB_SHARE_OF_B else 'NO'} ({share:.0%})"
                else:
                    holds = "?"
            elif dialect == "plain-v1" and name in ("server_us_per_msg", "server_us_per_delivery") and case in ("a", "b"):
                plain = [v for l in lines if l["case"] == case and l["dialect"] == "plain" and l["ok"]
                         if (v := metric(l, name)) is not None]
                target_text = f"≤ {V1_CPU_SHARE:.0%} of plain"
                if plain and median is not None:
                    share = median / statistics.median(plain)
                    holds = f"{'yes' if share <= V1_CPU_SHARE else 'NO'} ({share:.0%})"
                else:
                    holds = "?"
            elif target is not None:
                op, goal = target
                target_text = f"{op.replace('>=', '≥').replace('<=', '≤')} {fmt(goal)}{(' ' + unit) if unit else ''}"
                ok = median is not None and (median >= goal if op == ">=" else median <= goal)
                holds = "yes" if ok else "NO"
            else:
                target_text, holds = "", ""
            cpu_cols = (f"{cpu_server:.0f}", f"{cpu_load:.0f}") if name in ("msgs_per_s", "deliveries_per_s", "seconds", "conns_per_s", "p99_ms", "requests_per_s") else ("", "")
            shown = f"{fmt(median)} {unit}".strip() if median is not None else "–"
            out.append(
                f"| {label} | {dialect} | {shown} | {spread} | {len(good)}/{len(runs)} | {cpu_cols[0]} | {cpu_cols[1]} | {target_text} | {holds} |"
            )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of every case (the table shows medians)")
    parser.add_argument(
        "--cases", default="a,ap1k,ap,ap10k,b,bubbles,c,d",
        help="a,ap,b,bubbles,c,d (the default), and i; the channel cases sub, pub, resub (plain-v1 only; "
        "pub's ratio needs b in the same run)",
    )
    parser.add_argument("--dialects", default="plain,socketio", help="plain, plain-v1, socketio (default: plain,socketio)")
    parser.add_argument(
        "--v1-ack", choices=V1_ACKS, default=V1_ACKS[0],
        help="how plain-v1 clients acknowledge: every (default: an ack per message, as the browser library acks "
        "after each handler) or burst (one ack per socket and event-loop turn, of the last id); recorded as `ack`",
    )
    parser.add_argument("--workers", type=int, default=1, help="load-generating Node processes (d uses at least 4)")
    parser.add_argument(
        "--daemons", type=int, default=1,
        help="daemon processes on one port (SO_REUSEPORT) and one Redis, sharing the users (docs/scale-out.md); "
        "CPU is their sum. d and resub run one daemon whatever this says",
    )
    parser.add_argument(
        "--placement", choices=PLACEMENTS, default=PLACEMENTS[0],
        help="with several daemons, where the users' sockets go: kernel (default; one port, SO_REUSEPORT spreads "
        "them, and each daemon passes the sockets of users it does not own to their owner), owner (a port per "
        "daemon, each user on its owner, as a balancer hashing users the daemons' way would), or relay (as kernel "
        "with pass_sockets off: the sockets off their owner are relays); recorded as `placement`",
    )
    parser.add_argument(
        "--socketio-client", choices=SOCKETIO_CLIENTS, default=SOCKETIO_CLIENTS[0],
        help="the Socket.IO load generator: lean (default; Engine.IO 4 / Socket.IO 5 spoken on Node's ws, "
        "WebSocket transport) or socket.io-client (version 4, about a third more CPU per envelope); "
        "recorded as `client`",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "latest.jsonl")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs of every process)")
    parser.add_argument("--profile", type=Path, help="record the daemon with py-spy during each case, into this directory")
    parser.add_argument(
        "--quiet-below", type=float, default=25.0, metavar="PCT",
        help="before each run, wait until other processes use less CPU than this (%% of one core; default 25)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=60.0, metavar="SECONDS",
        help="wait at most this long for it, then run anyway (default 60; 0: never wait)",
    )
    args = parser.parse_args()
    cases = args.cases.split(",")
    dialects = args.dialects.split(",")
    unknown = [d for d in dialects if d not in DIALECTS] + [
        c for c in cases if c not in ("a", *PACED, "b", "bubbles", "c", "d", "i", *CHANNEL_CASES)
    ]
    if unknown:
        parser.error(f"unknown dialect or case: {', '.join(unknown)}")
    if any(c in CHANNEL_CASES for c in cases) and "plain-v1" not in dialects:
        print("warning: the channel cases (sub, pub, resub) run for plain-v1 only", file=sys.stderr)

    # 10,000 connections need more descriptors than the usual default of 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 2 * IDLE + 1000 and ("d" in cases or "resub" in cases):
        print(f"warning: the descriptor limit is {hard}; case d needs about {IDLE + 1000} per process", file=sys.stderr)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="rm-bench-"))
    lines: list[dict[str, Any]] = []
    pending: list[str] = []
    started = time.time()
    print(f"# machine: {json.dumps(info)}", file=sys.stderr)
    with args.out.open("w") as out:
        out.write(json.dumps({"machine": info, "command": " ".join(sys.argv), "started": started}) + "\n")

        def emit(result: Result) -> None:
            line = result.line(info)
            lines.append(line)
            out.write(json.dumps(line) + "\n")
            out.flush()
            summary = {k: v for k, v in line.items() if k not in ("cpu", "errors", "host")}
            print(json.dumps(summary) if line["ok"] else json.dumps(line), flush=True)

        try:
            for run in range(1, args.runs + 1):
                for dialect in dialects:
                    if dialect in pending:
                        continue
                    if not run_dialect(
                        dialect, run, cases, workdir, args.workers, emit, args.profile, (args.quiet_below, args.quiet_wait),
                        args.socketio_client, args.v1_ack, args.daemons, args.placement,
                    ):
                        print(f"# {dialect}: the daemon does not serve it (yet): rows pending", file=sys.stderr)
                        pending.append(dialect)
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                print(f"# logs kept in {workdir}", file=sys.stderr)
    text = table(lines, dialects, pending)
    elapsed = time.time() - started
    header = (
        f"{info['nproc']} × {info['cpu']}, {info['mem_gb']} GB, Linux {info['kernel']}; Python {info['python']}, "
        f"Twisted {info['twisted']}, Autobahn {info['autobahn']}, Node {info['node']}; "
        f"load average {info['load_avg']} before, {machine_load()} after; {elapsed:.0f} s"
    )
    clients = sorted({f"{l['dialect']}: {l['client']}" + (f" (ack {l['ack']})" if l.get("ack") else "") for l in lines if l.get("client")})
    if clients:
        header += f"; load generator: {', '.join(clients)}"
    noise = sorted({(l["dialect"], l["run"], l["case"] == "d"): l["background_pct"] for l in lines if l.get("background_pct") is not None}.values())
    if noise:
        header += (
            f"; other processes' CPU just before each run: median {statistics.median(noise):.0f}%, "
            f"max {max(noise):.0f}% (of one core)"
        )
    print("\n" + header + "\n\n" + text)
    args.out.with_suffix(".md").write_text(header + "\n\n" + text + "\n")
    failed = [l for l in lines if not l["ok"]]
    if failed:
        print(f"\n{len(failed)} of {len(lines)} runs FAILED their checks (see {args.out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
