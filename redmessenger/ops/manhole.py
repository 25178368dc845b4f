"""
The operators' telnet manhole: a Python prompt inside the running daemon.

Built from ``twisted.conch.manhole`` + ``telnet`` + ``insults`` only (no SSH, so
no cryptography or bcrypt).  Off unless ``manhole`` is configured; on loopback
unless ``manhole_allow_remote`` says otherwise (telnet is cleartext).  Logins are
checked against ``manhole_password_file`` (``user:password`` lines, readable by
the daemon's user only), read at start and again on SIGHUP: no file is read
while someone logs in.

The namespace offers ``service`` (the running daemon), its parts, and
``status()``, which answers in one screen what an operator asks first.

    $ telnet 127.0.0.1 8023
    Username: ops
    Password:
    >>> status()
"""

from __future__ import annotations

import hmac
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application import strports
from twisted.application.service import IService, Service
from twisted.conch import manhole, telnet
from twisted.conch.insults import insults
from twisted.cred import credentials as creds
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, ensureDeferred, fail, gatherResults, succeed
from twisted.internet.protocol import ServerFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from redmessenger import __version__
from redmessenger.logs import make_logger
from redmessenger.ops.monitoring import snapshot

if TYPE_CHECKING:
    from redmessenger.daemon.service import RedMessengerService

#: Failed logins one telnet connection may make before it is closed.
MAX_LOGIN_ATTEMPTS = 3

QUEUE_PATTERN = b"rm:users:*:messages"

BANNER = "RedMessenger {version} manhole. status() for a summary; `service` is the running daemon."


# -- the password file ------------------------------------------------------------


class PasswordFileError(ValueError):
    """The password file is missing, readable by others, or has no usable line."""


def read_password_file(path: str | Path) -> dict[bytes, bytes]:
    """
    Read ``user:password`` lines (``#`` comments and blank lines allowed).  The file
    must belong to the daemon's user alone: group or other permissions are refused.
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError as e:
        raise PasswordFileError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise PasswordFileError(f"{path} is not a regular file")
    if info.st_mode & 0o077:
        raise PasswordFileError(
            f"{path} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it"
        )
    try:
        text = path.read_bytes()
    except OSError as e:
        raise PasswordFileError(f"cannot read {path}: {e.strerror}") from None
    passwords: dict[bytes, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        user, separator, password = line.partition(b":")
        if not separator or not user or not password:
            raise PasswordFileError(f"{path} line {number}: expected user:password")
        passwords[user] = password
    if not passwords:
        raise PasswordFileError(f"{path} has no user:password line")
    return passwords


@implementer(ICredentialsChecker)
class PasswordChecker:
    """Checks telnet logins against the password file's entries, in constant time."""

    credentialInterfaces = (creds.IUsernamePassword,)
    log = make_logger()

    def __init__(self, passwords: dict[bytes, bytes]) -> None:
        self.passwords = passwords

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
        username, password = credentials.username, credentials.password
        expected = self.passwords.get(username)
        # compare against something even for an unknown user: no timing oracle for user names
        matched = hmac.compare_digest(expected if expected is not None else b"\0" * 32, password)
        if expected is not None and matched:
            return succeed(username)
        self.log.warn("Manhole login refused for {user!r}", user=username)
        return fail(UnauthorizedLogin())


# -- telnet protocols -----------------------------------------------------------------


def _ignore_refusal(failure: Failure) -> None:
    """
    A client may refuse any telnet option (echo, window size...), or go away
    before answering: the session works without it, and nobody needs to hear of it.
    """
    return None


class _Login(telnet.AuthenticatingTelnetProtocol):
    """
    Conch's username/password prompt, made robust: a client that refuses the
    server's echo still logs in, and a connection gets :data:`MAX_LOGIN_ATTEMPTS`.
    """

    failures = 0

    def telnet_User(self, line: bytes) -> str:
        self.username = line
        self.transport.will(telnet.ECHO).addErrback(_ignore_refusal)  # hide the password
        self.transport.write(b"Password: ")
        return "Password"

    def telnet_Password(self, line: bytes) -> str:
        username, password = self.username, line
        del self.username

        def login(_: Any) -> None:
            d = self.portal.login(creds.UsernamePassword(username, password), None, telnet.ITelnetProtocol)
            d.addCallbacks(self._cbLogin, self._ebLogin)

        self.transport.wont(telnet.ECHO).addErrback(_ignore_refusal).addCallback(login)
        return "Discard"

    def _ebLogin(self, failure: Failure) -> None:
        self.failures += 1
        if self.failures >= MAX_LOGIN_ATTEMPTS:
            self.transport.write(b"\r\nAuthentication failed\r\n")
            self.transport.loseConnection()
            return
        super()._ebLogin(failure)


