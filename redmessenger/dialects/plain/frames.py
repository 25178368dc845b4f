"""
The plain dialect's session frames (protocol version 1): JSON text frames in
both directions, for clients that acknowledge what their code has handled.

A socket whose first frame is a JSON object speaks it; one whose first frame
is ``uid``/``uid:key`` speaks the legacy protocol (docs/protocol.md).

Client to server::

    {"type": "hello", "v": 1, "uid": "user1", "key": "..."}   first, once
    {"type": "ack", "id": "<a message id>"}                  every message sent
                                                             up to this one is handled

Server to client::

    {"type": "welcome", "v": 1, "uid": "user1"}
    {"type": "message", "id": ..., "source": ..., "timestamp": ..., "bubble": ..., "payload": ...}
    {"type": "sync"}                                         ack what you have handled

No I/O here: parsing and building only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redmessenger.model.envelope import Message
from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.model.identity import Identifier, parse_identifier

VERSION = 1
#: The longest message id an ack may name (ids are at most 64 ASCII characters).
MAX_ID = 64

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True)
class Hello:
    identifier: Identifier


@dataclass(frozen=True)
class Ack:
    id: str


def is_session_frame(text: str) -> bool:
    """Whether a first frame opens a version-1 session (a JSON object: no uid starts with ``{``)."""
    return text[:1] == "{"


def _bad(reason: str) -> ClientError:
    return ClientError(CloseCode.BAD_FRAME, reason)


def parse_frame(text: str) -> Hello | Ack:
    """A client's frame; a frame the protocol does not allow raises :class:`ClientError` (4422, or 4400 for a bad uid)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the stack
        raise _bad("not JSON") from None
    if not isinstance(obj, dict):
        raise _bad("expected a JSON object")
    kind = obj.get("type")
    if kind == "ack":
        message_id = obj.get("id")
        if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_ID:
            raise _bad("ack: 'id' must be a message id (a string of 1-64 characters)")
        return Ack(message_id)
    if kind == "hello":
        return _hello(obj)
    raise _bad(f"unknown frame type {str(kind)[:32]!r}" if isinstance(kind, str) else "no 'type'")


def _hello(obj: dict[str, Any]) -> Hello:
    version, uid, key = obj.get("v"), obj.get("uid"), obj.get("key")
    if version != VERSION:
        raise _bad(f"hello: 'v' must be {VERSION}")
    if not isinstance(uid, str):
        raise _bad("hello: 'uid' must be a string")
    if key is not None and not isinstance(key, str):
        raise _bad("hello: 'key' must be a string")
    parsed = parse_identifier(uid)  # 4400 for a bad uid, as on the legacy protocol
    if ":" in uid:
        raise ClientError(CloseCode.INVALID_IDENTIFIER, f"invalid uid {uid[:40]!r}: 1-128 letters, digits or _-.@")
    return Hello(Identifier(parsed.uid, key or None))


_ACK_HEAD = b'{"type":"ack","id":"'
_ACK_TAIL = b'"}'


def compact_ack(payload: bytes) -> str | None:
    """
    The id of an ack written exactly ``{"type":"ack","id":"<id>"}`` (no spaces,
    an id of printable ASCII without quote or backslash), else None: then
    :func:`parse_frame` reads it.  The common case, without a JSON parse.
    """
    if not (payload.startswith(_ACK_HEAD) and payload.endswith(_ACK_TAIL)):
        return None
    raw = payload[len(_ACK_HEAD) : -len(_ACK_TAIL)]
    if not 0 < len(raw) <= MAX_ID or b'"' in raw or b"\\" in raw or not raw.isascii():
        return None
    text = raw.decode("ascii")
    return text if text.isprintable() else None


#: The server asks for an ack: the client answers with an ack of the last message it has handled.
SYNC = b'{"type":"sync"}'


def welcome(uid: str) -> bytes:
    return _dumps({"type": "welcome", "v": VERSION, "uid": uid}).encode("utf-8")


def message_frame_payload(message: Message, bubble: bool) -> bytes:
    """The envelope with ``"type":"message"`` first: built once per message and bubble value, shared."""
    return b'{"type":"message",' + message.envelope_json(bubble)[1:]
