"""
Faults, counted exactly (SPEC §10): what a user's tabs receive when one of them
fails in the middle of a delivery.  Real daemon, real valkey-server, real clients.
"""

from __future__ import annotations

import json
import socket

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from .conftest import publish, wait_until

QUEUE = "rm:users:{}:messages"


def payloads(received: list[dict]) -> list[str]:
    return [m["payload"] for m in received]


@pytest_twisted.ensureDeferred
async def test_a_tab_that_drops_mid_handover_leaves_the_rest_to_the_tab_that_stays(daemon_factory, redis):
    """
    Issue 13, item 1: tab A receives a long queue, tab B of the same user is
    online, A drops midway: B gets the rest of the queue, in order, before the
    live messages published meanwhile; nothing is lost, and the only repeats are
    A's one unconfirmed batch.
    """
    daemon = await daemon_factory(handover_batch=100)
    total = 3000
    pipe = redis.pipeline(transaction=False)
    for i in range(total):
        pipe.rpush(QUEUE.format("user1"), json.dumps({"v": 1, "source": "rm.users.user1", "timestamp": i, "payload": f"q{i}"}))
    pipe.execute()

    a = await daemon.client()
    a.drop_after(1000)  # no close handshake, in the middle of the queue
    a.send("user1")
    await daemon.until(lambda: len(a.received) >= 1, what="A receiving the queue")
    b = await daemon.client("user1")
    publish(redis, "rm.users.user1", "live1")
    await a.close_code()
    publish(redis, "rm.users.user1", "live2")

    queue = [f"q{i}" for i in range(total)]
    await wait_until(lambda: payloads(b.received)[-1:] == ["live2"], 20, "B to receive the rest and the live messages")
    got_a, got_b = payloads(a.received), payloads(b.received)
    assert got_a == queue[: len(got_a)], "A got the head of the queue, in order"
    first_for_b = queue.index(got_b[0])
    assert got_b == queue[first_for_b:] + ["live1", "live2"], "B got the rest, in order, then the live messages"
    assert first_for_b <= len(got_a), "nothing lost between them"
    assert len(got_a) - first_for_b <= 100, "only A's unconfirmed batch is sent twice"
    await daemon.idle()
    assert not redis.exists(QUEUE.format("user1")), "nothing left behind in Redis"
    b.close()


@pytest_twisted.ensureDeferred
async def test_a_message_delivered_again_keeps_its_id(daemon, redis):
    """SPEC §10: every envelope has an id, the same when a message comes again, so clients drop duplicates."""
    first = await daemon.client("user1")
    await daemon.idle()
    first.protocol.sendPong = lambda payload: None  # confirms nothing
    for i in range(3):
        publish(redis, "rm.users.user1", f"m{i}")
    live = await first.receive(3)
    first.drop()
    await daemon.until(lambda: daemon.service.presence.get("user1") is None)
    await daemon.idle()
    assert redis.llen(QUEUE.format("user1")) == 3, "requeued, unconfirmed"
    second = await daemon.client("user1")
    again = await second.receive(3)
    assert [m["id"] for m in again] == [m["id"] for m in live]
    assert [m["payload"] for m in again] == ["m0", "m1", "m2"]
    assert len({m["id"] for m in live}) == 3
    publish(redis, "rm.users.user1", "m3")
    assert (await second.next())["id"] not in {m["id"] for m in live}
    second.close()


@pytest_twisted.ensureDeferred
async def test_a_socket_that_stops_reading_is_given_up_and_loses_nothing(daemon_factory, redis):
    """
    Issue 13, item 2: a socket that stopped reading held everything it was
    sent.  Past max_pending_bytes it is given up (4413), and what it was sent
    and did not confirm is queued, in order, with what came after.
    """
    daemon = await daemon_factory(max_pending_bytes=64 * 1024)
    client = await daemon.client("user1")
    await daemon.idle()
    client.protocol.transport.pauseProducing()  # reads nothing more: no pong either
    total = 200
    payload = "x" * 1000
    for i in range(total):
        publish(redis, "rm.users.user1", f"{i:03d}{payload}")
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == total, 10, "everything queued")
    queued = [json.loads(e)["payload"][:3] for e in redis.lrange(QUEUE.format("user1"), 0, -1)]
    assert queued == [f"{i:03d}" for i in range(total)], "in order, none lost, none twice"
    assert daemon.service.presence.get("user1") is None
    assert daemon.service.hub.counters.refused == {"TOO_SLOW": 1}
    assert daemon.service.hub.budget.used == 0
    client.protocol.transport.resumeProducing()
    code, _ = await client.close_code(timeout=10)
    assert code in (4413, None), "told why, if the close frame got through before the close handshake timed out"


