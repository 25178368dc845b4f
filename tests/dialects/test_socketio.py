"""
The Socket.IO dialect (SPEC §4) against real, independent clients: the seed's
client code on Node's socket.io-client 4.x (Engine.IO 4), 2.x and 1.x (Engine.IO 3),
and python-socketio; over WebSocket only, long-polling only, and polling
upgraded to WebSocket.  The same core and rules as the plain dialect.
"""

from __future__ import annotations

import json

from typing import Any

import pytest
import pytest_twisted

from ..conftest import HOST, publish, wait_until
from ..sioclients import (
    HARD_PAYLOADS,
    as_delivered,
    big_queue,
    node_client,
    python_client,
)

QUEUE = "rm:users:{}:messages"

#: (generation, io() options, the transports the session must end up using)
TRANSPORTS = {
    "websocket": ({"transports": ["websocket"]}, "websocket"),
    "polling": ({"transports": ["polling"]}, "polling"),
    "upgrade": ({}, "websocket"),
}


def base_url(daemon: Any) -> str:
    return f"http://{HOST}:{daemon.port}"


def rm_url(daemon: Any) -> str:
    return base_url(daemon) + daemon.service.config.rm_route


def payloads(messages: list[dict[str, Any]]) -> list[str]:
    return [m["payload"] for m in messages]


async def queued(daemon: Any, redis: Any, uid: str, texts: list[str]) -> None:
    """Publish while ``uid`` is offline: the messages wait in the user's queue."""
    for text in texts:
        publish(redis, f"rm.users.{uid}", text)
    await wait_until(lambda: redis.llen(QUEUE.format(uid)) == len(texts), 5, "messages queued")


def attached(daemon: Any, uid: str) -> int:
    user = daemon.service.presence.get(uid)
    return len(user.attachments) if user is not None else 0


# -- the seed's client, both generations, every transport ------------------------------------


@pytest.mark.parametrize("generation", ["v4", "v2", "v1"])
@pytest.mark.parametrize("transport", ["websocket", "polling", "upgrade"])
@pytest_twisted.ensureDeferred
async def test_seed_client_gets_its_queue_then_live_messages(daemon, redis, clients, generation, transport):
    options, final_transport = TRANSPORTS[transport]
    await queued(daemon, redis, "user1", ["Hello, world!", "My life is a spicy pepper..."])

    client = node_client(rm_url(daemon), "user1", generation=generation, **options)
    clients.append(client)
    await client.expect("message", 2)
    await wait_until(lambda: attached(daemon, "user1") == 1, 5, "user1 online")
    publish(redis, "rm.users.user1", "live one")
    publish(redis, "rm.channels.none", "nobody")  # a group without members reaches nobody
    messages = [m for m in (await client.expect("message", 3))]
    envelopes = [e["message"] for e in messages]
    assert payloads(envelopes) == ["Hello, world!", "My life is a spicy pepper...", "live one"]
    assert all(e["source"] == "rm.users.user1" and e["bubble"] is True for e in envelopes)
    assert set(envelopes[0]) == {"id", "source", "timestamp", "bubble", "payload"}
    logs = [e["text"] for e in client.of("log")]
    assert logs[:2] == ["Connected to RedMessenger!", "Authenticating..."]

    session = daemon.service.socketio.engine.sessions()[0]
    assert session.version == (4 if generation == "v4" else 3)
    if transport == "upgrade":
        await client.expect("upgrade")
    await wait_until(lambda: session.transport == final_transport, 10, f"the session on {final_transport}")
    await daemon.idle()
    assert not redis.exists(QUEUE.format("user1")), "the handed-over queue leaves Redis once confirmed"
    assert not client.of("error") and not client.of("disconnect")


