"""
Messages and their two encodings: the envelope a client receives and the entry
a user's queue keeps in Redis.

A published message is turned into a :class:`Message` once; every encoding of
it (the envelope JSON with and without the bubble, the queue entry, a wire
dialect's frame) is computed at most once and shared by every socket it goes to.

Every message has an ``id`` (SPEC §10), kept in its queue entry, so that a
message delivered again (after a dropped connection, a crash) carries the same
id and clients can drop the duplicate.  Ids are opaque strings of at most 64
ASCII characters: ``<daemon run>.<n>`` for what the daemon received, ``h-<hash>``
for a queue entry that had none (written by the Node.js program or by hand),
derived from the entry's bytes so that it stays the same each time it is read.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import secrets
from collections.abc import Iterable
from typing import Any, Callable, Protocol, TypeVar

from redmessenger.model.channels import Sender
from redmessenger.model.jsontext import loads

T = TypeVar("T")


class Ticket(Protocol):
    """What a message from the durable intake carries: told when a recipient's copy is safe."""

    entry_id: str
    again: bool

    def expect(self, uids: Iterable[str]) -> None: ...

    def settle(self, uid: str) -> None: ...

    def settle_all(self, uids: Iterable[str]) -> None: ...

    def settle_queued(self, uids: Iterable[str]) -> None: ...

#: Marks queue entries written by this daemon; entries without it were written
#: by the Node.js RedMessenger, whose payloads are ``encodeURI``-encoded.
ENTRY_VERSION = 1

#: An envelope's bytes besides its payload (field names, id, source, timestamp), roughly.
ENVELOPE_OVERHEAD = 160

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
#: The string escaper _dumps uses (ensure_ascii=False): C-accelerated.
_quote = json.encoder.encode_basestring
_JSON_KEYS = {True: ("json", True), False: ("json", False)}
_MISSING = object()


class Message:
    """One message on its way to one or many users; caches its encodings."""

    __slots__ = ("id", "source", "timestamp", "payload", "weight", "ticket", "sender", "_encodings")

    def __init__(self, source: str, timestamp: int, payload: str, id: str, sender: Sender | None = None) -> None:
        self.id = id
        self.source = source
        self.timestamp = timestamp
        self.payload = payload
        #: About what the message costs to hold for a socket, in bytes: what its frame carries (the payload
        #: escaped as JSON, in UTF-8: a control character is six bytes) and an envelope's overhead.
        quoted = _quote(payload)  # its two quotes are the envelope's: plain text weighs len(payload) + overhead
        self.weight = (len(quoted) if quoted.isascii() else len(quoted.encode("utf-8"))) - 2 + ENVELOPE_OVERHEAD
        #: Read from the durable intake: told when each recipient's copy is safe (redmessenger.core.intake).
        self.ticket: Ticket | None = None
        #: A client's publish on a channel (SPEC §7.4): who sent it; None for what the application published.
        self.sender = sender
        self._encodings: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return f"<Message {self.id} {self.source} @{self.timestamp} {len(self.payload)} chars>"

    def envelope_json(self, bubble: bool) -> bytes:
        """The envelope as UTF-8 JSON, computed once per value of ``bubble``."""
        return self.encoded(_JSON_KEYS[bubble], _envelope_json, self, bubble)

    def envelope_json_uncached(self, bubble: bool) -> bytes:
        """
        The same, built anew: for a dialect that caches a frame made of it, so
        that the message does not hold the envelope and the frame both.
        """
        return self._encodings.get(_JSON_KEYS[bubble]) or _envelope_json(self, bubble)

    def queue_entry(self) -> bytes:
        """The entry kept in ``rm:users:$uid:messages`` while the user is away."""
        return self.encoded("entry", _entry_json, self)

    def encoded(self, key: Any, build: Callable[..., T], *args: Any) -> T:
        """
        Return the encoding named ``key``, building it with ``build(*args)`` on
        first use; dialects cache their frames here.  (Arguments rather than a
        closure: this runs once per delivery, a lambda per call costs.)
        """
        value = self._encodings.get(key, _MISSING)
        if value is _MISSING:  # not try/except: most messages go to one socket, so a miss is common, and raising costs
            value = self._encodings[key] = build(*args)
        return value  # type: ignore[no-any-return]


def _envelope_json(message: Message, bubble: bool) -> bytes:
    # What _dumps() of the envelope as a dict gives, byte for byte, in a quarter
    # of the time: the strings go through the same C escaper.
    sender = message.sender
    if sender is not None:
        return _dumps(
            {
                "id": message.id,
                "source": message.source,
                "timestamp": message.timestamp,
                "bubble": bubble,
                "payload": message.payload,
            }
            | _sender_fields(sender)
        ).encode("utf-8")
    return (
        f'{{"id":{_quote(message.id)},"source":{_quote(message.source)},"timestamp":{message.timestamp},'
        f'"bubble":{"true" if bubble else "false"},"payload":{_quote(message.payload)}}}'
    ).encode("utf-8")


def _entry_json(message: Message) -> bytes:
    # As _envelope_json: what _dumps() of the entry as a dict gives, byte for byte.
    if message.sender is not None:
        return _dumps(
            {"v": ENTRY_VERSION, "id": message.id, "source": message.source, "timestamp": message.timestamp,
             "payload": message.payload}
            | _sender_fields(message.sender)
        ).encode("utf-8")  # fmt: skip
    return (
        f'{{"v":{ENTRY_VERSION},"id":{_quote(message.id)},"source":{_quote(message.source)},'
        f'"timestamp":{message.timestamp},"payload":{_quote(message.payload)}}}'
    ).encode("utf-8")


