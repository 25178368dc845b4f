"""The states of an Engine.IO session (redmessenger.dialects.engineio.session.Session.state)."""

from __future__ import annotations

from enum import Enum


class State(Enum):
    OPEN = "open"
    #: Ending on the server's initiative: the last packets wait for the client's next GET.
    CLOSING = "closing"
    CLOSED = "closed"
