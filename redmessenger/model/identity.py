r"""
What a client sends to say who it is: ``uid``, ``uid:`` or ``uid:key`` (SPEC §4),
optionally followed by one line end (``\n`` or ``\r\n``), which is not part of it:
a terminal client such as websocat sends the Enter that ends the line typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.model.keyspace import NAME_PATTERN


@dataclass(frozen=True)
class Identifier:
    """A parsed identifier; ``key`` is None when none was given."""

    uid: str
    key: str | None

    def __repr__(self) -> str:
        # the key is a secret: it never reaches a log line through a repr
        return f"Identifier(uid={self.uid!r}, key={'<hidden>' if self.key else None})"


def parse_identifier(text: str) -> Identifier:
    """Split and check an identifier; a bad one raises :class:`ClientError`."""
    uid, separator, key = _without_line_end(text).partition(":")
    if not NAME_PATTERN.fullmatch(uid):
        shown = uid if len(uid) <= 40 else uid[:40] + "..."
        raise ClientError(
            CloseCode.INVALID_IDENTIFIER,
            f"invalid uid {shown!r}: 1-128 letters, digits or _-.@",
        )
    return Identifier(uid, key if separator and key else None)


def _without_line_end(text: str) -> str:
    r"""``text`` without one trailing ``\n`` or ``\r\n``; any other whitespace stays (and makes the uid invalid)."""
    if text.endswith("\n"):
        return text[:-2] if text.endswith("\r\n") else text[:-1]
    return text


#: The session protocol's version (docs/protocol.md, *Version 1*): a hello names it.
SESSION_VERSION = 1


@dataclass(frozen=True)
class Hello:
    """A version-1 hello, whatever the dialect carried it in."""

    #: None: no uid (an anonymous session: channels only).
    identifier: Identifier | None
    #: The public key the client presented (checked by the core when one is configured).
    public_key: str | None = None
    #: An identity grant (model/grants.py) instead of the key: checked by the daemon alone.
    grant: str | None = None


def parse_hello(obj: dict[str, Any]) -> Hello:
    """``{"v": 1, "uid": ..., "key": ..., "pkey": ...}`` (uid, key, pkey optional); a bad one raises ClientError (4422, 4400)."""

    def bad(reason: str) -> ClientError:
        return ClientError(CloseCode.BAD_FRAME, "hello: " + reason)

    version, uid, key, public_key, grant = obj.get("v"), obj.get("uid"), obj.get("key"), obj.get("pkey"), obj.get("grant")
    if version != SESSION_VERSION:
        raise bad(f"'v' must be {SESSION_VERSION}")
    if public_key is not None and not isinstance(public_key, str):
        raise bad("'pkey' must be a string")
    if grant is not None and not isinstance(grant, str):
        raise bad("'grant' must be a string")
    if uid is None:
        if key is not None or grant is not None:
            raise bad("a 'key' or a 'grant' needs a 'uid'")
        return Hello(None, public_key)
    if key is not None and grant is not None:
        raise bad("a 'key' or a 'grant', not both")
    if not isinstance(uid, str):
        raise bad("'uid' must be a string")
    if key is not None and not isinstance(key, str):
        raise bad("'key' must be a string")
    parsed = parse_identifier(uid)  # 4400 for a bad uid, as on the legacy protocol
    if ":" in uid:
        raise ClientError(CloseCode.INVALID_IDENTIFIER, f"invalid uid {uid[:40]!r}: 1-128 letters, digits or _-.@")
    return Hello(Identifier(parsed.uid, key or None), public_key, grant)
