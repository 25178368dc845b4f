"""The open WebSockets of a factory, and the batching of their writes per reactor turn."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from redmessenger.logs import make_logger

log = make_logger(__name__)


class Flushable(Protocol):
    def flush(self) -> None: ...


class OpenSockets(set[Any]):
    """
    A factory's WebSockets whose handshake completed and that have not closed
    yet; at shutdown, tells when the last one is gone.
    """

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[Deferred[None]] = []

    def closed(self, socket: Any) -> None:
        self.discard(socket)
        if not self:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_empty(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self:
            self._waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter


class Corks:
    """
    The sockets with frames waiting for the end of this reactor turn; one timed
    call sends them all, each socket's frames in one ``send()``: Twisted's write
    path costs two ``epoll_ctl`` calls, one more epoll event and its bookkeeping
    per socket and turn, more than the delivery itself when a message fans out
    to thousands.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._sockets: list[Flushable] = []
        self._call: IDelayedCall | None = None
        #: While held (a read from Redis under way), no timed call: :meth:`release` sends at its end.
        self._held = False

    def add(self, socket: Flushable) -> None:
        self._sockets.append(socket)
        if self._call is None and not self._held:
            self._call = self._clock.callLater(0, self._flush)

    def hold(self) -> None:
        """A read is starting whose writes :meth:`release` sends at its end, without a timed call per read."""
        self._held = True

    def release(self) -> None:
        """The read that :meth:`hold` announced is over: send what it wrote."""
        self._held = False
        if self._sockets:
            if self._call is not None:
                if self._call.active():
                    self._call.cancel()
                self._call = None
            self._flush()

    def _flush(self) -> None:
        self._call = None
        sockets, self._sockets = self._sockets, []
        for socket in sockets:
            try:
                socket.flush()
            except Exception:
                log.failure("Writing to a WebSocket failed")


def peer_text(transport: Any) -> str:
    """``host:port`` of a connection's peer, for logs."""
    peer = transport.getPeer() if transport is not None else None
    return f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
