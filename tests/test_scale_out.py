"""
Several daemons on one Redis (docs/scale-out.md, step 2): each user has one
owner, which decides for every socket of the user wherever it is held. Two and
three daemons in this process on one real valkey-server, real WebSocket
clients; every count exact: lost, doubled, reordered, bubbles.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from redmessenger.core.ownership import owner as owner_of
from redmessenger.redis_edge import forwarding as forwarding_module
from redmessenger.redis_edge import peers as peers_module
from redmessenger.redis_edge.nodes import NodesChange
from redmessenger.redis_edge.peers import PeerLink
from redmessenger.transport.passing import Outcome

from .conftest import publish, wait_until
from .httpclient import scrape
from .wsclient import WebSocketClient, connect_client

NODES = ["node-a", "node-b", "node-c"]


async def cluster(daemon_factory: Any, count: int) -> list[Any]:
    """``count`` daemons on the test's Redis, each seeing all of them."""
    names = NODES[:count]
    daemons = [await daemon_factory(node_id=name) for name in names]
    await wait_until(lambda: all(d.service.peers.nodes == names for d in daemons), 10, "every daemon to see every other")
    return daemons


def owned_by(node: str, names: list[str], prefix: str = "u") -> str:
    """A uid that ``node`` owns among ``names``."""
    return next(f"{prefix}{i}" for i in range(1000) if owner_of(f"{prefix}{i}", names) == node)


def on(daemons: list[Any], node: str) -> Any:
    return next(d for d in daemons if d.service.peers.node == node)


def sockets_of(daemons: list[Any], uid: str) -> int:
    """The user's sockets as its owner counts them (its own and those other nodes hold)."""
    names = [d.service.peers.node for d in daemons]
    owner = on(daemons, owner_of(uid, names))
    user = owner.service.presence.get(uid)
    return len(user.attachments) if user is not None else 0


async def tab(daemons: list[Any], holder: Any, uid: str) -> WebSocketClient:
    """A socket of ``uid`` on ``holder``, once its owner counts it."""
    before = sockets_of(daemons, uid)
    client = await connect_client(holder.url)
    client.send(uid)
    await wait_until(lambda: sockets_of(daemons, uid) == before + 1, 5, f"{uid} attached at its owner")
    return client


def payloads(client: WebSocketClient) -> list[str]:
    return [m["payload"] for m in client.received]


def bubbles(client: WebSocketClient) -> list[bool]:
    return [m["bubble"] for m in client.received]


@pytest_twisted.ensureDeferred
async def test_a_user_with_tabs_on_two_daemons_gets_each_message_once_per_tab_and_one_bubble(daemon_factory, redis):
    daemons = await cluster(daemon_factory, 2)
    uid = owned_by("node-a", NODES[:2])
    relayed = await tab(daemons, on(daemons, "node-b"), uid)  # the oldest: the bubble, on the node that does not own
    local = await tab(daemons, on(daemons, "node-a"), uid)
    for i in range(20):
        publish(redis, f"rm.users.{uid}", f"m{i}")  # both daemons hear each; the owner alone acts
    await relayed.receive(20)
    await local.receive(20)
    relayed.close()
    await relayed.close_code()
    await wait_until(lambda: sockets_of(daemons, uid) == 1, 5, "the relayed tab gone at the owner")
    for i in range(20, 25):
        publish(redis, f"rm.users.{uid}", f"m{i}")
    await local.receive(5)
    for daemon in daemons:
        await daemon.idle()
    assert payloads(relayed) == [f"m{i}" for i in range(20)] and bubbles(relayed) == [True] * 20
    assert payloads(local) == [f"m{i}" for i in range(25)]
    assert bubbles(local) == [False] * 20 + [True] * 5, "the bubble moved to the remaining tab"
    assert redis.llen(f"rm:users:{uid}:messages") == 0, "nothing queued: the user was online throughout"
    local.close()
    await local.close_code()


@pytest_twisted.ensureDeferred
async def test_a_user_offline_everywhere_gets_each_message_queued_once_with_three_daemons(daemon_factory, redis):
    daemons = await cluster(daemon_factory, 3)
    uids = [owned_by(node, NODES, prefix=f"off-{node}-") for node in NODES]
    redis.sadd("rm:channels:team:subscribers", *uids)
    for i in range(30):
        for uid in uids:
            publish(redis, f"rm.users.{uid}", f"direct {i}")
        publish(redis, "rm.channels.team", f"team {i}")
    expected = [m for i in range(30) for m in (f"direct {i}", f"team {i}")]

    def queued(uid: str) -> list[str]:
        return [json.loads(e)["payload"] for e in redis.lrange(f"rm:users:{uid}:messages", 0, -1)]

    await wait_until(lambda: all(len(queued(uid)) >= 60 for uid in uids), 10, "the queues written")
    for daemon in daemons:
        await daemon.idle()
    for uid in uids:
        assert queued(uid) == expected, uid  # once each, in order, whichever daemon owns the user


@pytest_twisted.ensureDeferred
async def test_a_group_message_for_many_sockets_held_elsewhere_reaches_each_once_with_its_bubble(daemon_factory, redis):
    daemons = await cluster(daemon_factory, 2)
    uids = [owned_by("node-a", NODES[:2], prefix=f"g{k}-") for k in range(3)]
    redis.sadd("rm:channels:crew:subscribers", *uids)
    holder = on(daemons, "node-b")
    tabs = {uid: [await tab(daemons, holder, uid), await tab(daemons, holder, uid)] for uid in uids}
    for i in range(15):  # each message goes to node-b once for its six sockets, some with the bubble
        publish(redis, "rm.channels.crew", f"crew {i}")
        publish(redis, f"rm.users.{uids[i % 3]}", f"own {i}")
    expected = {uid: [m for i in range(15) for m in (f"crew {i}", f"own {i}") if m.startswith("crew") or uids[i % 3] == uid]
                for uid in uids}  # fmt: skip
    for uid in uids:
        for client in tabs[uid]:
            await client.receive(len(expected[uid]))
    for daemon in daemons:
        await daemon.idle()
    for uid in uids:
        first, second = tabs[uid]
        assert payloads(first) == expected[uid] and payloads(second) == expected[uid], uid
        assert bubbles(first) == [True] * len(expected[uid]) and bubbles(second) == [False] * len(expected[uid])
        assert redis.llen(f"rm:users:{uid}:messages") == 0
    for client in [c for pair in tabs.values() for c in pair]:
        client.close()
        await client.close_code()