def _sender_fields(sender: Sender | None) -> dict[str, Any]:
    """A client's publish names who sent it (``sender``); nothing for the application's messages."""
    if sender is None:
        return {}
    return {"sender": {"client_id": sender.client_id, "uid": sender.uid}}


def _sender_of(obj: dict[str, Any]) -> Sender | None:
    raw = obj.get("sender")
    if not isinstance(raw, dict):
        return None
    client_id, uid = raw.get("client_id"), raw.get("uid")
    if not isinstance(client_id, str) or (uid is not None and not isinstance(uid, str)):
        return None
    return Sender(client_id, uid)


class MessageIds:
    """
    Ids for the messages one daemon run receives: ``<run>.<n>``, the run a
    random 10-character tag (so that ids never repeat across restarts or
    daemons), ``n`` counting from 1.
    """

    def __init__(self, run: str | None = None) -> None:
        self.run = run if run is not None else secrets.token_hex(5)
        self._prefix = self.run + "."
        self._next = itertools.count(1).__next__

    def next(self) -> str:
        return self._prefix + str(self._next())


def entry_id(raw: bytes) -> str:
    """The id of a queue entry that carries none: the same for the same bytes, every time it is read."""
    return "h-" + hashlib.blake2b(raw, digest_size=12).hexdigest()


_MAX_ID = 64


def decode_payload(raw: bytes) -> tuple[str, bool]:
    """
    A published payload as text, and whether it was valid UTF-8.  Publishers may
    send any bytes: invalid UTF-8 is replaced (U+FFFD) rather than refused, so
    that the message is still delivered.
    """
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), False


# -- decodeURI, as JavaScript has it --------------------------------------------

# decodeURI leaves the escapes of these characters alone.
_URI_RESERVED = frozenset(";/?:@&=+$,#")
_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


class URIError(ValueError):
    """A malformed escape sequence: JavaScript's decodeURI would throw."""


def decode_uri(text: str) -> str:
    """
    JavaScript's ``decodeURI``: the Node.js RedMessenger stored payloads through
    ``encodeURI``, so its queue entries are decoded the way it decoded them.
    """
    if "%" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        run = match.group(0)
        octets = bytes(int(run[i + 1 : i + 3], 16) for i in range(0, len(run), 3))
        try:
            decoded = octets.decode("utf-8")
        except UnicodeDecodeError as e:
            raise URIError(f"malformed UTF-8 in {run!r}") from e
        # Re-escape reserved characters, as decodeURI leaves them encoded.
        out = []
        position = 0
        for char in decoded:
            width = len(char.encode("utf-8"))
            if char in _URI_RESERVED:
                out.append(run[position : position + 3 * width])
            else:
                out.append(char)
            position += 3 * width
        return "".join(out)

    decoded = _ESCAPES.sub(replace, text)
    # A '%' not followed by two hex digits is malformed too.
    stripped = _ESCAPES.sub("", text)
    if "%" in stripped:
        raise URIError("'%' not followed by two hex digits")
    return decoded


# -- queue entries ----------------------------------------------------------------


class UnreadableEntry(ValueError):
    """A queue entry that is not an envelope (left there by another program)."""


def message_from_entry(raw: bytes) -> tuple[Message, str | None]:
    """
    Read a queue entry: one of ours, or one the Node.js RedMessenger wrote
    (its payload ``encodeURI``-encoded).  Returns the message and, if its payload
    could not be decoded as that program would have, why (it is then delivered
    as stored).  Raises :class:`UnreadableEntry` for anything else; the caller
    still delivers it (see :func:`message_from_unreadable`).
    """
    try:
        obj = loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested deeper than the stack
        raise UnreadableEntry(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise UnreadableEntry(f"a JSON {type(obj).__name__}, not an object")
    source, timestamp, payload, message_id = obj.get("source"), obj.get("timestamp"), obj.get("payload"), obj.get("id")
    if not isinstance(source, str) or not isinstance(payload, str):
        raise UnreadableEntry("no string 'source' and 'payload'")
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
        raise UnreadableEntry("no numeric 'timestamp'")
    if isinstance(timestamp, float) and not math.isfinite(timestamp):  # JSON's Infinity, NaN, 1e400: no int()
        raise UnreadableEntry("'timestamp' is not a finite number")
    problem = None
    if obj.get("v") is None:
        try:
            payload = decode_uri(payload)
        except URIError as e:
            problem = f"Node.js-era entry with a malformed URI escape ({e}); payload delivered as stored"
    if not isinstance(message_id, str) or not 0 < len(message_id) <= _MAX_ID or not message_id.isascii():
        message_id = entry_id(raw)
    return Message(source, int(timestamp), payload, message_id, _sender_of(obj)), problem


def message_from_unreadable(raw: bytes, source: str, now_ms: int) -> Message:
    """
    Wrap an entry that is not an envelope so that it is still delivered, not lost:
    its bytes become the payload, as if just published on the user's channel.
    """
    return Message(source, now_ms, decode_payload(raw)[0], entry_id(raw))
