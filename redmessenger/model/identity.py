r"""
What a client sends to say who it is: ``uid``, ``uid:`` or ``uid:key`` (SPEC §4),
optionally followed by one line end (``\n`` or ``\r\n``), which is not part of it:
a terminal client such as websocat sends the Enter that ends the line typed.
"""

from __future__ import annotations

from dataclasses import dataclass

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
