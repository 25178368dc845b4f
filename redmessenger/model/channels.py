"""
Channels that clients ask for (SPEC §7): what a subscription may do, the
request the application is asked and its answer, a client's publish as it
travels through Redis, and the errors a client's request can get.  No I/O.

The exchange with the application is plain Redis (``docs/protocol.md``,
*Channels*), so that an application in any language can answer:

- the daemon ``XADD``\\ s a request to ``rm:requests`` (fields: ``id``, ``channel``,
  ``client_auth``, ``client_id``, ``uid``, ``reply_to``, ``deadline``), only when
  the stream has a consumer group (nobody listening: denied at once);
- one worker of the application's group reads it and ``PUBLISH``\\ es its answer,
  a JSON object, on ``reply_to``: ``{"id": ..., "permit": "read_only"}`` or
  ``{"id": ..., "deny": "why"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from redmessenger.model.jsontext import loads

#: The longest ``client_auth`` a client may send, in characters.
MAX_CLIENT_AUTH = 4096
#: The longest reason of a denial passed on to the client, in characters.
MAX_REASON = 200


class Mode(Enum):
    """What a subscription allows (SPEC §7.3)."""

    READ_WRITE = "read_write"
    READ_ONLY = "read_only"
    WRITE_ONLY = "write_only"

    @property
    def reads(self) -> bool:
        return self is not Mode.WRITE_ONLY

    @property
    def writes(self) -> bool:
        return self is not Mode.READ_ONLY


class RequestError(Exception):
    """
    A channel request (subscribe, unsubscribe, publish) that cannot be granted:
    the client is told ``code`` and ``reason`` in the reply to that request; its
    connection and other subscriptions are untouched.  The codes are listed in
    ``docs/protocol.md`` (*Channels*).
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


# The codes of RequestError, one place.
DENIED = "denied"  # the application said no, did not answer in time, failed, or nobody listens
INVALID_CHANNEL = "invalid_channel"  # not 1-128 letters, digits or _-.@
NOT_SUBSCRIBED = "not_subscribed"  # unsubscribe or publish on a channel this socket has not subscribed to
READ_ONLY = "read_only"  # publish on a read_only subscription
TOO_LARGE = "too_large"  # a publish larger than client_publish_max_bytes
RATE_LIMITED = "rate_limited"  # more publishes than client_publish_rate allows
UNAVAILABLE = "unavailable"  # Redis is unreachable: try again later
ALREADY_SUBSCRIBED = "already_subscribed"  # a second subscribe while the first is under way or granted
TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"  # max_subscriptions granted or asked for on this connection already
CANCELLED = "cancelled"  # unsubscribed before the application answered the subscribe
INVALID_REQUEST = "invalid_request"  # a field of the wrong type or too long
NOT_READY = "not_ready"  # a request before the session was welcomed
BAD_GRANT = "bad_grant"  # a grant that is not valid: tampered, expired, for another channel or key


#: The requests a session may make, by the name both dialects give them.
REQUESTS = ("subscribe", "unsubscribe", "publish")

_strict_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def message_text(fields: dict[str, Any]) -> str:
    """A publish request's ``message`` (any JSON value) as compact JSON text: the payload subscribers get."""
    if "message" not in fields:
        raise RequestError(INVALID_REQUEST, "publish: 'message' must be a JSON value")
    try:
        return _strict_dumps(fields["message"])
    except (ValueError, TypeError, RecursionError):  # NaN or Infinity (not JSON), or nested deeper than the stack
        raise RequestError(INVALID_REQUEST, "publish: 'message' must be a JSON value") from None


@dataclass(frozen=True)
class Subscribed:
    """A subscription granted: its mode, and a grant to subscribe again without asking (when the server signs them)."""

    mode: Mode
    grant: str | None = None


def granted(result: Subscribed | None = None) -> dict[str, Any]:
    """A reply's fields for a request granted (a subscription: its mode, and its grant if any)."""
    if result is None:
        return {"ok": True}
    fields: dict[str, Any] = {"ok": True, "mode": result.mode.value}
    if result.grant is not None:
        fields["grant"] = result.grant
    return fields