@pytest.mark.parametrize("transports", [["websocket"], ["polling"], ["polling", "websocket"]])
@pytest_twisted.ensureDeferred
async def test_python_socketio_client(daemon, redis, clients, transports):
    await queued(daemon, redis, "user2", ["queued"])
    client = python_client(base_url(daemon), daemon.service.config.rm_route, "user2", transports=transports)
    clients.append(client)
    await client.expect("message", 1)
    await wait_until(lambda: attached(daemon, "user2") == 1, 5, "user2 online")
    publish(redis, "rm.users.user2", "live")
    envelopes = [e["message"] for e in await client.expect("message", 2)]
    assert payloads(envelopes) == ["queued", "live"]
    assert envelopes[1]["bubble"] is True


@pytest.mark.parametrize("generation", ["v1", "v2"])
@pytest.mark.parametrize("transport", ["polling", "websocket"])
@pytest_twisted.ensureDeferred
async def test_engineio3_clients_get_a_big_queue_and_every_character(daemon, redis, clients, generation, transport):
    """
    Issue 12: socket.io-client 1.x and 2.x over long-polling (in Node.js: XHR
    without binary support, ``b64=1``; tests/test_socketio_browser.py has XHR2 and
    JSONP) and over WebSocket receive a queue of 300 KB, and payloads with astral
    characters or published as invalid UTF-8, exactly: nothing lost, doubled or
    reordered, and the messages after the hard ones still arrive.
    """
    queue = big_queue()
    await queued(daemon, redis, "user1", queue)
    client = node_client(rm_url(daemon), "user1", generation=generation, transports=[transport])
    clients.append(client)

    def troubles() -> list[dict[str, Any]]:
        return [e for e in client.events if e["event"] in ("disconnect", "error", "reconnect_attempt")]

    await client.until(lambda: len(client.messages()) >= len(queue) or troubles(), "the queue", timeout=30)
    assert not troubles(), f"the session broke: {troubles()[:4]}"
    await wait_until(lambda: attached(daemon, "user1") == 1, 5, "user1 online")
    live = [*HARD_PAYLOADS, "the last one"]
    for text in live:
        publish(redis, "rm.users.user1", text)
    await client.until(lambda: len(client.messages()) >= len(queue) + len(live) or troubles(), "the live messages")
    assert not troubles(), f"the session broke: {troubles()[:4]}"
    expected = [as_delivered(text) for text in queue + live]
    got = payloads(client.messages())
    assert [text[:16] for text in got] == [text[:16] for text in expected]
    assert got == expected
    (session,) = daemon.service.socketio.engine.sessions()
    assert session.version == 3 and session.transport == transport
    assert not session.supports_binary, "Node's XMLHttpRequest has no responseType: b64=1, text payloads"
    await daemon.idle()
    assert not redis.exists(QUEUE.format("user1")), "every message confirmed"


# -- mistakes, reported the way Socket.IO reports errors ---------------------------------------


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest_twisted.ensureDeferred
async def test_a_wrong_key_is_an_error_event_then_a_server_disconnect(daemon_factory, redis, clients, generation):
    daemon = await daemon_factory(secure_mode=True)
    redis.set("rm:users:user1:key", "secret")
    client = node_client(rm_url(daemon), "user1", key="wrong", generation=generation)
    clients.append(client)
    (error,) = await client.expect("error")
    assert error["data"] == {"code": 4401, "name": "BAD_KEY", "message": "authentication failed: wrong or missing key"}
    (disconnect,) = await client.expect("disconnect")
    assert disconnect["reason"] == "io server disconnect", "a server disconnect: the client does not retry"
    await wait_until(lambda: len(daemon.service.socketio.engine) == 0, 5, "the session ended")
    assert attached(daemon, "user1") == 0
    assert daemon.service.hub.counters.refused.get("BAD_KEY") == 1
    publish(redis, "rm.users.user1", "for the right key only")
    await wait_until(lambda: redis.llen(QUEUE.format("user1")) == 1, 5, "the message queued, not delivered")
    assert not client.of("message")


