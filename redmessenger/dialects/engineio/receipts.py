"""
What an Engine.IO session's client has shown it received: packets counted as
they are sent and as the client confirms them, and the confirmations waiting
for a count.  No I/O; the session (session.py) tells what the client proved.

Delivery (SPEC §3.4): :meth:`Session.confirm` fires True once the client has shown
it received every packet sent so far.  With polling, the next GET is that proof
(a client polls again only after it processed the previous response), and so is
the upgrade packet (sent only once the last poll is processed); on a WebSocket,
revision 4: the pong to an Engine.IO ping (the page's JavaScript answers it, a page
frozen in the back/forward cache does not); revision 3, which has no ping the server
can send: a WebSocket ping's pong (which a browser answers by itself, the documented
limit).  Packets still buffered when a session ends were never delivered: the core
keeps the messages among them (they were never confirmed).  So were the ones dropped
for a client too far behind (:meth:`Receipts.withdraw`): never counted as sent.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred


class Receipts:
    """Packets sent and confirmed, counted; waiters fire True once their count is confirmed, False if it never is."""

    __slots__ = ("sent", "_confirmed", "_waiters")

    def __init__(self) -> None:
        #: Packets sent (written, or buffered for a poll); the session counts them.
        self.sent = 0
        self._confirmed = 0
        self._waiters: deque[tuple[int, Deferred[bool]]] = deque()

    @property
    def all_confirmed(self) -> bool:
        return self._confirmed >= self.sent

    @property
    def waiting(self) -> bool:
        """Whether a confirmation is waited for."""
        return bool(self._waiters)

    def wait(self) -> tuple[Deferred[bool], bool]:
        """A waiter for every packet sent so far, and whether it waits (False: it has fired True already)."""
        waiter: Deferred[bool] = Deferred()
        if self.sent <= self._confirmed:
            waiter.callback(True)
            return waiter, False
        self._waiters.append((self.sent, waiter))
        return waiter, True

    def confirm_upto(self, count: int) -> None:
        """The client received the first ``count`` packets."""
        if count <= self._confirmed:
            return
        self._confirmed = count
        waiters = self._waiters
        while waiters and waiters[0][0] <= count:
            _target, waiter = waiters.popleft()
            waiter.callback(True)

    def withdraw(self, count: int) -> None:
        """The last ``count`` packets counted as sent were dropped unsent: what waits for any of them fires False."""
        self.sent -= count
        waiters = self._waiters
        failed: list[Deferred[bool]] = []
        while waiters and waiters[-1][0] > self.sent:
            failed.append(waiters.pop()[1])
        for waiter in reversed(failed):
            waiter.callback(False)

    def fail_all(self) -> None:
        """The session ended: what waits never gets its confirmation."""
        waiters, self._waiters = self._waiters, deque()
        for _target, waiter in waiters:
            waiter.callback(False)
