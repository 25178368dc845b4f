"""
Keep-alive, which the other tests turn off (``ping_interval: 0``): a daemon
with ``ping_interval`` > 0, real clients.

Plain WebSocket (redmessenger.dialects.plain.pings, ``keep_alive``): every interval the
daemon pings a socket that has shown no sign of life for an interval, and drops
one that left a ping unanswered for an interval (found within two).  What a
dropped socket was sent and never confirmed goes to the user's other socket,
or back to the queue.  Socket.IO (redmessenger.dialects.engineio): the Engine.IO
heartbeat at the same interval (Engine.IO 4: the server pings; Engine.IO 3:
the client does).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from ..conftest import HOST, publish, wait_until
from ..pyws import ThreadedClient
from ..sioclients import node_client
from ..wsclient import WebSocketClient

QUEUE = "rm:users:{}:messages"

#: Seconds between keep-alive pings (and the Engine.IO heartbeat's interval and timeout).
INTERVAL = 0.5
#: How far from two intervals a heartbeat timeout may be: the reactor's turns, pipes, the loopback.
SLACK = 0.2


def payloads(messages: list[dict[str, Any]]) -> list[str]:
    return [m["payload"] for m in messages]


def now() -> float:
    from twisted.internet import reactor

    return float(reactor.seconds())


class Pongs:
    """
    Takes over an Autobahn test client's answers to pings: it answers them
    (as every client does by itself) until told to stop after the next one, and
    then notes when each unanswered ping arrived.  Notes when the socket closed.
    """

    def __init__(self, client: WebSocketClient) -> None:
        self.client = client
        self.answered = 0
        #: When each answered ping arrived.
        self.answered_at: list[float] = []
        self.answering = True
        self._last: int | None = None
        #: When each ping left unanswered arrived.
        self.unanswered: list[float] = []
        self.closed_at: float | None = None
        client.protocol.onPing = self._on_ping
        client.protocol.closed.addBoth(self._on_closed)

    def _on_ping(self, payload: bytes) -> None:
        if not self.answering:
            self.unanswered.append(now())
            return
        self.client.protocol.sendPong(payload)
        self.answered += 1
        self.answered_at.append(now())
        if self.answered == self._last:
            self.answering = False

    def _on_closed(self, result: Any) -> Any:
        self.closed_at = now()
        return result

    async def stop_after_the_next_ping(self) -> None:
        """Answer one more ping, then none: the client goes silent right after a sign of life."""
        self._last = self.answered + 1
        await wait_until(lambda: not self.answering, 3 * INTERVAL + 5, "one more ping answered")


def users_sockets(daemon: Any, uid: str) -> int:
    user = daemon.service.presence.get(uid)
    return len(user.attachments) if user is not None else 0


async def all_confirmed(daemon: Any, uid: str) -> None:
    """Until every socket of ``uid`` confirmed what it was sent: it has read all of it."""
    await daemon.idle()
    user = daemon.service.presence.get(uid)
    attachments = user.attachments if user is not None else []
    await daemon.until(lambda: all(not a.unconfirmed and not a.confirming for a in attachments), what="confirmations")


# -- plain WebSocket -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_client_answering_pings_stays_connected_across_intervals(daemon_factory, redis):
    daemon = await daemon_factory(ping_interval=INTERVAL)
    client = await daemon.client("user1")
    pongs = Pongs(client)
    publish(redis, "rm.users.user1", "first")
    assert payloads(await client.receive(1)) == ["first"]

    started = now()
    await daemon.until(lambda: pongs.answered >= 5, 10 * INTERVAL + 5, "five pings answered")
    assert now() - started >= 3 * INTERVAL, "keep-alive pings come an interval apart at least"
    assert not client.protocol.closed.called
    assert client.attached(daemon.service.presence, "user1") and len(daemon.service.websockets.sockets) == 1

    for i in range(3):
        publish(redis, "rm.users.user1", f"m{i}")
    assert payloads(await client.receive(3)) == ["m0", "m1", "m2"]
    await all_confirmed(daemon, "user1")
    assert payloads(client.received) == ["first", "m0", "m1", "m2"]
    assert not redis.exists(QUEUE.format("user1"))
    client.close()


@pytest_twisted.ensureDeferred
async def test_an_independent_client_answering_pings_stays_connected(daemon_factory, redis):
    """The `websockets` library's own pongs, read by the daemon's pong fast path (redmessenger.transport.fastpath)."""
    daemon = await daemon_factory(ping_interval=INTERVAL)
    client = await ThreadedClient.connect(daemon.url, compression=None)
    await client.send("user1")
    await daemon.until(lambda: client.attached(daemon.service.presence, "user1"), what="identified")

    await daemon.until(lambda: client.pings >= 5, 10 * INTERVAL + 5, "five keep-alive pings")
    assert client.attached(daemon.service.presence, "user1") and len(daemon.service.websockets.sockets) == 1
    for i in range(3):
        publish(redis, "rm.users.user1", f"m{i}")
    assert payloads(await client.receive(3)) == ["m0", "m1", "m2"]
    await all_confirmed(daemon, "user1")
    assert await client.unread() == []
    assert not redis.exists(QUEUE.format("user1"))
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_silent_client_is_dropped_and_the_other_socket_gets_what_it_did_not_confirm(daemon_factory, redis):
    daemon = await daemon_factory(ping_interval=INTERVAL)
    silent = await daemon.client("user1")
    pongs = Pongs(silent)
    await pongs.stop_after_the_next_ping()
    sent = [f"m{i}" for i in range(5)]
    for text in sent:
        publish(redis, "rm.users.user1", text)
    await wait_until(lambda: len(silent.received) == 5, what="five messages read, never confirmed")

    other = await daemon.client("user1")
    assert users_sockets(daemon, "user1") == 2, "the silent socket is still there when the other identifies"
    code, _ = await silent.close_code(timeout=4 * INTERVAL + 5)
    assert code == 1006, "dropped without a close handshake"
    assert pongs.unanswered, "dropped after leaving a ping unanswered"

    got = await other.receive(5)
    assert payloads(got) == sent
    assert all(m["bubble"] is True for m in got), "the other socket is now the oldest"
    await all_confirmed(daemon, "user1")
    assert payloads(other.received) == sent, "each once"
    assert payloads(silent.received) == sent
    assert not redis.exists(QUEUE.format("user1")), "nothing queued: the other socket confirmed them"
    other.close()


@pytest_twisted.ensureDeferred
async def test_a_ping_unanswered_for_an_interval_is_found_at_the_next_round(daemon_factory, redis):
    """
    The keep-alive looks every interval and drops a socket whose oldest ping is an
    interval old.  A ping that left half an interval after a round (here the
    confirmation of a message, asked half an interval after it) is found one and
    a half intervals after it left: not before the client had a whole interval to
    answer, not a round later.
    """
    interval = 0.6
    daemon = await daemon_factory(ping_interval=interval)
    daemon.service.hub.confirmations.confirm_delay = interval / 2
    silent = await daemon.client("user1")
    pongs = Pongs(silent)
    await pongs.stop_after_the_next_ping()  # a keep-alive round's (the queue was empty: nothing else pings)
    publish(redis, "rm.users.user1", "m0")
    code, _ = await silent.close_code(timeout=4 * interval + 5)
    assert code == 1006, "dropped without a close handshake"
    assert payloads(silent.received) == ["m0"]
    assert len(pongs.unanswered) == 1, "no more pings while one is unanswered"
    asked = pongs.unanswered[0] - pongs.answered_at[-1]
    assert 0.3 * interval < asked < 0.7 * interval, "the confirmation's ping left mid-interval"
    waited = pongs.closed_at - pongs.unanswered[0]
    assert interval < waited < 2 * interval, f"found {waited:.2f}s after the ping, expected 1.5 x {interval}s"
    await daemon.idle()
    assert [json.loads(e)["payload"] for e in redis.lrange(QUEUE.format("user1"), 0, -1)] == ["m0"]


@pytest.mark.parametrize("silence", ["pongs-disabled", "reader-paused"])
@pytest_twisted.ensureDeferred
async def test_a_silent_client_is_dropped_and_what_it_did_not_confirm_is_queued(daemon_factory, redis, silence):
    """The user's only socket goes silent: its pongs stop, or it stops reading altogether (a frozen tab)."""
    daemon = await daemon_factory(ping_interval=INTERVAL)
    silent = await daemon.client("user1")
    (attachment,) = daemon.service.presence.get("user1").attachments
    pongs = Pongs(silent)
    await pongs.stop_after_the_next_ping()
    if silence == "reader-paused":
        silent.protocol.transport.pauseProducing()
    sent = [f"m{i}" for i in range(5)]
    for text in sent:
        publish(redis, "rm.users.user1", text)
    await daemon.until(lambda: len(attachment.unconfirmed) == 5, what="five messages written, never confirmed")

    await daemon.until(lambda: users_sockets(daemon, "user1") == 0, 4 * INTERVAL + 5, "the keep-alive to drop it")
    await daemon.idle()
    queued = [json.loads(e)["payload"] for e in redis.lrange(QUEUE.format("user1"), 0, -1)]
    assert queued == sent, "each message it did not confirm queued once, in order"
    assert daemon.service.hub.counters.queued == 5
    if silence == "pongs-disabled":
        await silent.close_code()
        assert payloads(silent.received) == sent
        assert pongs.unanswered, "dropped after leaving a ping unanswered"
    else:
        silent.drop()

    again = await daemon.client("user1")
    assert payloads(await again.receive(5)) == sent
    again.close()