@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_in_the_identifier_is_garbage_not_a_daemon_error(daemon_factory, redis, clients):
    """
    JSON.stringify writes half a UTF-16 surrogate pair as an escape (no UTF-8 encodes it): the packet is refused where
    it is read, as garbage (the session ends, 1002), not taken for Redis failing at the key check (1013, a traceback).
    """
    daemon = await daemon_factory(secure_mode=True)
    redis.set("rm:users:user1:key", "secret")
    client = node_client(rm_url(daemon), "user1", key="\ud800", transports=["websocket"])
    clients.append(client)
    (disconnect, *_) = await client.expect("disconnect")
    assert disconnect["reason"] == "transport close"
    assert client.of("error") == [], "garbage gets no error object"
    assert daemon.service.hub.counters.refused == {}
    right = node_client(rm_url(daemon), "user1", key="secret", transports=["websocket"])
    clients.append(right)
    await wait_until(lambda: attached(daemon, "user1") == 1, 10, "the right key still works")


@pytest_twisted.ensureDeferred
async def test_the_right_key_in_secure_mode(daemon_factory, redis, clients):
    daemon = await daemon_factory(secure_mode=True)
    redis.set("rm:users:user1:key", "secret")
    client = python_client(base_url(daemon), "/rm", "user1", key="secret", transports=["websocket"])
    clients.append(client)
    await wait_until(lambda: attached(daemon, "user1") == 1, 10, "user1 online")
    publish(redis, "rm.users.user1", "welcome")
    (message,) = await client.expect("message")
    assert message["message"]["payload"] == "welcome"


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest_twisted.ensureDeferred
async def test_an_invalid_uid_is_refused_with_its_reason(daemon, redis, clients, generation):
    client = node_client(rm_url(daemon), "no spaces!", generation=generation, transports=["polling"])
    clients.append(client)
    (error,) = await client.expect("error")
    assert error["data"]["code"] == 4400
    assert error["data"]["name"] == "INVALID_IDENTIFIER"
    assert "no spaces!" in error["data"]["message"]
    (disconnect,) = await client.expect("disconnect")
    assert disconnect["reason"] == "io server disconnect"


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest_twisted.ensureDeferred
async def test_a_second_identifier_is_refused(daemon, redis, clients, generation):
    client = node_client(rm_url(daemon), "user1", generation=generation, transports=["websocket"])
    clients.append(client)
    await wait_until(lambda: attached(daemon, "user1") == 1, 10, "user1 online")
    client.command(cmd="emit", args=["identifier", "user2"])
    (error,) = await client.expect("error")
    assert error["data"]["code"] == 4409
    await client.expect("disconnect")
    await wait_until(lambda: attached(daemon, "user1") == 0, 5, "user1 offline")
    assert attached(daemon, "user2") == 0


@pytest_twisted.ensureDeferred
async def test_no_identifier_in_time_is_refused(daemon_factory, redis, clients):
    daemon = await daemon_factory(identify_timeout=0.5)
    client = python_client(base_url(daemon), "/rm", "user1", identify=False, transports=["polling"], reconnection=False)
    clients.append(client)
    (error,) = await client.expect("error")
    assert error["data"]["code"] == 4408
    await client.expect("disconnect")
    await wait_until(lambda: len(daemon.service.socketio.engine) == 0, 5, "the session ended")


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest_twisted.ensureDeferred
async def test_another_namespace_is_refused(daemon, redis, clients, generation):
    client = node_client(base_url(daemon) + "/elsewhere", "user1", generation=generation, transports=["websocket"])
    clients.append(client)
    if generation == "v4":
        (error,) = await client.expect("connect_error")
        assert error["message"] == "Invalid namespace"
    else:
        (error,) = await client.expect("error")
        assert error["data"] == "Invalid namespace"
    assert not client.of("connect")
    assert attached(daemon, "user1") == 0


