"""
Grants (SPEC §7.5): what the application (or the daemon, on its behalf) signs
with the secret key, so that the daemon can check it alone, with no round trip:

- a **subscription grant**: channel, mode, the uid it is for (or none: anyone who
  holds it), an expiry.  The daemon gives one with every permitted subscription,
  so that a client that reconnects subscribes again without asking the
  application while it lasts;
- an **identity grant**: a uid and an expiry, presented in a hello instead of the
  key stored at ``rm:users:$uid:key``.

A grant is ``<payload>.<signature>``: the payload is base64url (no padding) of
compact JSON ``{"k": "sub"|"id", "c": channel, "m": mode, "u": uid, "e": expiry}``
(Unix seconds; absent fields omitted), the signature base64url of
HMAC-SHA256(secret key, the payload's base64url text).  Any language can mint
one (docs/protocol.md, *Grants*).  Checked in constant time; a grant is a secret
of the client's and is never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

from redmessenger.model.channels import Mode

SUBSCRIPTION = "sub"
IDENTITY = "id"
#: Longest grant accepted, in characters (a uid and a channel of 128 characters fit with room to spare).
MAX_GRANT = 1024


class BadGrant(ValueError):
    """A grant that is not valid: malformed, signed with another key, expired, or for something else."""


@dataclass(frozen=True)
class Grant:
    kind: str
    expires: int
    uid: str | None = None
    channel: str | None = None
    mode: Mode | None = None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode("utf-8"), payload.encode("ascii"), hashlib.sha256).digest())


def mint(secret: str, grant: Grant) -> str:
    """The grant, signed with ``secret``."""
    fields: dict[str, object] = {"k": grant.kind, "e": grant.expires}
    if grant.uid is not None:
        fields["u"] = grant.uid
    if grant.channel is not None:
        fields["c"] = grant.channel
    if grant.mode is not None:
        fields["m"] = grant.mode.value
    payload = _b64(json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return f"{payload}.{_signature(secret, payload)}"


def subscription_grant(secret: str, channel: str, mode: Mode, expires: int, uid: str | None = None) -> str:
    """May subscribe to ``channel`` with ``mode`` until ``expires`` (Unix seconds); only as ``uid`` if given."""
    return mint(secret, Grant(SUBSCRIPTION, expires, uid, channel, mode))


def identity_grant(secret: str, uid: str, expires: int) -> str:
    """Is ``uid`` until ``expires`` (Unix seconds): a hello's alternative to the stored key."""
    return mint(secret, Grant(IDENTITY, expires, uid))


def verify(secret: str, token: object, now: float) -> Grant:
    """The grant ``token`` stands for, if ``secret`` signed it and it has not expired; else :class:`BadGrant`."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_GRANT or not token.isascii():
        raise BadGrant("not a grant")
    payload, dot, signature = token.partition(".")
    if not dot or not hmac.compare_digest(_signature(secret, payload), signature):
        raise BadGrant("not signed with this server's secret key")
    try:
        fields = json.loads(_unb64(payload))
        kind, expires = fields["k"], fields["e"]
        uid, channel, mode = fields.get("u"), fields.get("c"), fields.get("m")
        if kind not in (SUBSCRIPTION, IDENTITY) or isinstance(expires, bool) or not isinstance(expires, int):
            raise ValueError
        if not all(value is None or isinstance(value, str) for value in (uid, channel, mode)):
            raise ValueError
        grant = Grant(kind, expires, uid, channel, Mode(mode) if mode is not None else None)
    except (ValueError, KeyError, TypeError, RecursionError):
        raise BadGrant("malformed") from None
    if grant.expires <= now:
        raise BadGrant("expired")
    return grant