@pytest_twisted.ensureDeferred
async def test_a_queue_goes_to_a_socket_held_by_another_daemon_then_live_messages_follow(daemon_factory, redis):
    daemons = await cluster(daemon_factory, 2)
    uid = owned_by("node-a", NODES[:2])
    for i in range(30):
        publish(redis, f"rm.users.{uid}", f"queued {i}")
    await wait_until(lambda: redis.llen(f"rm:users:{uid}:messages") == 30, 5, "the queue")
    client = await tab(daemons, on(daemons, "node-b"), uid)
    for i in range(10):  # while the owner hands the queue over through node-b: held, then after it
        publish(redis, f"rm.users.{uid}", f"live {i}")
    await client.receive(40)
    for daemon in daemons:
        await daemon.idle()
    await wait_until(lambda: redis.llen(f"rm:users:{uid}:messages") == 0, 5, "the queue trimmed once confirmed")
    assert payloads(client) == [f"queued {i}" for i in range(30)] + [f"live {i}" for i in range(10)]
    assert bubbles(client) == [True] * 40
    client.close()
    await client.close_code()


@pytest_twisted.ensureDeferred
async def test_a_durable_message_read_by_any_daemon_reaches_the_socket_once(daemon_factory, redis):
    daemons = await cluster(daemon_factory, 2)
    uids = [owned_by("node-a", NODES[:2]), owned_by("node-b", NODES[:2])]
    clients = [await tab(daemons, on(daemons, "node-b"), uids[0]), await tab(daemons, on(daemons, "node-a"), uids[1])]
    for i in range(40):
        for uid in uids:
            redis.xadd("rm:intake", {"channel": f"rm.users.{uid}", "payload": f"durable {i}"})
    for client in clients:
        await client.receive(40)
    await wait_until(lambda: redis.xlen("rm:intake") == 0, 10, "every entry acknowledged (the owner said it was safe)")
    for daemon in daemons:
        await daemon.idle()
    for client in clients:
        assert payloads(client) == [f"durable {i}" for i in range(40)], (client is clients[0], payloads(client))
        client.close()
        await client.close_code()


@pytest_twisted.ensureDeferred
async def test_a_daemon_that_joins_takes_its_users_over_and_their_sockets_follow(daemon_factory, redis):
    first = await daemon_factory(node_id="node-a")
    await wait_until(lambda: first.service.peers.nodes == ["node-a"], 5, "node-a alone")
    uid = owned_by("node-b", NODES[:2])  # owned by node-a while it is alone, by node-b once it joins
    client = await connect_client(first.url)
    client.send(uid)
    await wait_until(lambda: first.service.presence.get(uid) is not None, 5, "online on node-a")
    for i in range(10):
        publish(redis, f"rm.users.{uid}", f"before {i}")
    await client.receive(10)
    second = await daemon_factory(node_id="node-b")
    daemons = [first, second]
    await wait_until(lambda: all(d.service.peers.nodes == NODES[:2] for d in daemons), 10, "both see both")
    await wait_until(lambda: sockets_of(daemons, uid) == 1, 10, "the socket attached at its new owner")
    assert first.service.presence.get(uid) is None, "node-a holds it as a relay now"
    for i in range(10):
        publish(redis, f"rm.users.{uid}", f"after {i}")
    await client.receive(10)
    for daemon in daemons:
        await daemon.idle()
    got = payloads(client)
    assert got == [f"before {i}" for i in range(10)] + [f"after {i}" for i in range(10)], got
    assert bubbles(client) == [True] * 20
    assert redis.llen(f"rm:users:{uid}:messages") == 0
    client.close()
    await client.close_code()


@pytest.mark.parametrize("intake", [True, False], ids=["intake", "no-intake"])
@pytest_twisted.ensureDeferred
async def test_what_a_socket_given_away_did_not_confirm_is_queued_before_what_the_new_owner_queues(daemon_factory, redis, intake):
    """
    node-b joins and owns a user whose socket on node-a has five messages unconfirmed (its client reads nothing):
    node-a's word to node-b came at once, before those five went back to the queue, so the three published after
    the change were queued first, and the five after them.  The word now waits for them (1 s for a confirmation).
    Without the intake's reader to wait for, the word went in the very call that took the change.
    """
    first = await daemon_factory(node_id="node-a", intake=intake)
    await wait_until(lambda: first.service.peers.nodes == ["node-a"], 5, "node-a alone")
    uid = owned_by("node-b", NODES[:2])
    client = await connect_client(first.url)
    client.send(uid)
    await wait_until(lambda: first.service.presence.get(uid) is not None, 5, "online on node-a")
    client.protocol.transport.pauseProducing()  # reads nothing: answers no ping
    for i in range(5):
        publish(redis, f"rm.users.{uid}", f"m{i}")
    await wait_until(lambda: len(first.service.presence.get(uid).attachments[0].unconfirmed) == 5, 5, "five unconfirmed")
    second = await daemon_factory(node_id="node-b", intake=intake)
    daemons = [first, second]
    await wait_until(lambda: all(d.service.peers.nodes == NODES[:2] for d in daemons), 10, "both see both")
    for i in range(5, 8):
        publish(redis, f"rm.users.{uid}", f"m{i}")  # node-b's now
    # node-b queued them (the user offline there), or the socket is its relay now (they wait behind the queue)
    await wait_until(lambda: redis.llen(f"rm:users:{uid}:messages") >= 3 or sockets_of(daemons, uid) == 1, 10, "m5-m7 handled")
    client.drop()
    await wait_until(lambda: redis.llen(f"rm:users:{uid}:messages") == 8, 10, "all eight queued")
    for daemon in daemons:
        await daemon.idle()
    queued = [json.loads(e)["payload"] for e in redis.lrange(f"rm:users:{uid}:messages", 0, -1)]
    assert queued == [f"m{i}" for i in range(8)], "once each, in order"


async def version_1_relay(daemon_factory: Any) -> tuple[list[Any], str, Any, Any, WebSocketClient]:
    """Two daemons, a uid node-a owns, node-a, node-b, and a version-1 socket of the user on node-b (a relay)."""
    from .channelclient import hello

    daemons = await cluster(daemon_factory, 2)
    uid = owned_by("node-a", NODES[:2])
    owner, holder = on(daemons, "node-a"), on(daemons, "node-b")
    client = await connect_client(holder.url)
    client.send(hello(uid))
    assert await client.next() == {"type": "welcome", "v": 1, "uid": uid}
    await wait_until(lambda: sockets_of(daemons, uid) == 1, 5, "attached at its owner")
    return daemons, uid, owner, holder, client


@pytest_twisted.ensureDeferred
async def test_a_version_1_client_held_by_another_daemon_acknowledges_through_it(daemon_factory, redis):
    from .channelclient import Session

    daemons, uid, owner, holder, client = await version_1_relay(daemon_factory)
    v1 = Session(client)
    for i in range(20):
        publish(redis, f"rm.users.{uid}", f"m{i}")
    got = await v1.receive(20)  # each acknowledged as it comes
    assert [m["payload"] for m in got] == [f"m{i}" for i in range(20)] and len({m["id"] for m in got}) == 20
    (attachment,) = owner.service.presence.get(uid).attachments
    await wait_until(lambda: not attachment.unconfirmed, 5, "the acks reached the owner")
    client.drop()  # gone without a close: what it acknowledged is not sent again
    await wait_until(lambda: sockets_of(daemons, uid) == 0, 5, "detached at its owner")
    for daemon in daemons:
        await daemon.idle()
    assert redis.llen(f"rm:users:{uid}:messages") == 0, "everything was acknowledged: nothing back in the queue"