# -- heartbeats and vanishing clients ------------------------------------------------------------


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest.mark.parametrize("transport", ["websocket", "polling"])
@pytest_twisted.ensureDeferred
async def test_a_silent_client_is_timed_out_by_the_heartbeat(daemon_factory, redis, clients, generation, transport):
    """
    Engine.IO 4: the server pings and the client does not pong.  Engine.IO 3: the
    client does not ping.  Either way the session ends and the user goes offline.
    """
    from redmessenger.dialects.engineio.session import State

    daemon = await daemon_factory(ping_interval=0.5)
    client = node_client(rm_url(daemon), "user1", generation=generation, transports=[transport])
    clients.append(client)
    await wait_until(lambda: attached(daemon, "user1") == 1, 10, "user1 online")
    (session,) = daemon.service.socketio.engine.sessions()
    client.freeze()
    await wait_until(lambda: session.state is State.CLOSED, 10, "the heartbeat ending the session")
    assert session.close_reason == "ping timeout"
    assert attached(daemon, "user1") == 0
    assert daemon.service.limit.in_use == 0
    publish(redis, "rm.users.user1", "while away")
    await wait_until(lambda: redis.llen(QUEUE.format("user1")) == 1, 5, "the message queued for later")


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest_twisted.ensureDeferred
async def test_a_polling_client_that_vanishes_keeps_what_it_did_not_fetch(daemon_factory, redis, clients, generation):
    """
    A long-polling client frozen in the middle of its queue: what it had not
    confirmed by polling again (the rest of the queue, the live messages buffered
    for it) is handed to the next socket, in order; nothing is lost.
    """
    from redmessenger.dialects.engineio.session import State

    daemon = await daemon_factory(ping_interval=0.5, handover_batch=10)
    queue = [f"q{i}" for i in range(200)]
    await queued(daemon, redis, "user1", queue)
    first = node_client(rm_url(daemon), "user1", generation=generation, transports=["polling"])
    clients.append(first)
    await first.expect("message", 1)
    (session,) = daemon.service.socketio.engine.sessions()
    first.freeze()
    live = [f"live{i}" for i in range(5)]
    for text in live:
        publish(redis, "rm.users.user1", text)
    await wait_until(lambda: session.state is State.CLOSED, 10, "the heartbeat ending the frozen session")
    await first.stop()
    await daemon.idle()
    got_first = payloads(first.messages())
    assert not set(got_first) & set(live), "frozen: it cannot have read what came after"

    # (python-socketio runs each message handler in a thread of its own: no order to check there)
    second = node_client(
        rm_url(daemon), "user1", generation="v2" if generation == "v4" else "v4", transports=["polling"]
    )
    clients.append(second)
    await second.until(lambda: "live4" in payloads(second.messages()), "the last live message")
    got_second = payloads(second.messages())
    everything = queue + live
    assert got_second == everything[everything.index(got_second[0]) :], "in order, no gap"
    assert set(got_first) | set(got_second) == set(everything), "nothing lost"
    assert everything.index(got_second[0]) <= len(got_first), "resumes at or before the first unread message"
    await daemon.idle()
    assert not redis.exists(QUEUE.format("user1"))


@pytest_twisted.ensureDeferred
async def test_a_killed_websocket_client_loses_nothing(daemon_factory, redis, clients):
    daemon = await daemon_factory(ping_interval=0.5)
    first = node_client(rm_url(daemon), "user1", generation="v2", transports=["websocket"])
    clients.append(first)
    await wait_until(lambda: attached(daemon, "user1") == 1, 10, "user1 online")
    first.freeze()
    for i in range(3):
        publish(redis, "rm.users.user1", f"m{i}")
    await first.stop()  # the connection drops with the messages unconfirmed
    await wait_until(lambda: attached(daemon, "user1") == 0, 10, "user1 offline")
    second = node_client(rm_url(daemon), "user1", generation="v4", transports=["websocket"])
    clients.append(second)
    await second.expect("message", 3)
    assert payloads(second.messages()) == ["m0", "m1", "m2"]