@pytest_twisted.ensureDeferred
async def test_a_socket_is_given_up_by_the_bytes_it_is_sent_escapes_included(daemon_factory, redis):
    """
    max_pending_bytes counts what the socket is sent: a payload of control characters is six bytes a character in
    its frame, so a socket that reads nothing is given up after about a sixth as many of them as of plain text.
    """
    limit = 64 * 1024
    daemon = await daemon_factory(max_pending_bytes=limit)
    client = await daemon.client("user1")
    await daemon.idle()
    client.protocol.transport.pauseProducing()
    attachment = daemon.service.presence.get("user1").attachments[0]
    total, peak = 100, 0
    for i in range(total):
        publish(redis, "rm.users.user1", f"{i:03d}" + "\x01" * 1000)
        await daemon.until(lambda: daemon.service.hub.counters.published > i, what="the daemon reading")
        peak = max(peak, sum(len(sent.message.envelope_json(sent.bubble)) for sent in attachment.unconfirmed))
    frame = len(attachment.unconfirmed[0].message.envelope_json(True)) if attachment.unconfirmed else 6000
    assert 0 < peak <= limit + frame, "never more sent and unconfirmed than the limit and one message"
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == total, 10, "everything queued")
    queued = [json.loads(e)["payload"][:3] for e in redis.lrange(QUEUE.format("user1"), 0, -1)]
    assert queued == [f"{i:03d}" for i in range(total)], "in order, none lost, none twice"
    assert daemon.service.hub.counters.refused == {"TOO_SLOW": 1}
    client.protocol.transport.resumeProducing()
    await client.close_code(timeout=10)


@pytest_twisted.ensureDeferred
async def test_a_pong_to_no_ping_of_ours_confirms_nothing(daemon_factory, redis):
    """
    A client that reads nothing and answers pings it never read (a pong with a token it guessed: the largest
    there is) confirms nothing with it: its budget fills, it is given up (4413), and every message is queued.
    """
    daemon = await daemon_factory(max_pending_bytes=64 * 1024)
    client = await daemon.client("user1")
    await daemon.idle()
    client.protocol.transport.pauseProducing()
    server = daemon.service.presence.get("user1").attachments[0].sink
    pongs = []
    pong_received = server.pong_received

    def counted(token: int) -> None:
        pongs.append(token)
        pong_received(token)

    server.pong_received = counted
    total, rounds = 200, 10
    for r in range(rounds):
        for i in range(r * total // rounds, (r + 1) * total // rounds):
            publish(redis, "rm.users.user1", f"{i:03d}" + "x" * 1000)
        await daemon.until(lambda: server._pings or daemon.service.presence.get("user1") is None, 10, "a ping")
        if daemon.service.presence.get("user1") is None:
            continue
        client.protocol.sendPong(b"\xff" * 8)
        await daemon.until(lambda: len(pongs) == r + 1, 10, "the forged pong read")
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == total, 10, "everything queued")
    queued = [json.loads(e)["payload"][:3] for e in redis.lrange(QUEUE.format("user1"), 0, -1)]
    assert queued == [f"{i:03d}" for i in range(total)], "in order, none lost, none twice"
    assert daemon.service.hub.counters.refused == {"TOO_SLOW": 1}
    assert daemon.service.hub.budget.used == 0
    client.protocol.transport.resumeProducing()
    await client.close_code(timeout=10)


@pytest_twisted.ensureDeferred
async def test_a_client_that_sends_pings_and_reads_nothing_is_closed_before_its_pongs_pile_up(daemon_factory, redis):
    """
    Every ping is answered with a pong; a client that floods pings and reads nothing would grow the daemon's
    memory as fast as it sends.  Once more than max_unsent_bytes written to it wait unread, the next thing it
    sends closes it as too slow (4413): what waits is then at most that, and one read's pongs.
    """
    from twisted.internet import reactor

    from redmessenger.daemon.settings import UNSENT_MARGIN

    daemon = await daemon_factory(max_pending_bytes=64 * 1024)
    client = await daemon.client("user1")
    await daemon.idle()
    client.protocol.transport.pauseProducing()
    server = daemon.service.presence.get("user1").attachments[0].sink
    server.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel holds little
    seen = []
    backed_up = server.backed_up

    def noted(unsent: int) -> None:
        seen.append(unsent)
        backed_up(unsent)

    server.backed_up = noted
    sent = 0
    while not seen and sent < 50 * 1024 * 1024:
        for _ in range(100):
            client.protocol.sendPing(b"p" * 125)
        sent += 100 * 131
        await deferLater(reactor, 0, lambda: None)  # a reactor turn: the daemon reads them
    assert len(seen) == 1, f"still read after {sent} bytes of pings"
    limit = 64 * 1024 + UNSENT_MARGIN
    assert limit < seen[0] <= limit + 65536, "at most one read's pongs beyond the limit"
    await daemon.until(lambda: daemon.service.presence.get("user1") is None, 10, "the socket closed")
    assert daemon.service.hub.counters.refused == {"TOO_SLOW": 1}
    client.protocol.transport.resumeProducing()
    await client.close_code(timeout=10)