def refused(error: RequestError) -> dict[str, Any]:
    """A reply's fields for a request refused: a code from docs/protocol.md (*Channels*) and a reason."""
    return {"ok": False, "error": {"code": error.code, "reason": error.reason}}


@dataclass(frozen=True)
class SubscriptionRequest:
    """What the application is asked (SPEC §7.1)."""

    id: str
    channel: str
    client_auth: str | None
    client_id: str
    uid: str | None
    #: The pub/sub channel the answer goes to (the asking daemon's).
    reply_to: str
    #: Unix time in milliseconds after which the daemon has denied it already: an answer is pointless.
    deadline: int

    def fields(self) -> list[str]:
        """The stream entry's fields and values, in order (empty strings for what is absent)."""
        return [
            "id", self.id,
            "channel", self.channel,
            "client_auth", self.client_auth or "",
            "client_id", self.client_id,
            "uid", self.uid or "",
            "reply_to", self.reply_to,
            "deadline", str(self.deadline),
        ]  # fmt: skip


@dataclass(frozen=True)
class Answer:
    """The application's answer to a request: a mode, or a denial with its reason."""

    request_id: str
    mode: Mode | None
    reason: str = ""


class BadAnswer(ValueError):
    """A message on the answers channel that is not an answer (logged, ignored)."""


def parse_answer(raw: bytes) -> Answer:
    """``{"id": ..., "permit": "<mode>"}`` (``true`` or no mode: read_write) or ``{"id": ..., "deny": "why"}``."""
    try:
        obj = loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadAnswer("not JSON") from None
    if not isinstance(obj, dict):
        raise BadAnswer("not a JSON object")
    request_id = obj.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise BadAnswer("no string 'id'")
    if "deny" in obj:
        reason = obj["deny"]
        return Answer(request_id, None, reason[:MAX_REASON] if isinstance(reason, str) and reason else "denied")
    permit = obj.get("permit", None)
    if permit is True:
        return Answer(request_id, Mode.READ_WRITE)
    if isinstance(permit, str):
        try:
            return Answer(request_id, Mode(permit))
        except ValueError:
            raise BadAnswer(f"unknown mode {permit[:40]!r}") from None
    raise BadAnswer("neither 'permit' nor 'deny'")


def answer_json(request_id: str, mode: Mode | None, reason: str = "") -> bytes:
    """An answer as the application publishes it (the library's, and the tests')."""
    obj: dict[str, Any] = {"id": request_id}
    if mode is None:
        obj["deny"] = reason or "denied"
    else:
        obj["permit"] = mode.value
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class Sender:
    """Who published a client message: set by the daemon from the connection, never taken from the client."""

    client_id: str
    uid: str | None


class BadClientPublish(ValueError):
    """A message on a client-publish channel that the daemons did not write (logged, ignored)."""


def client_publish_json(sender: Sender, payload: str) -> bytes:
    """What a daemon PUBLISHes on ``rm.client.channels.$cid`` for a client's publish."""
    return json.dumps(
        {"client_id": sender.client_id, "uid": sender.uid, "payload": payload},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")


def parse_client_publish(raw: bytes) -> tuple[Sender, str]:
    """The sender and the payload (JSON text) of a client's publish as a daemon wrote it."""
    try:
        obj = loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadClientPublish("not JSON") from None
    if not isinstance(obj, dict):
        raise BadClientPublish("not a JSON object")
    client_id, uid, payload = obj.get("client_id"), obj.get("uid"), obj.get("payload")
    if not isinstance(client_id, str) or not client_id or not isinstance(payload, str):
        raise BadClientPublish("no string 'client_id' and 'payload'")
    if uid is not None and not isinstance(uid, str):
        raise BadClientPublish("'uid' is not a string")
    return Sender(client_id, uid), payload
