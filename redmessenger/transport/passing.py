"""
Passing a client's connection to another daemon process on this host
(docs/scale-out.md, *Passing sockets*).

Several daemons on one port (``SO_REUSEPORT``) get their sockets from the
kernel, whoever owns the user.  A plain WebSocket whose user another daemon
owns would be a relay: every message to it crossing Redis twice.  When that
daemon runs on the same host, the socket itself goes to it instead, before the
identifier is acted on: the connection's file descriptor over a Unix socket
(``SCM_RIGHTS``), with the bytes read from it so far.  The owner adopts it and
reads those bytes again (the handshake, its 101 not written twice; then the
frames), and the client never knows.

Each daemon listens at an abstract Unix address named after its run
(:func:`address`), which the heartbeats tell (``rm:nodes:runs``): a daemon on
another host, in another network namespace or of another run has none here,
and the connect is refused at once; the socket is then relayed as before.  A
daemon takes connections only from processes of its own user (``SO_PEERCRED``).

The wire, holder to owner, one Unix connection per socket: the descriptor
with the first bytes of ``b"<family> <length>\\n"`` then ``<length>`` bytes;
the owner answers ``b"ok\\n"`` (adopted) or ``b"no\\n"`` (declined: at its
``conn_limit``, or what it got was not a socket and its bytes; the holder
keeps the socket) and closes.  Reads ``_shouldShutdown``,
``dataBuffer`` and ``_tempDataBuffer`` of Twisted's TCP transport (see
:func:`passable` and :func:`let_go`).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from enum import Enum
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from redmessenger.logs import make_logger

log = make_logger(__name__)

#: Bytes read from a socket before its identifier that may go with it (a handshake and a hello are far smaller).
MAX_PASSED_BYTES = 64 * 1024
#: Seconds a holder waits for the owner's answer once the socket is sent (then lets go of its copy anyway).
ANSWER_TIMEOUT = 10.0
_FAMILIES = {socket.AF_INET: b"4", socket.AF_INET6: b"6"}
_BY_NAME = {name: family for family, name in _FAMILIES.items()}


def address(run: str) -> str:
    """The abstract Unix address of the daemon of this run (no file; gone with the process)."""
    return f"\0redmessenger.pass.{run}"


class Outcome(Enum):
    #: The owner has the socket: let go of this process's copy without a word to the client.
    PASSED = "passed"
    #: Nothing was sent (no owner listening here), or the owner declined it: serve the socket here.
    REFUSED = "refused"
    #: Sent, and no answer: the owner may have it or not; let go (if it has not, the client sees a close).
    UNANSWERED = "unanswered"


def passable(transport: Any) -> bool:
    """Whether this connection can go to another process as it is: plain TCP (no TLS), nothing left to write."""
    return bool(
        type(transport) is tcp.Server
        and not getattr(transport, "TLS", False)
        and not getattr(transport, "dataBuffer", b"x")
        and not getattr(transport, "_tempDataBuffer", [b"x"])
        and transport.connected
        and not transport.disconnecting
    )


def let_go(transport: Any) -> None:
    """
    Close this process's copy of a passed connection, at once: no shutdown(),
    which would end it for the owner too, and not loseConnection(), which waits
    for the socket to be writable (the owner may have filled it) and meanwhile
    leaves this copy in the reactor, and its protocol open.
    """
    transport._shouldShutdown = False
    transport.connectionLost(Failure(ConnectionDone()))


class Sender:
    """The holder's side: passes a connection to the daemon of a run on this host."""

    def __init__(self, reactor: Any, timeout: float = ANSWER_TIMEOUT) -> None:
        self._reactor = reactor
        self._timeout = timeout
        #: Sockets sent, by outcome (for operators).
        self.counts = {outcome: 0 for outcome in Outcome}

    def send(self, run: str, transport: Any, received: bytes) -> Deferred[Outcome]:
        """
        Pass ``transport``'s connection (reading stopped, :func:`passable`) with
        the bytes ``received`` from it so far.  Never fails.  On PASSED and
        UNANSWERED, the caller lets go of the transport (:func:`let_go`).
        """
        family = _FAMILIES.get(transport.socket.family)
        if family is None:
            return succeed(Outcome.REFUSED)
        header = b"%s %d\n" % (family, len(received))
        outcome: Deferred[Outcome] = Deferred()
        # A copy of our own, taken now: the transport may close (and its number be reused) before this leaves.
        sending = _SendingFactory(self._reactor, self._timeout, os.dup(transport.fileno()), header + received, outcome)
        endpoint = UNIXClientEndpoint(self._reactor, address(run), timeout=2)
        endpoint.connect(sending).addErrback(sending.not_connected)
        return outcome.addCallback(self._count)

    def _count(self, outcome: Outcome) -> Outcome:
        self.counts[outcome] += 1
        if outcome is Outcome.UNANSWERED:
            log.warn("A socket passed to another daemon on this host was not answered for: let go")
        return outcome


