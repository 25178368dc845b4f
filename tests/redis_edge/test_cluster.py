"""
A Redis Cluster node is refused plainly (docs/scale-out.md: Cluster needs a step
of its own): /health answers 503 with the reason and the log says it once, rather
than queues failing for the users whose keys live on other nodes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from ..conftest import RedisServer, free_port
from ..httpclient import http_get


@pytest.fixture
def cluster_node(tmp_path: Path) -> Iterator[RedisServer]:
    # the cluster bus port named: by default it is the port + 10000, past 65535 for a quarter of the free ports
    server = RedisServer(
        tmp_path,
        arguments=("--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf"),
                   "--cluster-port", str(free_port())),
    )  # fmt: skip
    server.start()
    yield server
    server.stop()


@pytest_twisted.ensureDeferred
async def test_a_redis_cluster_node_is_refused_with_the_reason_in_health(daemon_factory, cluster_node):
    daemon = await daemon_factory(redis_port=cluster_node.port, intake=False)
    link = daemon.service.link
    await daemon.until(lambda: link.state.unsupported is not None, 5, "the cluster mode seen")
    code, _, body = await http_get(daemon.port, "/health")
    health = json.loads(body)
    assert code == 503 and health["status"] == "unavailable", health
    assert health["reason"].endswith("is a Redis Cluster node: Redis Cluster is not supported (docs/scale-out.md); "
                                     "the queues of users whose keys live on other nodes could not be written")


@pytest_twisted.ensureDeferred
async def test_a_plain_redis_is_not_taken_for_a_cluster(daemon):
    await daemon.until(lambda: daemon.service.link.state.address is not None, 5, "the command connection")
    await daemon.service.link.round_trip()  # INFO cluster was sent before this PING, so it has been answered
    assert daemon.service.link.state.unsupported is None
    code, _, _ = await http_get(daemon.port, "/health")
    assert code == 200