class _Bootstrap(telnet.TelnetBootstrapProtocol):
    """Conch's terminal bootstrap, quiet when a client refuses an option (most refuse LINEMODE)."""

    def connectionMade(self) -> None:
        self.transport.negotiationMap[telnet.NAWS] = self.telnet_NAWS
        self.transport.negotiationMap[telnet.LINEMODE] = self.telnet_LINEMODE
        for option in (telnet.LINEMODE, telnet.NAWS, telnet.SGA):
            self.transport.do(option).addErrback(_ignore_refusal)
        self.transport.will(telnet.ECHO).addErrback(_ignore_refusal)
        self.protocol = self.protocolFactory(*self.protocolArgs, **self.protocolKwArgs)
        self.protocol.makeConnection(self)


class PendingReport(Deferred[str]):
    """A Deferred whose text the manhole prints as it is once it fires (not as a repr)."""


class _Interpreter(manhole.ManholeInterpreter):
    def displayhook(self, obj: Any) -> None:
        if isinstance(obj, PendingReport) and not obj.called:
            self.locals["_"] = obj
            obj.addCallbacks(
                lambda text: self.write(text, True),
                lambda f: self.write(f"status() failed: {f.getErrorMessage()}", True),
            )
            return
        super().displayhook(obj)


class _Manhole(manhole.ColoredManhole):
    """The prompt: a banner, then Python with ``service`` and ``status()``."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.interpreter = _Interpreter(self, self.namespace)

    def initializeScreen(self) -> None:
        self.terminal.reset()
        self.terminal.write(BANNER.format(version=__version__).encode("utf-8"))
        self.terminal.nextLine()
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()


@implementer(IRealm)
class _Realm:
    log = make_logger()

    def __init__(self, namespace: dict[str, Any]) -> None:
        self._namespace = namespace

    def requestAvatar(self, avatarId: bytes, mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        if telnet.ITelnetProtocol not in interfaces:
            raise NotImplementedError("the manhole speaks telnet only")
        self.log.info("Manhole session opened for {user}", user=avatarId.decode("utf-8", "replace"))
        avatar = _Bootstrap(insults.ServerProtocol, _Manhole, self._namespace)
        return telnet.ITelnetProtocol, avatar, lambda: self.log.info(
            "Manhole session closed for {user}", user=avatarId.decode("utf-8", "replace")
        )


class _Session(telnet.TelnetTransport):
    factory: _TelnetFactory

    def connectionMade(self) -> None:
        self.factory.sessions.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:
        self.factory.sessions.discard(self)
        super().connectionLost(reason)


class _TelnetFactory(ServerFactory):
    noisy = False

    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.sessions: set[_Session] = set()

    def buildProtocol(self, addr: Any) -> _Session:
        session = _Session(_Login, self.portal)
        session.factory = self
        return session


# -- the service -------------------------------------------------------------------


class ManholeService(Service):
    """Listens for operators' telnet sessions; closes them when the daemon stops."""

    log = make_logger()
    name = "manhole"

    def __init__(self, endpoint: str, password_file: str, namespace: dict[str, Any], reactor: Any) -> None:
        self.endpoint = endpoint
        self.password_file = password_file
        self.checker = PasswordChecker(read_password_file(password_file))
        self._factory = _TelnetFactory(Portal(_Realm(namespace), [self.checker]))
        self._listening: IService = strports.service(endpoint, self._factory, reactor=reactor)

    def reload_passwords(self, passwords: dict[bytes, bytes]) -> None:
        """New logins use these (SIGHUP); open sessions stay."""
        self.checker.passwords = passwords

    def privilegedStartService(self) -> None:
        self._listening.privilegedStartService()
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self._listening.startService()
        self.log.info("Manhole listening on {endpoint}", endpoint=self.endpoint)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for session in list(self._factory.sessions):
            session.transport.loseConnection()
        return self._listening.stopService()  # type: ignore[no-any-return]


