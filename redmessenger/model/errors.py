"""
What a client can do wrong, and what it is told: one exception type, one table of codes.

Every wire dialect turns a :class:`ClientError` into its own error report (a
WebSocket close code and reason, a Socket.IO error packet) in one place.  The
codes are WebSocket close codes, so the plain dialect uses them as they are;
``docs/protocol.md`` lists them for client authors.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class CloseCode(IntEnum):
    """Close codes a client can see; 4xxx are RedMessenger's own (RFC 6455 §7.4.2)."""

    GOING_AWAY = 1001  # the daemon is shutting down: reconnect (elsewhere)
    UNSUPPORTED_DATA = 1003  # a binary frame: identifiers are text
    INVALID_PAYLOAD = 1007  # a text frame that is not UTF-8 (Autobahn's own close, and the fast path's)
    MESSAGE_TOO_BIG = 1009  # a frame larger than max_frame_bytes (sent by Autobahn itself)
    TRY_AGAIN_LATER = 1013  # Redis is unreachable: the identity could not be checked
    INVALID_IDENTIFIER = 4400  # the uid is empty, too long or has characters outside [A-Za-z0-9_.@-]
    BAD_KEY = 4401  # secure_mode: the key is missing or does not match rm:users:$uid:key
    IDENTIFY_TIMEOUT = 4408  # no identifier within identify_timeout seconds
    ALREADY_IDENTIFIED = 4409  # a second identifier (or any other frame) on an identified socket
    BAD_FRAME = 4422  # a session frame that is not what the protocol allows there (not JSON, unknown type, bad field)
    TOO_SLOW = 4413  # more than max_pending_bytes sent to the socket and not confirmed: it reads too slowly
    TOO_MANY_SOCKETS = 4429  # the uid already holds user_socket_limit sockets


@dataclass
class ClientError(Exception):
    """A client mistake: closes that client's socket with ``code`` and ``reason``, touches nothing else."""

    code: CloseCode
    reason: str

    def __str__(self) -> str:
        return f"{self.code.name} ({int(self.code)}): {self.reason}"
