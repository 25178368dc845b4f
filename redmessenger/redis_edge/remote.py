"""
On the owner of a user (docs/scale-out.md): what stands for things another node
has, reached through that node's inbox (redis_edge/peers.py): a socket it holds
(:class:`RemoteSink`), an intake entry it read (:class:`RemoteTicket`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from redmessenger.model.envelope import Message
from redmessenger.model.errors import ClientError

#: Why a relayed socket is closed when deliveries for it were lost between the nodes (docs/protocol.md).
LOST_BETWEEN_DAEMONS = "messages for this socket were lost between daemons (a Redis failover); reconnect"
#: Times an ``abandon`` its holder did not answer (with a ``detach``) is sent again at most.
ABANDON_AGAIN = 5


class Outbox(Protocol):
    """The way to the other nodes' inboxes (redis_edge/peers.PeerLink)."""

    def send(self, node: str, kind: bytes, **fields: bytes | str) -> None: ...

    def deliver(self, node: str, sid: str, message: Message, bubble: bool, number: int) -> None: ...


class RemoteSink:
    """On the owner: a socket another node holds, reached through that node's inbox."""

    def __init__(self, peers: Outbox, node: str, sid: str, acknowledges: bool, address: str) -> None:
        self._peers = peers
        self.node = node
        self.sid = sid
        self._acknowledges = acknowledges
        self._address = address
        self.open = True
        self._asked = itertools.count(1)
        self._waiting: dict[int, Deferred[bool]] = {}
        #: How many deliveries each unanswered request covers (those sent before it was first sent).
        self._covers: dict[int, int] = {}
        #: The requests that were waiting at the last :meth:`ask_again`.
        self._waiting_before: set[int] = set()
        #: Deliveries sent to the socket's node (each carries its number): a confirmation says how many arrived.
        self.delivered = 0
        #: The last request answered yes, told with the next ones: its holder may forget what it covered.
        self._answered = 0
        #: The close this side gave the socket (``abandon``: code, reason), sent again until its holder detaches it;
        #: how many checks it has been unanswered at (:meth:`ask_again`).
        self.abandoned: tuple[bytes, bytes] | None = None
        self._abandon_checks = 0

    @property
    def client_address(self) -> str:
        return f"{self._address} (on {self.node})"

    @property
    def writable(self) -> bool:
        return self.open

    @property
    def acknowledges(self) -> bool:
        return self._acknowledges

    def send_message(self, message: Message, bubble: bool) -> bool:
        if not self.open:
            return False
        self.delivered += 1
        self._peers.deliver(self.node, self.sid, message, bubble, self.delivered)
        return True

    def confirm(self) -> Deferred[bool]:
        waiter: Deferred[bool] = Deferred()
        if not self.open:
            waiter.callback(False)
            return waiter
        asked = next(self._asked)
        self._waiting[asked] = waiter
        self._covers[asked] = self.delivered
        self._ask(asked)
        return waiter

    def ask_again(self) -> int:
        """
        Send again the confirmation requests unanswered since the last call (lost with inbox entries in a failover),
        or the ``abandon`` (up to ABANDON_AGAIN times: :attr:`spent` then); how many.
        """
        if self.abandoned is not None:
            self._abandon_checks += 1
            if self._abandon_checks < 2 or self.spent:
                return 0  # the first check only notes it
            self.abandon_again()
            return 1
        late = sorted(self._waiting_before & self._waiting.keys())
        for asked in late:
            self._ask(asked)
        self._waiting_before = set(self._waiting)
        return len(late)

    def _ask(self, asked: int) -> None:
        # c: the deliveries the request covers, as when it was first sent (a yes covers those, not later ones)
        self._peers.send(
            self.node, b"confirm", s=self.sid, q=str(asked).encode("ascii"), c=str(self._covers[asked]).encode("ascii"),
            a=str(self._answered).encode("ascii"),
        )  # fmt: skip

    def confirmed(self, asked: int, received: bool) -> None:
        waiter = self._waiting.pop(asked, None)
        self._covers.pop(asked, None)
        if waiter is not None:
            if received:
                self._answered = max(self._answered, asked)
            waiter.callback(received)

    def abandon(self, error: ClientError) -> None:
        self.abandoned = (str(int(error.code)).encode("ascii"), error.reason.encode("utf-8"))
        self.abandon_again()
        self.close()

    def abandon_again(self) -> None:
        """Tell the holder (again) to close the socket, with the close this side gave it."""
        if self.abandoned is not None:
            code, reason = self.abandoned
            self._peers.send(self.node, b"abandon", s=self.sid, c=code, r=reason)

    @property
    def spent(self) -> bool:
        """Whether its ``abandon`` was sent ABANDON_AGAIN times more unanswered (a holder of a version before)."""
        return self._abandon_checks > ABANDON_AGAIN + 1

    def close(self) -> None:
        """The socket is gone: what waits for its confirmation has its answer."""
        self.open = False
        waiting, self._waiting = self._waiting, {}
        self._covers.clear()
        for waiter in waiting.values():
            waiter.callback(False)


class RemoteTicket:
    """On the owner: an intake entry another node read, for one user; settled back to that node."""

    __slots__ = ("entry_id", "again", "_peers", "_node", "_uid", "_queued", "_done", "_on_settled")

    def __init__(
        self, peers: Outbox, node: str, entry_id: str, uid: str, on_settled: Callable[[bytes], None] | None = None
    ) -> None:
        self.entry_id = entry_id
        self.again = True  # it may be queued already: the queue write checks
        self._peers, self._node, self._uid = peers, node, uid
        self._queued = False
        self._done = False
        #: Told the answer (b"1": queued) once it is sent.
        self._on_settled = on_settled

    def expect(self, uids: Iterable[str]) -> None:
        if not list(uids):
            self._settled()

    def settle(self, uid: str) -> None:
        self._settled()

    def settle_all(self, uids: Iterable[str]) -> None:
        if list(uids):
            self._settled()

    def settle_queued(self, uids: Iterable[str]) -> None:
        self._queued = True
        self.settle_all(uids)

    def _settled(self) -> None:
        if not self._done:
            self._done = True
            queued = b"1" if self._queued else b"0"
            self._peers.send(self._node, b"settled", i=self.entry_id.encode("ascii"), u=self._uid.encode("utf-8"), q=queued)
            if self._on_settled is not None:
                self._on_settled(queued)


class OneRecipient:
    """An intake entry's ticket as seen by one of its recipients, routed again (its owner left before settling)."""

    __slots__ = ("entry_id", "again", "_ticket", "_uid")

    def __init__(self, ticket: Any, uid: str) -> None:
        self.entry_id = ticket.entry_id
        self.again = True
        self._ticket, self._uid = ticket, uid

    def expect(self, uids: Iterable[str]) -> None:
        if not list(uids):
            self._ticket.settle(self._uid)

    def settle(self, uid: str) -> None:
        self._ticket.settle(uid)

    def settle_all(self, uids: Iterable[str]) -> None:
        self._ticket.settle_all(uids)

    def settle_queued(self, uids: Iterable[str]) -> None:
        self._ticket.settle_queued(uids)
