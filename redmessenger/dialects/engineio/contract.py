"""
What an Engine.IO session is given and talks to: its settings, the errors a
request can get, and the three parties around it (the layer above, a pending
poll, a WebSocket), as interfaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from redmessenger.dialects.engineio.codec import EncodedPacket
from redmessenger.transport.fastpath import DEFAULT_MAX_UNSENT_BYTES


@dataclass(frozen=True)
class EngineSettings:
    """What the Engine.IO server announces and enforces; times in seconds."""

    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    #: Largest POST body or WebSocket frame a client may send, in bytes (``maxPayload``).
    max_payload: int = 100_000
    #: Seconds a probing WebSocket has to send the upgrade packet.
    upgrade_timeout: float = 10.0
    #: Largest poll response, in bytes: a long queue goes out over several polls.
    max_poll_bytes: int = 1 << 20
    #: Bytes waiting for a poll (UTF-8) past which a client that sends something is too slow (4413): it asks
    #: for more (pongs, replies) than it reads.  As a WebSocket's ``max_unsent_bytes``: above ``max_pending_bytes``.
    max_buffered_bytes: int = DEFAULT_MAX_UNSENT_BYTES


class EngineError(Exception):
    """A request the Engine.IO server refuses: HTTP ``status`` and the engine.io error code and message."""

    #: engine.io's error codes, which clients log.
    TRANSPORT_UNKNOWN = 0
    SESSION_UNKNOWN = 1
    BAD_HANDSHAKE_METHOD = 2
    BAD_REQUEST = 3
    FORBIDDEN = 4
    UNSUPPORTED_VERSION = 5

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class SessionHandler(Protocol):
    """The layer above (Socket.IO): told about the session's life."""

    def on_open(self) -> None:
        """The open packet is out; the handler may send its first packets."""

    def on_message(self, data: str) -> None:
        """A message packet from the client."""

    def on_backed_up(self, unread: int) -> None:
        """
        The client sent something while ``unread`` bytes (more than ``max_buffered_bytes``) waited for its
        polls, or on its WebSocket waited unsent (more than the factory's ``max_unsent_bytes``): it is too
        slow, and the handler ends the session (after :meth:`Session.drop_buffered`).
        """

    def on_close(self, reason: str) -> None:
        """The session ended; confirmations still awaited fail right after this call."""


class PollRequest(Protocol):
    """A pending long-polling GET; answered exactly once, unless its connection dropped."""

    #: Answer with revision 3's binary payload (a client with XHR2; see redmessenger.dialects.engineio.codec).
    binary: bool

    def answer(self, payload: bytes) -> None:
        """Write ``payload`` (framed for the session's revision) as the response and finish it."""


class WebSocketTransport(Protocol):
    """A WebSocket carrying (or probing for) a session."""

    def write(self, packet: EncodedPacket) -> bool:
        """Write one packet as one frame; False (nothing written) once the socket is closing."""

    def ping(self, token: int) -> None:
        """Send a WebSocket ping (unless closing); its pong comes back as ``Session.websocket_pong(token)``."""

    def close(self, code: int, reason: str) -> None: ...