@pytest_twisted.ensureDeferred
async def test_what_a_socket_held_elsewhere_did_not_confirm_is_queued_by_the_owner_when_it_drops(daemon_factory, redis):
    daemons = await cluster(daemon_factory, 2)
    uid = owned_by("node-a", NODES[:2])
    first = await tab(daemons, on(daemons, "node-b"), uid)
    first.drop_after(5)  # vanishes mid-delivery, having confirmed nothing
    for i in range(10):
        publish(redis, f"rm.users.{uid}", f"m{i}")
    await wait_until(lambda: sockets_of(daemons, uid) == 0, 5, "detached at its owner")
    for daemon in daemons:
        await daemon.idle()
    await wait_until(lambda: redis.llen(f"rm:users:{uid}:messages") == 10, 5, "requeued by the owner, once each")
    again = await tab(daemons, on(daemons, "node-a"), uid)
    await again.receive(10)
    read = payloads(first)  # at least five (frames of the same read arrive together)
    assert len(read) >= 5 and read == [f"m{i}" for i in range(len(read))]
    assert payloads(again) == [f"m{i}" for i in range(10)], "none lost, in order (what it read again: unconfirmed)"
    again.close()
    await again.close_code()


async def relayed_tab(daemon_factory: Any) -> tuple[list[Any], str, Any, WebSocketClient]:
    """Two daemons, a uid node-a owns, node-b, and a socket of the user on node-b (a relay)."""
    daemons = await cluster(daemon_factory, 2)
    uid = owned_by("node-a", NODES[:2])
    holder = on(daemons, "node-b")
    return daemons, uid, holder, await tab(daemons, holder, uid)


def losing_a_delivery(holder: Any, nth: int, unnumbered: bool = False) -> list[dict[bytes, bytes]]:
    """
    The ``nth`` entry of ``holder``'s inbox that carries deliveries is lost (as a Redis failover loses inbox
    entries), and only that one; the list of it.  ``unnumbered``: every batch reads as a version before the
    batch numbers wrote it.
    """
    peers = holder.service.peers
    unpack = peers._unpack
    seen: list[dict[bytes, bytes]] = []
    lost: list[dict[bytes, bytes]] = []

    def losing(entry: dict[bytes, bytes]) -> None:
        if unnumbered and b"d" in entry:
            data = json.loads(entry[b"d"])
            del data["s"]
            data["x"] = [item[:4] if item[0] == "D" else item for item in data["x"]]
            entry = {**entry, b"d": json.dumps(data).encode()}
        if b'"D"' in entry.get(b"d", b""):
            seen.append(entry)
            if len(seen) == nth:
                lost.append(entry)
                return
        unpack(entry)

    peers._unpack = losing
    return lost


async def comes_from_the_queue(daemons: list[Any], holder: Any, uid: str, redis: Any, expected: list[str]) -> None:
    """Once the owner queued ``expected``, a new socket of ``uid`` on ``holder`` gets exactly that, once, in order."""
    await wait_until(lambda: redis.llen(f"rm:users:{uid}:messages") == len(expected), 5, f"{expected} queued by the owner")
    again = await tab(daemons, holder, uid)
    await again.receive(len(expected))
    for daemon in daemons:
        await daemon.idle()
    assert payloads(again) == expected, "once, in order"
    again.close()
    await again.close_code()


@pytest.mark.parametrize("numbered", [True, False], ids=["numbered", "a-writer-before-the-numbers"])
@pytest_twisted.ensureDeferred
async def test_deliveries_lost_between_daemons_close_the_socket_and_come_again_from_the_queue(
    daemon_factory, redis, numbered
):
    """
    A Redis failover can lose the last inbox entries written to the old master. The holder counts the deliveries
    that reached each socket, and a confirmation asking for more closes the socket (1013) rather than confirming
    what never arrived (with batches of a version before the numbers too); the owner queues what it did not
    confirm. The lost batch is counted only when the batches are numbered.
    """
    daemons, uid, holder, client = await relayed_tab(daemon_factory)
    lost = losing_a_delivery(holder, 1, unnumbered=not numbered)
    publish(redis, f"rm.users.{uid}", "lost on the way")
    code, reason = await client.close_code(timeout=10)
    assert (code, reason) == (1013, "messages for this socket were lost between daemons (a Redis failover); reconnect")
    assert len(lost) == 1 and client.received == []
    await wait_until(lambda: redis.llen(f"rm:users:{uid}:messages") == 1, 5, "queued by the owner")
    again = await tab(daemons, holder, uid)
    assert [m["payload"] for m in await again.receive(1)] == ["lost on the way"]
    for daemon in daemons:
        await daemon.idle()
    assert payloads(again) == ["lost on the way"], "once"
    metrics = await scrape(holder.port)
    assert metrics["redmessenger_inbox_batches_lost_total"] == (1 if numbered else 0)
    again.close()
    await again.close_code()


@pytest_twisted.ensureDeferred
async def test_a_batch_lost_between_daemons_while_later_ones_arrive_closes_the_socket_before_them_nothing_twice(
    daemon_factory, redis
):
    """
    A failover loses an inbox entry in the middle: the batches after it arrive. The holder sees the socket's
    delivery numbers skip and closes it (1013) before writing anything that came after the loss; its detach names
    what the client read, so the owner queues only the rest. Counted: m0-m2 live, m3-m9 from the queue, each once,
    in order.
    """
    daemons, uid, holder, client = await relayed_tab(daemon_factory)
    lost = losing_a_delivery(holder, 4)
    for i in range(3):
        publish(redis, f"rm.users.{uid}", f"m{i}")
        await client.receive(1)  # one batch each
    publish(redis, f"rm.users.{uid}", "m3")
    await wait_until(lambda: lost, 5, "the fourth delivery lost")
    for i in range(4, 10):
        publish(redis, f"rm.users.{uid}", f"m{i}")
    code, reason = await client.close_code(timeout=10)
    assert (code, reason) == (1013, "messages for this socket were lost between daemons (a Redis failover); reconnect")
    assert payloads(client) == ["m0", "m1", "m2"], "nothing written after the loss"
    await wait_until(lambda: sockets_of(daemons, uid) == 0, 5, "detached at its owner")
    await comes_from_the_queue(daemons, holder, uid, redis, [f"m{i}" for i in range(3, 10)])
    metrics = await scrape(holder.port)
    assert metrics["redmessenger_inbox_batches_lost_total"] == 1