class _SendingFactory(Factory):
    def __init__(self, reactor: Any, timeout: float, dup: int, data: bytes, outcome: Deferred[Outcome]) -> None:
        self.reactor = reactor
        self.timeout = timeout
        #: this process's copy of the descriptor, closed once sent (or not)
        self.dup: int | None = dup
        self.data = data
        self.outcome = outcome

    def buildProtocol(self, addr: Any) -> _Sending:
        return _Sending(self)

    def close(self) -> None:
        dup, self.dup = self.dup, None
        if dup is not None:
            os.close(dup)

    def not_connected(self, failure: Failure) -> None:
        self.close()
        if not self.outcome.called:
            self.outcome.callback(Outcome.REFUSED)


class _Sending(Protocol, TimeoutMixin):
    def __init__(self, factory: _SendingFactory) -> None:
        self._factory = factory
        self._answer = b""

    def connectionMade(self) -> None:
        factory = self._factory
        unix: Any = self.transport
        if not _same_user(unix):
            # Anyone may listen at an abstract address: a client's socket (and its key) goes to our own kind only.
            log.warn("The address of a daemon on this host is held by a process of another user: not passing to it")
            self._settle(Outcome.REFUSED)
            unix.abortConnection()
            return
        unix.sendFileDescriptor(factory.dup)
        unix.write(factory.data)
        self.setTimeout(factory.timeout)

    def callLater(self, period: float, func: Any) -> Any:
        return self._factory.reactor.callLater(period, func)

    def timeoutConnection(self) -> None:
        unix: Any = self.transport
        unix.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._answer += data
        if len(self._answer) >= 3:
            self._settle(Outcome.PASSED if self._answer.startswith(b"ok\n") else Outcome.REFUSED)
            unix: Any = self.transport
            unix.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        unix: Any = self.transport
        # Lost before the descriptor left this process (Twisted still had it queued): nobody else has the socket.
        unsent = bool(getattr(unix, "_sendmsgQueue", None))
        self._factory.close()
        self._settle(Outcome.REFUSED if unsent else Outcome.UNANSWERED)

    def _settle(self, outcome: Outcome) -> None:
        if not self._factory.outcome.called:
            self._factory.outcome.callback(outcome)