# -- both dialects, one core -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bubble_and_delivery_across_dialects(daemon, redis, clients):
    plain = await daemon.client("user1")  # the oldest socket carries the bubble
    sio = node_client(rm_url(daemon), "user1", transports=["polling"])
    clients.append(sio)
    await wait_until(lambda: attached(daemon, "user1") == 2, 10, "two sockets")
    redis.sadd("rm:channels:cats:subscribers", "user1")
    publish(redis, "rm.channels.cats", "Meow!")
    (envelope,) = await plain.receive(1)
    (event,) = await sio.expect("message")
    assert envelope["bubble"] is True and event["message"]["bubble"] is False
    assert event["message"]["source"] == "rm.channels.cats" and event["message"]["payload"] == "Meow!"
    plain.close()
    await wait_until(lambda: attached(daemon, "user1") == 1, 5, "the plain socket gone")
    publish(redis, "rm.users.user1", "now yours")
    events = await sio.expect("message", 2)
    assert events[1]["message"]["bubble"] is True, "the bubble passes to the next oldest socket"


@pytest_twisted.ensureDeferred
async def test_conn_limit_counts_both_dialects(daemon_factory, redis, clients):
    daemon = await daemon_factory(conn_limit=1)
    plain = await daemon.client("user1")
    refused = node_client(rm_url(daemon), "user2", transports=["polling"], reconnection=False)
    clients.append(refused)
    await refused.expect("connect_error")
    assert daemon.service.limit.refused >= 1
    assert len(daemon.service.socketio.engine) == 0
    plain.close()
    await wait_until(lambda: daemon.service.limit.in_use == 0, 5, "the slot given back")

    sio = node_client(rm_url(daemon), "user2", transports=["websocket"])
    clients.append(sio)
    await wait_until(lambda: attached(daemon, "user2") == 1, 10, "user2 online over Socket.IO")
    with pytest.raises(ConnectionError):
        await daemon.client()
    assert daemon.service.limit.in_use == 1


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest.mark.parametrize("transport", ["websocket", "polling"])
@pytest_twisted.ensureDeferred
async def test_shutdown_closes_sessions_and_clients_come_back(daemon_factory, redis, clients, generation, transport):
    daemon = await daemon_factory()
    client = node_client(rm_url(daemon), "user1", generation=generation, transports=[transport])
    clients.append(client)
    await wait_until(lambda: attached(daemon, "user1") == 1, 10, "user1 online")
    (session,) = daemon.service.socketio.engine.sessions()
    await daemon.service.stopService()
    assert session.close_reason == "server shutting down"
    assert not daemon.service.socketio.websockets.sockets, "the WebSockets closed before the daemon stopped"
    (disconnect,) = await client.expect("disconnect")
    # Over WebSocket the close frame says so; over polling the close packet
    # reaches the client only if a poll was pending when the daemon stopped,
    # else its next poll finds the port closed: "transport error".  Either way
    # it is not a server disconnect ("io server disconnect"), so it reconnects.
    expected = {"transport close"} if transport == "websocket" else {"transport close", "transport error"}
    assert disconnect["reason"] in expected, "not a server disconnect: the client reconnects"
    await client.expect("reconnect_attempt")