@pytest_twisted.ensureDeferred
async def test_deliveries_lost_for_one_socket_close_only_that_one(daemon_factory, redis):
    """
    A lost batch held deliveries for one of two relays of node-a's users: that one closes (1013) at its next
    delivery, before it is written; the other, whose numbers do not skip, stays open and gets all of its own.
    """
    daemons = await cluster(daemon_factory, 2)
    holder = on(daemons, "node-b")
    hit, spared = owned_by("node-a", NODES[:2], "hit"), owned_by("node-a", NODES[:2], "spared")
    hit_tab, spared_tab = await tab(daemons, holder, hit), await tab(daemons, holder, spared)
    lost = losing_a_delivery(holder, 1)
    publish(redis, f"rm.users.{hit}", "lost on the way")
    await wait_until(lambda: lost, 5, "the delivery lost")
    for i in range(5):
        publish(redis, f"rm.users.{spared}", f"s{i}")
        publish(redis, f"rm.users.{hit}", f"h{i}")
    assert (await hit_tab.close_code(timeout=10))[0] == 1013
    await spared_tab.receive(5)
    await wait_until(lambda: redis.llen(f"rm:users:{hit}:messages") == 6, 5, "what the closed one missed, queued")
    again = await tab(daemons, holder, hit)
    await again.receive(6)
    for daemon in daemons:
        await daemon.idle()
    assert payloads(hit_tab) == []
    assert payloads(again) == ["lost on the way"] + [f"h{i}" for i in range(5)], "once, in order"
    assert payloads(spared_tab) == [f"s{i}" for i in range(5)] and spared_tab.protocol.state == spared_tab.protocol.STATE_OPEN
    for client in (again, spared_tab):
        client.close()
        await client.close_code()


@pytest_twisted.ensureDeferred
async def test_deliveries_that_reach_a_relay_while_it_closes_are_queued_not_taken_as_read(daemon_factory, redis):
    """
    The holder closes a relay on its own (the client sent a second identifier) and the client is slow to answer
    the close: what the owner delivers meanwhile reaches the holder but cannot be written. The close ends clean
    (the client read everything written), and its detach says what was written: the owner queues the rest.
    Before, a clean close took everything as read and those messages were lost.
    """
    daemons, uid, holder, client = await relayed_tab(daemon_factory)
    publish(redis, f"rm.users.{uid}", "before")
    await client.receive(1)
    client.protocol.transport.pauseProducing()  # the client reads nothing for now (it can still write)
    client.send("a second identifier")
    (relay,) = holder.service.peers._relays.values()
    await wait_until(lambda: not relay.sink.writable, 5, "the holder closing it")
    for i in range(5):
        publish(redis, f"rm.users.{uid}", f"m{i}")
    (arrivals,) = holder.service.peers._arrived.values()
    await wait_until(lambda: arrivals.count == 6, 5, "the five deliveries at the holder, unwritten")
    client.protocol.transport.resumeProducing()
    assert await client.close_code(timeout=10) == (4409, "this socket has sent its identifier already")
    assert client.protocol.wasClean
    await comes_from_the_queue(daemons, holder, uid, redis, [f"m{i}" for i in range(5)])
    assert payloads(client) == ["before"]


@pytest_twisted.ensureDeferred
async def test_a_delivery_still_on_its_way_when_a_relay_closes_clean_is_queued_not_taken_as_read(daemon_factory, redis):
    """
    The holder closes a relay cleanly while a delivery for it waits, unread, in the holder's inbox: the detach
    says what was written, not "everything", so the owner queues the one still on its way (it is dropped when it
    reaches the holder, the relay gone). Before, a clean close took it as read: lost.
    """
    daemons, uid, holder, client = await relayed_tab(daemon_factory)
    publish(redis, f"rm.users.{uid}", "before")
    await client.receive(1)
    peers = holder.service.peers
    unpack = peers._unpack
    delayed: list[dict[bytes, bytes]] = []

    def delaying(entry: dict[bytes, bytes]) -> None:
        if b'"D"' in entry.get(b"d", b""):
            delayed.append(entry)  # read only once the relay is gone
            return
        unpack(entry)

    peers._unpack = delaying
    publish(redis, f"rm.users.{uid}", "on its way")
    await wait_until(lambda: delayed, 5, "the delivery in the holder's inbox, not read yet")
    client.send("a second identifier")  # the holder closes it, cleanly
    assert await client.close_code(timeout=10) == (4409, "this socket has sent its identifier already")
    assert client.protocol.wasClean
    await wait_until(lambda: sockets_of(daemons, uid) == 0, 5, "detached at its owner")
    for entry in delayed:
        unpack(entry)
    peers._unpack = unpack
    await comes_from_the_queue(daemons, holder, uid, redis, ["on its way"])
    assert payloads(client) == ["before"]


@pytest_twisted.ensureDeferred
async def test_a_closing_relay_does_not_confirm_a_delivery_it_could_not_write(daemon_factory, redis):
    """
    A version-1 client acknowledged everything it was written; the holder is closing it (a second hello) when the
    owner delivers m1 and asks for a confirmation. Its acks cover all that was written, but m1 was not: the answer
    is no, and the owner queues m1 when the socket is gone. Before, the answer was yes and m1 was lost.
    """
    from .channelclient import Session, hello

    daemons, uid, owner, holder, client = await version_1_relay(daemon_factory)
    publish(redis, f"rm.users.{uid}", "m0")
    assert [m["payload"] for m in await Session(client).receive(1)] == ["m0"]  # acknowledged
    (attachment,) = owner.service.presence.get(uid).attachments
    await wait_until(lambda: not attachment.unconfirmed, 5, "the ack at the owner")
    client.protocol.transport.pauseProducing()  # it reads nothing for now
    client.send(hello(uid))  # the holder closes it (4409)
    (relay,) = holder.service.peers._relays.values()
    await wait_until(lambda: not relay.sink.writable, 5, "the holder closing it")
    publish(redis, f"rm.users.{uid}", "m1")
    await wait_until(lambda: attachment.confirming, 5, "the owner to want m1 confirmed")
    await wait_until(lambda: not attachment.confirming, 5, "the holder's answer")
    assert [sent.message.payload for sent in attachment.unconfirmed] == ["m1"], "not confirmed"
    client.protocol.transport.resumeProducing()
    assert (await client.close_code(timeout=10))[0] == 4409
    await comes_from_the_queue(daemons, holder, uid, redis, ["m1"])


def losing_the_first(daemon: Any, kind: bytes) -> list[dict[bytes, bytes]]:
    """The first ``kind`` item of ``daemon``'s inbox is lost (as a Redis failover loses inbox entries); the list of it."""
    peers = daemon.service.peers
    handle = peers._handle
    lost: list[dict[bytes, bytes]] = []

    def losing(fields: dict[bytes, bytes]) -> None:
        if not lost and fields.get(b"k") == kind:
            lost.append(fields)
            return
        handle(fields)

    peers._handle = losing
    return lost


