"""
Stand-ins for unit tests of pure logic: a recording Redis connection and a
recording socket.  What the daemon does with the real ones is tested against a
real valkey-server and real clients elsewhere.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import Clock
from twisted.python.failure import Failure

from redmessenger.core.ports import StoreUnavailable
from redmessenger.model.envelope import Message
from redmessenger.redis_edge.queues import QueueStore
from redmessenger.redis_edge.scripts import ENQUEUE


class RecordingCommands:
    """Records each command; its reply is fired by the test."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.replies: list[Deferred[Any]] = []
        #: Fail each command at once, as txredisapi does when it has no connection to send it on.
        self.unreachable = False

    def eval(self, script: bytes, keys: list[Any] = [], args: list[Any] = []) -> Deferred[Any]:
        return self._record(("EVAL", script, list(keys), list(args)))

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return self._record(args)

    def _record(self, command: tuple[Any, ...]) -> Deferred[Any]:
        self.sent.append(command)
        assert len(self.sent) < 10_000, "a command sent again and again"
        d: Deferred[Any] = Deferred()
        self.replies.append(d)
        if self.unreachable:
            d.errback(connection_lost())
        return d


def make_store(**attributes: Any) -> tuple[QueueStore, RecordingCommands, Clock]:
    commands, clock = RecordingCommands(), Clock()
    store = QueueStore(commands, clock, queue_expiry=60, queue_max_length=100)
    for name, value in attributes.items():
        setattr(store, name, value)
    return store, commands, clock


def sent_entries(commands: RecordingCommands) -> list[list[bytes]]:
    """The entries of each ENQUEUE call, in the order the calls were made."""
    return [c[3][2::3] for c in commands.sent if c[0] == "EVAL" and c[1] == ENQUEUE]


def kinds(commands: RecordingCommands) -> list[Any]:
    """Each command sent, in order: the script of an EVAL, the name of any other."""
    return [c[1] if c[0] == "EVAL" else c[0] for c in commands.sent]


def answer_in_turn(commands: RecordingCommands, first: int = 0) -> None:
    """Answer each ENQUEUE call from the ``first``th on, as Redis would, the ones it sends meanwhile too."""
    index = first
    while index < len(commands.sent):
        if not commands.replies[index].called:
            commands.replies[index].callback([[], []])
        index += 1


def connection_lost() -> Failure:
    from txredisapi import ConnectionError

    return Failure(ConnectionError("Not connected"))


class Sink:
    """Records what the core writes and asks; confirmations are answered by the test."""

    client_address = "127.0.0.1:1"
    writable = True
    acknowledges = False

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.log: list[str] = []
        self.asked: list[Deferred[bool]] = []

    def send_message(self, message: Message, bubble: bool) -> bool:
        self.log.append(f"{self.clock.seconds():.2f} message {message.payload}")
        return True

    def confirm(self) -> Deferred[bool]:
        self.log.append(f"{self.clock.seconds():.2f} confirm")
        d: Deferred[bool] = Deferred()
        self.asked.append(d)
        return d


class MemoryDirectory:
    """The core's Directory port in memory: user keys and group members the test sets; Redis away on demand."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.groups: dict[str, list[bytes]] = {}
        #: While True, every lookup fails as when Redis is unreachable.
        self.unavailable = False
        #: Member lookups answered by the test (``answer_members``) instead of at once.
        self.hold_members = False
        self.held: list[tuple[str, Deferred[list[bytes]]]] = []
        self.lookups: list[str] = []

    def user_key(self, uid: str) -> Deferred[bytes | None]:
        d: Deferred[bytes | None] = Deferred()
        if self.unavailable:
            d.errback(StoreUnavailable("Not connected"))
        else:
            d.callback(self.keys.get(uid))
        return d

    def members(self, cid: str) -> Deferred[list[bytes]]:
        self.lookups.append(cid)
        d: Deferred[list[bytes]] = Deferred()
        if self.hold_members:
            self.held.append((cid, d))
        elif self.unavailable:
            d.errback(StoreUnavailable("Not connected"))
        else:
            d.callback(list(self.groups.get(cid, [])))
        return d

    def answer_members(self, cid: str) -> None:
        """Answer the oldest held lookup of ``cid`` with the group's members now."""
        for i, (name, d) in enumerate(self.held):
            if name == cid:
                del self.held[i]
                d.callback(list(self.groups.get(cid, [])))
                return
        raise AssertionError(f"no lookup of {cid} is waiting")


