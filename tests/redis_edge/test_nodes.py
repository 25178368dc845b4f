"""
The daemons sharing one Redis see each other (docs/scale-out.md, step 1):
heartbeats in rm:nodes, a clean stop leaving at once, a silent node expiring;
shown in status(), /health and /metrics.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest_twisted
from twisted.internet.testing import Clock

from redmessenger.core.ownership import owner as owner_of
from redmessenger.ops.status import status_text
from redmessenger.redis_edge.nodes import NodeRegistry

from ..httpclient import http_get, scrape


@pytest_twisted.ensureDeferred
async def test_two_daemons_on_one_redis_list_each_other_and_a_stopped_one_leaves(daemon_factory, redis):
    first = await daemon_factory(node_id="node-a")
    second = await daemon_factory(node_id="node-b")
    names = ["node-a", "node-b"]
    mine = [uid for uid in (f"a{i}" for i in range(100)) if owner_of(uid, names) == "node-a"][:3]
    theirs = next(uid for uid in (f"b{i}" for i in range(100)) if owner_of(uid, names) == "node-b")
    clients = [await first.client(uid) for uid in mine] + [await second.client(theirs)]  # each on its owner
    both = {"node-a": 3, "node-b": 1}
    await second.until(lambda: first.service.nodes.sockets == both, 5, "node-a to see node-b and the sockets of both")
    await first.until(lambda: second.service.nodes.sockets == both, 5, "node-b to see node-a and the sockets of both")
    assert first.service.nodes.nodes == second.service.nodes.nodes == ["node-a", "node-b"]
    assert (
        "Nodes:      2 on this Redis (node-a: 3 sockets, node-b: 1 socket); this one: node-b"
        in await status_text(second.service.view)
    )
    code, _, body = await http_get(second.port, "/health")
    assert (code, json.loads(body)["node"]) == (200, {"id": "node-b", "nodes": ["node-a", "node-b"], "sockets": both})
    metrics = await scrape(second.port)
    assert metrics["redmessenger_nodes"] == 2
    assert (metrics['redmessenger_node_sockets{node="node-a"}'], metrics['redmessenger_node_sockets{node="node-b"}']) == (3, 1)
    for client in clients:
        client.close()
        await client.close_code()
    await first.service.stopService()
    assert [m.decode() for m in redis.zrange("rm:nodes", 0, -1)] == ["node-b"], "a clean stop leaves at once"
    assert list(redis.hgetall("rm:nodes:sockets")) == [b"node-b"], "and takes its sockets with it"
    await second.until(lambda: second.service.nodes.nodes == ["node-b"], 5, "node-b to see node-a gone")


@pytest_twisted.ensureDeferred
async def test_after_a_failover_lost_the_last_change_numbers_the_next_change_is_taken_not_ignored(daemon_factory, redis):
    """
    A Sentinel failover can lose the last INCRs of rm:nodes:epoch (the replica lagged): the next changes were
    numbered as ones the daemons had taken, ignored as replays, and the daemons went by their heartbeats after the
    grace, without the change's place among the PUBLISHes.  Each heartbeat raises the counter to what its node took.
    """
    first = await daemon_factory(node_id="node-a")
    second = await daemon_factory(node_id="node-b")
    await first.until(lambda: first.service.nodes.nodes == second.service.nodes.nodes == ["node-a", "node-b"], 5, "both")
    taken = int(redis.get("rm:nodes:epoch"))
    assert taken >= 2 and first.service.nodes._epoch == second.service.nodes._epoch == taken
    redis.set("rm:nodes:epoch", 0)  # as a failover to a replica that had not had the INCRs
    await first.until(lambda: int(redis.get("rm:nodes:epoch")) >= taken, 5, "a heartbeat to raise the counter again")
    third = await daemon_factory(node_id="node-c")
    names = ["node-a", "node-b", "node-c"]
    await first.until(lambda: all(d.service.nodes.nodes == names for d in (first, second, third)), 5, "all three")
    assert (first.service.nodes.unsigned, second.service.nodes.unsigned) == (0, 0), "the join taken as a change"
    assert first.service.nodes._epoch == second.service.nodes._epoch == taken + 1


@pytest_twisted.ensureDeferred
async def test_a_node_that_stops_beating_drops_out_when_its_entry_expires(daemon_factory, redis):
    daemon = await daemon_factory(node_id="node-live")
    silent = NodeRegistry(daemon.service.link.commands, Clock(), "node-silent", ttl=1.0)  # never beats again
    await silent.beat()
    await daemon.until(lambda: daemon.service.nodes.nodes == ["node-live", "node-silent"], 5, "both listed")
    await daemon.until(lambda: daemon.service.nodes.nodes == ["node-live"], 5, "the silent node expired (1 s)")
    assert [m.decode() for m in redis.zrange("rm:nodes", 0, -1)] == ["node-live"]
    assert list(redis.hgetall("rm:nodes:sockets")) == [b"node-live"], "its sockets expire with it"


@pytest_twisted.ensureDeferred
async def test_a_lone_daemon_acts_on_what_it_heard_before_its_first_heartbeat_and_one_joining_others_does_not(
    daemon_factory, redis, monkeypatch
):
    """
    Between its subscription and its first heartbeat a daemon is not listed yet. Alone, nobody else acts on the
    PUBLISHes of that moment: it queues them at its joining, in order. Joining another daemon, they were the other's.
    """
    beat = NodeRegistry.beat
    first: list[str] = []

    def publishing_first(registry: NodeRegistry) -> Any:
        if registry._hearing() and registry.node_id not in first:
            first.append(registry.node_id)  # subscribed, not listed: Redis has these before the heartbeat
            for i in range(3):
                redis.publish(f"rm.users.{registry.node_id}-user", f"before {i}")
        return beat(registry)

    monkeypatch.setattr(NodeRegistry, "beat", publishing_first)
    alone = await daemon_factory(node_id="node-a")
    queue = "rm:users:node-a-user:messages"
    await alone.until(lambda: redis.llen(queue) == 3, 5, "queued by the daemon alone")
    assert [json.loads(e)["payload"] for e in redis.lrange(queue, 0, -1)] == ["before 0", "before 1", "before 2"]
    joining = await daemon_factory(node_id="node-b")
    for daemon in (alone, joining):
        await daemon.idle()
    assert first == ["node-a", "node-b"]
    # node-b's were heard while node-a was the only node listed: node-a's to act on
    assert redis.llen("rm:users:node-b-user:messages") == 3, "queued once, by node-a, not again by node-b"


@pytest_twisted.ensureDeferred
async def test_a_change_of_the_nodes_published_by_anyone_but_the_heartbeat_script_moves_no_user(daemon_factory, redis):
    """
    A message on rm.nodes shaped like a change, listing a node that does not exist: had the daemons taken it, a user
    that node would own would have no owner, and a message to that user would be neither delivered nor queued.
    Nor is a change the script signed taken twice (published again, an old list).
    """
    listener = redis.pubsub()
    listener.subscribe("rm.nodes")
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    first = await daemon_factory(node_id="node-a")
    second = await daemon_factory(node_id="node-b")
    names = ["node-a", "node-b"]
    for daemon in (first, second):
        await daemon.until(lambda d=daemon: d.service.nodes.nodes == names, 5, "each daemon to see both")
    assert (first.service.nodes.unsigned, second.service.nodes.unsigned) == (0, 0), "the script's changes are signed"
    heard = listener.get_message(timeout=5)  # node-a's join, when it was alone: signed, and past
    listener.close()
    assert json.loads(heard["data"])["nodes"] == ["node-a"]
    forged = names + ["node-x"]
    orphan = next(uid for uid in (f"o{i}" for i in range(1000)) if owner_of(uid, forged) == "node-x")
    epoch = int(redis.get("rm:nodes:epoch"))
    for sig in ("", "0" * 40):
        change = {"epoch": epoch + 1, "node": "node-x", "joined": True, "nodes": forged, "run": "r", "sig": sig}
        redis.publish("rm.nodes", json.dumps(change))
    redis.publish("rm.nodes", heard["data"])  # a change the script did sign, published again
    redis.publish(f"rm.users.{orphan}", "for the orphan")
    for daemon in (first, second):
        await daemon.until(lambda d=daemon: d.service.hub.counters.published == 1, 5, "the message heard")
        await daemon.idle()
    assert (first.service.nodes.unsigned, second.service.nodes.unsigned) == (3, 3)
    assert first.service.nodes.nodes == second.service.nodes.nodes == names
    queued = [json.loads(e)["payload"] for e in redis.lrange(f"rm:users:{orphan}:messages", 0, -1)]
    assert queued == ["for the orphan"], "queued once, by its real owner"


def test_the_epoch_read_before_the_first_heartbeat_stays_when_that_heartbeat_sets_the_secret() -> None:
    """The first daemon on a Redis: no secret yet, so its heartbeat sets one; changes up to the epoch read are past."""
    from twisted.internet.defer import succeed

    from redmessenger.redis_edge.nodes import NodesChange

    class Commands:
        def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            assert args[0] == "MGET"
            return succeed([None, b"7"])

        def eval(self, script: bytes, keys: list[Any] = [], args: list[Any] = []) -> Any:
            return succeed([[b"node-a"], [b"0"], [args[5].encode()], args[6].encode()])

    registry = NodeRegistry(Commands(), Clock(), "node-a")  # type: ignore[arg-type]
    registry.beat()
    assert registry.secret == registry._offered
    taken: list[list[str]] = []
    registry._on_change = lambda nodes, change: taken.append(nodes)

    def signed(epoch: int, nodes: list[str]) -> bytes:
        change = NodesChange.parse(json.dumps({"epoch": epoch, "node": "node-x", "nodes": nodes}).encode())
        inner = hashlib.sha1(change.signed.encode()).hexdigest()
        sig = hashlib.sha1((registry._offered + inner).encode()).hexdigest()
        return json.dumps({"epoch": epoch, "node": "node-x", "nodes": nodes, "sig": sig}).encode()

    registry.heard(signed(7, ["node-x"]))  # the last change before this daemon came: past
    assert taken == [] and registry.unsigned == 1
    registry.heard(signed(8, ["node-a", "node-x"]))
    assert taken == [["node-a", "node-x"]]


class _Beats:
    """The heartbeat script's replies, given by the test (the pure logic of NodeRegistry's unsure state)."""

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred

        self.pending: list[Deferred[Any]] = []

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        from twisted.internet.defer import succeed

        return succeed([b"s", b"1"])

    def eval(self, script: bytes, keys: list[Any] = [], args: list[Any] = []) -> Any:
        from twisted.internet.defer import Deferred

        self.pending.append(Deferred())
        return self.pending[-1]

    def answer(self, listed_anew: int) -> None:
        self.pending.pop(0).callback([[b"node-a", b"node-b"], [b"0", b"0"], [], b"s", listed_anew])


def _signed_join(epoch: int) -> bytes:
    from redmessenger.redis_edge.nodes import NodesChange

    raw: dict[str, Any] = {"epoch": epoch, "node": "node-a", "nodes": ["node-a", "node-b"], "joined": True}
    inner = hashlib.sha1(NodesChange.parse(json.dumps(raw).encode()).signed.encode()).hexdigest()
    raw["sig"] = hashlib.sha1(("s" + inner).encode()).hexdigest()
    return json.dumps(raw).encode()


def _listed_anew_after_a_long_loss() -> tuple[Clock, _Beats, NodeRegistry, list[bool]]:
    """node-a listed, its subscription lost for 30 s; heard again, its heartbeat lists it anew (its join unheard)."""
    clock, beats = Clock(), _Beats()
    registry = NodeRegistry(beats, clock, "node-a", grace=3.0)  # type: ignore[arg-type]
    decisions: list[bool] = []
    registry.on_sure = decisions.append
    registry.beat()
    beats.answer(1)
    registry.heard(_signed_join(2))
    registry.unheard()
    clock.advance(30)
    registry.subscribed()
    beats.answer(1)  # listed anew
    return clock, beats, registry, decisions


def test_a_node_listed_anew_stays_unsure_until_its_join_is_heard_even_if_a_later_heartbeat_finds_its_entry() -> None:
    """
    Its subscription lost long enough for another node to drop it: the heartbeat that lists it anew says so, the
    next one (its join still on its way) finds its entry; only the join decides: the others had acted.
    """
    clock, beats, registry, decisions = _listed_anew_after_a_long_loss()
    clock.advance(1)
    registry.beat()
    beats.answer(0)  # found there: its own join, published by the heartbeat before, is not heard yet
    assert decisions == []
    registry.heard(_signed_join(4))
    assert decisions == [False], "another node had dropped it: the others acted"


def test_a_node_whose_join_is_never_heard_decides_after_the_grace_rather_than_keep_for_ever() -> None:
    clock, beats, registry, decisions = _listed_anew_after_a_long_loss()  # (grace: 3 s)
    for _ in range(3):
        clock.advance(1)
        registry.beat()
        beats.answer(0)
    assert decisions == [True]
