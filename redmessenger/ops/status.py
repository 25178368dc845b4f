"""
The operators' view of a running daemon: :class:`DaemonView` (what ops may
read, handed over by the wiring), :class:`Snapshot` (its state at one moment)
and the text of the manhole's ``status()``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from redmessenger import __version__
from redmessenger.core.counters import Counters
from redmessenger.core.ports import LinkState

#: The longest queues: (uid and length, longest first; queues scanned; whether the scan finished).
LongestQueues = Callable[[int], Awaitable[tuple[list[tuple[str, int]], int, bool]]]


@dataclass(frozen=True)
class Settings:
    """The configuration as operators read it in a status screen (nothing here changes at run time)."""

    redis: str
    listen: str
    route: str
    secure_mode: bool
    conn_limit: int


@dataclass(frozen=True)
class DaemonView:
    """A narrow, read-only view of the running daemon: the one thing ops modules are given."""

    clock: IReactorTime
    settings: Settings
    counters: Counters
    link: LinkState
    started_at: Callable[[], float | None]
    running: Callable[[], bool]
    connections: Callable[[], int]
    connections_refused: Callable[[], int]
    sockets_open: Callable[[], int]
    socketio_sessions: Callable[[], int]
    sockets_identified: Callable[[], int]
    users_online: Callable[[], int]
    handovers_running: Callable[[], int]
    queue_backlog: Callable[[], int]
    #: Bytes sent to sockets and not confirmed yet (redmessenger.core.budget), and sockets closed for the budget.
    pending_bytes: Callable[[], int]
    #: Intake entries read and not safe (acknowledged) yet.
    intake_in_flight: Callable[[], int]
    budget_bites: Callable[[], int]
    #: Channels (SPEC §7): subscriptions active here, requests waiting for the application's answer.
    subscriptions: Callable[[], int]
    requests_waiting: Callable[[], int]
    #: This daemon's name among the nodes sharing its Redis, and the live nodes (docs/scale-out.md).
    node_id: str
    nodes: Callable[[], list[str]]
    #: Each live node's open sockets, as of its last heartbeat.
    node_sockets: Callable[[], dict[str, int]]
    #: Sockets held here for owners elsewhere (relays), and sockets of users owned here held elsewhere.
    relays: Callable[[], int]
    remote_sockets: Callable[[], int]
    #: Inbox entries sent again for want of an answer, and changes of the nodes gone on without a node's word.
    inbox_resent: Callable[[], int]
    #: Batches other daemons wrote to this one's inbox that never arrived (their numbers skipped).
    inbox_batches_lost: Callable[[], int]
    barriers_missed: Callable[[], int]
    #: Sockets passed to their owner on this host (pass_sockets), passed unanswered, and adopted from others.
    sockets_passed: Callable[[], int]
    passes_unanswered: Callable[[], int]
    sockets_adopted: Callable[[], int]
    #: HTTP before a route (transport/httplimits.py): connections whose request is on its way, and since start the
    #: requests refused by reason (503 past max_unfinished, 408 past the deadline, 413 a body too large).
    http_unfinished: Callable[[], int]
    http_refused: Callable[[], dict[str, int]]
    longest_queues: LongestQueues


@dataclass(frozen=True)
class Snapshot:
    """The daemon's state at one moment, as operators want to read it."""

    started_at: float | None
    uptime: float
    connections: int
    connections_refused: int
    sockets_open: int
    socketio_sessions: int
    sockets_identified: int
    users_online: int
    handovers_running: int
    queue_backlog: int
    counters: Counters
    link: LinkState
    running: bool
    #: Whether this daemon is among the live nodes as it last heard them (it acts on users' PUBLISHes only then).
    listed: bool = True

    @property
    def healthy(self) -> bool:
        return self.unhealthy_reason is None

    @property
    def unhealthy_reason(self) -> str | None:
        """Why a load balancer should not send clients here, or None."""
        if not self.running:
            return "shutting down"
        if self.link.unsupported is not None:
            return self.link.unsupported
        why = f" (last error: {self.link.last_error})" if self.link.last_error else ""
        if not self.link.commands_connected:
            return "Redis command connection down" + why
        if not self.link.subscribed:
            return "not subscribed to Redis pub/sub" + why
        if not self.listed:
            return "not listed among the daemons sharing this Redis (rm:nodes) yet: its heartbeat has not been heard"
        return None


