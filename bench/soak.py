"""
The soak: the daemon for a long while (an hour by default) at a steady rate,
its memory sampled as it goes.  Not part of CI nor of bench/run.py's cases.

    .venv/bin/python bench/soak.py [--duration 3600] [--rate 3000] [--users 1000]
                                   [--acking 450] [--legacy 450] [--churn 50] [--intake-share 0.25]

(after ``scripts/bench`` has prepared ``.venv`` and ``bench/node_modules``;
``--duration 60`` for a short try).  As in bench/run.py, a fresh valkey-server
and the daemon as a real ``twistd`` process, on loopback, with two load
generators (bench/client.js): one holding the acking clients (protocol
version 1, ``--v1-ack every`` by default), one the legacy ones (plain, pongs
confirm).  The users ``s0`` ... are, in this order:

- ``--acking`` online users speaking version 1, of which the first ``--churn``
  close their socket and open a new one every ``--churn-every`` seconds or so
  (jittered), offline up to ``--churn-gap`` seconds in between: their messages
  are queued meanwhile and handed over when they are back, and what a closed
  socket had not acknowledged comes again (counted as copies: at least once);
- ``--legacy`` online users speaking the legacy plain protocol;
- the rest offline for the whole run: everything sent to them is queued.

Message ``j`` goes to user ``j % users``; one user in 1 / ``--intake-share``
(every fourth by default, in each group) is sent its messages through the
durable intake (``XADD rm:intake``), the others by PUBLISH.  The publisher
(bench/publisher.py) paces ``--rate`` messages a second for ``--duration``
seconds (rounded up so that every user gets as many).

Every ``--sample-every`` seconds (10) one JSON line goes to ``--out``
(bench/results/soak.jsonl): the daemon's VmRSS (/proc/<pid>/status) and open
descriptors, its CPU and Redis's, Redis's memory, messages published,
received, queued, copies, errors, the intake's length and pending entries.  At
the end it prints (and appends to ``--out``) the summary: RSS min / median /
max, the slope in KB per minute (least squares over the second half of the
samples, and over all of them), messages published / delivered / queued, and
the checks, each of which must hold:

- every online user received each of its messages, in order, none missing,
  none doubled (the churning users: none missing, copies allowed);
- every offline user's queue holds each of its messages exactly once, in
  order; the online users' queues are empty;
- the intake stream is empty and nothing is pending in the daemons' group;
- the publisher's every PUBLISH reached the daemon, every XADD was taken;
- every reconnection succeeded, no socket closed unexpectedly.

Nothing lost: every published message was received or is in its queue.
Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from run import (
    BENCH,
    INTAKE_GROUP,
    INTAKE_STREAM,
    V1_ACKS,
    BenchError,
    Child,
    Stack,
    cpu_seconds,
    machine,
    rss_kb,
)

PHASE = "s"
#: queue entries read per LRANGE when the offline queues are checked
QUEUE_CHUNK = 5000


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value), per minute."""
    if len(points) < 2:
        return None
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def latest(child: Child, event: str) -> dict[str, Any] | None:
    """The last of the ``event`` events the child printed so far (None if none), without waiting."""
    last = None
    while True:
        try:
            last = child.wait(event, 0.001)
        except (TimeoutError, BenchError):
            return last


def redis_info_memory(stack: Stack) -> int:
    assert stack.redis is not None
    info = stack.redis.call("INFO", "memory").decode()
    match = re.search(r"^used_memory:(\d+)", info, re.M)
    return int(match.group(1)) if match else -1


def redis_commands(stack: Stack) -> dict[str, int]:
    """Calls per command since Redis started (INFO commandstats; commands run by scripts included)."""
    assert stack.redis is not None
    info = stack.redis.call("INFO", "commandstats").decode()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^cmdstat_([^:]+):calls=(\d+)", info, re.M)}


