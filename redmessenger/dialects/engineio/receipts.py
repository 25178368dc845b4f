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
limit), matched to its ping by a random token: RFC 6455 lets a client send pongs
unasked, with any payload, so only the answer to a ping it read (and with it what
was written before) confirms.  Packets still buffered when a session ends were never
delivered: the core keeps the messages among them (they were never confirmed).  So
were the ones dropped for a client too far behind (:meth:`Receipts.withdraw`): never
counted as sent.
"""

from __future__ import annotations

from collections import deque
from secrets import randbits

from twisted.internet.defer import Deferred


#: Revision 3: WebSocket pings kept waiting for their answer, the latest ones.
MAX_PINGS = 16


class Receipts:
    """Packets sent and confirmed, counted; waiters fire True once their count is confirmed, False if it never is."""

    __slots__ = ("sent", "_confirmed", "_waiters", "_tokens")

    def __init__(self) -> None:
        #: Packets sent (written, or buffered for a poll); the session counts them.
        self.sent = 0
        self._confirmed = 0
        self._waiters: deque[tuple[int, Deferred[bool]]] = deque()
        #: Revision 3: the WebSocket pings not answered yet, by token, with the packets written before each.
        self._tokens: list[tuple[int, int]] = []

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

    def ping_token(self, count: int) -> int:
        """The token of a WebSocket ping written after the first ``count`` packets: its pong confirms them."""
        token = randbits(64)
        tokens = self._tokens
        tokens.append((token, count))
        if len(tokens) > MAX_PINGS:  # a client that answers none: the oldest goes (a later answer confirms more)
            del tokens[0]
        return token

    def pong(self, token: int) -> None:
        """
        A WebSocket pong: the answer to one of those pings confirms what was written
        before it, and answers the pings before it (a client may answer only the latest
        of several: RFC 6455, 5.5.3).  Any other pong confirms nothing.
        """
        tokens = self._tokens
        for answered, (sent, count) in enumerate(tokens, 1):
            if sent == token:
                del tokens[:answered]
                self.confirm_upto(count)
                return

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
