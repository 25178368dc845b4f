"""
A daemon dropped from the list of nodes while it is alive (docs/scale-out.md): its heartbeat late, or its
subscription down for longer than its entry lasts.  The owners of the users whose sockets it holds drop those
sockets as gone; the socket stays open on the holder, which attaches it again (told by the owner, or once it is
listed again), so that its messages are not queued for good while its user is online.  And what else an owner
tells a holder that must not be lost (an ``abandon``), and the inboxes of nodes that are gone (they expire).
Two daemons in this process on one real valkey-server, real WebSocket clients; every count exact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest_twisted

from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.redis_edge import nodes as nodes_module
from redmessenger.redis_edge import peers as peers_module
from redmessenger.redis_edge.batches import INBOX_TTL

from .conftest import publish, wait_until
from .test_scale_out import NODES, bubbles, cluster, losing_the_first, on, owned_by, payloads, sockets_of, tab
from .wsclient import WebSocketClient

QUEUE = "rm:users:{}:messages"
INBOX = "rm:nodes:{}:inbox"


async def socket_on_a(daemon_factory: Any, redis: Any, owner: str) -> tuple[list[Any], Any, Any, str, WebSocketClient]:
    """Two daemons; a user ``owner`` owns, its socket on node-a, which got m0."""
    daemons = await cluster(daemon_factory, 2)
    a, b = on(daemons, "node-a"), on(daemons, "node-b")
    uid = owned_by(owner, NODES[:2])
    client = await tab(daemons, a, uid)
    publish(redis, f"rm.users.{uid}", "m0")
    await received(client, 1)
    return daemons, a, b, uid, client


async def relayed_on_a(daemon_factory: Any, redis: Any) -> tuple[list[Any], Any, Any, str, WebSocketClient]:
    """Two daemons; a user node-b owns, its socket on node-a, which got m0 and confirmed it."""
    daemons, a, b, uid, client = await socket_on_a(daemon_factory, redis, "node-b")
    remote = b.service.presence.get(uid).attachments[0]
    await wait_until(lambda: not remote.unconfirmed and not remote.confirming, 5, "m0 confirmed at the owner")
    return daemons, a, b, uid, client


async def received(client: WebSocketClient, count: int) -> None:
    await wait_until(lambda: len(client.received) >= count, 10, f"{count} messages received")


def deaf(daemon: Any) -> Callable[[bool], None]:
    """
    The daemon's subscription down, as the link tells it (NodeRegistry.unheard): it hears nothing (rm.nodes or
    PUBLISHes) and so does not beat.  The call returned makes it hear again: the PUBLISHes at once, then (unless
    ``subscribed`` is False: the test calls NodeRegistry.subscribed itself) rm.nodes, as its SUBSCRIBE is confirmed.
    """
    registry, link = daemon.service.nodes, daemon.service.link
    hearing, on_message = registry._hearing, link.on_message
    registry._hearing = lambda: False
    registry.heard = lambda payload: None
    link.on_message = lambda channel, payload: None
    registry.unheard()

    def hears_again(subscribed: bool = True) -> None:
        registry._hearing, link.on_message = hearing, on_message
        del registry.heard
        if subscribed:
            registry.subscribed()

    return hears_again


def kept(daemon: Any) -> int:
    """PUBLISHes the daemon heard and keeps until it knows whether the others acted on them (Router.unsure)."""
    return int(daemon.service.hub.router.kept)


def queued(redis: Any, uid: str) -> list[str]:
    return [json.loads(entry)["payload"] for entry in redis.lrange(QUEUE.format(uid), 0, -1)]


async def late_heartbeat(daemons: list[Any], a: Any, redis: Any) -> None:
    """node-a's heartbeat late: its entry past its expiry, which node-b's next heartbeat publishes; both hear it."""
    a.service.nodes._loop.stop()
    redis.zadd("rm:nodes", {"node-a": 1})
    await wait_until(lambda: all(d.service.peers.nodes == ["node-b"] for d in daemons), 10, "both to hear node-a expire")


async def beats_again(daemons: list[Any], a: Any) -> None:
    registry = a.service.nodes
    registry._loop.start(registry._interval, now=True)
    await wait_until(lambda: all(d.service.peers.nodes == NODES[:2] for d in daemons), 10, "both to hear node-a join")


async def live_then_done(
    daemons: list[Any], client: WebSocketClient, redis: Any, uid: str, first: int, relayed: bool = True
) -> None:
    """
    m{first}..m5 published with node-a listed again: the socket (a relay, or ``relayed`` False: node-a's own) gets
    them live; all of m0..m5 once, in order.
    """
    for i in range(first, 6):
        publish(redis, f"rm.users.{uid}", f"m{i}")
    await received(client, 6)
    for daemon in daemons:
        await daemon.idle()
    assert payloads(client) == [f"m{i}" for i in range(6)], "each once, in order"
    assert bubbles(client) == [True] * 6
    assert queued(redis, uid) == [], "nothing left queued: the user was online throughout"
    assert sockets_of(daemons, uid) == 1 and on(daemons, "node-a").service.peers.relays == int(relayed)
    assert [d.service.peers.lost_batches for d in daemons] == [0, 0], "a writer counting its batches again is no loss"
    assert [d.service.peers.handoffs.timed_out for d in daemons] == [0, 0]
    client.close()
    await client.close_code()


@pytest_twisted.ensureDeferred
async def test_a_relay_dropped_by_its_owner_while_its_holder_is_late_is_attached_again_at_once(daemon_factory, redis):
    daemons, a, b, uid, client = await relayed_on_a(daemon_factory, redis)
    await late_heartbeat(daemons, a, redis)
    # node-b dropped the socket as gone with node-a and told node-a, which attached it again (while out of the list)
    await wait_until(lambda: sockets_of(daemons, uid) == 1, 5, "the socket attached again at its owner")
    publish(redis, f"rm.users.{uid}", "m1")
    publish(redis, f"rm.users.{uid}", "m2")
    await received(client, 3)
    await beats_again(daemons, a)  # and once listed again, node-a attaches it again: the owner knows it, only answers
    await wait_until(lambda: a.service.peers._holding.reattached == 2, 5, "node-a to attach its relay again on joining")
    await wait_until(lambda: not a.service.peers._holding._unanswered, 5, "the owner to answer")
    assert b.service.peers.remote == 1, "one socket at the owner, not two"
    await live_then_done(daemons, client, redis, uid, 3)


@pytest_twisted.ensureDeferred
async def test_a_relay_whose_drop_was_not_told_is_attached_again_when_its_holder_is_listed_again(daemon_factory, redis):
    daemons, a, b, uid, client = await relayed_on_a(daemon_factory, redis)
    lost = losing_the_first(a, b"dropped")  # lost in a Redis failover, say
    await late_heartbeat(daemons, a, redis)
    await wait_until(lambda: len(lost) == 1, 5, "node-b to tell node-a it dropped the socket")
    assert sockets_of(daemons, uid) == 0 and a.service.peers.relays == 1, "open on node-a, unknown to its owner"
    publish(redis, f"rm.users.{uid}", "m1")
    publish(redis, f"rm.users.{uid}", "m2")
    await wait_until(lambda: queued(redis, uid) == ["m1", "m2"], 5, "queued: the owner does not know the socket")
    await beats_again(daemons, a)
    await received(client, 3)  # the queue, handed to the socket attached again
    await wait_until(lambda: queued(redis, uid) == [], 5, "the queue trimmed once confirmed")
    await live_then_done(daemons, client, redis, uid, 3)


@pytest_twisted.ensureDeferred
async def test_a_relay_of_a_daemon_whose_subscription_was_down_is_attached_again_when_it_hears_again(daemon_factory, redis):
    """
    node-a hears nothing on rm.nodes and so does not beat; its entry expires and node-b drops its socket, while
    node-a's list never changes.  Once it hears again, it beats, and hears its own join after changes it missed.
    """
    daemons, a, b, uid, client = await relayed_on_a(daemon_factory, redis)
    lost = losing_the_first(a, b"dropped")
    hears_again = deaf(a)
    redis.zadd("rm:nodes", {"node-a": 1})
    await wait_until(lambda: b.service.peers.nodes == ["node-b"] and len(lost) == 1, 10, "node-b to drop node-a")
    assert a.service.peers.nodes == NODES[:2], "node-a heard nothing: its list is the same"
    assert sockets_of(daemons, uid) == 0 and a.service.peers.relays == 1
    publish(redis, f"rm.users.{uid}", "m1")
    publish(redis, f"rm.users.{uid}", "m2")
    await wait_until(lambda: queued(redis, uid) == ["m1", "m2"], 5, "queued: the owner does not know the socket")
    hears_again()
    await received(client, 3)
    await wait_until(lambda: queued(redis, uid) == [], 5, "the queue trimmed once confirmed")
    await live_then_done(daemons, client, redis, uid, 3)


@pytest_twisted.ensureDeferred
async def test_what_another_daemon_queued_for_a_local_user_while_its_owners_subscription_was_down_reaches_its_socket(
    daemon_factory, redis
):
    """
    node-a owns the user and holds its socket; its subscription is down, so it never hears it left the list: in its
    own view it owns the user throughout.  node-b took the user over meanwhile and queued m1–m2 (no socket there).
    Once node-a hears again (its own join), the queue goes to the socket, after node-b's word: m0..m5 once, in order.
    """
    daemons, a, b, uid, client = await socket_on_a(daemon_factory, redis, "node-a")
    hears_again = deaf(a)
    redis.zadd("rm:nodes", {"node-a": 1})
    await wait_until(lambda: b.service.peers.nodes == ["node-b"], 10, "node-b to drop node-a")
    assert a.service.peers.nodes == NODES[:2] and a.service.peers.owner(uid) is None, "node-a still owns it, it thinks"
    publish(redis, f"rm.users.{uid}", "m1")
    publish(redis, f"rm.users.{uid}", "m2")
    await wait_until(lambda: queued(redis, uid) == ["m1", "m2"], 5, "queued by node-b, which owns the user now")
    assert payloads(client) == ["m0"]
    hears_again()
    await received(client, 3)
    await wait_until(lambda: queued(redis, uid) == [], 5, "the queue trimmed once confirmed")
    await live_then_done(daemons, client, redis, uid, 3, relayed=False)  # node-b's word came: none timed out


@pytest_twisted.ensureDeferred
async def test_what_a_daemon_hears_again_before_its_join_is_left_to_the_owner_that_had_its_user_meanwhile(
    daemon_factory, redis, monkeypatch
):
    """
    node-a's subscription comes back after node-b dropped it; m1, published before node-a's join, is heard by both:
    node-b owns the user then and queues it. node-a keeps it until its join tells it node-b acted (its entry had
    been dropped by node-b, not by its own heartbeat): m1 comes once, from the queue (before, also live: twice).
    """
    # its entry expires here long before its time (the test sets it so): the loss as if it had lasted that long
    monkeypatch.setattr(nodes_module, "EXPIRY_MARGIN", 1000.0)
    daemons, a, b, uid, client = await socket_on_a(daemon_factory, redis, "node-a")
    hears_again = deaf(a)
    redis.zadd("rm:nodes", {"node-a": 1})
    await wait_until(lambda: b.service.peers.nodes == ["node-b"], 10, "node-b to drop node-a")
    hears_again(subscribed=False)  # the PUBLISHes heard again, rm.nodes not yet (nor a heartbeat)
    publish(redis, f"rm.users.{uid}", "m1")
    await wait_until(lambda: kept(a) == 1 and queued(redis, uid) == ["m1"], 5, "m1 kept by node-a, queued by node-b")
    assert payloads(client) == ["m0"]
    a.service.nodes.subscribed()  # its heartbeat: node-a joins again
    await received(client, 2)
    await wait_until(lambda: queued(redis, uid) == [], 5, "the queue trimmed once confirmed")
    await live_then_done(daemons, client, redis, uid, 2, relayed=False)


@pytest_twisted.ensureDeferred
async def test_what_a_daemon_hears_again_before_its_entry_could_expire_it_acts_on_at_once(daemon_factory, redis):
    """A short loss of node-a's subscription: still listed, it acts on what it heard on resubscribing, once."""
    daemons, a, b, uid, client = await socket_on_a(daemon_factory, redis, "node-a")
    hears_again = deaf(a)
    hears_again(subscribed=False)
    publish(redis, f"rm.users.{uid}", "m1")
    await wait_until(lambda: kept(a) == 1, 5, "m1 kept until node-a hears rm.nodes again")
    assert payloads(client) == ["m0"] and queued(redis, uid) == [], "node-b left it to node-a, still listed"
    a.service.nodes.subscribed()
    await received(client, 2)
    await live_then_done(daemons, client, redis, uid, 2, relayed=False)


@pytest_twisted.ensureDeferred
async def test_a_daemon_unsure_of_its_entry_acts_on_what_it_kept_once_its_heartbeat_finds_it_there(
    daemon_factory, redis, monkeypatch
):
    """Heard again when its entry might have expired, node-a asks its heartbeat: the entry is there, it acts."""
    monkeypatch.setattr(nodes_module, "EXPIRY_MARGIN", 1000.0)  # not sure at once, whatever the time
    daemons, a, b, uid, client = await socket_on_a(daemon_factory, redis, "node-a")
    hears_again = deaf(a)
    hears_again(subscribed=False)
    publish(redis, f"rm.users.{uid}", "m1")
    await wait_until(lambda: kept(a) == 1, 5, "m1 kept")
    a.service.nodes.subscribed()
    await received(client, 2)
    assert kept(a) == 0 and b.service.peers.nodes == NODES[:2], "node-a was listed throughout"
    await live_then_done(daemons, client, redis, uid, 2, relayed=False)


@pytest_twisted.ensureDeferred
async def test_what_a_daemon_kept_before_a_change_dropping_it_it_acts_on_with_the_owners_of_then(
    daemon_factory, redis, monkeypatch
):
    """
    node-a hears again (unsure: its heartbeat is late), m1 comes while node-b still lists it (node-b leaves m1 to
    node-a), then node-b drops it: what node-a kept came before, its to act on, with the owners before the change.
    """
    monkeypatch.setattr(nodes_module, "EXPIRY_MARGIN", 1000.0)
    daemons, a, b, uid, client = await socket_on_a(daemon_factory, redis, "node-a")
    a.service.nodes._loop.stop()  # its heartbeat late
    hears_again = deaf(a)
    hears_again(subscribed=False)
    publish(redis, f"rm.users.{uid}", "m1")
    await wait_until(lambda: kept(a) == 1, 5, "m1 kept")
    redis.zadd("rm:nodes", {"node-a": 1})
    await received(client, 2)  # once node-a hears node-b drop it
    for daemon in daemons:
        await daemon.idle()
    assert payloads(client) == ["m0", "m1"] and queued(redis, uid) == [] and kept(a) == 0
    await beats_again(daemons, a)
    client.close()
    await client.close_code()


@pytest_twisted.ensureDeferred
async def test_a_daemon_alone_acts_on_what_it_hears_again_at_once_whatever_redis_lost(daemon_factory, redis, monkeypatch):
    """Alone on its Redis, which lost its data meanwhile (rm:nodes too): nobody else acts, so it does, once."""
    monkeypatch.setattr(nodes_module, "EXPIRY_MARGIN", 1000.0)  # the loss as if longer than its entry lasts
    (a,) = daemons = await cluster(daemon_factory, 1)
    client = await tab(daemons, a, "u1")
    hears_again = deaf(a)
    redis.flushall()  # Redis started again without its data
    hears_again(subscribed=False)
    publish(redis, "rm.users.u1", "m1")
    await wait_until(lambda: kept(a) == 1, 5, "m1 kept until node-a hears rm.nodes")
    a.service.nodes.subscribed()
    await received(client, 1)
    await a.idle()
    assert payloads(client) == ["m1"] and queued(redis, "u1") == [] and kept(a) == 0
    client.close()
    await client.close_code()


@pytest_twisted.ensureDeferred
async def test_an_abandon_lost_between_daemons_is_sent_again_and_the_socket_closes(daemon_factory, redis, monkeypatch):
    monkeypatch.setattr(peers_module, "RESEND_AFTER", 0.2)
    daemons, a, b, uid, client = await relayed_on_a(daemon_factory, redis)
    lost = losing_the_first(a, b"abandon")
    remote = b.service.presence.get(uid).attachments[0]
    b.service.hub.abandon(remote, ClientError(CloseCode.TOO_SLOW, "given up by its owner"))
    await wait_until(lambda: len(lost) == 1, 5, "the first abandon to reach node-a (and be lost)")
    publish(redis, f"rm.users.{uid}", "m1")
    await wait_until(lambda: queued(redis, uid) == ["m1"], 5, "queued: the user is offline at its owner")
    code, _ = await client.close_code(timeout=5)
    assert code == 4413, "closed as its owner said, once the abandon was sent again"
    await wait_until(lambda: a.service.peers.relays == 0 and b.service.peers.remote == 0, 5, "both to let it go")
    assert payloads(client) == ["m0"] and queued(redis, uid) == ["m1"]


@pytest_twisted.ensureDeferred
async def test_every_inbox_expires_unless_its_node_renews_it_so_a_gone_nodes_inbox_goes(daemon_factory, redis, monkeypatch):
    monkeypatch.setattr(peers_module, "INBOX_RENEW", 0.2)
    daemons, a, b, uid, client = await relayed_on_a(daemon_factory, redis)  # writes both ways: attach, deliveries

    def expiring(node: str) -> bool:
        return 0 < redis.ttl(INBOX.format(node)) <= INBOX_TTL

    assert redis.xlen(INBOX.format("node-a")) >= 1 and expiring("node-a") and expiring("node-b")
    redis.expire(INBOX.format("node-a"), 30)
    await wait_until(lambda: redis.ttl(INBOX.format("node-a")) > 30, 5, "node-a to renew its inbox's expiry")
    (before, _), = redis.xrevrange(INBOX.format("node-b"), count=1)
    await b.service.stopService()  # node-b leaves: node-a takes the user over and tells node-b the relay is gone
    await wait_until(lambda: a.service.peers.relays == 0 and a.service.presence.get(uid) is not None, 5, "taken over")
    await a.service.peers.flush()
    after = redis.xrange(INBOX.format("node-b"), min=b"(" + before)
    assert [(fields[b"n"], json.loads(fields[b"d"])["x"][0][0]) for _, fields in after] == [(b"node-a", "detach")]
    assert expiring("node-b"), "the inbox of the node gone, written to after it left, still expires"
    client.close()
    await client.close_code()


@pytest_twisted.ensureDeferred
async def test_a_relay_attached_again_to_an_owner_of_a_version_before_is_closed_not_guessed(daemon_factory, redis):
    """
    An owner from before the ``f`` flag answers an attach made again without saying whether it had dropped the
    socket: the answers node-a held back could confirm what a new socket there never got.  Closed (1013) instead;
    its client reconnects and gets what came meanwhile from the queue, once.
    """
    daemons, a, b, uid, client = await relayed_on_a(daemon_factory, redis)
    peers = a.service.peers
    handle = peers._handle

    def as_an_owner_before(fields: dict[bytes, bytes]) -> None:
        if fields.get(b"k") == b"attached":
            fields = {key: value for key, value in fields.items() if key != b"f"}
        handle(fields)

    peers._handle = as_an_owner_before
    await late_heartbeat(daemons, a, redis)
    assert (await client.close_code(timeout=10))[0] == 1013
    await beats_again(daemons, a)
    publish(redis, f"rm.users.{uid}", "m1")
    await wait_until(lambda: queued(redis, uid) == ["m1"], 5, "queued: the user offline")
    again = await tab(daemons, a, uid)
    await received(again, 1)
    assert payloads(client) == ["m0"] and payloads(again) == ["m1"]
    again.close()
    await again.close_code()
