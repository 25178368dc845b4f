"""
Passing a plain WebSocket to its user's owner on this host (transport/passing.py,
docs/scale-out.md *Passing sockets*): real daemons on one real valkey-server,
real clients, the descriptor over a real Unix socket.  Counted exactly: where
each socket ends, what each client gets, relays left.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol

from redmessenger.core.ownership import owner as owner_of
from redmessenger.transport.passing import Outcome, address

from ..conftest import HOST, free_port, publish, wait_until
from ..httpclient import scrape
from ..wsclient import connect_client

NODES = ["node-a", "node-b"]


async def pair(daemon_factory: Any, **overrides: Any) -> list[Any]:
    """node-a and node-b on the test's Redis, passing sockets, each knowing the other's run."""
    daemons = [await daemon_factory(node_id=name, pass_sockets=overrides.pop(name, True), **overrides) for name in NODES]
    await wait_until(
        lambda: all(d.service.nodes.runs.keys() == set(NODES) for d in daemons), 10, "both daemons to know both runs"
    )
    return daemons


def owned_by(node: str, prefix: str = "u") -> str:
    return next(f"{prefix}{i}" for i in range(1000) if owner_of(f"{prefix}{i}", NODES) == node)


def holds(daemon: Any) -> set[str]:
    """The uids of the sockets open on ``daemon``."""
    return {s._session.uid for s in daemon.service.websockets.sockets if s._session is not None}


@pytest_twisted.ensureDeferred
async def test_a_socket_that_identifies_as_a_user_owned_by_the_other_daemon_ends_there_and_gets_its_messages_once(
    daemon_factory, redis
):
    a, b = await pair(daemon_factory)
    uid = owned_by("node-a")
    redis.rpush(f"rm:users:{uid}:messages", "queued")
    client = await connect_client(b.url)  # at node-b, which does not own the user
    client.send(uid)
    assert [m["payload"] for m in await client.receive(1)] == ["queued"], "the owner read the identifier again"
    await wait_until(lambda: holds(a) == {uid} and not b.service.websockets.sockets, 5, "the socket on node-a only")
    for i in range(30):
        publish(redis, f"rm.users.{uid}", f"m{i}")
    got = await client.receive(30)
    for daemon in (a, b):
        await daemon.idle()
    assert [m["payload"] for m in got] == [f"m{i}" for i in range(30)] and all(m["bubble"] for m in got)
    assert len(client.received) == 31, "nothing twice"
    assert not b.service.peers._relays and not a.service.peers._remote, "no relay: the socket itself moved"
    assert b.service.sender.counts[Outcome.PASSED] == 1 and a.service.receiver.adopted == 1
    assert redis.llen(f"rm:users:{uid}:messages") == 0
    held = await scrape(b.port)
    assert (held["redmessenger_sockets_passed_total"], held["redmessenger_relayed_sockets"]) == (1, 0)
    assert (await scrape(a.port))["redmessenger_sockets_adopted_total"] == 1
    client.close()
    assert (await client.close_code())[0] == 1000, "the owner closes it cleanly, its handshake intact"


@pytest_twisted.ensureDeferred
async def test_forty_sockets_spread_by_the_kernel_over_one_port_each_end_at_their_owner(daemon_factory, redis):
    port = free_port()
    a, b = await pair(daemon_factory, listen=f"reuseport:{port}:interface={HOST}")
    url = f"ws://{HOST}:{port}{a.service.config.rm_route}"
    uids = [f"spread{i}" for i in range(40)]
    clients = []
    for uid in uids:
        client = await connect_client(url)
        client.send(uid)
        clients.append(client)
    mine = {node: {uid for uid in uids if owner_of(uid, NODES) == node} for node in NODES}
    await wait_until(lambda: holds(a) == mine["node-a"] and holds(b) == mine["node-b"], 10, "every socket at its owner")
    passed = sum(d.service.sender.counts[Outcome.PASSED] for d in (a, b))
    assert passed == sum(d.service.receiver.adopted for d in (a, b)) and passed > 0, "the kernel sent some to the other"
    for uid in uids:
        publish(redis, f"rm.users.{uid}", f"for {uid}")
    for uid, client in zip(uids, clients):
        assert [m["payload"] for m in await client.receive(1)] == [f"for {uid}"]
    for daemon in (a, b):
        await daemon.idle()
    assert all(len(client.received) == 1 for client in clients), "once each"
    assert not a.service.peers._relays and not b.service.peers._relays
    for client in clients:
        client.close()
        await client.close_code()


def masked_text(text: str) -> bytes:
    """A client's text frame (masked), to write several in one TCP write."""
    payload, mask = text.encode(), b"\x11\x22\x33\x44"
    head = bytes([0x81, 0x80 | len(payload)]) if len(payload) < 126 else bytes([0x81, 0xFE]) + len(payload).to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def hello_and_request(client: Any, uid: str) -> None:
    """A version-1 hello and a request right behind it, in one write: the daemon reads both at once."""
    frames = [{"type": "hello", "v": 1, "uid": uid}, {"type": "unsubscribe", "channel": "nothing", "ref": 7}]
    client.protocol.transport.write(b"".join(masked_text(json.dumps(f)) for f in frames))


