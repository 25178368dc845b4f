"""
The batches the daemons write to each other's inboxes (``rm:nodes:$node:inbox``,
redis_edge/peers.py): what one node has for another in one reactor turn, one
stream entry.

Its fields: ``k`` ``batch``, ``n`` the writing node, and ``d``, a JSON object:
``m`` the messages, each once, as ``[id, source, timestamp, payload]`` (and the
sender's client id and uid for a client's publish), ``x`` the items in
order, ``[kind, fields]``, but a message's deliveries one item ``["D", its place
in m, [sockets with the bubble], [the others], [their numbers], [the others'
numbers]]`` (each socket's deliveries are numbered from 1 by its owner: a
holder that sees a socket's numbers skip knows deliveries for it were lost on
the way, before it writes anything after them), and ``s``, ``[the writer's run,
n]``: the batch is the n-th that run wrote to this inbox (a reader that sees n
skip knows batches were lost: counted for operators).  A group message for 500
sockets another node holds is one ``XADD`` carrying it once; the holding node
reads the whole batch with one JSON parse (before, each message was a queue
entry of its own, parsed on its own: the largest part of reading an inbox), and
builds each message's frames once for all its sockets.

txredisapi is not imported here; the connection is the link's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred, gatherResults

from redmessenger.logs import make_logger
from redmessenger.model.channels import Sender
from redmessenger.model.envelope import Message, UnreadableEntry, message_from_entry
from redmessenger.model.keyspace import inbox_key
from redmessenger.redis_edge.commands import RedisCommands

#: Entries an inbox keeps at most (a node that died is written to until its heartbeat expires).
INBOX_MAXLEN = 100000
#: Seconds an inbox lasts after its node last renewed it (its reader, every INBOX_RENEW seconds): the inbox of a node
#: that died, or of a node id never used again (hostname:port of a container gone), goes then.  The others write to
#: a node only while it is listed (10 s after its last heartbeat at most) and tell it once that it dropped out; an
#: inbox unread for an hour is of a node that has been out of the list, its sockets dropped by their owners, for
#: that long.  XADD keeps the expiry.
INBOX_TTL = 3600
INBOX_RENEW = 10.0


class BatchWriter:
    """This node's batches for the others: items and deliveries gathered per node, written at the end of the turn."""

    log = make_logger()

    def __init__(self, commands: RedisCommands, node_id: str, clock: Any, run: str = "") -> None:
        self._commands = commands
        self._node = node_id
        self._clock = clock
        self._run = run
        #: The batches this run wrote to each node (the last one's number).
        self._numbers: dict[str, int] = {}
        #: What goes to each node at the end of this turn: its items, its messages, and their places in the batch.
        self._outbox: dict[str, tuple[list[Any], list[list[Any]], dict[str, int]]] = {}
        self._flush_call: Any = None
        #: Batches written.
        self.sent = 0

    def _batch(self, node: str) -> tuple[list[Any], list[list[Any]], dict[str, int]]:
        batch = self._outbox.get(node)
        if batch is None:
            batch = self._outbox[node] = ([], [], {})
            if self._flush_call is None:
                self._flush_call = self._clock.callLater(0, self.flush)
        return batch

    def send(self, node: str, kind: bytes, **fields: bytes | str) -> None:
        """An item for ``node``'s inbox, written with the others of this turn."""
        items, _, _ = self._batch(node)
        items.append([kind.decode("ascii"), {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in fields.items()}])

    def deliver(self, node: str, sid: str, message: Message, bubble: bool, number: int) -> None:
        """
        A message for a socket ``node`` holds, the ``number``-th delivery to it: the message goes once per batch,
        whatever the sockets.
        """
        items, messages, places = self._batch(node)
        place = places.get(message.id)  # ids are unique per message (a group's copies share one)
        if place is None:
            place = places[message.id] = len(messages)
            messages.append(fields_of(message))
        last = items[-1] if items else None
        if last is not None and last[0] == "D" and last[1] == place:  # the same message's sockets: one item
            last[2 if bubble else 3].append(sid)
            last[4 if bubble else 5].append(number)
        else:
            items.append(
                ["D", place, [sid], [], [number], []] if bubble else ["D", place, [], [sid], [], [number]]
            )

    def flush(self) -> Deferred[None]:
        """Write what this turn has for each node; fires once every write was answered (or failed)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        outbox, self._outbox = self._outbox, {}
        writes = []
        numbers = self._numbers
        for node, (items, messages, _) in outbox.items():
            number = numbers[node] = numbers.get(node, 0) + 1
            data = json.dumps({"m": messages, "x": items, "s": [self._run, number]}, ensure_ascii=False, separators=(",", ":"))
            self.sent += 1
            d = self._commands.execute_command(
                "XADD", inbox_key(node), "MAXLEN", "~", INBOX_MAXLEN, "*", "k", "batch", "n", self._node, "d", data
            )
            writes.append(d.addErrback(self._not_written, node))
        return gatherResults(writes).addCallback(lambda _: None)

    def forget(self, nodes: Iterable[str]) -> None:
        """Only ``nodes`` are live: the batch numbers of the others are dropped (one that comes back starts again)."""
        live = set(nodes)
        for node in [node for node in self._numbers if node not in live]:
            del self._numbers[node]

    def stop(self) -> None:
        """What this turn had, written now."""
        if self._flush_call is not None:
            self.flush()

    def _not_written(self, failure: Any, node: str) -> None:
        self.log.warn("Could not write to the inbox of {node}: {why}", node=node, why=failure.getErrorMessage())


class Batch(NamedTuple):
    """A batch as read from an inbox."""

    #: The node that wrote it.
    node: str
    #: Its messages' fields (:func:`message_of`), and its items.
    messages: list[Any]
    items: list[Any]
    #: The run of the node that wrote it, and the batch's number among that run's batches to this inbox; ``("", 0)``
    #: when it does not say (a version before the numbers).
    run: str
    number: int


def read_batch(entry: dict[bytes, bytes]) -> Batch | None:
    """
    A batch as read from an inbox; None if the entry is not a batch.  A batch of another version reads as no
    messages (its deliveries do not arrive: the socket is closed with 1013 at its next confirmation).
    """
    if entry.get(b"k") != b"batch":
        return None
    node = entry.get(b"n", b"").decode("utf-8", "replace")
    data = json.loads(entry.get(b"d", b"{}"))
    if not isinstance(data, dict):
        return None
    messages = data.get("m")
    items = data.get("x")
    run, number = "", 0
    numbered = data.get("s")
    if type(numbered) is list and len(numbered) == 2 and type(numbered[0]) is str and type(numbered[1]) is int:
        run, number = numbered
    return Batch(
        node, messages if isinstance(messages, list) else [], items if isinstance(items, list) else [], run, number
    )


def fields_of(message: Message) -> list[Any]:
    """A message as a batch carries it (to the node holding its sockets): its fields, in a JSON array."""
    sender = message.sender
    if sender is None:
        return [message.id, message.source, message.timestamp, message.payload]
    return [message.id, message.source, message.timestamp, message.payload, sender.client_id, sender.uid]


def message_of(fields: Any) -> Message | None:
    """The message :func:`fields_of` wrote; None for anything else."""
    if type(fields) is not list or len(fields) not in (4, 6):
        return None
    message_id, source, timestamp, payload = fields[:4]
    if not (type(message_id) is str and type(source) is str and type(timestamp) is int and type(payload) is str):
        return None
    sender = None
    if len(fields) == 6:
        client_id, uid = fields[4:]
        if type(client_id) is not str or (uid is not None and type(uid) is not str):
            return None
        sender = Sender(client_id, uid)
    return Message(source, timestamp, payload, message_id, sender)


def item_fields(node: str, item: list[Any]) -> dict[bytes, bytes]:
    """An item other than a delivery, ``[kind, fields]``, as the fields its handler reads (``k`` and ``n`` too)."""
    fields = {b"k": str(item[0]).encode("ascii"), b"n": node.encode("utf-8")}
    fields.update((str(name).encode("ascii"), str(value).encode("utf-8")) for name, value in item[1].items())
    return fields


def text(value: bytes) -> str:
    """A field's value as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def entry_message(entry: bytes) -> Message | None:
    """The message of a queue entry an item carries (an intake entry handed to its owner); None if unreadable."""
    try:
        return message_from_entry(entry)[0]
    except UnreadableEntry:
        return None