def snapshot(view: DaemonView) -> Snapshot:
    """Read the daemon's state; cheap enough for every scrape (one pass over online users)."""
    started = view.started_at()
    return Snapshot(
        started_at=started,
        uptime=0.0 if started is None else view.clock.seconds() - started,
        connections=view.connections(),
        connections_refused=view.connections_refused(),
        sockets_open=view.sockets_open(),
        socketio_sessions=view.socketio_sessions(),
        sockets_identified=view.sockets_identified(),
        users_online=view.users_online(),
        handovers_running=view.handovers_running(),
        queue_backlog=view.queue_backlog(),
        counters=view.counters,
        link=view.link,
        running=view.running(),
        listed=view.node_id in view.nodes(),
    )


async def status_text(view: DaemonView, limit: int = 10) -> str:
    """The manhole's ``status()``: one screen of what an operator asks first."""
    state = snapshot(view)
    settings = view.settings
    link = state.link
    counters = state.counters

    def up(flag: bool) -> str:
        return "up" if flag else "DOWN"

    started = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state.started_at)) if state.started_at is not None else "-"
    )
    lines = [
        f"RedMessenger {__version__}, pid {os.getpid()}, up {duration(state.uptime)} (since {started})",
        f"Health:     {'ok' if state.healthy else 'UNAVAILABLE: ' + str(state.unhealthy_reason)}",
        f"Redis:      {settings.redis}; subscriber {up(link.subscribed)}, "
        f"commands {up(link.commands_connected)} (at {link.address or '-'}); reconnects {link.reconnects}; "
        f"masters followed {link.master_switches}; last error: {link.last_error or '-'}",
        f"Nodes:      {len(view.nodes())} on this Redis ({_nodes_text(view) or 'none yet'}); this one: {view.node_id}",
        f"Relays:     {view.relays()} sockets held here for other owners, {view.remote_sockets()} of this one's users held "
        f"elsewhere; since start {view.inbox_resent()} inbox entries sent again, {view.inbox_batches_lost()} batches "
        f"lost on the way here, {view.barriers_missed()} changes "
        "gone on without a node's word",
        f"Passing:    since start {view.sockets_passed()} sockets passed to their owner on this host "
        f"({view.passes_unanswered()} unanswered), {view.sockets_adopted()} adopted from other daemons",
        f"Listening:  {settings.listen}, route {settings.route}, secure_mode {'on' if settings.secure_mode else 'off'}",
        f"Sockets:    {state.sockets_open} open ({state.socketio_sessions} Socket.IO), {state.sockets_identified} "
        f"identified; {state.connections} of conn_limit {settings.conn_limit} in use, {state.connections_refused} refused",
        f"HTTP:       {view.http_unfinished()} requests on their way; since start refused: "
        + ", ".join(f"{reason} {count}" for reason, count in view.http_refused().items()),
        f"Users:      {state.users_online} online; {state.handovers_running} queue handovers running",
        f"Since start: {counters.published} published, {counters.delivered} delivered live, "
        f"{counters.queued} queued, {counters.handed_over} handed over from queues",
        f"Identified: {counters.identified}; refused: "
        + (", ".join(f"{reason} {count}" for reason, count in sorted(counters.refused.items())) or "none"),
        f"Channels:   {view.subscriptions()} subscriptions, {view.requests_waiting()} requests waiting; since start "
        f"{counters.subscriptions_permitted} permitted, {counters.subscriptions_denied} denied "
        f"({counters.subscriptions_timed_out} timed out), {counters.client_publishes} client publishes",
        f"Waiting for Redis: {state.queue_backlog} queue entries",
    ]
    if not link.commands_connected:
        lines.append("Longest queues: unknown (the Redis command connection is down)")
    else:
        try:
            queues, scanned, complete = await view.longest_queues(limit)
        except Exception as e:  # a status screen reports, it does not raise
            lines.append(f"Longest queues: unknown ({e})")
        else:
            scope = f"of {scanned} queues" if complete else f"of the first {scanned} queues scanned"
            lines.append(f"Longest queues ({scope}):" if queues else "Longest queues: none, every queue is empty")
            lines.extend(f"  {uid:<40} {length:>9}" for uid, length in queues)
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """``3d 04:05:06``: how operators read an uptime."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


def _nodes_text(view: DaemonView) -> str:
    sockets = view.node_sockets()
    counts = [(node, sockets.get(node, 0)) for node in view.nodes()]
    return ", ".join(f"{node}: {count} socket{'' if count == 1 else 's'}" for node, count in counts)