async def resending(daemon_factory: Any, monkeypatch: Any) -> tuple[list[Any], str]:
    """Two daemons that send unanswered inbox items again after 0.2-0.4 s; a uid node-a owns."""
    monkeypatch.setattr(peers_module, "RESEND_AFTER", 0.2)
    return await cluster(daemon_factory, 2), owned_by("node-a", NODES[:2])


@pytest_twisted.ensureDeferred
async def test_an_attach_lost_between_daemons_is_sent_again_and_the_socket_gets_its_messages_live(
    daemon_factory, redis, monkeypatch
):
    daemons, uid = await resending(daemon_factory, monkeypatch)
    lost = losing_the_first(on(daemons, "node-a"), b"attach")
    client = await connect_client(on(daemons, "node-b").url)
    client.send(uid)
    await wait_until(lambda: sockets_of(daemons, uid) == 1, 5, "attached at its owner, once sent again")
    assert len(lost) == 1
    for i in range(10):
        publish(redis, f"rm.users.{uid}", f"m{i}")
    await client.receive(10)
    for daemon in daemons:
        await daemon.idle()
    assert payloads(client) == [f"m{i}" for i in range(10)] and bubbles(client) == [True] * 10, "live, once, in order"
    assert redis.llen(f"rm:users:{uid}:messages") == 0 and sockets_of(daemons, uid) == 1, "none queued, attached once"
    holder, owner = await scrape(on(daemons, "node-b").port), await scrape(on(daemons, "node-a").port)
    assert (holder["redmessenger_inbox_resent_total"], holder["redmessenger_relayed_sockets"]) == (1, 1)
    assert (owner["redmessenger_remote_sockets"], owner["redmessenger_relayed_sockets"]) == (1, 0)
    assert holder["redmessenger_node_changes_unconfirmed_total"] == 0
    client.close()
    await client.close_code()


@pytest_twisted.ensureDeferred
async def test_a_lost_answer_to_a_confirmation_request_is_asked_again_and_nothing_comes_twice(
    daemon_factory, redis, monkeypatch
):
    daemons, uid = await resending(daemon_factory, monkeypatch)
    owner = on(daemons, "node-a")
    client = await tab(daemons, on(daemons, "node-b"), uid)
    lost = losing_the_first(owner, b"confirmed")
    for i in range(10):
        publish(redis, f"rm.users.{uid}", f"m{i}")
    await client.receive(10)
    (attachment,) = owner.service.presence.get(uid).attachments
    await wait_until(lambda: lost and not attachment.unconfirmed, 10, "confirmed, once asked again")
    client.drop()  # gone without a close: what it confirmed is not sent again
    await wait_until(lambda: sockets_of(daemons, uid) == 0, 5, "detached at its owner")
    for daemon in daemons:
        await daemon.idle()
    assert len(lost) == 1 and payloads(client) == [f"m{i}" for i in range(10)]
    assert redis.llen(f"rm:users:{uid}:messages") == 0, "nothing queued again"


@pytest_twisted.ensureDeferred
async def test_a_socket_whose_detach_was_lost_is_let_go_by_its_owner_at_its_next_confirmation(daemon_factory, redis):
    daemons = await cluster(daemon_factory, 2)
    uid = owned_by("node-a", NODES[:2])
    holder = on(daemons, "node-b")
    client = await tab(daemons, holder, uid)
    lost = losing_the_first(on(daemons, "node-a"), b"detach")
    client.close()
    await client.close_code()
    await wait_until(lambda: lost and not holder.service.peers._relays, 5, "the detach sent, and lost")
    assert sockets_of(daemons, uid) == 1, "the owner still counts it"
    publish(redis, f"rm.users.{uid}", "for a socket that is gone")
    await wait_until(lambda: sockets_of(daemons, uid) == 0, 5, "let go at the answer to its confirmation")
    await wait_until(lambda: redis.llen(f"rm:users:{uid}:messages") == 1, 5, "queued")
    again = await tab(daemons, holder, uid)
    assert [m["payload"] for m in await again.receive(1)] == ["for a socket that is gone"]
    for daemon in daemons:
        await daemon.idle()
    assert payloads(again) == ["for a socket that is gone"] and payloads(client) == [], "once"
    again.close()
    await again.close_code()