# -- the send path across transports --------------------------------------------------------------


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest_twisted.ensureDeferred
async def test_order_and_confirmations_across_the_upgrade(daemon_factory, redis, clients, generation, monkeypatch):
    """
    Live messages buffered while the client upgrades to WebSocket go out first,
    then the ones written straight to the socket, in publish order; none is
    confirmed before the client has it, and every one is confirmed after.  The
    window is not left to chance: the client's probe is held until its queue is
    in, then its upgrade packet until live messages wait in the session's buffer
    (the client has stopped polling by then) for longer than ``confirm_delay``.
    """
    from redmessenger.dialects.engineio.session import Session
    from redmessenger.dialects.engineio.codec import PacketType

    held: dict[str, tuple[Any, ...]] = {}
    release_probe = release_upgrade = False
    original = Session.websocket_packet

    def holding(session: Session, websocket: Any, packet: Any) -> None:
        if session._probe is not None and websocket is session._probe.websocket:
            if packet.type is PacketType.PING and not release_probe:
                held["probe"] = (session, websocket, packet)
                return
            if packet.type is PacketType.UPGRADE and not release_upgrade:
                held["upgrade"] = (session, websocket, packet)
                return
        original(session, websocket, packet)

    monkeypatch.setattr(Session, "websocket_packet", holding)
    daemon = await daemon_factory(handover_batch=10)
    queue = [f"q{i}" for i in range(30)]
    await queued(daemon, redis, "user1", queue)
    client = node_client(rm_url(daemon), "user1", generation=generation)  # polling first, then the upgrade
    clients.append(client)
    await client.expect("message", len(queue))  # over polling
    await wait_until(lambda: "probe" in held, 10, "the client's probe")
    (session,) = daemon.service.socketio.engine.sessions()
    await daemon.idle()
    assert session.transport == "polling" and session.all_confirmed

    release_probe = True
    original(*held["probe"])
    await wait_until(lambda: "upgrade" in held, 10, "the client's upgrade packet")
    live = [f"live{i}" for i in range(20)]
    for text in live[:10]:
        publish(redis, "rm.users.user1", text)
    await wait_until(lambda: len(session._buffer) == 10, 5, "live messages buffered during the upgrade")
    (attachment,) = daemon.service.presence.get("user1").attachments
    delay = daemon.service.hub.confirmations.confirm_delay
    await wait_until(lambda: session._receipts.waiting, delay + 5, "the core asking for a confirmation")
    assert len(attachment.unconfirmed) == 10, "nothing confirmed while it waits in the buffer"
    assert len(client.messages()) == len(queue)

    release_upgrade = True
    original(*held["upgrade"])
    assert session.transport == "websocket" and not session._buffer
    for text in live[10:]:
        publish(redis, "rm.users.user1", text)
    await client.until(lambda: len(client.messages()) >= len(queue) + len(live), "every live message")
    assert payloads(client.messages()) == queue + live, "in order, once each"
    await wait_until(lambda: not attachment.unconfirmed and not attachment.confirming, 5, "every message confirmed")
    assert session.all_confirmed
    assert not redis.exists(QUEUE.format("user1"))
    assert not client.of("disconnect") and not client.of("error")


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest_twisted.ensureDeferred
async def test_what_a_frozen_websocket_client_was_sent_stays_unconfirmed(daemon_factory, redis, clients, generation):
    """
    Confirmation accounting on the WebSocket send path: messages written to a
    client that answers nothing are not confirmed when the core asks, so
    the next socket gets them once this one is gone.
    """
    daemon = await daemon_factory()
    first = node_client(rm_url(daemon), "user1", generation=generation, transports=["websocket"])
    clients.append(first)
    await wait_until(lambda: attached(daemon, "user1") == 1, 10, "user1 online")
    await daemon.idle()
    (session,) = daemon.service.socketio.engine.sessions()
    (attachment,) = daemon.service.presence.get("user1").attachments
    first.freeze()
    for i in range(3):
        publish(redis, "rm.users.user1", f"m{i}")
    delay = daemon.service.hub.confirmations.confirm_delay
    await wait_until(lambda: session._receipts.waiting, delay + 5, "the core asking the frozen client for a confirmation")
    assert len(attachment.unconfirmed) == 3 and not session.all_confirmed
    await first.stop()
    await wait_until(lambda: attached(daemon, "user1") == 0, 10, "user1 offline")
    second = node_client(rm_url(daemon), "user1", generation="v2" if generation == "v4" else "v4")
    clients.append(second)
    await second.expect("message", 3)
    assert payloads(second.messages()) == ["m0", "m1", "m2"]


