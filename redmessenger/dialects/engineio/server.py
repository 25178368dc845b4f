"""
The Engine.IO server's live sessions by sid, and what they share (settings,
clock, the ``conn_limit`` slots, how each gets its handler).
"""

from __future__ import annotations

import secrets
from typing import Callable

from twisted.internet.interfaces import IReactorTime

from redmessenger.core.admission import ConnectionLimit
from redmessenger.dialects.engineio.contract import EngineSettings, SessionHandler, WebSocketTransport
from redmessenger.dialects.engineio.session import Session
from redmessenger.logs import make_logger, worth_a_line


class EngineServer:
    """The live sessions by sid, and what they share."""

    log = make_logger()

    def __init__(
        self,
        settings: EngineSettings,
        clock: IReactorTime,
        limit: ConnectionLimit,
        handler_factory: Callable[[Session], SessionHandler],
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.limit = limit
        self.handler_factory = handler_factory
        self._sessions: dict[str, Session] = {}
        #: Packets out of place (open, or upgrade on an established transport) the sessions ignored.
        self.misplaced_packets = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, sid: str) -> Session | None:
        return self._sessions.get(sid)

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def reserve(self) -> bool:
        """Take a ``conn_limit`` slot for a session about to open; False: refuse with 503."""
        return self.limit.acquire()

    def unreserve(self) -> None:
        """Give back a slot whose session never opened."""
        self.limit.release()

    def open_session(
        self, version: int, peer: str, websocket: WebSocketTransport | None = None, supports_binary: bool = False
    ) -> Session:
        """Open a session on a slot taken with :meth:`reserve`; the session gives it back when it ends."""
        sid = secrets.token_urlsafe(15)
        while sid in self._sessions:  # pragma: no cover - 120 random bits
            sid = secrets.token_urlsafe(15)
        session = Session(self, sid, version, peer, websocket, supports_binary)
        self._sessions[sid] = session
        session.start()
        return session

    def misplaced(self, session: Session, kind: str) -> None:
        """A session ignored a packet out of place: logged, the first and then every 1000th (a flood stays a few lines)."""
        self.misplaced_packets += 1
        if worth_a_line(self.misplaced_packets):
            self.log.info(
                "{peer}: unexpected {type} packet in session {sid}; ignored ({count} so far on this server)",
                peer=session.peer,
                sid=session.sid,
                type=kind,
                count=self.misplaced_packets,
            )

    def _forget(self, session: Session) -> None:
        if self._sessions.pop(session.sid, None) is session:
            self.limit.release()

    def close_all(self, reason: str) -> None:
        """End every session (at shutdown): clients reconnect, undelivered messages go back to their queues."""
        for session in list(self._sessions.values()):
            session.abort(reason, code=1001)