@pytest_twisted.ensureDeferred
async def test_the_memory_held_for_a_frozen_socket_stays_bounded(daemon_factory, redis):
    """The daemon never holds more than max_pending_bytes (and one message) for a socket that reads nothing."""
    daemon = await daemon_factory(max_pending_bytes=128 * 1024)
    client = await daemon.client("user1")
    await daemon.idle()
    client.protocol.transport.pauseProducing()
    peak = 0
    for i in range(2000):
        publish(redis, "rm.users.user1", f"{i:04d}" + "y" * 2000)
        if i % 50 == 0:
            await daemon.until(lambda: daemon.service.hub.counters.published > i, what="the daemon reading")
            peak = max(peak, daemon.service.hub.budget.used)
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 2000, 20, "everything queued")
    assert 0 < peak <= 128 * 1024 + 2200
    client.protocol.transport.resumeProducing()
    await client.close_code(timeout=10)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_kill_9_in_the_middle_of_a_handover_loses_no_queued_message(redis, redis_server, tmp_path):
    """
    The daemon is killed with SIGKILL while it hands a 20,000-entry queue over
    to an acking client; a new daemon hands over what is left.  Every entry
    arrives, in order on each connection; only the batch in flight at the kill
    comes twice (same ids).
    """
    from .twistdprocess import Twistd
    from .wsclient import AckingClient

    total, batch = 20000, 500
    pipe = redis.pipeline(transaction=False)
    for start in range(0, total, 1000):
        pipe.rpush(
            QUEUE.format("user1"),
            *[json.dumps({"v": 1, "id": f"q{i}", "source": "rm.users.user1", "timestamp": i, "payload": f"q{i}"}) for i in range(start, start + 1000)],
        )
    pipe.execute()
    first = Twistd(tmp_path, redis_server.port, ping_interval=0, handover_batch=batch, node_id="k1")
    second = None
    client = AckingClient("user1")
    try:
        first.start()
        await first.healthy()
        await client.connect(first.url)
        await wait_until(lambda: len(client.received) >= 6000, 30, "a good part of the queue")
        first.signal("KILL")
        assert await first.ended() == "signal 9"
        before = len(client.received)
        second = Twistd(tmp_path, redis_server.port, ping_interval=0, handover_batch=batch, node_id="k1")
        second.start()
        await second.healthy()
        await client.connect(second.url)
        await wait_until(lambda: client.received and client.received[-1]["payload"] == f"q{total - 1}", 60, "the end of the queue")
        await wait_until(lambda: not redis.exists(QUEUE.format("user1")), 10, "the queue trimmed as acked")
    finally:
        await first.stop()
        if second is not None:
            await second.stop()
    ids = [m["id"] for m in client.received]
    assert set(ids) == {f"q{i}" for i in range(total)}, "nothing lost"
    first_run, second_run = ids[:before], ids[before:]
    assert first_run == [f"q{i}" for i in range(len(first_run))], "in order"
    restart = int(second_run[0][1:])
    assert second_run == [f"q{i}" for i in range(restart, total)], "the rest, in order, from the last confirmed batch"
    assert 0 <= len(first_run) - restart <= 2 * batch, "only what the killed daemon had not seen acked comes twice"


def closing_like_a_browser(client) -> None:
    """From now on the client drops the messages that reach it (a browser's socket once its page called close())."""
    client.protocol.onMessage = lambda payload, is_binary: None


@pytest.mark.parametrize("crossing", [True, False], ids=["client closing too", "client reading"])
@pytest_twisted.ensureDeferred
async def test_a_close_we_start_takes_as_read_only_what_the_client_answered_a_ping_after(daemon, redis, crossing):
    """
    The daemon closes a legacy socket (a shutdown, a slow client) just as its page closes it too: the close
    handshake completes cleanly, but the browser dropped what arrived after its close().  Before, that clean
    close took every message written as read: lost.  A client still reading answers the ping sent before our
    close frame, and nothing comes twice.
    """
    client = await daemon.client("u1")
    publish(redis, "rm.users.u1", "m1")
    assert payloads(await client.receive(1)) == ["m1"]
    (attachment,) = daemon.service.presence.get("u1").attachments
    await daemon.until(lambda: not attachment.unconfirmed, what="m1 confirmed (its pong)")
    client.protocol.transport.pauseProducing()  # the next one reaches its socket, not its page, for now
    publish(redis, "rm.users.u1", "m2")
    await daemon.until(lambda: [s.message.payload for s in attachment.unconfirmed][-1:] == ["m2"], what="m2 written")
    if crossing:
        closing_like_a_browser(client)
        client.protocol.sendClose(1000)  # on its way, not read by the daemon yet...
    attachment.sink.close_with(1001, "going away")  # ...as the daemon closes it
    client.protocol.transport.resumeProducing()
    await client.close_code()
    await daemon.until(lambda: daemon.service.presence.get("u1") is None, what="the socket gone")
    await daemon.idle()
    queued = [json.loads(entry)["payload"] for entry in redis.lrange(QUEUE.format("u1"), 0, -1)]
    if crossing:
        assert payloads(client.received) == ["m1"] and queued == ["m2"], "dropped by the page: queued again, once"
    else:
        assert payloads(client.received) == ["m1", "m2"] and queued == [], "read: not queued again"