@pytest_twisted.ensureDeferred
async def test_a_daemon_joins_only_once_its_inbox_is_emptied_so_what_the_others_send_it_then_arrives(
    daemon_factory, redis, monkeypatch
):
    """
    A starting daemon empties its inbox (the previous run's entries). The others write to it as soon as they hear
    it join (attaches of the sockets it now owns, barriers); had it joined first, a slow emptying took those with it,
    and the sockets stayed unknown to their owner until sent again (5-10 s). It joins once its inbox is empty.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    first = await daemon_factory(node_id="node-a")
    uid = owned_by("node-b", NODES[:2])
    client = await first.client(uid)  # node-a's own while it is alone; node-b's once it joins
    start = PeerLink.start

    def slow_to_empty(peers: PeerLink) -> None:
        reading = peers._reading
        execute = reading.execute_command

        def delayed(*args: Any) -> Any:
            if args[0] == "DEL":  # the previous run's entries: emptied late
                return deferLater(reactor, 0.5, execute, *args)
            return execute(*args)

        peers._reading = type("Slow", (), {"execute_command": staticmethod(delayed)})()
        start(peers)

    monkeypatch.setattr(PeerLink, "start", slow_to_empty)
    second = await daemon_factory(node_id="node-b")
    daemons = [first, second]
    await wait_until(lambda: sockets_of(daemons, uid) == 1, 3, "the socket attached to its new owner at once")
    publish(redis, f"rm.users.{uid}", "after the join")
    assert [m["payload"] for m in await client.receive(1)] == ["after the join"]
    assert second.service.peers.handoffs.timed_out == 0, "node-a's barrier arrived: nothing held for 2 s"
    client.close()
    await client.close_code()


@pytest_twisted.ensureDeferred
async def test_an_attach_from_a_holders_new_run_lets_go_of_its_previous_runs_sockets_whichever_comes_first(
    daemon_factory, redis
):
    """
    A holder killed and started again at once: its clients reconnect to it, and an attach of its new run can reach
    the owner before the change of the nodes that says it restarted. Socket ids carry the run: the owner lets go of the
    previous run's sockets at that attach, and the change that follows keeps the new run's.
    """
    daemons = await cluster(daemon_factory, 2)
    uid = owned_by("node-a", NODES[:2])
    owner = on(daemons, "node-a")
    old = await tab(daemons, on(daemons, "node-b"), uid)
    (previous,) = owner.service.presence.get(uid).attachments
    peers = owner.service.peers
    new_run = "f" * 16
    assert not peers._relays and all(not sid.startswith("ffffff.") for _, sid in peers._remote)
    peers._handle({b"k": b"attach", b"n": b"node-b", b"s": b"ffffff.1", b"u": uid.encode(), b"a": b"0", b"p": b"x"})
    (current,) = owner.service.presence.get(uid).attachments
    assert current is not previous and not previous.attached and list(peers._remote) == [("node-b", "ffffff.1")]
    peers.nodes_changed(list(NODES[:2]), NodesChange(99, "node-b", False, False, True, list(NODES[:2]), new_run))
    assert owner.service.presence.get(uid).attachments == [current] and current.attached, "the new run's socket stays"
    old.close()
    await old.close_code()


@pytest_twisted.ensureDeferred
async def test_two_daemons_listening_on_one_port_share_its_connections_and_each_user_gets_its_messages_once(
    daemon_factory, redis
):
    from .conftest import HOST, free_port

    port = free_port()
    listen = f"reuseport:{port}:interface={HOST}"  # what ws_reuse_port: true gives ws_port
    daemons = [await daemon_factory(node_id=name, listen=listen) for name in NODES[:2]]
    await wait_until(lambda: all(d.service.peers.nodes == NODES[:2] for d in daemons), 10, "both see both")
    url = f"ws://{HOST}:{port}{daemons[0].service.config.rm_route}"
    clients = []
    for i in range(40):
        client = await connect_client(url)
        client.send(f"shared{i}")
        clients.append(client)
    await wait_until(lambda: sum(sockets_of(daemons, f"shared{i}") for i in range(40)) == 40, 10, "all attached")
    held = [len(d.service.websockets.sockets) for d in daemons]
    assert sum(held) == 40 and min(held) > 0, f"the kernel spread the connections: {held}"
    for i in range(40):
        publish(redis, f"rm.users.shared{i}", f"for shared{i}")
    for i, client in enumerate(clients):
        assert [m["payload"] for m in await client.receive(1)] == [f"for shared{i}"]
    for daemon in daemons:
        await daemon.idle()
    assert all(len(client.received) == 1 for client in clients), "once each"
    for client in clients:
        client.close()
        await client.close_code()


async def beside_a_twistd(daemon_factory: Any, redis_port: int, tmp_path: Any, local: str) -> tuple[Any, Any]:
    """A daemon in this process named ``local``, and node-b, a real twistd (the caller stops it), seeing each other."""
    from .twistdprocess import Twistd

    a = await daemon_factory(node_id=local)
    b = Twistd(tmp_path, redis_port, node_id="node-b", ping_interval=0)
    b.start()
    try:
        await b.healthy()
        await wait_until(lambda: a.service.peers.nodes == sorted([local, "node-b"]), 10, "the in-process node to see node-b")
    except BaseException:
        await b.stop()
        raise
    return a, b


@pytest.mark.parametrize("local", ["node-a", "alpha"])  # the intake read by the node killed, or by the one left
@pytest_twisted.ensureDeferred
async def test_an_owner_killed_with_kill_9_hands_its_users_on_within_the_heartbeat_and_loses_no_durable_message(
    daemon_factory, redis, redis_server, tmp_path, local
):
    """
    node-b (a real twistd) owns the user; the user's tab is on node-a. node-b is killed with SIGKILL: once its
    heartbeat entry expires (10 s) node-a owns the user, the tab carries the bubble there, and every message of
    the durable intake published meanwhile reaches it once, in order. (A bare PUBLISH to a dead owner is lost, as
    with one daemon: pub/sub keeps nothing.)
    """
    names = sorted([local, "node-b"])
    assert (owner_of("rm:intake", names) == local) == (local == "alpha")
    a, b = await beside_a_twistd(daemon_factory, redis_server.port, tmp_path, local)
    try:
        uid = owned_by("node-b", names)
        client = await connect_client(a.url)
        client.send(uid)
        await wait_until(lambda: a.service.peers._relays, 5, "the tab relayed to node-b")
        publish(redis, f"rm.users.{uid}", "through node-b")
        assert [m["payload"] for m in await client.receive(1)] == ["through node-b"]  # node-b delivered it
        b.signal("KILL")
        await b.ended(10)
        for i in range(10):
            redis.xadd("rm:intake", {"channel": f"rm.users.{uid}", "payload": f"durable {i}"})
        await wait_until(lambda: a.service.peers.nodes == [local], 15, "node-b's heartbeat to expire")
        await wait_until(lambda: a.service.presence.get(uid) is not None, 5, "the tab local to node-a, its new owner")
        got = [m["payload"] for m in await client.receive(10, timeout=70)]  # a dead reader's entries: claim_idle, 60 s
        await wait_until(lambda: redis.xlen("rm:intake") == 0, 10, "the intake acknowledged")
        await a.idle()
        assert got == [f"durable {i}" for i in range(10)], got  # none lost, none doubled, in order
        assert [m["bubble"] for m in client.received] == [True] * 11
        assert len(client.received) == 11
        client.close()
        await client.close_code()
    finally:
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_holder_killed_with_kill_9_leaves_the_bubble_to_the_owners_tab_and_loses_nothing(
    daemon_factory, redis, redis_server, tmp_path
):
    """
    alpha (in this process) owns the user and reads the intake; the user's oldest tab, the bubble, is on node-b (a real twistd),
    another tab on alpha. node-b is killed with SIGKILL while direct and durable messages keep coming: the tab
    left gets each once, in order, and once node-b's heartbeat entry expires the owner forgets the dead tab and
    gives the bubble to the tab left; nothing is queued, since the user was online throughout.
    """
    names = ["alpha", "node-b"]
    assert owner_of("rm:intake", names) == "alpha"
    a, b = await beside_a_twistd(daemon_factory, redis_server.port, tmp_path, "alpha")
    try:
        uid = owned_by("alpha", names)

        def tabs() -> int:
            user = a.service.presence.get(uid)
            return len(user.attachments) if user is not None else 0

        relayed = await connect_client(b.url)
        relayed.send(uid)
        await wait_until(lambda: tabs() == 1, 5, "the tab on node-b attached at alpha")
        local = await connect_client(a.url)
        local.send(uid)
        await wait_until(lambda: tabs() == 2, 5, "the tab on alpha")
        publish(redis, f"rm.users.{uid}", "before")
        assert [(m["payload"], m["bubble"]) for m in await relayed.receive(1)] == [("before", True)]
        assert [(m["payload"], m["bubble"]) for m in await local.receive(1)] == [("before", False)]
        b.signal("KILL")
        await b.ended(10)
        for i in range(10):
            publish(redis, f"rm.users.{uid}", f"direct {i}")
            redis.xadd("rm:intake", {"channel": f"rm.users.{uid}", "payload": f"durable {i}"})
        await local.receive(20)
        await wait_until(lambda: a.service.peers.nodes == ["alpha"], 15, "node-b's heartbeat to expire")
        await wait_until(lambda: tabs() == 1, 5, "the dead tab forgotten")
        publish(redis, f"rm.users.{uid}", "after")
        await local.receive(1)
        await wait_until(lambda: redis.xlen("rm:intake") == 0, 10, "the intake acknowledged")
        await a.idle()
        got = payloads(local)
        assert len(got) == 22 and len(set(got)) == 22, got  # none doubled
        assert [p for p in got if p.startswith("direct")] == [f"direct {i}" for i in range(10)]
        assert [p for p in got if p.startswith("durable")] == [f"durable {i}" for i in range(10)]
        assert got[0] == "before" and got[-1] == "after"
        assert local.received[-1]["bubble"] is True, "the bubble moved to the tab left"
        assert redis.llen(f"rm:users:{uid}:messages") == 0, "nothing queued: the user was online throughout"
        local.close()
        await local.close_code()
    finally:
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_an_owner_killed_and_started_again_at_once_under_its_name_gets_its_relays_back(
    daemon_factory, redis, redis_server, tmp_path
):
    """
    node-b (a real twistd) owns the user, whose tab is on alpha. node-b is killed with SIGKILL and started again
    under the same name before its entry in rm:nodes expires: the list never changes, but the heartbeat tells
    the new run (rm:nodes:runs), alpha attaches the tab to it again, and durable messages reach the tab once, in
    order, live (before, its new run knew nothing of the tab and queued them until the tab reconnected).
    """
    from .twistdprocess import Twistd

    names = ["alpha", "node-b"]
    a, b = await beside_a_twistd(daemon_factory, redis_server.port, tmp_path, "alpha")
    again: Any = None
    try:
        uid = owned_by("node-b", names)
        client = await connect_client(a.url)
        client.send(uid)
        await wait_until(lambda: a.service.peers._relays, 5, "the tab relayed to node-b")
        first_sid = set(a.service.peers._relays)
        b.signal("KILL")
        await b.ended(10)
        (tmp_path / "again").mkdir()
        again = Twistd(tmp_path / "again", redis_server.port, node_id="node-b", ping_interval=0)
        again.start()
        await again.healthy()
        await wait_until(lambda: set(a.service.peers._relays) not in (set(), first_sid), 5, "the tab attached again")
        assert a.service.peers.nodes == names, "the list never changed: node-b's entry had not expired"
        for i in range(10):
            redis.xadd("rm:intake", {"channel": f"rm.users.{uid}", "payload": f"durable {i}"})
        got = [m["payload"] for m in await client.receive(10)]
        await wait_until(lambda: redis.xlen("rm:intake") == 0, 10, "the intake acknowledged")
        await a.idle()
        assert got == [f"durable {i}" for i in range(10)] and len(client.received) == 10, got
        assert redis.llen(f"rm:users:{uid}:messages") == 0, "delivered live, not queued"
        client.close()
        await client.close_code()
    finally:
        await b.stop()
        if again is not None:
            await again.stop()


def _publish_durably(redis_port: int, uids: list[str], count: int) -> list[tuple[str, str]]:
    """The application, in a thread: ``count`` intake entries per user, round robin, paced; their (uid, payload)."""
    import time

    import valkey

    client = valkey.Valkey(host="127.0.0.1", port=redis_port)
    sent = []
    for i in range(count):
        for uid in uids:
            client.xadd("rm:intake", {"channel": f"rm.users.{uid}", "payload": f"{uid}.{i}"})
            sent.append((uid, f"{uid}.{i}"))
        time.sleep(0.01)
    client.close()
    return sent


@pytest.mark.parametrize("passing", [False, True], ids=["relaying", "passing"])
@pytest_twisted.ensureDeferred
async def test_a_rolling_restart_of_both_daemons_under_load_loses_nothing(daemon_factory, redis, redis_server, passing):
    """
    Two daemons, ten users' clients spread over them, durable messages published all along; each daemon is
    stopped (sockets closed with 1001, its entry in rm:nodes gone at once) and started again in turn, its clients
    reconnecting to the other one as a load balancer would send them. Every message reaches its user, in order;
    what comes twice has the same id (a version-1 client drops it).  ``passing``: a socket that reaches the
    daemon not owning its user goes to the owner's process (transport/passing.py), and becomes a relay when
    the owner changes; else it is a relay from the start.
    """
    from twisted.internet.threads import deferToThread

    from .wsclient import AckingClient

    daemons = {name: await daemon_factory(node_id=name, pass_sockets=passing) for name in NODES[:2]}
    await wait_until(lambda: all(d.service.peers.nodes == NODES[:2] for d in daemons.values()), 10, "both see both")
    await wait_until(lambda: all(len(d.service.nodes.runs) == 2 for d in daemons.values()), 10, "both know both runs")
    started = list(daemons.values())
    uids = [f"roll{i}" for i in range(10)]
    clients = {uid: AckingClient(uid) for uid in uids}
    where = {uid: NODES[i % 2] for i, uid in enumerate(uids)}
    for uid, client in clients.items():
        await client.connect(daemons[where[uid]].url)

    def holders(uid: str) -> list[str]:
        return [n for n, d in daemons.items() if any(s._session and s._session.uid == uid for s in d.service.websockets.sockets)]

    await wait_until(lambda: all(len(holders(uid)) == 1 for uid in uids), 5, "each socket identified, on one daemon")
    where = {uid: holders(uid)[0] for uid in uids}  # passing: some went to their owner
    publishing = deferToThread(_publish_durably, redis_server.port, uids, 60)  # about 1.2 s per pass of ten
    for name, other in (("node-a", "node-b"), ("node-b", "node-a")):
        await daemons[name].service.stopService()
        for uid in uids:
            if where[uid] == name:
                await clients[uid].client.close_code()
                await clients[uid].connect(daemons[other].url)
                where[uid] = other
        await wait_until(lambda: daemons[other].service.peers.nodes == [other], 5, f"{name} gone")
        daemons[name] = await daemon_factory(node_id=name, pass_sockets=passing)
        started.append(daemons[name])
        await wait_until(lambda: all(d.service.peers.nodes == NODES[:2] for d in daemons.values()), 10, "both again")
    sent = await publishing
    await wait_until(lambda: redis.xlen("rm:intake") == 0, 20, "every entry acknowledged")
    expected = {uid: [p for u, p in sent if u == uid] for uid in uids}
    await wait_until(lambda: all(set(m["payload"] for m in clients[uid].received) >= set(expected[uid]) for uid in uids), 20, "all arrived")
    lost, doubled, reordered = 0, 0, 0
    for uid in uids:
        got = [m["payload"] for m in clients[uid].received]
        ids = {}
        for m in clients[uid].received:
            ids.setdefault(m["payload"], set()).add(m["id"])
        assert all(len(s) == 1 for s in ids.values()), "a message that comes twice has the same id"
        lost += len(set(expected[uid]) - set(got))
        doubled += len(got) - len(set(got))
        firsts = list(dict.fromkeys(got))
        reordered += firsts != expected[uid]
    print(f"rolling restart: {len(sent)} messages to 10 users: lost {lost}, doubled {doubled} (same ids), users reordered {reordered}")
    assert (lost, reordered) == (0, 0)
    if passing:
        assert sum(d.service.sender.counts[Outcome.PASSED] for d in started) > 0, "sockets were passed"
    for client in clients.values():
        client.client.close()
        await client.client.close_code()


def _publish_bare(redis_port: int, uids: list[str], progress: list[int], stop: Any) -> int:
    """The application, in a thread: bare PUBLISHes to each user, round robin, paced, until ``stop`` is set; the rounds."""
    import time

    import valkey

    client = valkey.Valkey(host="127.0.0.1", port=redis_port)
    rounds = 0
    while not stop.is_set():
        for uid in uids:
            client.publish(f"rm.users.{uid}", f"{uid}.{rounds}")
        rounds += 1
        progress.append(rounds)
        time.sleep(0.005)
    client.close()
    return rounds


@pytest_twisted.ensureDeferred
async def test_bare_publishes_while_a_daemon_joins_and_leaves_are_acted_on_by_exactly_one_owner(daemon_factory, redis, redis_server):
    """
    Users offline everywhere; bare PUBLISHes keep coming while node-b joins node-a and leaves again. The owners
    change at the same place among the PUBLISHes on both daemons (rm.nodes), and a new owner acts only once the
    old one's writes landed: every message is queued once, in order, whichever daemon owned the user then.
    """
    import threading

    from twisted.internet.threads import deferToThread

    first = await daemon_factory(node_id="node-a")
    uids = [f"flow{i}" for i in range(20)]
    assert 5 <= sum(owner_of(uid, NODES[:2]) == "node-b" for uid in uids) <= 15, "users that move both ways"
    progress: list[int] = []
    stop = threading.Event()
    publishing = deferToThread(_publish_bare, redis_server.port, uids, progress, stop)
    try:
        await wait_until(lambda: len(progress) >= 20, 10, "publishing under way")
        second = await daemon_factory(node_id="node-b")
        await wait_until(lambda: first.service.peers.nodes == NODES[:2], 5, "node-a to hear node-b")
        joined_at = len(progress)
        await wait_until(lambda: len(progress) >= joined_at + 40, 10, "publishing with both daemons")
        await second.service.stopService()  # leaves: node-a owns every user again
        left_at = len(progress)
        await wait_until(lambda: len(progress) >= left_at + 20, 10, "publishing after node-b left")
    finally:
        stop.set()
        rounds = await publishing
    await first.idle()
    for uid in uids:
        queued = [json.loads(e)["payload"] for e in redis.lrange(f"rm:users:{uid}:messages", 0, -1)]
        assert queued == [f"{uid}.{i}" for i in range(rounds)], (uid, rounds, len(queued), len(set(queued)))


async def intake_through_an_owner(daemon_factory: Any, monkeypatch: Any) -> tuple[list[Any], Any, Any, str, WebSocketClient]:
    """
    Two daemons that give unsettled intake entries again after 0.5 s; the one reading the intake, the other, a user
    the other owns and a socket of it there.
    """
    monkeypatch.setattr(peers_module, "RESEND_AFTER", 0.2)
    monkeypatch.setattr(forwarding_module, "FORWARD_AGAIN_AFTER", 0.5)
    daemons = await cluster(daemon_factory, 2)
    reader = on(daemons, owner_of("rm:intake", NODES[:2]))
    owner = next(d for d in daemons if d is not reader)
    uid = owned_by(owner.service.peers.node, NODES[:2])
    return daemons, reader, owner, uid, await tab(daemons, owner, uid)


@pytest.mark.parametrize("kind", [b"intake", b"settled"])
@pytest_twisted.ensureDeferred
async def test_an_intake_entry_lost_between_daemons_is_given_again_and_settles(daemon_factory, redis, monkeypatch, kind):
    """
    The intake's reader gives an entry for a user owned elsewhere to the owner (``intake``), which answers once it
    is safe (``settled``).  One of them lost with inbox entries (a failover): the entry stayed pending and in flight
    for good, and the client never got it.  Unsettled for FORWARD_AGAIN_AFTER, it is given again: every entry
    reaches the client, the first one last (as a claimed entry may), each once; the stream ends empty.
    """
    daemons, reader, owner, uid, client = await intake_through_an_owner(daemon_factory, monkeypatch)
    lost = losing_the_first(owner if kind == b"intake" else reader, kind)
    for i in range(5):
        redis.xadd("rm:intake", {"channel": f"rm.users.{uid}", "payload": f"d{i}"})
    await wait_until(lambda: len(client.received) >= 5, 10, "every entry delivered")
    await wait_until(lambda: redis.xlen("rm:intake") == 0, 10, "every entry settled and removed")
    assert len(lost) == 1 and reader.service.peers.forwarded_again >= 1
    got = payloads(client)
    if kind == b"intake":
        assert sorted(got) == [f"d{i}" for i in range(5)] and got[-1] == "d0", got
    else:  # its copy was delivered and confirmed; given again, the owner answers again without routing it again
        assert got == [f"d{i}" for i in range(5)], got
    assert not reader.service.peers._forwarding.forwarded and reader.service.intake.in_flight == 0
    assert redis.llen(f"rm:users:{uid}:messages") == 0


@pytest_twisted.ensureDeferred
async def test_an_intake_entry_only_slow_to_settle_is_given_again_but_reaches_the_client_once(daemon_factory, redis, monkeypatch):
    """
    Unsettled for a minute does not mean lost: the user's socket has not confirmed it yet (its client reads nothing
    for now).  Given again, the owner, which still has it on its way, does not route it a second time.
    """
    daemons, reader, owner, uid, client = await intake_through_an_owner(daemon_factory, monkeypatch)
    client.protocol.transport.pauseProducing()  # reads nothing: confirms nothing
    redis.xadd("rm:intake", {"channel": f"rm.users.{uid}", "payload": "slow"})
    await wait_until(lambda: reader.service.peers.forwarded_again >= 2, 10, "given again, twice")
    client.protocol.transport.resumeProducing()
    await wait_until(lambda: redis.xlen("rm:intake") == 0, 10, "settled and removed")
    for daemon in daemons:
        await daemon.idle()
    assert payloads(client) == ["slow"], "once"
    assert redis.llen(f"rm:users:{uid}:messages") == 0