@pytest_twisted.ensureDeferred
async def test_a_page_frozen_in_the_back_forward_cache_confirms_nothing(daemon_factory, redis, clients):
    """
    Issue 13, item 3: a frozen page's browser answers WebSocket pings by itself,
    so those must not confirm anything.  Engine.IO 4 sessions confirm with
    Engine.IO pings, which only the page's JavaScript answers: what the frozen
    page was sent goes to the user's next socket once it is gone.
    """
    daemon = await daemon_factory()
    first = node_client(rm_url(daemon), "user1", generation="v4", transports=["websocket"])
    clients.append(first)
    await wait_until(lambda: attached(daemon, "user1") == 1, 10, "user1 online")
    await daemon.idle()
    (session,) = daemon.service.socketio.engine.sessions()
    (attachment,) = daemon.service.presence.get("user1").attachments
    first.command(cmd="freeze_page")
    await first.expect("frozen")
    for i in range(3):
        publish(redis, "rm.users.user1", f"m{i}")
    await first.until(lambda: len(first.of("ignored")) >= 3, "the frozen page to ignore the three messages")
    delay = daemon.service.hub.confirmations.confirm_delay
    await wait_until(lambda: session._receipts.waiting, delay + 5, "the core asking for a confirmation")
    await first.until(lambda: first.of("ws_ping") or [e for e in first.of("ignored") if e["packet"] == "2"], "the request to arrive")
    assert not first.of("ws_ping"), "no WebSocket ping: the browser would answer it for the frozen page"
    assert len(attachment.unconfirmed) == 3 and not session.all_confirmed
    await first.stop()
    await wait_until(lambda: attached(daemon, "user1") == 0, 10, "user1 offline")
    second = node_client(rm_url(daemon), "user1", generation="v4")
    clients.append(second)
    await second.expect("message", 3)
    assert payloads(second.messages()) == ["m0", "m1", "m2"]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
@pytest_twisted.ensureDeferred
async def test_a_frozen_client_is_given_up_past_max_pending_bytes_and_loses_nothing(daemon_factory, redis, clients, transport):
    """
    Issue 13, item 2, on Socket.IO: a session whose client stopped reading is given up;
    its messages are queued in order.  A WebSocket closes at once; a polling session
    keeps only the report for the client's next poll, and ends after it.
    """
    from redmessenger.dialects.engineio.session import State

    daemon = await daemon_factory(max_pending_bytes=64 * 1024)
    client = node_client(rm_url(daemon), "user1", generation="v4", transports=[transport])
    clients.append(client)
    await wait_until(lambda: attached(daemon, "user1") == 1, 10, "user1 online")
    (session,) = daemon.service.socketio.engine.sessions()
    await daemon.idle()
    client.freeze()
    for i in range(150):
        publish(redis, "rm.users.user1", f"{i:03d}" + "z" * 1000)
    await wait_until(lambda: redis.llen(QUEUE.format("user1")) == 150, 10, "everything queued")
    queued = [json.loads(e)["payload"][:3] for e in redis.lrange(QUEUE.format("user1"), 0, -1)]
    assert queued == [f"{i:03d}" for i in range(150)]
    assert daemon.service.hub.counters.refused == {"TOO_SLOW": 1}
    assert attached(daemon, "user1") == 0, "given up at once"
    if transport == "websocket":
        assert session.state is State.CLOSED, "the session ended at once"
    else:
        assert [packet.text[:25] for packet in session._buffer] == ['42/rm,["error",{"code":44'], "only the report waits"
    client.thaw()
    if transport == "polling":
        (error,) = await client.expect("error")
        assert error["data"]["code"] == 4413
        await wait_until(lambda: session.state is State.CLOSED, 10, "the session ended after the report")
    assert session.close_reason == "too_slow"


