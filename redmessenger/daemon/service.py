"""
The wiring: builds the parts from a :class:`~redmessenger.daemon.config.Config` and runs them in order.

Start: listen (a port in use is fatal at once), then the embedded Redis if
configured (waited for), then the Redis link.  Stop: the reverse, with the
sockets closed (1001) and running queue handovers settled before the Redis link
goes, and the embedded server stopped last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

from redmessenger.daemon.config import Config
from redmessenger.core.dispatcher import Dispatcher
from redmessenger.dialects.engineio.transports import PATH as SOCKETIO_PATH
from redmessenger.model.errors import CloseCode
from redmessenger.core.admission import ConnectionLimit
from redmessenger.logs import make_logger
from redmessenger.ops.monitoring import Monitoring
from redmessenger.core.presence import Presence
from redmessenger.redis_edge.queues import QueueStore
from redmessenger.redis_edge.link import RedisLink, RedisSettings
from redmessenger.ops.system import fit_open_files_limit
from redmessenger.dialects.socketio.connection import make_socketio
from redmessenger.transport.http import RootResource, RouteResource, make_site
from redmessenger.dialects.plain.websocket import PlainWebSocketFactory


class RedMessengerService(Service):
    """The daemon: one port for clients, one link to Redis, optionally an embedded Redis."""

    log = make_logger()
    name = "redmessenger"

    #: Seconds each shutdown step may take (closing sockets, settling handovers, queue writes).
    shutdown_timeout = 5.0

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.started_at: float | None = None

        self.presence = Presence(config.user_socket_limit)
        self.link = RedisLink(
            reactor,
            RedisSettings(
                host=config.redis_host,
                port=config.redis_port,
                password=config.redis_password,
                username=config.redis_username,
                db=config.redis_db,
                tls=config.redis_tls,
                timeout=config.redis_timeout,
            ),
            on_message=self._on_publish,
        )
        self.store = QueueStore(
            self.link.commands, reactor, config.queue_expiry, config.queue_max_length, lookup_timeout=config.redis_timeout
        )
        self.dispatcher = Dispatcher(
            self.presence,
            self.store,
            reactor,
            secure_mode=config.secure_mode,
            handover_batch=config.handover_batch,
        )
        #: conn_limit, counted over both dialects together (redmessenger.core.admission).
        self.limit = ConnectionLimit(config.conn_limit)
        self.websockets = PlainWebSocketFactory(
            dispatcher=self.dispatcher,
            clock=reactor,
            route=config.rm_route,
            identify_timeout=config.identify_timeout,
            listen_label=config.listen if config.listen is not None else f"*:{config.ws_port}",
            ping_interval=config.ping_interval,
            allowed_origins=config.allowed_origins,
            limit=self.limit,
            **websocket_options(config),
        )
        # The Socket.IO dialect (redmessenger.dialects.socketio.connection) at /socket.io/, same core, same conn_limit.
        self.socketio = make_socketio(
            config, self.dispatcher, reactor, self.limit, self.websockets.listen_label, websocket_options(config)
        )
        self.root = RootResource()
        self.root.route(config.rm_route, RouteResource(self.websockets))
        self.root.route(SOCKETIO_PATH, self.socketio.resource)
        self.monitoring = Monitoring(self, reactor)
        self.dispatcher.on_live_delivery = self.monitoring.observe_delivery
        self.root.route("/health", self.monitoring.health)
        self.root.route("/metrics", self.monitoring.metrics)
        self.listening: IService = strports.service(config.listen_endpoint, make_site(self.root), reactor=reactor)
        self.embedded: Any = None
        if config.embedded_redis:
            from redmessenger.redis_edge.embedded import EmbeddedRedisService

            self.embedded = EmbeddedRedisService(
                reactor=reactor,
                host=config.redis_host,
                port=config.redis_port,
                data_dir=Path(config.embedded_redis_dir),
                password=config.redis_password,
            )
        self.manhole: Any = None
        if config.manhole is not None:
            from redmessenger.ops.manhole import ManholeService, make_namespace

            assert config.manhole_password_file is not None  # checked with the configuration
            self.manhole = ManholeService(config.manhole, config.manhole_password_file, make_namespace(self), reactor)
        #: The configuration file when run by twistd: SIGHUP re-reads it (redmessenger.daemon.reload).
        self.config_path: str | None = None
        self._hangup: Any = None

    def _on_publish(self, channel: bytes, payload: bytes) -> None:
        self.dispatcher.on_publish(channel, payload)

    # -- lifecycle -------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        fit_open_files_limit(self.config.conn_limit)
        # Listening here makes a port in use (or a bad certificate) fatal at start.
        self.listening.privilegedStartService()
        if self.manhole is not None:
            self.manhole.privilegedStartService()
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self.started_at = self.reactor.seconds()
        self.listening.startService()
        self.websockets.start()
        if self.manhole is not None:
            self.manhole.startService()
        if self.config_path is not None:
            from redmessenger.daemon.reload import HangupReload

            self._hangup = HangupReload(self, self.config_path, self.reactor)
            self._hangup.install()
        self.log.info(
            "RedMessenger listening on {listen}, route {route}, secure_mode {secure}",
            listen=self.config.listen_endpoint,
            route=self.config.rm_route,
            secure=self.config.secure_mode,
        )
        if self.embedded is None:
            self.link.start()
            return
        self.embedded.startService()
        self.embedded.whenReady().addCallbacks(lambda _: self.link.start(), self._embedded_failed)

    def _embedded_failed(self, failure: Failure) -> None:
        self.log.critical("The embedded Redis server did not start: {why}", why=failure.getErrorMessage())
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        """
        Stop accepting; close sockets with 1001 (their unconfirmed messages are
        queued again as they close); let handovers settle; wait for queue writes
        to land; then leave Redis, and stop the embedded server last.
        """
        if self._hangup is not None:
            self._hangup.uninstall()
        if self.manhole is not None:
            await self.manhole.stopService()
        await self.listening.stopService()
        self.websockets.stop()
        socketio_closed = self.socketio.close_all()
        await self.websockets.close_all(CloseCode.GOING_AWAY, "server shutting down").addTimeout(
            self.shutdown_timeout, self.reactor
        ).addErrback(lambda f: self.log.warn("Some sockets did not finish their close handshake in time"))
        await socketio_closed.addTimeout(self.shutdown_timeout, self.reactor).addErrback(
            lambda f: self.log.warn("Some Socket.IO WebSockets did not finish their close handshake in time")
        )
        await self.dispatcher.stop(self.shutdown_timeout)
        # Leave the subscription before the command connection: whatever Redis
        # counted as delivered to us is handled, and queued if its user is gone.
        await self.link.unsubscribe().addTimeout(self.shutdown_timeout, self.reactor).addErrback(
            lambda f: self.log.warn("Redis did not confirm the end of the subscription: {why}", why=f.getErrorMessage())
        )
        # Group messages waiting for their members are answered before this PING,
        # so the queue writes they make are sent before drain() looks.
        await self.link.round_trip().addTimeout(self.shutdown_timeout, self.reactor).addErrback(lambda f: None)
        await self.store.drain().addTimeout(self.shutdown_timeout, self.reactor).addErrback(
            lambda f: self.log.warn("Redis did not confirm every queue write in time")
        )
        self.store.stop()
        await self.link.stop()
        if self.embedded is not None:
            await self.embedded.stopService()
        self.log.info("RedMessenger stopped")


def websocket_options(config: Config) -> dict[str, Any]:
    """Autobahn protocol options derived from the configuration."""
    options: dict[str, Any] = {
        "maxFramePayloadSize": config.max_frame_bytes,
        "maxMessagePayloadSize": config.max_frame_bytes,
        "openHandshakeTimeout": 10,
        "closeHandshakeTimeout": 5,
        "tcpNoDelay": True,
        # send the close frame (1009, 1007...) before dropping, so the client learns why
        "failByDrop": False,
    }
    if config.websocket_compression:
        from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept

        def accept(offers: list[Any]) -> Any:
            for offer in offers:
                if isinstance(offer, PerMessageDeflateOffer):
                    return PerMessageDeflateOfferAccept(offer)
            return None

        options["perMessageCompressionAccept"] = accept
    return options