class MemoryQueues:
    """
    The core's Queues port in memory: each user's queue a list of entries.
    Reads (take) are answered at once, or held for the test to answer
    (``hold_takes``), so that a test can act in the middle of a handover.
    """

    backlog = 0

    def __init__(self) -> None:
        self.queues: dict[str, list[bytes]] = {}
        self.hold_takes = False
        self.held: list[tuple[Deferred[tuple[int, list[bytes]]], str, int, int]] = []
        self.trims: list[tuple[str, int]] = []
        #: Oversize messages kept aside, by channel (rm:oversize:$channel).
        self.aside: dict[str, list[bytes]] = {}

    def enqueue(self, uids: list[str], entry: bytes, again: bool = False, written: Any = None) -> None:
        for uid in uids:
            queue = self.queues.setdefault(uid, [])
            if not (again and entry in queue):
                queue.append(entry)
        if written is not None:
            written()

    def keep_aside(self, channel: str, payload: bytes, written: Any = None) -> None:
        self.aside.setdefault(channel, []).append(payload)
        if written is not None:
            written()

    def payloads(self, uid: str) -> list[str]:
        import json

        return [json.loads(entry)["payload"] for entry in self.queues.get(uid, [])]

    def take(self, uid: str, delivered: int, batch: int) -> Deferred[tuple[int, list[bytes]]]:
        d: Deferred[tuple[int, list[bytes]]] = Deferred()
        if self.hold_takes:
            self.held.append((d, uid, delivered, batch))
        else:
            d.callback(self._take(uid, delivered, batch))
        return d

    def answer_take(self) -> None:
        d, uid, delivered, batch = self.held.pop(0)
        d.callback(self._take(uid, delivered, batch))

    def _take(self, uid: str, delivered: int, batch: int) -> tuple[int, list[bytes]]:
        queue = self.queues.get(uid, [])
        del queue[:delivered]
        return len(queue), list(queue[:batch])

    def trim(self, uid: str, delivered: int) -> Deferred[None]:
        self.trims.append((uid, delivered))
        del self.queues.get(uid, [])[:delivered]
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def drain(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d


class Socket(Sink):
    """A Sink that can close: then it takes nothing more and its confirmations fail."""

    def __init__(self, clock: Clock, name: str = "") -> None:
        super().__init__(clock)
        self.name = name
        self.client_address = f"127.0.0.1:{name or 1}"
        self.messages: list[tuple[str, bool]] = []

    def send_message(self, message: Message, bubble: bool) -> bool:
        if not self.writable:
            return False
        self.messages.append((message.payload, bubble))
        return super().send_message(message, bubble)

    def payloads(self) -> list[str]:
        return [payload for payload, _ in self.messages]

    def close(self) -> None:
        self.writable = False
        asked, self.asked = self.asked, []
        for d in asked:
            if not d.called:
                d.callback(False)

    def confirm_all(self) -> None:
        asked, self.asked = self.asked, []
        for d in asked:
            d.callback(True)


class Link(Socket):
    """A Socket that is also a ClientLink: records what the session tells the client."""

    def __init__(self, clock: Clock, name: str = "") -> None:
        super().__init__(clock, name)
        self.accepted_uids: list[str] = []
        self.refusals: list[tuple[int, str]] = []
        #: What pass_to answers (None: the link cannot be passed), and the nodes it was asked to pass to.
        self.passing: Deferred[bool] | None = None
        self.passed_to: list[str] = []

    def accepted(self, uid: str) -> None:
        self.accepted_uids.append(uid)

    def pass_to(self, node: str) -> Deferred[bool] | None:
        self.passed_to.append(node)
        return self.passing

    def refuse(self, error: Any) -> None:
        self.refusals.append((int(error.code), error.reason))
