"""
The daemons sharing one Redis see each other (docs/scale-out.md, step 1):
heartbeats in rm:nodes, a clean stop leaving at once, a silent node expiring;
shown in status(), /health and /metrics.
"""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet.testing import Clock

from redmessenger.ops.status import status_text
from redmessenger.redis_edge.nodes import NodeRegistry

from ..httpclient import http_get, scrape


@pytest_twisted.ensureDeferred
async def test_two_daemons_on_one_redis_list_each_other_and_a_stopped_one_leaves(daemon_factory, redis):
    first = await daemon_factory(node_id="node-a")
    second = await daemon_factory(node_id="node-b")
    await second.until(lambda: first.service.nodes.nodes == ["node-a", "node-b"], 5, "node-a to see node-b")
    await first.until(lambda: second.service.nodes.nodes == ["node-a", "node-b"], 5, "node-b to see node-a")
    assert "Nodes:      2 on this Redis (node-a, node-b); this one: node-b" in await status_text(second.service.view)
    code, _, body = await http_get(second.port, "/health")
    assert (code, json.loads(body)["node"]) == (200, {"id": "node-b", "nodes": ["node-a", "node-b"]})
    assert (await scrape(second.port))["redmessenger_nodes"] == 2
    await first.service.stopService()
    assert [m.decode() for m in redis.zrange("rm:nodes", 0, -1)] == ["node-b"], "a clean stop leaves at once"
    await second.until(lambda: second.service.nodes.nodes == ["node-b"], 5, "node-b to see node-a gone")


@pytest_twisted.ensureDeferred
async def test_a_node_that_stops_beating_drops_out_when_its_entry_expires(daemon_factory, redis):
    daemon = await daemon_factory(node_id="node-live")
    silent = NodeRegistry(daemon.service.link.commands, Clock(), "node-silent", ttl=1.0)  # never beats again
    await silent.beat()
    await daemon.until(lambda: daemon.service.nodes.nodes == ["node-live", "node-silent"], 5, "both listed")
    await daemon.until(lambda: daemon.service.nodes.nodes == ["node-live"], 5, "the silent node expired (1 s)")
    assert [m.decode() for m in redis.zrange("rm:nodes", 0, -1)] == ["node-live"]