@pytest_twisted.ensureDeferred
async def test_a_version_1_hello_with_requests_right_behind_it_is_answered_by_the_owner(daemon_factory, redis):
    a, b = await pair(daemon_factory)
    uid = owned_by("node-a", "v1-")
    client = await connect_client(b.url)
    hello_and_request(client, uid)  # both read by node-b, passed along, read again by node-a
    answers = {frame["type"]: frame for frame in await client.receive(2)}
    assert answers["welcome"] == {"type": "welcome", "v": 1, "uid": uid}
    assert answers["reply"]["ref"] == 7, answers
    await wait_until(lambda: holds(a) == {uid}, 5, "the socket on node-a")
    publish(redis, f"rm.users.{uid}", "hello v1")
    (message,) = await client.receive(1)
    assert message["type"] == "message" and message["payload"] == "hello v1"
    assert not b.service.peers._relays
    client.close()
    await client.close_code()


@pytest_twisted.ensureDeferred
async def test_an_owner_that_does_not_take_sockets_gets_the_socket_relayed_as_before(daemon_factory, redis):
    a, b = await pair(daemon_factory, **{"node-a": False})
    uid = owned_by("node-a", "relayed-")
    client = await connect_client(b.url)
    client.send(uid)
    await wait_until(lambda: b.service.peers._relays, 5, "the socket relayed to node-a")
    assert b.service.sender.counts[Outcome.REFUSED] == 1 and holds(b) == {uid}
    for i in range(10):
        publish(redis, f"rm.users.{uid}", f"m{i}")
    got = await client.receive(10)
    assert [m["payload"] for m in got] == [f"m{i}" for i in range(10)]
    for daemon in (a, b):
        await daemon.idle()
    assert len(client.received) == 10
    client.close()
    await client.close_code()


class _Raw(Protocol):
    def __init__(self) -> None:
        self.closed: Deferred[None] = Deferred()
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(None)


async def _offer(run: str, data: bytes, fd: int | None = None) -> bytes:
    """Connect to the daemon of ``run`` as a passing daemon would, send ``data`` (with ``fd``), return its answer."""
    raw = _Raw()
    await connectProtocol(UNIXClientEndpoint(reactor, address(run)), raw)
    if fd is not None:
        raw.transport.sendFileDescriptor(fd)
    raw.transport.write(data)
    try:
        await raw.closed.addTimeout(5, reactor)
    finally:
        if fd is not None:
            os.close(fd)
    return raw.data


@pytest_twisted.ensureDeferred
async def test_what_a_daemon_is_offered_that_is_not_a_socket_with_its_bytes_is_refused_and_it_goes_on(
    daemon_factory, redis, monkeypatch
):
    from redmessenger.transport import passing

    (daemon,) = [await daemon_factory(node_id="node-a", pass_sockets=True)]
    run = daemon.service.nodes.run
    monkeypatch.setattr(passing, "ANSWER_TIMEOUT", 0.3)
    assert await _offer(run, b"4 10\n01234", fd=os.dup(0)) == b"", "an offer that never completes is cut off"
    # Each declined with "no": the process that offered it keeps whatever it offered.
    assert await _offer(run, b"nonsense without a newline" * 3) == b"no\n"
    assert await _offer(run, b"4 10\n0123456789") == b"no\n", "no descriptor"
    assert await _offer(run, b"9 3\nabc", fd=os.dup(0)) == b"no\n", "no such family"
    assert await _offer(run, b"4 999999\n", fd=os.dup(0)) == b"no\n", "more than a handshake"
    left, right = socket.socketpair()
    try:
        # A descriptor that is no TCP connection: adopting it fails, the offer is declined.
        assert await _offer(run, b"4 3\nabc", fd=os.dup(left.fileno())) == b"no\n"
    finally:
        left.close()
        right.close()
    assert daemon.service.receiver.adopted == 0
    client = await daemon.client("still-serving")
    publish(redis, "rm.users.still-serving", "fine")
    assert [m["payload"] for m in await client.receive(1)] == ["fine"]
    client.close()
    await client.close_code()