@pytest.mark.parametrize("generation", ["v4", "v2"])
@pytest.mark.parametrize("transport", ["websocket", "polling"])
@pytest_twisted.ensureDeferred
async def test_a_client_closed_as_too_slow_is_told_and_reconnects(daemon_factory, redis, clients, generation, transport, monkeypatch):
    """
    A client that reads but never confirms (its confirmations held here) is given up past
    ``max_pending_bytes``: it gets the error object (over polling, with its next poll), then
    its session ends as a transient close would, not as a server disconnect; it reconnects
    by itself and gets from the queue, in order, everything it did not confirm.
    """
    from twisted.internet.defer import Deferred

    from redmessenger.dialects.socketio.connection import SocketIOConnection

    frozen: set[Any] = set()  # the sessions whose confirmations never come
    confirm = SocketIOConnection.confirm
    monkeypatch.setattr(SocketIOConnection, "confirm", lambda c: Deferred() if c._session in frozen else confirm(c))
    daemon = await daemon_factory(max_pending_bytes=64 * 1024)
    client = node_client(rm_url(daemon), "user1", generation=generation, transports=[transport])
    clients.append(client)
    await wait_until(lambda: attached(daemon, "user1") == 1, 10, "user1 online")
    frozen.update(daemon.service.socketio.engine.sessions())
    sent = [f"{i:03d}" + "z" * 1000 for i in range(100)]
    for text in sent:
        publish(redis, "rm.users.user1", text)
    (error,) = await client.expect("error")
    assert error["data"]["code"] == 4413 and error["data"]["name"] == "TOO_SLOW"
    assert "bytes sent and not confirmed (limit 65536;" in error["data"]["message"]
    (disconnect,) = await client.expect("disconnect")
    assert disconnect["reason"] == "transport close", "not a server disconnect: the client reconnects"
    await client.expect("reconnect_attempt")
    told = [e["event"] for e in client.events if e["event"] in ("error", "disconnect", "reconnect_attempt")]
    assert told[:3] == ["error", "disconnect", "reconnect_attempt"], "the report first"
    await client.until(lambda: len(client.messages()) >= len(sent) and payloads(client.messages())[-1] == sent[-1], "the queue")
    got = payloads(client.messages())
    before = len(got) - len(sent)
    assert got[before:] == sent and got[:before] == sent[:before], "what it read, then everything again, in order"
    assert daemon.service.hub.counters.refused == {"TOO_SLOW": 1}
    await daemon.idle()
    await wait_until(lambda: not redis.exists(QUEUE.format("user1")), 5, "the queue confirmed by the new session")
    assert len(client.of("error")) == 1


def memory_session() -> tuple[Any, Any, Any]:
    """A Socket.IO server on the core in memory (a Clock for time): its clock, its hub, and a polling session on it."""
    from redmessenger.dialects.engineio.contract import EngineSettings
    from redmessenger.core.admission import ConnectionLimit
    from redmessenger.dialects.socketio.server import SocketIOServer

    from redmessenger.core.hub import Hub

    from ..fakes import MemoryDirectory, make_store

    store, _, clock = make_store()
    hub = Hub(store, MemoryDirectory(), clock)
    server = SocketIOServer(
        hub=hub,
        clock=clock,
        limit=ConnectionLimit(1),
        namespace="/rm",
        identify_timeout=1.0,
        listen_label="test",
        settings=EngineSettings(),
        allowed_origins=("*",),
        websocket_options={},
    )
    assert server.engine.reserve()
    return clock, hub, server.engine.open_session(4, "127.0.0.1:1")


def test_a_refused_client_cannot_connect_again() -> None:
    """Refused clients get nothing more: not even by connecting to the namespace a second time."""
    from redmessenger.model.envelope import Message

    clock, hub, session = memory_session()
    connection = session.handler
    connection.on_message("0/rm,")
    assert connection.writable
    clock.advance(1.0)  # no identifier in time: refused
    connection.on_message("0/rm,")
    assert not connection.writable
    assert not connection.send_message(Message("rm.users.user1", 1, "too late", "run.1"), True)
    assert hub.counters.refused == {"IDENTIFY_TIMEOUT": 1}


def test_a_refused_session_given_up_as_too_slow_ends_at_once() -> None:
    """Its report and its close were dropped with what waited for the client's polls: nothing else would end it."""
    from redmessenger.dialects.engineio.session import State
    from redmessenger.model.errors import ClientError, CloseCode

    clock, hub, session = memory_session()
    session.handler.on_message("0/rm,")
    clock.advance(1.0)  # no identifier in time: refused, the report waiting for a poll
    assert session.is_open and len(session._buffer) == 4, "open packet, connect, report, disconnect"
    session.handler.abandon(ClientError(CloseCode.TOO_SLOW, "too slow: it sends while 9437185 bytes sent to it wait unread"))
    assert session.state is State.CLOSED and session.close_reason == "too_slow"
    assert hub.counters.refused == {"IDENTIFY_TIMEOUT": 1}, "refused once"