def metrics(stack: Stack) -> dict[str, float]:
    """The daemon's counters from /metrics (names without help lines, histogram buckets left out)."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"{stack.base}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError as e:
        return {"error": str(e)}  # type: ignore[dict-item]
    for line in text.splitlines():
        if line.startswith("redmessenger_") and "_bucket" not in line:
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        n = args.users
        if args.acking + args.legacy > n or args.churn > args.acking:
            raise SystemExit("soak: --acking + --legacy must be at most --users, --churn at most --acking")
        self.uids = [f"s{i}" for i in range(n)]
        self.acking = self.uids[: args.acking]
        self.legacy = self.uids[args.acking : args.acking + args.legacy]
        self.offline = self.uids[args.acking + args.legacy :]
        self.churning = self.acking[: args.churn]
        share = args.intake_share
        self.intake_indexes = [i for i in range(n) if int((i + 1) * share) > int(i * share)]
        self.per_user = math.ceil(args.rate * args.duration / n)
        self.total = self.per_user * n
        self.samples: list[dict[str, Any]] = []
        self.checks: list[tuple[str, bool, str]] = []

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((name, ok, detail))
        print(f"# check {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", file=sys.stderr, flush=True)

    def run(self, out: Any) -> dict[str, Any]:
        args = self.args
        config = {"queue_max_length": max(100000, self.per_user + 1000)}
        with Stack(
            self.workdir, "plain-v1", 2, ack=args.v1_ack, worker_dialects=["plain-v1", "plain"], ceiling=False, config=config
        ) as stack:
            assert stack.daemon is not None and stack.redis_proc is not None and stack.redis is not None
            v1, legacy = stack.workers
            parts = [self.acking, self.legacy]
            # Online users connect and identify: each is sent one message while offline first;
            # receiving it shows its socket identified and its queue handed over.
            stack.expect("warm", parts, per_socket=1)
            stack.publish(phase="warm", users=self.acking + self.legacy, count=len(self.acking) + len(self.legacy))
            connected = stack.connect(parts)
            warm = stack.finish("warm", parts)
            if connected["failed"] or warm["count"] != warm["expect"] or warm["error_count"]:
                raise BenchError(f"the online users did not all connect: {connected}, {warm['errors'][:5]}")
            for worker, part in zip(stack.workers, parts):
                worker.send(
                    cmd="expect", phase=PHASE, uids=part, per_socket=self.per_user, tabs=1, latency=False,
                    per_user=self.churning if worker is v1 else [],
                )
            for worker in stack.workers:
                worker.wait("expecting", phase=PHASE)

            spec = {
                "port": stack.redis_port, "phase": PHASE, "users": self.uids, "count": self.total, "rate": args.rate,
                "intake_users": self.intake_indexes, "progress": True,
            }
            time.sleep(1.0)
            start = time.time()
            rss_start = rss_kb(stack.daemon.pid)
            daemon_cpu0, redis_cpu0 = cpu_seconds(stack.daemon.pid), cpu_seconds(stack.redis_proc.pid)
            publisher = Child("publisher", [sys.executable, "publisher.py", json.dumps(spec)], self.workdir / "publisher.log")
            if self.churning:
                v1.send(cmd="churn", uids=self.churning, every_s=args.churn_every, gap_s=args.churn_gap)
                v1.wait("churning")
            print(
                f"# soak: {args.duration:g} s at {args.rate:g} msg/s, {self.total:,} messages, {self.per_user:,} per user; "
                f"users: {len(self.acking)} acking ({len(self.churning)} reconnecting), {len(self.legacy)} legacy, "
                f"{len(self.offline)} offline; {len(self.intake_indexes)} via the intake; daemon pid {stack.daemon.pid}",
                file=sys.stderr, flush=True,
            )
            summary_pub: dict[str, Any] | None = None
            published = 0
            next_sample = start
            try:
                while True:
                    progress = latest(publisher, "progress")
                    if progress is not None:
                        published = progress["sent"]
                    if summary_pub is None:
                        try:
                            summary_pub = publisher.wait("summary", 0.001)
                            published = summary_pub["sent"]
                        except (TimeoutError, BenchError):
                            pass
                    now = time.time()
                    if now >= next_sample or summary_pub is not None:
                        self.sample(stack, out, start, published, daemon_cpu0, redis_cpu0)
                        next_sample += args.sample_every
                    if summary_pub is not None:
                        break
                    if publisher.proc.poll() is not None and summary_pub is None:
                        time.sleep(0.5)
                        try:
                            summary_pub = publisher.wait("summary", 0.5)
                            continue
                        except (TimeoutError, BenchError):
                            raise BenchError(f"the publisher exited without a summary; see {self.workdir / 'publisher.log'}") from None
                    time.sleep(min(0.5, max(0.01, next_sample - time.time())))
            finally:
                publisher.stop()
            published_at = time.time()
            return self.finish(stack, out, start, published_at, rss_start, summary_pub, daemon_cpu0, redis_cpu0)

    def progress(self, stack: Stack) -> dict[str, Any]:
        for worker in stack.workers:
            worker.send(cmd="progress", phase=PHASE)
        reports = [worker.wait("progress", 30, phase=PHASE) for worker in stack.workers]
        return {
            "received": sum(r["count"] for r in reports),
            "copies": sum(r["copies"] for r in reports),
            "errors": sum(r["error_count"] for r in reports),
            "error_samples": [e for r in reports for e in r["errors"]][:5],
            "reconnects": sum(r["reconnects"] for r in reports),
            "reconnects_failed": sum(r["reconnects_failed"] for r in reports),
            "acks_sent": sum(r["acks_sent"] for r in reports),
        }

    def queued(self, stack: Stack, uids: list[str]) -> int:
        assert stack.redis is not None
        replies = stack.redis.pipeline([_llen(uid) for uid in uids])
        return sum(int(r) for r in replies)

    def sample(self, stack: Stack, out: Any, start: float, published: int, daemon_cpu0: float, redis_cpu0: float) -> None:
        assert stack.daemon is not None and stack.redis_proc is not None and stack.redis is not None
        now = time.time()
        state = self.progress(stack)
        pending = stack.redis.call("XPENDING", INTAKE_STREAM, INTAKE_GROUP)[0]
        line = {
            "t": round(now, 3),
            "elapsed_s": round(now - start, 1),
            "rss_kb": rss_kb(stack.daemon.pid),
            "fds": fds(stack.daemon.pid),
            "daemon_cpu_s": round(cpu_seconds(stack.daemon.pid) - daemon_cpu0, 2),
            "redis_cpu_s": round(cpu_seconds(stack.redis_proc.pid) - redis_cpu0, 2),
            "redis_rss_kb": rss_kb(stack.redis_proc.pid),
            "redis_used_memory": redis_info_memory(stack),
            "published": published,
            "queued": self.queued(stack, self.offline),
            "intake_length": stack.redis.call("XLEN", INTAKE_STREAM),
            "intake_pending": int(pending),
            **state,
        }
        self.samples.append(line)
        out.write(json.dumps(line) + "\n")
        out.flush()
        print(
            f"# {line['elapsed_s']:7.0f} s  rss {line['rss_kb']:,} KB  fds {line['fds']}  published {published:,}  "
            f"received {state['received']:,}  queued {line['queued']:,}  copies {state['copies']}  "
            f"reconnects {state['reconnects']}  errors {state['errors']}  intake {line['intake_length']}/{line['intake_pending']}",
            file=sys.stderr, flush=True,
        )

    def finish(
        self,
        stack: Stack,
        out: Any,
        start: float,
        published_at: float,
        rss_start: int,
        pub: dict[str, Any] | None,
        daemon_cpu0: float,
        redis_cpu0: float,
    ) -> dict[str, Any]:
        assert stack.daemon is not None and stack.redis_proc is not None and stack.redis is not None
        args = self.args
        v1 = stack.workers[0]
        reconnects = failed = 0
        if self.churning:
            v1.send(cmd="churn_stop")
            stopped = v1.wait("churn_stopped", 120)
            reconnects, failed = stopped["reconnects"], stopped["failed"]
            self.check("every reconnection succeeded", stopped["failed"] == 0, f"{stopped['reconnects']} reconnections, {stopped['failed']} failed")
        parts = [self.acking, self.legacy]
        report = stack.finish(PHASE, parts, timeout=120)
        online = len(self.acking) + len(self.legacy)
        self.check(
            "online users: every message received, in order, none doubled (reconnecting users: copies allowed)",
            report["count"] == report["expect"] == online * self.per_user and report["error_count"] == 0,
            f"{report['count']:,} of {online * self.per_user:,}; {report['error_count']} errors {report['errors'][:5]}",
        )
        copies = sum(r.get("copies", 0) for r in self._reports(stack))
        settled = stack.wait_intake_settled(60)
        self.check("intake stream empty, nothing pending", settled == (0, 0), f"XLEN, XPENDING: {settled}")
        invalid = stack.redis.call("LLEN", f"{INTAKE_STREAM}:invalid")
        self.check("no intake entry set aside as invalid", invalid == 0, f"{invalid}")
        queued_total, queue_errors = self.check_queues(stack)
        self.check(
            "offline users: every message queued exactly once, in order",
            queued_total == len(self.offline) * self.per_user and not queue_errors,
            f"{queued_total:,} of {len(self.offline) * self.per_user:,}; {queue_errors[:5]}",
        )
        time.sleep(1.0)  # the last confirmations of the legacy sockets' queues
        left_online = self.queued(stack, self.acking + self.legacy)
        self.check("online users' queues empty", left_online == 0, f"{left_online} entries")
        n_intake_msgs = len(self.intake_indexes) * self.per_user
        if pub is not None:
            self.check("publisher sent everything", pub["sent"] == self.total, f"{pub['sent']:,} of {self.total:,}")
            self.check(
                "every PUBLISH reached the daemon, every XADD was taken",
                pub["receivers_min"] == 1 and pub["entry_ids"] == n_intake_msgs and not pub["odd_replies"],
                f"receivers {pub['receivers_min']}-{pub['receivers_max']}, {pub['entry_ids']:,} entry ids of {n_intake_msgs:,}",
            )
        delivered = report["count"]
        self.check(
            "nothing lost: every published message received or in its queue",
            delivered + queued_total == self.total,
            f"{delivered:,} received + {queued_total:,} queued = {delivered + queued_total:,} of {self.total:,}",
        )
        end = time.time()
        daemon_cpu = cpu_seconds(stack.daemon.pid) - daemon_cpu0
        redis_cpu = cpu_seconds(stack.redis_proc.pid) - redis_cpu0
        rss = [s["rss_kb"] for s in self.samples]
        points = [(s["elapsed_s"], s["rss_kb"]) for s in self.samples]
        half = [p for p in points if p[0] >= (published_at - start) / 2]
        summary = {
            "event": "summary",
            "duration_s": args.duration,
            "rate": args.rate,
            "publishing_s": round(published_at - start, 1),
            "settled_s": round(end - start, 1),
            "users": {"acking": len(self.acking), "churning": len(self.churning), "legacy": len(self.legacy),
                      "offline": len(self.offline), "via_intake": len(self.intake_indexes)},
            "ack": stack.ack,
            "samples": len(self.samples),
            "rss_start_kb": rss_start,
            "rss_min_kb": min(rss) if rss else None,
            "rss_median_kb": statistics.median(rss) if rss else None,
            "rss_max_kb": max(rss) if rss else None,
            "rss_end_kb": rss_kb(stack.daemon.pid),
            "rss_slope_kb_per_min_second_half": _round(slope_per_minute(half)),
            "rss_slope_kb_per_min_all": _round(slope_per_minute(points)),
            "fds_start_end": [self.samples[0]["fds"], fds(stack.daemon.pid)] if self.samples else None,
            "published": self.total if pub is None else pub["sent"],
            "published_via_intake": n_intake_msgs,
            "delivered": delivered,
            "copies": copies,
            "queued": queued_total,
            "reconnects": reconnects,
            "reconnects_failed": failed,
            "daemon_cpu_s": round(daemon_cpu, 1),
            "daemon_cpu_pct": round(100 * daemon_cpu / (end - start), 1),
            "daemon_us_per_msg": round(1e6 * daemon_cpu / self.total, 1),
            "redis_cpu_pct": round(100 * redis_cpu / (end - start), 1),
            "redis_used_memory_end": redis_info_memory(stack),
            # what the daemon (and the publisher) asked of Redis: per message, the intake costs round trips
            "redis_calls": dict(sorted(redis_commands(stack).items(), key=lambda kv: -kv[1])[:12]),
            "metrics": {k: v for k, v in metrics(stack).items() if not k.startswith("redmessenger_delivery_latency")},
            "checks": [{"check": name, "ok": ok, "detail": detail} for name, ok, detail in self.checks],
            "ok": all(ok for _, ok, _ in self.checks),
        }
        out.write(json.dumps(summary) + "\n")
        return summary

    def _reports(self, stack: Stack) -> list[dict[str, Any]]:
        for worker in stack.workers:
            worker.send(cmd="progress", phase=PHASE)
        return [worker.wait("progress", 30, phase=PHASE) for worker in stack.workers]

    def check_queues(self, stack: Stack) -> tuple[int, list[str]]:
        """Every offline user's queue: exactly its messages, seq 0, 1, ... in order (oldest first)."""
        assert stack.redis is not None
        total = 0
        errors: list[str] = []
        for uid in self.offline:
            key = f"rm:users:{uid}:messages"
            length = int(stack.redis.call("LLEN", key))
            total += length
            if length != self.per_user:
                errors.append(f"{uid}: {length} queued, expected {self.per_user}")
            expected = 0
            for offset in range(0, length, QUEUE_CHUNK):
                for raw in stack.redis.call("LRANGE", key, offset, offset + QUEUE_CHUNK - 1):
                    try:
                        entry = json.loads(raw)
                        name, seq, _ = entry["payload"].split("|", 2)
                    except (ValueError, KeyError, TypeError, AttributeError):
                        errors.append(f"{uid}: unreadable entry {raw[:100]!r}")
                        break
                    if name != PHASE or int(seq) != expected:
                        errors.append(f"{uid}: entry {expected} is {name}|{seq}")
                        break
                    expected += 1
                else:
                    continue
                break
        return total, errors