@pytest_twisted.ensureDeferred
async def test_an_owner_at_its_conn_limit_declines_and_the_holder_keeps_the_socket_relayed(daemon_factory, redis):
    a, b = await pair(daemon_factory, conn_limit=1)
    present = await a.client(owned_by("node-a", "present-"))  # node-a's one slot, its own user
    uid = owned_by("node-a", "full-")
    client = await connect_client(b.url)
    hello_and_request(client, uid)
    answers = {frame["type"]: frame for frame in await client.receive(2)}
    assert answers["welcome"]["uid"] == uid and answers["reply"]["ref"] == 7, "the request read with the hello, answered"
    await wait_until(lambda: b.service.peers._relays, 5, "the socket relayed to node-a")
    assert b.service.sender.counts == {Outcome.PASSED: 0, Outcome.REFUSED: 1, Outcome.UNANSWERED: 0}
    assert a.service.receiver.adopted == 0 and holds(b) == {uid}
    publish(redis, f"rm.users.{uid}", "through the relay")
    (message,) = await client.receive(1)
    assert message["payload"] == "through the relay" and len(client.received) == 3
    for c in (client, present):
        c.close()
        await c.close_code()


@pytest_twisted.ensureDeferred
async def test_sockets_go_both_ways_between_this_process_and_a_twistd(daemon_factory, redis, redis_server, tmp_path):
    """Across processes, as on a server: node-a in this process, node-b a real twistd, each passing to the other."""
    from ..twistdprocess import Twistd

    a = await daemon_factory(node_id="node-a", pass_sockets=True)
    b = Twistd(tmp_path, redis_server.port, node_id="node-b", ping_interval=0)
    b.start()
    try:
        await b.healthy()
        await wait_until(lambda: a.service.nodes.runs.keys() == set(NODES), 10, "node-a to know node-b's run")
        to_a, to_b = owned_by("node-a", "x-"), owned_by("node-b", "x-")
        at_b = await connect_client(b.url)  # passed from the twistd into this process
        at_b.send(to_a)
        at_a = await connect_client(a.url)  # passed from this process to the twistd
        at_a.send(to_b)
        await wait_until(lambda: holds(a) == {to_a}, 10, f"{to_a} adopted by node-a")
        assert a.service.sender.counts[Outcome.PASSED] == 1 and a.service.receiver.adopted == 1
        for i in range(50):
            publish(redis, f"rm.users.{to_a}", f"a{i}")
            publish(redis, f"rm.users.{to_b}", f"b{i}")
        assert [m["payload"] for m in await at_b.receive(50)] == [f"a{i}" for i in range(50)]
        assert [m["payload"] for m in await at_a.receive(50)] == [f"b{i}" for i in range(50)]
        await a.idle()
        metrics = await scrape(b.port)
        assert (metrics["redmessenger_sockets_passed_total"], metrics["redmessenger_sockets_adopted_total"]) == (1, 1)
        assert metrics["redmessenger_relayed_sockets"] == 0 and not a.service.peers._relays
        assert len(at_a.received) == len(at_b.received) == 50, "nothing twice"
        for client in (at_a, at_b):
            client.close()
            assert (await client.close_code())[0] == 1000
    finally:
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_socket_whose_owner_never_answers_is_let_go_and_its_client_connects_again_losing_nothing(
    daemon_factory, redis, monkeypatch
):
    from redmessenger.transport import passing

    a, b = await pair(daemon_factory)
    b.service.sender._timeout = 0.5
    monkeypatch.setattr(passing._Receiving, "dataReceived", lambda self, data: None)  # node-a takes it, says nothing
    uid = owned_by("node-a", "lost-")
    client = await connect_client(b.url)
    client.send(uid)
    code, _ = await client.close_code()
    assert code == 1006, "closed without a word, as a network failure"
    assert b.service.sender.counts[Outcome.UNANSWERED] == 1 and not b.service.websockets.sockets
    assert a.service.receiver.adopted == 0 and not a.service.websockets.sockets, "nobody has it"
    for i in range(5):
        publish(redis, f"rm.users.{uid}", f"m{i}")  # offline meanwhile: queued
    await a.idle()
    monkeypatch.undo()
    again = await connect_client(a.url)
    again.send(uid)
    assert [m["payload"] for m in await again.receive(5)] == [f"m{i}" for i in range(5)]
    for daemon in (a, b):
        await daemon.idle()
    assert len(again.received) == 5 and redis.llen(f"rm:users:{uid}:messages") == 0
    again.close()
    await again.close_code()


