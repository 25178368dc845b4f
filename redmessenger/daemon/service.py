"""
The wiring: builds every part from a :class:`~redmessenger.daemon.config.Config`
and runs them as one service tree, started in order and stopped in reverse
order, each stop awaited before the next begins.

Start: the clients' port is opened in the privileged phase (a port in use is
fatal at once), then the embedded Redis if configured (waited for), the Redis
link, the dialects' timers, the manhole, SIGHUP.  A start that cannot complete
is one critical line naming what and where, then a stop (under twistd, exit
status 1: see :mod:`redmessenger.daemon.tap`).  Stop, the reverse: stop
accepting; close every socket (1001; their unconfirmed messages are queued again
as they close); let queue handovers settle; leave Redis once what it sent us is
handled and our queue writes have landed; stop the embedded server last.
"""

from __future__ import annotations

import html
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from redmessenger.core.admission import ConnectionLimit
from redmessenger.core.hub import Hub
from redmessenger.daemon.config import Config
from redmessenger.daemon.operators import daemon_view, manhole_namespace
from redmessenger.daemon.settings import UNSENT_MARGIN, engine_settings, redis_settings, websocket_options
from redmessenger.daemon.tree import OrderedServices, StartFailed, Step
from redmessenger.dialects.engineio.transports import PATH as SOCKETIO_PATH
from redmessenger.dialects.plain.route import RouteResource
from redmessenger.dialects.plain.websocket import PlainWebSocketFactory
from redmessenger.dialects.socketio.server import SocketIOServer
from redmessenger.logs import make_logger
from redmessenger.model.errors import CloseCode
from redmessenger.model.keyspace import INTAKE_STREAM, answers_channel
from redmessenger.ops.health import HealthResource
from redmessenger.ops.metrics import Metrics
from redmessenger.ops.tuning import fit_open_files_limit
from redmessenger.redis_edge.application import RedisApplication
from redmessenger.redis_edge.demoapp import DemoApplication
from redmessenger.redis_edge.directory import Directory
from redmessenger.redis_edge.intake import IntakeReader
from redmessenger.redis_edge.link import INTAKE_BLOCK_SECONDS, RedisLink
from redmessenger.redis_edge.nodes import NodeRegistry, NodesChange
from redmessenger.redis_edge.peers import PeerLink
from redmessenger.redis_edge.queues import QueueStore
from redmessenger.transport import selftest
from redmessenger.transport.http import RootResource, StaticFile, make_site
from redmessenger.transport.httplimits import unfinished_limit
from redmessenger.transport.passing import Receiver, Sender
from redmessenger.transport.passing import address as passing_address
from redmessenger.transport.sockets import Corks

JAVASCRIPT = b"application/javascript; charset=utf-8"

#: Seconds each shutdown step may take (closing sockets, settling handovers, queue writes).
SHUTDOWN_TIMEOUT = 5.0