def _llen(uid: str) -> bytes:
    from resp import command

    return command("LLEN", f"rm:users:{uid}:messages")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3600, help="seconds of publishing (default 3600)")
    parser.add_argument("--rate", type=float, default=3000, help="messages per second (default 3000)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--acking", type=int, default=450, help="online users speaking protocol version 1 (acks)")
    parser.add_argument("--legacy", type=int, default=450, help="online users speaking the legacy plain protocol")
    parser.add_argument("--churn", type=int, default=50, help="of the acking users, how many reconnect now and then")
    parser.add_argument("--churn-every", type=float, default=30.0, help="seconds between a user's reconnections, about")
    parser.add_argument("--churn-gap", type=float, default=2.0, help="seconds offline at most between close and reconnect")
    parser.add_argument("--intake-share", type=float, default=0.25, help="share of the users sent their messages by XADD rm:intake")
    parser.add_argument("--v1-ack", choices=V1_ACKS, default=V1_ACKS[0], help="how the acking clients acknowledge")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "soak.jsonl")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs of every process)")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="rm-soak-"))
    soak = Soak(args, workdir)
    print(f"# machine: {json.dumps(info)}", file=sys.stderr)
    try:
        with args.out.open("w") as out:
            out.write(json.dumps({"machine": info, "command": " ".join(sys.argv), "started": time.time()}) + "\n")
            try:
                summary = soak.run(out)
            except (BenchError, TimeoutError) as e:
                summary = {"event": "summary", "ok": False, "error": f"{type(e).__name__}: {e}",
                           "checks": [{"check": n, "ok": o, "detail": d} for n, o, d in soak.checks]}
                out.write(json.dumps(summary) + "\n")
    finally:
        if args.keep:
            print(f"# logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_summary(summary, args.out)
    return 0 if summary.get("ok") else 1


def print_summary(s: dict[str, Any], path: Path) -> None:
    print()
    if "error" in s:
        print(f"soak FAILED: {s['error']}")
    else:
        print(
            f"soak: {s['publishing_s']:.0f} s publishing at {s['rate']:g}/s (settled at {s['settled_s']:.0f} s), "
            f"{s['samples']} samples; clients: {s['users']['acking']} acking (ack {s['ack']}, {s['users']['churning']} "
            f"reconnecting), {s['users']['legacy']} legacy, {s['users']['offline']} offline; "
            f"{s['users']['via_intake']} users via the intake"
        )
        print(
            f"daemon RSS: start {s['rss_start_kb']:,} KB, min {s['rss_min_kb']:,}, median {s['rss_median_kb']:,.0f}, "
            f"max {s['rss_max_kb']:,}, end {s['rss_end_kb']:,}; slope {s['rss_slope_kb_per_min_second_half']} KB/min "
            f"over the second half ({s['rss_slope_kb_per_min_all']} KB/min over all); descriptors {s['fds_start_end']}"
        )
        print(
            f"messages: published {s['published']:,} ({s['published_via_intake']:,} via the intake), delivered "
            f"{s['delivered']:,} (+{s['copies']} copies after reconnections), queued {s['queued']:,}; "
            f"{s['reconnects']} reconnections"
        )
        print(
            f"CPU: daemon {s['daemon_cpu_pct']}% of a core ({s['daemon_us_per_msg']} µs per message), "
            f"Redis {s['redis_cpu_pct']}%; Redis used_memory at the end {s['redis_used_memory_end']:,} bytes"
        )
        print(f"Redis calls: {', '.join(f'{k} {v:,}' for k, v in s['redis_calls'].items())}")
    for c in s.get("checks", []):
        print(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['check']}{': ' + c['detail'] if c['detail'] else ''}")
    print(f"{'all checks passed' if s.get('ok') else 'FAILED'}; samples and summary in {path}")


if __name__ == "__main__":
    sys.exit(main())
