"""
The upgrade of an Engine.IO session from long-polling to a WebSocket (the
package's description): a WebSocket opened with the session's ``sid`` is its
*probe*.  It answers the client's ``2probe`` with ``3probe`` (the client then
stops polling: the GET waiting is answered), and the client's ``5`` (upgrade)
makes it the session's transport.  A probe that sends anything else (another
packet, or what is not Engine.IO: an empty text frame, a binary frame), or no
upgrade within ``upgrade_timeout`` seconds, is closed, and the session goes on
polling.  What moving to the WebSocket does to the session (the buffer, the
poll waiting, the confirmations) is the session's (:meth:`Session.upgraded`).
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from redmessenger.dialects.engineio.codec import PROBE_PONG, Packet, PacketType
from redmessenger.dialects.engineio.contract import WebSocketTransport
from redmessenger.logs import make_logger


class Upgrading(Protocol):
    """What a probe needs of its session (redmessenger.dialects.engineio.session.Session)."""

    peer: str
    sid: str

    def release_poll(self) -> None: ...

    def upgraded(self, websocket: WebSocketTransport) -> None: ...

    def probe_ended(self) -> None: ...


class Probe:
    """A WebSocket probing for a session, until it completes the upgrade or is closed."""

    log = make_logger()

    __slots__ = ("websocket", "answered", "_session", "_timeout", "_timer")

    def __init__(self, session: Upgrading, websocket: WebSocketTransport, clock: IReactorTime, timeout: float) -> None:
        self.websocket = websocket
        #: Whether it answered ``3probe``: the client is to stop polling.
        self.answered = False
        self._session = session
        self._timeout = timeout
        self._timer: IDelayedCall | None = clock.callLater(timeout, self._timed_out)

    def packet(self, packet: Packet) -> None:
        """A packet the probe read."""
        if packet.type is PacketType.PING and packet.data == "probe":
            self.websocket.write(PROBE_PONG)
            self.answered = True
            self._session.release_poll()  # so that the client can pause polling
        elif packet.type is PacketType.UPGRADE:
            self.cancel()
            self._session.upgraded(self.websocket)
        else:
            self.fail(f"unexpected packet {packet.type.name}", 1002)

    def fail(self, why: str, code: int) -> None:
        """
        The probe sent what it may not (another packet, or what is not Engine.IO: an empty
        text frame, a binary frame): it is closed with ``code``, and the session goes on polling.
        """
        session = self._session
        self.log.info(
            "{peer}: {why} during the upgrade of session {sid}; closing the probe", peer=session.peer, sid=session.sid, why=why
        )
        self.cancel()
        session.probe_ended()
        self.websocket.close(code, f"{why} during upgrade")

    def cancel(self) -> None:
        """No upgrade to wait for any more (done, closed, or the session ended)."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timed_out(self) -> None:
        self._timer = None
        session = self._session
        self.log.info(
            "{peer}: no upgrade packet within {timeout}s for session {sid}; closing the probe",
            peer=session.peer,
            sid=session.sid,
            timeout=self._timeout,
        )
        session.probe_ended()
        self.websocket.close(1000, "upgrade timeout")