class Receiver(Factory):
    """
    The owner's side, listening at :func:`address` of its run: each connection
    brings one descriptor and its bytes; the socket is adopted into ``factory``
    (which builds :class:`~redmessenger.transport.fastpath.LeanServerProtocol`
    sockets), which reads the bytes again.
    """

    def __init__(self, reactor: Any, factory: Any, accepting: Callable[[], bool] = lambda: True) -> None:
        self._reactor = reactor
        self._factory = factory
        #: Whether a socket may come now (a free conn_limit slot): else the holder keeps it.
        self.accepting = accepting
        #: Sockets adopted (for operators).
        self.adopted = 0

    def adopt(self, fileno: int, family: int, data: bytes) -> bool:
        """
        Adopt the socket and read ``data`` again.  Raises :class:`NotASocket`
        (nothing of it read or written: the holder keeps it) if it is not a
        connected TCP socket of that family.  False if it was adopted and could
        not be served (the handshake failed here): closed, the client sees it.
        """
        _check_socket(fileno, family)
        transport = self._reactor.adoptStreamConnection(fileno, family, self._factory)
        self.adopted += 1
        protocol = transport.protocol
        try:
            protocol.adopt(data)
        except Exception:
            log.failure("Reading a passed socket's first bytes again failed")
            transport.abortConnection()
            return False
        if protocol.state != protocol.STATE_OPEN:
            # Refused here (another route, origins or limit than the daemon that passed it): its client, open
            # as far as it knows, is closed without a word rather than sent an HTTP answer.
            log.warn("A passed socket's handshake failed here: closed")
            transport.abortConnection()
            return False
        return True


    def buildProtocol(self, addr: Any) -> _Receiving:
        return _Receiving(self)


class NotASocket(Exception):
    """What was passed is not a connected TCP socket of the family told."""


def _check_socket(fileno: int, family: int) -> None:
    probe = socket.socket(fileno=os.dup(fileno))
    try:
        if probe.family != family or probe.type != socket.SOCK_STREAM:
            raise NotASocket(f"family {probe.family!r}, type {probe.type!r}")
        probe.getpeername()
    except OSError as e:
        raise NotASocket(str(e)) from None
    finally:
        probe.close()


@implementer(IFileDescriptorReceiver)
class _Receiving(Protocol, TimeoutMixin):
    def __init__(self, factory: Receiver) -> None:
        self._factory = factory
        self._buffer = b""
        self._fds: list[int] = []
        self._done = False

    def connectionMade(self) -> None:
        if not _same_user(self.transport):
            log.warn("A socket offered by a process of another user: refused")
            self.timeoutConnection()
            return
        self.setTimeout(ANSWER_TIMEOUT)  # an offer that never completes holds its descriptors no longer

    def timeoutConnection(self) -> None:
        unix: Any = self.transport
        unix.abortConnection()

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self._fds.append(descriptor)

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        self._buffer += data
        head, newline, rest = self._buffer.partition(b"\n")
        if not newline:
            if len(self._buffer) > 64:
                self._refuse("no header")
            return
        try:
            name, length_text = head.split(b" ")
            family, length = _BY_NAME[name], int(length_text)
        except (ValueError, KeyError):
            self._refuse("a bad header")
            return
        if length > MAX_PASSED_BYTES or len(rest) > length:
            self._refuse("too many bytes")
            return
        if len(rest) < length:
            return
        if len(self._fds) != 1:
            self._refuse(f"{len(self._fds)} descriptors")
            return
        if not self._factory.accepting():
            self._refuse("no free connection slot (conn_limit)", warn=False)
            return
        self._done = True
        fd = self._fds.pop()
        unix: Any = self.transport
        try:
            self._factory.adopt(fd, family, rest)
        except NotASocket as e:
            self._refuse(str(e))  # nothing read or written: the holder keeps it
            return
        except Exception:
            # Perhaps adopted already (reading): the holder must let go of it, whatever became of it here.
            log.failure("Adopting a passed socket failed")
        finally:
            os.close(fd)  # adopted: the reactor has its own copy
        unix.write(b"ok\n")
        unix.loseConnection()

    def _refuse(self, why: str, warn: bool = True) -> None:
        self._done = True
        if warn:
            log.warn("A passed socket declined: {why}", why=why)
        unix: Any = self.transport
        unix.write(b"no\n")
        unix.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def _same_user(transport: Any) -> bool:
    try:
        credentials = transport.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):
        return False
    _, uid, _ = struct.unpack("3i", credentials)
    return bool(uid == os.getuid())
