"""``GET /health``: whether a load balancer should send clients to this daemon."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from redmessenger.ops.status import DaemonView, snapshot


class HealthResource(Resource):
    """``GET /health``: 200 when Redis is linked and subscribed, 503 with the reason otherwise."""

    isLeaf = True

    def __init__(self, view: DaemonView) -> None:
        super().__init__()
        self._view = view

    def render_GET(self, request: Request) -> bytes:
        state = snapshot(self._view)
        reason = state.unhealthy_reason
        body: dict[str, Any] = {
            "status": "ok" if reason is None else "unavailable",
            "redis": {
                "subscribed": state.link.subscribed,
                "commands_connected": state.link.commands_connected,
                "address": state.link.address,
                "reconnects": state.link.reconnects,
                "master_switches": state.link.master_switches,
                "probe_silences": state.link.probe_silences,
            },
            "uptime": round(state.uptime, 3),
            "node": {"id": self._view.node_id, "nodes": self._view.nodes(), "sockets": self._view.node_sockets()},
        }
        if reason is not None:
            body["reason"] = reason
            request.setResponseCode(503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode("utf-8") + b"\n"
