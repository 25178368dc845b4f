"""
``reuseport:PORT[:backlog=N][:interface=ADDR]``: a TCP server endpoint whose
socket has ``SO_REUSEPORT``, so that several daemons on one host listen on the
same port and the kernel spreads new connections among them (every core of a
host, docs/operations.md).  Registered for endpoint strings by
``twisted/plugins/redmessenger_reuseport.py``; ``ws_reuse_port: true`` in the
configuration uses it for ``ws_port``.  Linux 3.9 and later.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from zope.interface import implementer


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    def __init__(self, reactor: Any, port: int, backlog: int = 50, interface: str = "") -> None:
        self._reactor = reactor
        self._port = port
        self._backlog = backlog
        self._interface = interface

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        family = socket.AF_INET6 if ":" in self._interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self._interface or ("::" if family == socket.AF_INET6 else "0.0.0.0"), self._port))
            sock.listen(self._backlog)
            sock.setblocking(False)
            port: IListeningPort = self._reactor.adoptStreamPort(sock.fileno(), family, protocolFactory)
        except OSError as e:
            from twisted.internet.error import CannotListenError

            return fail(CannotListenError(self._interface, self._port, e))
        finally:
            sock.close()  # the reactor's port holds a duplicate of the descriptor
        return succeed(port)


def parse(reactor: Any, port: str, backlog: str = "50", interface: str = "") -> ReusePortEndpoint:
    """The endpoint of ``reuseport:PORT:backlog=N:interface=ADDR`` (arguments as the string gives them)."""
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"not a port number: {port}")
    return ReusePortEndpoint(reactor, number, int(backlog), interface)