class RedMessengerService(OrderedServices):
    """The daemon: one port for clients, one link to Redis, optionally an embedded Redis."""

    log = make_logger()
    name = "redmessenger"

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.started_at: float | None = None
        #: The configuration file when run by twistd: SIGHUP re-reads it (redmessenger.daemon.reload).
        self.config_path: str | None = None
        #: Why the start failed (one line), once it has.
        self.start_failure: str | None = None
        #: Called once a start failed after the privileged phase (the reason is logged and in
        #: ``start_failure``).  By default the service stops; twistd's tap stops the reactor
        #: and makes the process exit with status 1.
        self.on_start_failure: Callable[[], object] = self.stopService

        # -- Redis and the core --
        #: The sockets' writes of a reactor turn, for both dialects: sent together at the
        #: end of each read of the subscriber, or of the turn.
        self.corks = Corks(reactor)
        #: Answers to this daemon's subscription requests come on a channel of its own (one per run).
        run = secrets.token_hex(5)
        self.answers_channel = answers_channel(run)
        self.link = RedisLink(
            reactor,
            redis_settings(config),
            on_message=self._on_publish,
            on_read=(self.corks.hold, self._end_of_read),
            direct=(self.answers_channel.encode("ascii"), self._on_answer),
            # the live nodes heard among the messages; a heartbeat as soon as subscribed; the subscription lost
            nodes=(lambda payload: self.nodes.heard(payload), lambda: self.nodes.subscribed(), lambda: self.nodes.unheard()),
        )
        #: The daemons sharing this Redis (docs/scale-out.md): heartbeats in rm:nodes.
        self.nodes = NodeRegistry(
            self.link.commands,
            reactor,
            config.consumer_name,
            connected=lambda: self.link.state.commands_connected,
            hearing=lambda: self.link.hearing_nodes and self.peers.ready,
            sockets=lambda: len(self.websockets.sockets) + len(self.socketio.engine),
            on_change=self._nodes_changed,
            in_order=lambda action: self.hub.in_order(action),
        )
        self.application = RedisApplication(
            self.link.commands, lambda: self.link.state.commands_connected, reactor, config.redis_timeout
        )
        self.store = QueueStore(self.link.commands, reactor, config.queue_expiry, config.queue_max_length)
        self.directory = Directory(self.link.commands, reactor, lookup_timeout=config.redis_timeout)
        self.hub = Hub(
            self.store,
            self.directory,
            reactor,
            secure_mode=config.secure_mode,
            handover_batch=config.handover_batch,
            user_socket_limit=config.user_socket_limit,
            max_payload_bytes=config.max_payload_bytes,
            max_pending_bytes=config.max_pending_bytes,
            memory_budget_bytes=config.memory_budget_bytes,
            application=self.application,
            answers_to=self.answers_channel,
            run=run,
            public_key=config.public_key,
            secret_key=config.secret_key,
            grant_ttl=config.grant_ttl,
            subscription_timeout=config.subscription_timeout,
            client_publish_max_bytes=config.client_publish_max_bytes,
            client_publish_rate=config.client_publish_rate,
            max_subscriptions=config.max_subscriptions,
        )
        self.link.on_message = self.hub.on_publish
        self.presence = self.hub.presence
        #: The other daemons on this Redis: owners of users, and this node's inbox (docs/scale-out.md).
        self.peers = PeerLink(
            self.hub, self.link.commands, self.link.inbox, config.consumer_name, reactor, run=self.nodes.run
        )
        self.hub.set_peers(self.peers)
        self.peers.on_ready = lambda: self.nodes.beat()
        # its subscription lost while listed: what it hears until it knows whether the others acted is kept
        self.nodes.on_unsure, self.nodes.on_sure = self.hub.router.unsure, self.hub.router.sure
        self.intake: IntakeReader | None = None
        if config.intake:
            self.intake = IntakeReader(
                self.link.reading,
                self.link.commands,
                reactor,
                config.consumer_name,
                self.hub.on_intake,
                block=INTAKE_BLOCK_SECONDS,
                # not while this daemon waits for the old reader's word: what that one read must come first
                reads=lambda: self.peers.listed and self.hub.owner(INTAKE_STREAM) is None and not self.peers.handoffs.holding,
            )
            self.hub.intake_done = self.intake.done
            self.hub.intake_delivered = self.intake.delivered
            self.peers.handoffs.reader_quiet = self.intake.quiet
            self.peers.handoffs.on_released = self.intake.wake

        # -- the dialects, on one port --
        #: conn_limit, counted over both dialects together (redmessenger.core.admission).
        self.limit = ConnectionLimit(config.conn_limit)
        listen_label = config.listen_label
        self.websockets = PlainWebSocketFactory(
            hub=self.hub,
            clock=reactor,
            route=config.rm_route,
            identify_timeout=config.identify_timeout,
            listen_label=listen_label,
            ping_interval=config.ping_interval,
            allowed_origins=config.allowed_origins,
            limit=self.limit,
            corks=self.corks,
            max_unsent_bytes=config.max_pending_bytes + UNSENT_MARGIN,
            **websocket_options(config),
        )
        #: pass_sockets: the way to pass a socket to its user's owner on this host, and this daemon's side of it.
        self.sender: Sender | None = None
        self.receiver: Receiver | None = None
        self._receiving: Any = None
        if config.pass_sockets:
            self.sender = Sender(reactor)
            self.receiver = Receiver(reactor, self.websockets, accepting=lambda: self.limit.in_use < self.limit.limit)
            self.websockets.pass_sockets(self.sender, lambda node: self.nodes.runs.get(node))
        self.socketio = SocketIOServer(
            hub=self.hub,
            clock=reactor,
            limit=self.limit,
            namespace=config.rm_route,
            identify_timeout=config.identify_timeout,
            listen_label=listen_label,
            settings=engine_settings(config),
            allowed_origins=config.allowed_origins,
            websocket_options=websocket_options(config),
            corks=self.corks,
        )

        # -- what operators see --
        self.view = daemon_view(self)
        self.metrics = Metrics(self.view)
        self.hub.set_live_delivery_observer(self.metrics.observe_delivery)
        if self.hub.channels is not None:
            self.hub.channels.on_answer_time = self.metrics.observe_request

        self.root = RootResource()
        self.root.route(config.rm_route, RouteResource(self.websockets))
        self.root.route(SOCKETIO_PATH, self.socketio.resource, on_body_refused=self.socketio.resource.body_refused)
        self.root.route("/health", HealthResource(self.view))
        self.root.route("/metrics", self.metrics.resource)
        self.root.route("/redmessenger-legacy.js", StaticFile.shipped("redmessenger-legacy.js", JAVASCRIPT))
        self.root.route("/redmessenger.js", StaticFile.shipped("redmessenger.js", JAVASCRIPT))
        #: demo: true: a chat page at /demo and an application permitting demo* channels (redis_edge/demoapp.py).
        self.demo: DemoApplication | None = None
        if config.demo:
            page = StaticFile.shipped("demo.html", b"text/html; charset=utf-8").content
            page = page.replace(b"<body>", b'<body data-route="' + html.escape(config.rm_route).encode() + b'">', 1)
            self.root.route("/demo", StaticFile(page, b"text/html; charset=utf-8"))
            self.demo = DemoApplication(self.link.commands, reactor)

        # -- the service tree, in start order --
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
            self.embedded.setServiceParent(self)
        Step("redis", self._start_redis, self._leave_redis).setServiceParent(self)
        Step("peers", lambda: None, self.peers.stop).setServiceParent(self)
        Step("nodes", self.nodes.start, self._leave_nodes).setServiceParent(self)
        Step("core", lambda: None, lambda: self.hub.stop(SHUTDOWN_TIMEOUT)).setServiceParent(self)
        Step("intake", lambda: None, self._stop_intake).setServiceParent(self)
        Step("dialects", self.websockets.start, self._close_sockets).setServiceParent(self)
        Step("passing", self._receive_sockets, self._stop_receiving).setServiceParent(self)
        # The largest body any path takes is an Engine.IO POST (maxPayload: max_frame_bytes).
        self.site = make_site(
            self.root, max_body=config.max_frame_bytes, max_unfinished=unfinished_limit(config.conn_limit), reactor=reactor
        )
        self.listening: IService = strports.service(config.listen_endpoint, self.site, reactor=reactor)
        self.listening.setName("listening")
        self.listening.setServiceParent(self)
        self.manhole: Any = None
        if config.manhole is not None:
            from redmessenger.ops.manhole import ManholeService

            assert config.manhole_password_file is not None  # checked with the configuration
            self.manhole = ManholeService(config.manhole, config.manhole_password_file, manhole_namespace(self), reactor)
            self.manhole.setServiceParent(self)
        self._hangup: Any = None
        if self.demo is not None:
            Step("demo", self.demo.start, lambda: self.demo.stop() if self.demo is not None else None).setServiceParent(self)
        Step("sighup", self._install_hangup, self._uninstall_hangup).setServiceParent(self)

    def _nodes_changed(self, nodes: list[str], change: NodesChange | None) -> None:
        self.peers.nodes_changed(nodes, change)
        if self.intake is not None:
            self.intake.wake()  # whether this daemon reads it may have changed

    def _leave_nodes(self) -> Deferred[None]:
        """Leave the list of nodes; once this daemon hears it left, it tells the others its last writes landed."""
        listed = self.peers.listed and self.link.hearing_nodes
        d = self.nodes.stop()
        if listed:
            d.addCallback(lambda _: self.peers.handoffs.gone(2.0))
        return d

    def _on_publish(self, channel: bytes, payload: bytes) -> None:
        """What the link is built with, before the hub exists (it then calls the hub directly)."""
        self.hub.on_publish(channel, payload)

    def _on_answer(self, payload: bytes) -> None:
        self.application.on_answer(payload)

    def _end_of_read(self) -> None:
        """A read of the subscriber is over: the sockets' frames go out, then the queue writes."""
        self.corks.release()
        self.store.flush()

    # -- lifecycle -------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        fit_open_files_limit(self.config.conn_limit)
        if self.embedded is not None:
            try:
                self.embedded.check_port()
            except OSError as e:
                where = f"{self.embedded.host}:{self.embedded.port}"
                raise self._cannot_start(f"embedded_redis: cannot listen on {where} (redis_port): {e.strerror}") from None
        # Children open their ports here: a port in use is fatal at start.
        Service.privilegedStartService(self)
        for child in self:
            try:
                child.privilegedStartService()
            except CannotListenError as e:
                raise self._cannot_start(self._cannot_listen(child, e)) from None

    def _cannot_start(self, why: str) -> StartFailed:
        self.start_failure = why
        self.log.critical("RedMessenger cannot start: {why}", why=why)
        return StartFailed(why)

    def _receive_sockets(self) -> None:
        """Listen for sockets other daemons on this host pass to this one (transport/passing.py)."""
        if self.receiver is None:
            return
        where = passing_address(self.nodes.run)
        try:
            self._receiving = self.reactor.listenUNIX(where, self.receiver, backlog=1024)
        except CannotListenError as e:
            self.log.warn("pass_sockets: cannot listen on {where!r} ({why}): sockets are relayed to this daemon", where=where, why=e)

    def _stop_receiving(self) -> Deferred[None] | None:
        receiving, self._receiving = self._receiving, None
        return receiving.stopListening() if receiving is not None else None

    def _cannot_listen(self, child: IService, error: CannotListenError) -> str:
        """``<key> <endpoint>: cannot listen on <address>: <reason>``, for the clients' port or the manhole's."""
        if child is self.listening:
            key = "listen" if self.config.listen is not None else "ws_port"
            endpoint = self.config.listen_endpoint
        elif child is self.manhole:
            key, endpoint = "manhole", str(self.config.manhole)
        else:
            raise error
        if error.interface is None and isinstance(error.port, (str, bytes)):
            where = error.port if isinstance(error.port, str) else error.port.decode(errors="replace")  # a UNIX socket's path
        else:
            where = f"{error.interface or '*'}:{error.port}"
        reason = error.socketError
        why = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        return f"{key} {endpoint}: cannot listen on {where}: {why}"

    def startService(self) -> None:
        self.started_at = self.reactor.seconds()
        selftest.self_test(self.reactor)
        super().startService()
        self.log.info(
            "RedMessenger listening on {listen}, route {route}, secure_mode {secure}",
            listen=self.config.listen_endpoint,
            route=self.config.rm_route,
            secure=self.config.secure_mode,
        )
        if self.config.open_to_anyone:
            self.log.warn(
                "Listening beyond loopback ({listen}) with secure_mode off: anyone who reaches this port can read "
                "and drain any user's queue. Set secure_mode (and keys in rm:users:$uid:key), or listen on loopback "
                "behind a proxy that authenticates (README, Running it in production)",
                listen=self.config.listen_label,
            )

    def stopService(self) -> Deferred[None]:
        d = super().stopService()
        return d.addCallback(lambda _: self.log.info("RedMessenger stopped"))

    def _start_redis(self) -> None:
        if self.embedded is None:
            self._start_link()
            return
        self.embedded.whenReady().addCallbacks(lambda _: self._start_link(), self._embedded_failed)

    def _start_link(self) -> None:
        self.link.start()
        self.link.start_inbox()
        self.peers.start()
        if self.intake is not None:
            self.link.start_reading()
            self.intake.start()

    def _stop_intake(self) -> Deferred[None] | None:
        """Stop reading the intake; once the queue writes of the closed sockets have landed, acknowledge what is safe."""
        if self.intake is None:
            return None
        return ensureDeferred(self._settle_intake(self.intake))

    async def _settle_intake(self, intake: IntakeReader) -> None:
        intake.stop()
        await self.store.drain().addTimeout(SHUTDOWN_TIMEOUT, self.reactor).addErrback(lambda f: None)
        await intake.flush().addTimeout(SHUTDOWN_TIMEOUT, self.reactor).addErrback(lambda f: None)
        if intake.in_flight:
            self.log.info(
                "{count} intake entries not safe yet at shutdown stay pending: read again at the next start",
                count=intake.in_flight,
            )

    def _embedded_failed(self, failure: Failure) -> None:
        if not self.running:
            return  # stopped while the server was starting: nothing failed
        from redmessenger.redis_edge.embedded import EmbeddedRedisError

        why = failure.value.summary if isinstance(failure.value, EmbeddedRedisError) else failure.getErrorMessage()
        self.start_failure = f"embedded_redis: {why}"
        self.log.critical("RedMessenger cannot start: {why}", why=self.start_failure)
        self.on_start_failure()

    def _close_sockets(self) -> Deferred[None]:
        """Close every client socket (1001), so that clients reconnect elsewhere; their unconfirmed messages go back."""
        self.websockets.stop()
        return ensureDeferred(self._close_all())

    async def _close_all(self) -> None:
        socketio_closed = self.socketio.close_all()
        await self.websockets.close_all(CloseCode.GOING_AWAY, "server shutting down").addTimeout(
            SHUTDOWN_TIMEOUT, self.reactor
        ).addErrback(lambda f: self.log.warn("Some sockets did not finish their close handshake in time"))
        await socketio_closed.addTimeout(SHUTDOWN_TIMEOUT, self.reactor).addErrback(
            lambda f: self.log.warn("Some Socket.IO WebSockets did not finish their close handshake in time")
        )

    def _leave_redis(self) -> Deferred[None]:
        return ensureDeferred(self._leave())

    async def _leave(self) -> None:
        # Leave the subscription before the command connection: whatever Redis
        # counted as delivered to us is handled, and queued if its user is gone.
        await self.link.unsubscribe().addTimeout(SHUTDOWN_TIMEOUT, self.reactor).addErrback(
            lambda f: self.log.warn("Redis did not confirm the end of the subscription: {why}", why=f.getErrorMessage())
        )
        # Group messages waiting for their members are answered before this PING,
        # so the queue writes they make are sent before drain() looks.
        await self.link.round_trip().addTimeout(SHUTDOWN_TIMEOUT, self.reactor).addErrback(lambda f: None)
        await self.store.drain().addTimeout(SHUTDOWN_TIMEOUT, self.reactor).addErrback(
            lambda f: self.log.warn("Redis did not confirm every queue write in time")
        )
        self.store.stop()
        await self.link.stop()

    def _install_hangup(self) -> None:
        if self.config_path is not None:
            from redmessenger.daemon.reload import HangupReload

            self._hangup = HangupReload(self, self.config_path, self.reactor)
            self._hangup.install()

    def _uninstall_hangup(self) -> None:
        if self._hangup is not None:
            self._hangup.uninstall()
            self._hangup = None
