"""
Operating the real daemon under ``twistd``: SIGTERM under publish traffic loses
no message, SIGHUP reloads what it safely can.

The SIGTERM test counts every message Redis handed to the daemon (PUBLISH
returned 1): each must be either received by a client or still in its user's
queue afterwards, none twice, in publish order, with the queue being handed
over when the signal came.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
import valkey

from ..conftest import HOST, RedisServer, wait_until
from ..httpclient import scrape
from ..telnetclient import connect_telnet
from ..twistdprocess import Twistd
from ..wsclient import WebSocketClient, connect_client

ONLINE = ["u0", "u1", "u2", "u3"]
OFFLINE = ["off0", "off1"]
TEAM = ["u0", "off0", "backlog"]  # members of group "team"
BACKLOG = 20000  # queued for "backlog" before it identifies: its handover runs when SIGTERM comes


class Publisher:
    """Publishes numbered messages round-robin from a thread until told to stop; remembers PUBLISH's answer."""

    channels = [f"rm.users.{uid}" for uid in ONLINE + OFFLINE + ["backlog"]] + ["rm.channels.team"]

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.sent: list[tuple[str, str, int]] = []  # channel, payload, subscribers that got it

    def run(self) -> None:
        client = valkey.Valkey(host=HOST, port=self.port, socket_timeout=5)
        try:
            deadline = time.monotonic() + 60
            n = 0
            while not self.stop.is_set() and time.monotonic() < deadline and n < 200000:
                channel = self.channels[n % len(self.channels)]
                payload = f"{channel}#{n}"
                self.sent.append((channel, payload, int(client.publish(channel, payload))))
                n += 1
                time.sleep(0.0005)
        finally:
            client.close()

    def expected(self, uid: str) -> list[str]:
        """What ``uid`` must have, received or queued, in order: every message the daemon was handed."""
        mine = {f"rm.users.{uid}"} | ({"rm.channels.team"} if uid in TEAM else set())
        return [payload for channel, payload, receivers in self.sent if channel in mine and receivers > 0]


def queued_payloads(redis: valkey.Valkey, uid: str) -> list[str]:
    return [json.loads(raw)["payload"] for raw in redis.lrange(f"rm:users:{uid}:messages", 0, -1)]


async def identify(daemon: Twistd, uid: str) -> WebSocketClient:
    client = await connect_client(daemon.url)
    client.send(uid)
    return client


