"""
``GET /metrics``: the daemon's state in the Prometheus text format.

Everything is read at scrape time from the state the daemon keeps anyway
(:class:`~redmessenger.core.counters.Counters`, the link state, the presence
registry, through :class:`~redmessenger.ops.status.DaemonView`): a message costs
the metrics nothing, except one histogram observation per live delivery for the
latency.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from twisted.web.resource import Resource
from twisted.web.server import Request

from redmessenger import __version__
from redmessenger.model.envelope import Message
from redmessenger.model.errors import CloseCode
from redmessenger.ops.status import DaemonView, snapshot

#: Latency buckets, in seconds: a live delivery normally takes well under a
#: millisecond; group messages wait for one Redis round trip for their members.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DaemonCollector:
    """A prometheus-client collector that reads the daemon's counters when scraped."""

    def __init__(self, view: DaemonView) -> None:
        self._view = view

    def describe(self) -> list[Metric]:
        # Nothing to declare up front: registering must not read a daemon that is not built yet.
        return []

    def collect(self) -> Iterator[Metric]:
        state = snapshot(self._view)
        counters = state.counters
        prefix = "redmessenger_"

        info = GaugeMetricFamily(prefix + "info", "RedMessenger version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        if state.started_at is not None:
            yield GaugeMetricFamily(prefix + "start_time_seconds", "When the daemon started (Unix time)", state.started_at)
        yield GaugeMetricFamily(
            prefix + "connections", "Clients connected, both dialects (counted against conn_limit)", state.connections
        )
        yield CounterMetricFamily(
            prefix + "connections_refused", "Handshakes refused because conn_limit was reached", state.connections_refused
        )
        yield GaugeMetricFamily(
            prefix + "connection_limit", "conn_limit: the most parallel connections accepted",
            self._view.settings.conn_limit,
        )
        sockets = GaugeMetricFamily(prefix + "sockets_open", "Client sockets open, by dialect", labels=["dialect"])
        sockets.add_metric(["websocket"], state.sockets_open - state.socketio_sessions)
        sockets.add_metric(["socketio"], state.socketio_sessions)
        yield sockets
        yield GaugeMetricFamily(prefix + "sockets_identified", "Sockets that have identified a user", state.sockets_identified)
        yield GaugeMetricFamily(prefix + "users_online", "Users with at least one identified socket", state.users_online)
        yield GaugeMetricFamily(
            prefix + "handovers_running", "Queues being delivered to a socket that just identified", state.handovers_running
        )
        yield GaugeMetricFamily(
            prefix + "queue_backlog", "Queue entries kept in memory until Redis accepts them", state.queue_backlog
        )

        yield CounterMetricFamily(prefix + "identifications", "Sockets identified since start", counters.identified)
        refusals = CounterMetricFamily(
            prefix + "refusals", "Sockets refused or closed for a client mistake, by reason", labels=["reason"]
        )
        reasons = dict.fromkeys((code.name for code in CloseCode if code is not CloseCode.GOING_AWAY), 0)
        reasons.update(counters.refused)
        for reason, count in sorted(reasons.items()):
            refusals.add_metric([reason], count)
        yield refusals
        yield CounterMetricFamily(prefix + "messages_published", "PUBLISHes received from Redis", counters.published)
        yield CounterMetricFamily(
            prefix + "messages_delivered", "Live messages given to an online user's sockets", counters.delivered
        )
        yield CounterMetricFamily(
            prefix + "messages_queued", "Messages appended to an offline user's queue (one per user)", counters.queued
        )
        yield CounterMetricFamily(
            prefix + "messages_handed_over", "Queued messages written to a socket after it identified", counters.handed_over
        )
        yield CounterMetricFamily(
            prefix + "messages_oversize",
            "Messages not delivered because their payload exceeded max_payload_bytes (kept aside in rm:oversize:*)",
            counters.oversize,
        )

        view = self._view
        yield CounterMetricFamily(
            prefix + "intake_read", "Entries read from the durable intake stream (rm:intake)", counters.intake
        )
        yield CounterMetricFamily(
            prefix + "intake_acknowledged",
            "Intake entries acknowledged: every recipient's copy delivered and confirmed, or queued",
            counters.intake_acked,
        )
        yield GaugeMetricFamily(
            prefix + "intake_in_flight", "Intake entries read and not acknowledged yet", view.intake_in_flight()
        )
        yield GaugeMetricFamily(
            prefix + "pending_bytes",
            "Bytes sent to sockets (or held for them) and not confirmed yet, about (bounded by memory_budget_bytes)",
            view.pending_bytes(),
        )
        yield CounterMetricFamily(
            prefix + "budget_closes",
            "Sockets closed as too slow because the daemon was past memory_budget_bytes",
            view.budget_bites(),
        )

        yield GaugeMetricFamily(prefix + "nodes", "Daemons sharing this Redis (rm:nodes heartbeats)", len(view.nodes()))
        node_sockets = GaugeMetricFamily(
            prefix + "node_sockets", "Open sockets of each daemon sharing this Redis, as of its last heartbeat", labels=["node"]
        )
        for node, count in sorted(view.node_sockets().items()):
            node_sockets.add_metric([node], count)
        yield node_sockets
        # Several daemons on one Redis (docs/scale-out.md): relays, their inboxes, sockets passed on this host.
        scale_out: tuple[tuple[type[GaugeMetricFamily] | type[CounterMetricFamily], str, str, int], ...] = (
            (GaugeMetricFamily, "relayed_sockets", "Sockets held here for users another daemon owns (reached through its inbox)",
             view.relays()),
            (GaugeMetricFamily, "remote_sockets", "Sockets of users this daemon owns that other daemons hold", view.remote_sockets()),
            (CounterMetricFamily, "inbox_resent",
             "Attaches and confirmation requests sent again to another daemon for want of an answer (a lost inbox entry)",
             view.inbox_resent()),
            (CounterMetricFamily, "inbox_batches_lost",
             "Batches other daemons wrote to this one's inbox that never arrived (a Redis failover, a failed write)",
             view.inbox_batches_lost()),
            (CounterMetricFamily, "node_changes_unconfirmed",
             "Changes of the daemons after which this one went on without another's word that its writes had landed (2 s)",
             view.barriers_missed()),
            (CounterMetricFamily, "sockets_passed", "Sockets passed to their user's owner, a daemon on this host (pass_sockets)",
             view.sockets_passed()),
            (CounterMetricFamily, "socket_passes_unanswered",
             "Sockets sent to a daemon on this host that did not answer for them (let go: the client may see a close)",
             view.passes_unanswered()),
            (CounterMetricFamily, "sockets_adopted", "Sockets other daemons on this host passed to this one (pass_sockets)",
             view.sockets_adopted()),
        )  # fmt: skip
        for family, name, text, value in scale_out:
            yield family(prefix + name, text, value)
        yield GaugeMetricFamily(
            prefix + "http_requests_unfinished",
            "HTTP connections whose request is on its way (refused with 503 past max(100, conn_limit/10))",
            view.http_unfinished(),
        )
        http_refused = CounterMetricFamily(
            prefix + "http_refusals",
            "HTTP requests refused before their route: unfinished_limit (503), request_timeout (408), body_too_large (413)",
            labels=["reason"],
        )
        for reason, count in view.http_refused().items():
            http_refused.add_metric([reason], count)
        yield http_refused
        yield GaugeMetricFamily(
            prefix + "subscriptions", "Channel subscriptions of this daemon's sockets (SPEC §7)", view.subscriptions()
        )
        yield GaugeMetricFamily(
            prefix + "subscription_requests_waiting", "Subscription requests waiting for the application", view.requests_waiting()
        )
        requests = CounterMetricFamily(
            prefix + "subscription_requests", "Subscription requests answered, by outcome", labels=["outcome"]
        )
        requests.add_metric(["permitted"], counters.subscriptions_permitted)
        requests.add_metric(["denied"], counters.subscriptions_denied - counters.subscriptions_timed_out)
        requests.add_metric(["timed_out"], counters.subscriptions_timed_out)
        yield requests
        yield CounterMetricFamily(
            prefix + "client_publishes", "Messages clients published on channels (accepted by the checks)", counters.client_publishes
        )

        connected = GaugeMetricFamily(
            prefix + "redis_connected", "1 while the Redis connection is up (and subscribed)", labels=["connection"]
        )
        connected.add_metric(["subscriber"], int(state.link.subscribed))
        connected.add_metric(["commands"], int(state.link.commands_connected))
        yield connected
        yield CounterMetricFamily(
            prefix + "redis_reconnects", "Times the Redis link was lost and had to reconnect", state.link.reconnects
        )
        link = state.link
        away = link.unsubscribed_seconds
        if link.unsubscribed_since is not None:
            away += self._view.clock.seconds() - link.unsubscribed_since
        yield CounterMetricFamily(
            prefix + "redis_unsubscribed_seconds",
            "Seconds the subscriber was away after losing its connection (a PUBLISH then reaches nobody here)",
            away,
        )
        if link.last_gap is not None:
            yield GaugeMetricFamily(
                prefix + "redis_last_resubscribe_seconds",
                "How long the last loss of the subscriber's connection lasted, until PSUBSCRIBE was answered again",
                link.last_gap,
            )


class LatencyHistogram:
    """
    A Prometheus histogram with a cheap ``observe``: prometheus_client's takes
    two locks and searches the buckets linearly, about 3 µs once per live
    message, a tenth of the daemon's time per message under load.  Only the
    reactor thread observes, so a bisect and two additions do; the exposition,
    built at scrape time, is the same.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = tuple(buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self._bounds, seconds)] += 1  # the first bucket whose bound is >= seconds
        self._sum += seconds

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        cumulative = 0
        buckets = []
        for bound, count in zip(self._bounds + (float("inf"),), self._counts):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(self._name, self._documentation, buckets=buckets, sum_value=self._sum)


class Metrics:
    """The daemon's registry (one per daemon: several can run in one process, as the tests do) and its resource."""

    def __init__(self, view: DaemonView) -> None:
        self._clock = view.clock
        self.registry = CollectorRegistry()
        self.registry.register(DaemonCollector(view))
        ProcessCollector(registry=self.registry)  # open fds vs the limit, memory, CPU
        PlatformCollector(registry=self.registry)
        self._latency = LatencyHistogram(
            "redmessenger_delivery_latency_seconds",
            "From receiving the PUBLISH to writing it to an online user's sockets",
            LATENCY_BUCKETS,
        )
        self.registry.register(self._latency)
        self._requests = LatencyHistogram(
            "redmessenger_subscription_request_seconds",
            "From asking the application about a subscription to its answer",
            LATENCY_BUCKETS,
        )
        self.registry.register(self._requests)
        self.resource = MetricsResource(self.registry)

    def observe_request(self, seconds: float) -> None:
        """Called by the core once per subscription request the application answered."""
        self._requests.observe(seconds)

    def observe_delivery(self, message: Message) -> None:
        """Called by the core once per message delivered live, on the hot path: keep it one line."""
        self._latency.observe(max(0.0, self._clock.seconds() - message.timestamp / 1000.0))


class MetricsResource(Resource):
    """``GET /metrics``: the registry in Prometheus text format (OpenMetrics if the scraper asks)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader("accept") or ""
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return encoder(self._registry)