@pytest_twisted.ensureDeferred
async def test_a_socket_with_a_ping_unanswered_stays_relayed_since_its_pong_would_reach_the_owner(daemon_factory, redis):
    a, b = await pair(daemon_factory)
    uid = owned_by("node-a", "pinged-")
    client = await connect_client(b.url)
    await wait_until(lambda: len(b.service.websockets.sockets) == 1, 5, "the socket open on node-b")
    (server_side,) = b.service.websockets.sockets
    server_side._pings.append((0, reactor.seconds(), None))  # as if a keep-alive ping were on its way
    client.send(uid)
    await wait_until(lambda: b.service.peers._relays, 5, "the socket relayed to node-a")
    assert sum(b.service.sender.counts.values()) == 0 and a.service.receiver.adopted == 0
    publish(redis, f"rm.users.{uid}", "relayed")
    assert [m["payload"] for m in await client.receive(1)] == ["relayed"]
    client.close()
    await client.close_code()


@pytest_twisted.ensureDeferred
async def test_a_socket_the_owner_refuses_at_its_handshake_is_closed_without_an_http_answer(daemon_factory, redis):
    from redmessenger.core.admission import OriginPolicy

    a, b = await pair(daemon_factory)
    a.service.websockets.origins = OriginPolicy(("https://only.example",))  # node-a's allowed_origins differ from node-b's
    uid = owned_by("node-a", "origin-")
    raw = _Raw()  # a client that keeps every byte it is sent
    await connectProtocol(TCP4ClientEndpoint(reactor, HOST, b.port), raw)
    raw.transport.write(
        b"GET /rm HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nOrigin: https://elsewhere.example\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" % (HOST.encode(), b.port)
    )
    await wait_until(lambda: b"\r\n\r\n" in raw.data, 5, "node-b's 101")
    assert raw.data.startswith(b"HTTP/1.1 101 ")
    answered = len(raw.data)
    raw.transport.write(masked_text(uid))
    await raw.closed.addTimeout(5, reactor)
    assert raw.data[answered:] == b"", "closed, and nothing written into what the client knows as an open WebSocket"
    assert a.service.receiver.adopted == 1 and not a.service.websockets.sockets and not b.service.websockets.sockets
    client = await a.client(owned_by("node-a", "after-"), origin="https://only.example")  # node-a goes on
    client.close()
    await client.close_code()


@pytest_twisted.ensureDeferred
async def test_a_socket_closed_by_its_daemon_while_on_its_way_and_then_declined_is_closed_after_all(
    daemon_factory, redis, monkeypatch
):
    from redmessenger.model.errors import CloseCode
    from redmessenger.transport import passing

    a, b = await pair(daemon_factory)
    offered: list[Any] = []
    monkeypatch.setattr(passing._Receiving, "dataReceived", lambda self, data: offered.append(self))  # node-a ponders
    uid = owned_by("node-a", "closing-")
    client = await connect_client(b.url)
    client.send(uid)
    await wait_until(lambda: offered, 5, "the socket offered to node-a")
    done = b.service.websockets.close_all(CloseCode.GOING_AWAY, "shutting down")  # as at node-b's shutdown
    offered[0].transport.write(b"no\n")  # node-a declines: node-b keeps it, and closes it as it was asked to
    offered[0].transport.loseConnection()
    code, reason = await client.close_code()
    assert (code, reason) == (1001, "shutting down")
    await done
    assert b.service.sender.counts[Outcome.REFUSED] == 1 and a.service.receiver.adopted == 0
