"""The Socket.IO dialect of one daemon, served at ``/socket.io/``."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from redmessenger.core.admission import ConnectionLimit, OriginPolicy
from redmessenger.core.hub import Hub
from redmessenger.dialects.engineio.contract import EngineSettings
from redmessenger.dialects.engineio.server import EngineServer
from redmessenger.dialects.engineio.transports import (
    EngineIOResource,
    EngineIOWebSocketFactory,
)
from redmessenger.dialects.socketio.codec import packet_key
from redmessenger.dialects.socketio.connection import SocketIOConnection
from redmessenger.logs import make_logger
from redmessenger.transport.sockets import Corks


class SocketIOServer:
    """The Socket.IO dialect of one daemon: its Engine.IO sessions (``engine``) and its HTTP resource."""

    log = make_logger()

    def __init__(
        self,
        *,
        hub: Hub,
        clock: IReactorTime,
        limit: ConnectionLimit,
        namespace: str,
        identify_timeout: float,
        listen_label: str,
        settings: EngineSettings,
        allowed_origins: tuple[str, ...],
        websocket_options: dict[str, Any],
        corks: Corks | None = None,
    ) -> None:
        self.hub = hub
        self.clock = clock
        self.namespace = namespace
        #: The keys of this namespace's message packets in Message's encoding cache, by bubble value.
        self.packet_keys = {bubble: packet_key(namespace, bubble) for bubble in (True, False)}
        self.identify_timeout = identify_timeout
        self.listen_label = listen_label
        #: Connects to a namespace other than ``namespace``, refused (logged as a few lines however many).
        self.refused_namespaces = 0
        self.engine = EngineServer(settings, clock, limit, lambda session: SocketIOConnection(session, self))
        self.websockets = EngineIOWebSocketFactory(self.engine, corks, **websocket_options)
        self.resource = EngineIOResource(self.engine, self.websockets, OriginPolicy(allowed_origins))

    def close_all(self) -> Deferred[None]:
        """
        At shutdown: end every session, so that clients reconnect (elsewhere) and
        what they did not confirm is delivered again or queued; fires once their
        WebSockets have closed.
        """
        if len(self.engine):
            self.log.info("Closing {count} Socket.IO sessions", count=len(self.engine))
        self.engine.close_all("server shutting down")
        return self.websockets.all_closed()
