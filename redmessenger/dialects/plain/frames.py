"""
The plain dialect's session frames (protocol version 1): JSON text frames in
both directions, for clients that acknowledge what their code has handled.

A socket whose first frame is a JSON object speaks it; one whose first frame
is ``uid``/``uid:key`` speaks the legacy protocol (docs/protocol.md).

Client to server::

    {"type": "hello", "v": 1, "uid": "user1", "key": "...", "pkey": "..."}   first, once;
                                                     uid, key, pkey optional
    {"type": "ack", "id": "<a message id>"}          every message sent
                                                     up to this one is handled
    {"type": "subscribe", "ref": 1, "channel": "c", "client_auth": "..."}
    {"type": "unsubscribe", "ref": 2, "channel": "c"}
    {"type": "publish", "ref": 3, "channel": "c", "message": <any JSON>}

Server to client::

    {"type": "welcome", "v": 1, "uid": "user1"}      (uid null: no uid, channels only)
    {"type": "message", "id": ..., "source": ..., "timestamp": ..., "bubble": ..., "payload": ...}
    {"type": "sync"}                                 ack what you have handled
    {"type": "reply", "ref": 1, "ok": true, "mode": "read_write"}
    {"type": "reply", "ref": 2, "ok": false, "error": {"code": "denied", "reason": "..."}}

No I/O here: parsing and building only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redmessenger.model.channels import REQUESTS
from redmessenger.model.envelope import Message
from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.model.identity import SESSION_VERSION, Hello, parse_hello
from redmessenger.model.jsontext import LoneSurrogate, loads

VERSION = SESSION_VERSION
#: The longest message id an ack may name (ids are at most 64 ASCII characters).
MAX_ID = 64

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


#: The longest string ``ref`` a request may carry; a number ref must be an integer JavaScript holds exactly.
MAX_REF = 64
MAX_SAFE_INTEGER = 2**53 - 1


@dataclass(frozen=True)
class Request:
    """A channel request (``subscribe``, ``unsubscribe``, ``publish``): the core reads its fields."""

    kind: str
    ref: str | int
    fields: dict[str, Any]


@dataclass(frozen=True)
class Ack:
    id: str


def is_session_frame(text: str) -> bool:
    """Whether a first frame opens a version-1 session (a JSON object: no uid starts with ``{``)."""
    return text[:1] == "{"


def _bad(reason: str) -> ClientError:
    return ClientError(CloseCode.BAD_FRAME, reason)


Frame = Hello | Ack | Request


def parse_frame(text: str) -> Frame:
    """A client's frame; a frame the protocol does not allow raises :class:`ClientError` (4422, or 4400 for a bad uid)."""
    try:
        obj = loads(text)
    except LoneSurrogate as e:
        raise _bad(str(e)) from None
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
        return parse_hello(obj)
    if kind in REQUESTS:
        return _request(kind, obj)
    raise _bad(f"unknown frame type {str(kind)[:32]!r}" if isinstance(kind, str) else "no 'type'")


def _request(kind: str, obj: dict[str, Any]) -> Request:
    """A channel request; only a missing or bad ``ref`` is the frame's fault (4422): the rest is answered in the reply."""
    ref = obj.get("ref")
    if isinstance(ref, bool) or not (
        (isinstance(ref, str) and 0 < len(ref) <= MAX_REF) or (isinstance(ref, int) and 0 <= ref <= MAX_SAFE_INTEGER)
    ):
        raise _bad(f"{kind}: 'ref' must be a string of 1-{MAX_REF} characters or an integer from 0 to 2^53-1")
    return Request(kind, ref, obj)


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


def reply(ref: str | int, fields: dict[str, Any]) -> bytes:
    """The reply to a request: its ``ref`` and the fields the core answered (``ok``, then ``mode`` or ``error``)."""
    return _dumps({"type": "reply", "ref": ref, **fields}).encode("utf-8")


def welcome(uid: str | None) -> bytes:
    return _dumps({"type": "welcome", "v": VERSION, "uid": uid}).encode("utf-8")


def message_frame_payload(message: Message, bubble: bool) -> bytes:
    """The envelope with ``"type":"message"`` first: built once per message and bubble value, shared."""
    envelope = memoryview(message.envelope_json_uncached(bubble))  # cached as the frame, not twice
    return b'{"type":"message",' + envelope[1:]
