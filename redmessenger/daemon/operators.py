"""
What operators see of a running daemon (docs/operations.md): the read-only view
the status screen, /health and /metrics are given, and what a manhole session
starts with.  Built from the wiring (service.py), which it only reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redmessenger.daemon.settings import redis_settings
from redmessenger.ops.status import DaemonView, Settings
from redmessenger.redis_edge.directory import longest_queues
from redmessenger.transport.passing import Outcome

if TYPE_CHECKING:
    from redmessenger.daemon.service import RedMessengerService


def daemon_view(service: RedMessengerService) -> DaemonView:
    """What the operators' parts (status, /health, /metrics) are given of the daemon: read-only, as callables."""
    config = service.config
    presence = service.hub.presence
    return DaemonView(
        clock=service.reactor,
        settings=Settings(
            redis=f"{redis_settings(config).describe()} db {config.redis_db}",
            listen=config.listen_endpoint,
            route=config.rm_route,
            secure_mode=config.secure_mode,
            conn_limit=config.conn_limit,
        ),
        counters=service.hub.counters,
        link=service.link.state,
        started_at=lambda: service.started_at,
        running=lambda: bool(service.running),
        connections=lambda: service.limit.in_use,
        connections_refused=lambda: service.limit.refused,
        sockets_open=lambda: len(service.websockets.sockets) + len(service.socketio.engine),
        socketio_sessions=lambda: len(service.socketio.engine),
        sockets_identified=lambda: sum(len(user.attachments) for user in presence.users()),
        users_online=lambda: len(presence),
        handovers_running=lambda: service.hub.handovers.running,
        queue_backlog=lambda: service.store.backlog,
        pending_bytes=lambda: service.hub.budget.used,
        intake_in_flight=lambda: service.intake.in_flight if service.intake is not None else 0,
        budget_bites=lambda: service.hub.budget.bites,
        subscriptions=lambda: service.hub.channels.subscriptions if service.hub.channels is not None else 0,
        requests_waiting=lambda: service.hub.channels.waiting if service.hub.channels is not None else 0,
        node_id=config.consumer_name,
        nodes=lambda: service.nodes.nodes,
        node_sockets=lambda: service.nodes.sockets,
        relays=lambda: service.peers.relays,
        remote_sockets=lambda: service.peers.remote,
        inbox_resent=lambda: service.peers.resent,
        inbox_batches_lost=lambda: service.peers.lost_batches,
        barriers_missed=lambda: service.peers.handoffs.timed_out,
        sockets_passed=lambda: service.sender.counts[Outcome.PASSED] if service.sender is not None else 0,
        passes_unanswered=lambda: service.sender.counts[Outcome.UNANSWERED] if service.sender is not None else 0,
        sockets_adopted=lambda: service.receiver.adopted if service.receiver is not None else 0,
        http_unfinished=lambda: service.site.unfinished,
        http_refused=lambda: service.site.refusals(),
        longest_queues=lambda limit: longest_queues(service.link.commands, limit),
    )

def manhole_namespace(service: RedMessengerService) -> dict[str, Any]:
    """What a manhole session starts with: ``status()``, and the parts for a closer look."""
    from redmessenger.ops.manhole import PendingReport, status

    def status_of_service(limit: int = 10) -> PendingReport:
        """Uptime, Redis link, sockets, users, totals since start and the ``limit`` longest queues."""
        return status(service.view, limit)

    return {
        "service": service,
        "status": status_of_service,
        "config": service.config,
        "hub": service.hub,
        "presence": service.hub.presence,
        "link": service.link,
        "reactor": service.reactor,
    }
