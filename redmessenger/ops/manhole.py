"""
The operators' telnet manhole: a Python prompt inside the running daemon.

Built from ``twisted.conch.manhole`` + ``telnet`` + ``insults`` only (no SSH, so
no cryptography or bcrypt).  Off unless ``manhole`` is configured; on loopback
unless ``manhole_allow_remote`` says otherwise (telnet is cleartext).  Logins are
checked against ``manhole_password_file`` (``user:password`` lines, readable by
the daemon's user only), read at start and again on SIGHUP: no file is read
while someone logs in.

The namespace is the daemon's to give (:mod:`redmessenger.daemon.service`):
``status()``, which answers in one screen what an operator asks first, and the
running daemon's parts for closer looks.

    $ telnet 127.0.0.1 8023
    Username: ops
    Password:
    >>> status()
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, Service
from twisted.conch import manhole, telnet
from twisted.conch.insults import insults
from twisted.cred import credentials as creds
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from redmessenger import __version__
from redmessenger.logs import make_logger
from redmessenger.ops.passwords import read_password_file
from redmessenger.ops.status import DaemonView, status_text

#: Failed logins one telnet connection may make before it is closed.
MAX_LOGIN_ATTEMPTS = 3

BANNER = "RedMessenger {version} manhole. status() for a summary; `service` is the running daemon."


@implementer(ICredentialsChecker)
class PasswordChecker:
    """Checks telnet logins against the password file's entries, in constant time."""

    credentialInterfaces = (creds.IUsernamePassword,)
    log = make_logger()

    def __init__(self, passwords: dict[bytes, bytes]) -> None:
        self.passwords = passwords

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        username, password = credentials.username, credentials.password
        expected = self.passwords.get(username)
        # compare against something even for an unknown user: no timing oracle for user names
        matched = hmac.compare_digest(expected if expected is not None else b"\0" * 32, password)
        if expected is not None and matched:
            return succeed(username)
        # as text: a user name is bytes on the wire, and b'...' is no way to show it
        self.log.warn("Manhole login refused for {user!r}", user=username.decode("utf-8", "replace"))
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

    @property
    def _telnet(self) -> Any:
        """The TelnetTransport this runs on (typed as a bare ITransport by Twisted)."""
        return self.transport

    def telnet_User(self, line: bytes) -> str:
        self.username = line
        self._telnet.will(telnet.ECHO).addErrback(_ignore_refusal)  # hide the password
        self._telnet.write(b"Password: ")
        return "Password"

    def telnet_Password(self, line: bytes) -> None:
        username, password = self.username, line
        del self.username
        # Lines typed while the login runs are dropped.  The state is set here, not
        # returned: the login can end before this returns (a client that refused the
        # echo answers nothing to wont(), so login() runs at once) and set the next
        # state itself, and conch warns "state changed and new state returned" when a
        # handler returns a state after one was set.
        self.state = "Discard"

        def login(_: Any) -> None:
            d = self.portal.login(creds.UsernamePassword(username, password), None, telnet.ITelnetProtocol)
            d.addCallbacks(self._cbLogin, self._ebLogin)

        self._telnet.wont(telnet.ECHO).addErrback(_ignore_refusal).addCallback(login)

    def _ebLogin(self, failure: Failure) -> None:
        self.failures += 1
        if self.failures >= MAX_LOGIN_ATTEMPTS:
            self._telnet.write(b"\r\nAuthentication failed\r\n")
            self._telnet.loseConnection()
            return
        super()._ebLogin(failure)


class _Bootstrap(telnet.TelnetBootstrapProtocol):
    """Conch's terminal bootstrap, quiet when a client refuses an option (most refuse LINEMODE)."""

    def __init__(self, *args: Any, on_lost: Callable[[], None] = lambda: None) -> None:
        super().__init__(*args)
        self._on_lost = on_lost

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Conch's logout is never called: its login protocol hands the transport over to
        # this avatar (transport.protocol = avatar), and its own connectionLost never runs.
        try:
            super().connectionLost(reason)
        finally:
            on_lost, self._on_lost = self._on_lost, lambda: None
            on_lost()

    def connectionMade(self) -> None:
        transport: Any = self.transport  # a TelnetTransport (typed as a bare ITransport by Twisted)
        transport.negotiationMap[telnet.NAWS] = self.telnet_NAWS
        transport.negotiationMap[telnet.LINEMODE] = self.telnet_LINEMODE
        for option in (telnet.LINEMODE, telnet.NAWS, telnet.SGA):
            transport.do(option).addErrback(_ignore_refusal)
        transport.will(telnet.ECHO).addErrback(_ignore_refusal)
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

    def requestAvatar(self, avatarId: bytes | tuple[()], mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        if telnet.ITelnetProtocol not in interfaces:
            raise NotImplementedError("the manhole speaks telnet only")
        user = avatarId.decode("utf-8", "replace") if isinstance(avatarId, bytes) else "anonymous"
        self.log.info("Manhole session opened for {user}", user=user)
        avatar = _Bootstrap(
            insults.ServerProtocol,
            _Manhole,
            self._namespace,
            on_lost=lambda: self.log.info("Manhole session closed for {user}", user=user),
        )
        return telnet.ITelnetProtocol, avatar, lambda: None


class _Session(telnet.TelnetTransport):
    factory: _TelnetFactory

    def connectionMade(self) -> None:
        self.factory.sessions.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.sessions.discard(self)
        super().connectionLost(reason)


class _TelnetFactory(ServerFactory):
    noisy = False

    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.sessions: set[_Session] = set()

    def buildProtocol(self, addr: Any) -> Any:
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
            if session.transport is not None:
                session.transport.loseConnection()
        return self._listening.stopService()  # type: ignore[no-any-return]


def status(view: DaemonView, limit: int = 10) -> PendingReport:
    """The one-screen answer; the longest queues need Redis, hence a Deferred."""
    report = PendingReport()
    ensureDeferred(status_text(view, limit)).chainDeferred(report)
    return report