async def identified(daemon: Twistd, count: int) -> None:
    for _ in range(200):
        if (await scrape(daemon.port))["redmessenger_sockets_identified"] >= count:
            return
        await sleep(0.05)
    raise AssertionError(f"{count} sockets never identified")


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_sigterm_under_traffic_loses_no_message(redis: valkey.Valkey, redis_server: RedisServer, tmp_path: Path) -> None:
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    entry = lambda n: json.dumps({"v": 1, "source": "rm.users.backlog", "timestamp": 1, "payload": f"pre#{n}"})
    pipe = redis.pipeline()
    for start in range(0, BACKLOG, 1000):
        pipe.rpush("rm:users:backlog:messages", *[entry(n) for n in range(start, start + 1000)])
    pipe.sadd("rm:channels:team:subscribers", *TEAM)
    pipe.execute()

    daemon = Twistd(tmp_path, redis_server.port, ping_interval=0)
    daemon.start()
    publisher = Publisher(redis_server.port)
    clients: dict[str, WebSocketClient] = {}
    try:
        await daemon.healthy()
        for uid in ONLINE:
            clients[uid] = await identify(daemon, uid)
        await identified(daemon, len(ONLINE))

        publishing = deferToThread(publisher.run)
        await wait_until(lambda: len(publisher.sent) >= 400, 20, "traffic")
        clients["backlog"] = await identify(daemon, "backlog")
        await wait_until(lambda: len(clients["backlog"].received) >= 1000, 20, "the handover to be under way")

        signalled = reactor.seconds()
        daemon.signal("TERM")
        # twistd stops cleanly, then re-raises SIGTERM on itself (systemd counts that as success)
        assert await daemon.ended(60) == f"signal {signal.SIGTERM}", daemon.output
        took = reactor.seconds() - signalled
        # a few PUBLISHes nobody hears, for good measure: the daemon must not count on them
        await wait_until(lambda: sum(1 for _, _, receivers in publisher.sent if not receivers) >= 20, 10, "unheard PUBLISHes")
        publisher.stop.set()
        await publishing
        closes = {uid: await client.close_code() for uid, client in clients.items()}
    finally:
        publisher.stop.set()
        await daemon.stop()

    assert {code for code, _ in closes.values()} == {1001}, closes
    assert "RedMessenger stopped" in daemon.output
    assert "Traceback" not in daemon.output, daemon.output
    assert "never accepted" not in daemon.output, daemon.output

    heard = sum(1 for _, _, receivers in publisher.sent if receivers)
    unheard = len(publisher.sent) - heard
    assert heard >= 400, (heard, unheard)
    summary = []
    for uid in ONLINE + OFFLINE + ["backlog"]:
        expected = publisher.expected(uid)
        if uid == "backlog":
            expected = [f"pre#{n}" for n in range(BACKLOG)] + expected
        received = [m["payload"] for m in clients[uid].received] if uid in clients else []
        queued = queued_payloads(redis, uid)
        got = received + queued
        if got != expected:
            first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            raise AssertionError(
                f"{uid}: {len(received)} received + {len(queued)} queued != {len(expected)} expected; "
                f"first difference at {first}: got {got[first:first + 3]}, expected {expected[first:first + 3]}"
            )
        summary.append(f"{uid} {len(received)}+{len(queued)}")
    print(f"\nSIGTERM -> exit in {took:.2f}s; {heard} messages heard, {unheard} not; received+queued: {', '.join(summary)}")
    # the handover was cut short by the signal: some of the queue was delivered, the rest stayed
    assert 1000 <= len(clients["backlog"].received) < BACKLOG + len(publisher.expected("backlog"))


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_sighup_reloads_log_level_and_manhole_passwords(
    redis: valkey.Valkey, redis_server: RedisServer, tmp_path: Path
) -> None:
    from ..conftest import free_port

    passwords = tmp_path / "manhole.passwd"
    passwords.write_text("ops:first\n")
    passwords.chmod(0o600)
    manhole_port = free_port()
    daemon = Twistd(
        tmp_path, redis_server.port, manhole=manhole_port, manhole_password_file=str(passwords), log_level="info"
    )
    daemon.start()
    try:
        await daemon.healthy()
        # change a reloadable key, a password and a key that needs a restart
        passwords.write_text("ops:second\n")
        daemon.config.update(log_level="debug", conn_limit=5)
        daemon.write_config()
        daemon.signal("HUP")
        await wait_until(lambda: "Reloaded: log_level debug" in daemon.output, 10, "the reload")
        assert "applied only at the next restart: conn_limit" in daemon.output
        assert daemon.running, daemon.output

        # new logins use the new password
        session = await connect_telnet(HOST, manhole_port)
        await session.expect("Username: ")
        session.type("ops")
        await session.expect("Password: ")
        session.type("first")
        await session.expect("Authentication failed")
        session.type("ops")
        await session.expect("Password: ")
        session.type("second")
        await session.expect(">>> ")
        session.type("service.config.log_level, service.config.conn_limit")
        await session.expect("('debug', 10000)")
        session.close()
        await session.closed()

        # a file that no longer validates changes nothing
        daemon.config.update(log_level="loud")
        daemon.write_config()
        daemon.signal("HUP")
        await wait_until(lambda: "Reload refused" in daemon.output, 10, "the refusal")
        assert "log_level: expected one of" in daemon.output
        assert daemon.running

        daemon.signal("TERM")
        assert await daemon.ended(30) == f"signal {signal.SIGTERM}", daemon.output
    finally:
        await daemon.stop()