# -- Socket.IO: the Engine.IO heartbeat ----------------------------------------------------------


def rm_url(daemon: Any) -> str:
    return f"http://{HOST}:{daemon.port}{daemon.service.config.rm_route}"


#: What each generation reports once per heartbeat: Engine.IO 4, the server's ping it
#: answered; Engine.IO 3, the server's answer to its own ping.
HEARTBEAT = {"v4": "ping", "v2": "pong"}


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest.mark.parametrize("transport", ["websocket", "polling"])
@pytest_twisted.ensureDeferred
async def test_the_heartbeat_keeps_a_live_socketio_client(daemon_factory, redis, clients, generation, transport):
    daemon = await daemon_factory(ping_interval=INTERVAL)
    client = node_client(rm_url(daemon), "user1", generation=generation, transports=[transport])
    clients.append(client)
    await wait_until(lambda: users_sockets(daemon, "user1") == 1, 10, "user1 online")
    (session,) = daemon.service.socketio.engine.sessions()

    beats = len(client.of(HEARTBEAT[generation]))
    await client.until(lambda: len(client.of(HEARTBEAT[generation])) >= beats + 4, "four heartbeats", 10 * INTERVAL + 10)
    assert session.is_open and daemon.service.socketio.engine.sessions() == [session], "the same session throughout"
    assert users_sockets(daemon, "user1") == 1
    assert not client.of("disconnect") and not client.of("reconnect_attempt")

    for i in range(3):
        publish(redis, "rm.users.user1", f"m{i}")
    await client.expect("message", 3)
    await all_confirmed(daemon, "user1")
    assert payloads(client.messages()) == ["m0", "m1", "m2"]
    assert not redis.exists(QUEUE.format("user1"))


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest_twisted.ensureDeferred
async def test_the_heartbeat_drops_a_frozen_socketio_client_and_what_it_was_sent_is_queued(
    daemon_factory, redis, clients, generation
):
    from redmessenger.dialects.engineio.session import State

    daemon = await daemon_factory(ping_interval=INTERVAL)
    client = node_client(rm_url(daemon), "user1", generation=generation, transports=["websocket"])
    clients.append(client)
    await wait_until(lambda: users_sockets(daemon, "user1") == 1, 10, "user1 online")
    (session,) = daemon.service.socketio.engine.sessions()
    (attachment,) = daemon.service.presence.get("user1").attachments
    await daemon.idle()

    beats = len(client.of(HEARTBEAT[generation]))
    await client.until(lambda: len(client.of(HEARTBEAT[generation])) > beats, "a heartbeat", 4 * INTERVAL + 10)
    client.freeze()  # right after a heartbeat: the session has two intervals left
    frozen_at = now()
    sent = [f"m{i}" for i in range(5)]
    for text in sent:
        publish(redis, "rm.users.user1", text)
    await daemon.until(lambda: len(attachment.unconfirmed) == 5, what="five messages written, never confirmed")
    await wait_until(lambda: session.state is State.CLOSED, 4 * INTERVAL + 5, "the heartbeat ending the session")
    assert 2 * INTERVAL - SLACK <= now() - frozen_at <= 2 * INTERVAL + SLACK, "timed out two intervals after its last heartbeat"
    assert session.close_reason == "ping timeout"
    assert users_sockets(daemon, "user1") == 0

    await daemon.idle()
    queued = [json.loads(e)["payload"] for e in redis.lrange(QUEUE.format("user1"), 0, -1)]
    assert queued == sent, "each message it did not confirm queued once, in order"
    assert not client.messages(), "frozen: it read none of them"