def make_namespace(service: RedMessengerService) -> dict[str, Any]:
    """What a manhole session starts with."""
    def status_of_service(limit: int = 10) -> PendingReport:
        """Uptime, Redis link, sockets, users, totals since start and the ``limit`` longest queues."""
        return status(service, limit)

    return {
        "service": service,
        "status": status_of_service,
        "config": service.config,
        "dispatcher": service.dispatcher,
        "presence": service.presence,
        "link": service.link,
        "reactor": service.reactor,
    }


# -- status() ------------------------------------------------------------------------


def status(service: RedMessengerService, limit: int = 10) -> PendingReport:
    """The one-screen answer; the longest queues need Redis, hence a Deferred."""
    report = PendingReport()
    ensureDeferred(status_text(service, limit)).chainDeferred(report)
    return report


async def status_text(service: RedMessengerService, limit: int = 10) -> str:
    state = snapshot(service)
    config = service.config
    link = state.link
    counters = state.counters

    def up(flag: bool) -> str:
        return "up" if flag else "DOWN"

    started = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state.started_at)) if state.started_at is not None else "-"
    )
    lines = [
        f"RedMessenger {__version__}, pid {os.getpid()}, up {duration(state.uptime)} (since {started})",
        f"Health:     {'ok' if state.healthy else 'UNAVAILABLE: ' + str(state.unhealthy_reason)}",
        f"Redis:      {config.redis_host}:{config.redis_port} db {config.redis_db}; subscriber {up(link.subscribed)}, "
        f"commands {up(link.commands_connected)}; reconnects {link.reconnects}; last error: {link.last_error or '-'}",
        f"Listening:  {config.listen_endpoint}, route {config.rm_route}, secure_mode {'on' if config.secure_mode else 'off'}",
        f"Sockets:    {state.sockets_open} open ({state.socketio_sessions} Socket.IO), {state.sockets_identified} "
        f"identified; {state.connections} of conn_limit {config.conn_limit} in use, {state.connections_refused} refused",
        f"Users:      {state.users_online} online; {state.handovers_running} queue handovers running",
        f"Since start: {counters.published} published, {counters.delivered} delivered live, "
        f"{counters.queued} queued, {counters.handed_over} handed over from queues",
        f"Identified: {counters.identified}; refused: "
        + (", ".join(f"{reason} {count}" for reason, count in sorted(counters.refused.items())) or "none"),
        f"Waiting for Redis: {state.queue_backlog} queue entries",
    ]
    if not link.commands_connected:
        lines.append("Longest queues: unknown (the Redis command connection is down)")
    else:
        try:
            queues, scanned, complete = await longest_queues(service.link.commands, limit)
        except Exception as e:  # a status screen reports, it does not raise
            lines.append(f"Longest queues: unknown ({e})")
        else:
            scope = f"of {scanned} queues" if complete else f"of the first {scanned} queues scanned"
            lines.append(f"Longest queues ({scope}):" if queues else "Longest queues: none, every queue is empty")
            lines.extend(f"  {uid:<40} {length:>9}" for uid, length in queues)
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """``3d 04:05:06``: how operators read an uptime."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


async def longest_queues(
    commands: Any, limit: int = 10, max_keys: int = 10000, max_rounds: int = 200, count: int = 1000
) -> tuple[list[tuple[str, int]], int, bool]:
    """
    The ``limit`` longest user queues among the first ``max_keys`` found by a
    non-blocking SCAN (never KEYS), their lengths read with pipelined LLENs.
    Returns (uid and length, longest first; keys scanned; whether the scan finished).
    """
    cursor = b"0"
    lengths: list[tuple[str, int]] = []
    rounds = 0
    while True:
        cursor, keys = await commands.execute_command("SCAN", cursor, "MATCH", QUEUE_PATTERN, "COUNT", count)
        rounds += 1
        if keys:
            found = await gatherResults([commands.execute_command("LLEN", key) for key in keys])
            for key, length in zip(keys, found):
                lengths.append((_uid_of(key), int(length)))
        complete = cursor in (b"0", 0, "0")
        if complete or len(lengths) >= max_keys or rounds >= max_rounds:
            break
    lengths.sort(key=lambda item: (-item[1], item[0]))
    return [item for item in lengths[:limit] if item[1] > 0], len(lengths), complete


def _uid_of(key: bytes | str) -> str:
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    return text[len("rm:users:") : -len(":messages")]
