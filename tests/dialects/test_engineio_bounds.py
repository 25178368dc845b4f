"""
What a long-polling Engine.IO client can make the daemon hold (the reviewer's probe, a
client that posts and never polls): at most one pong waits for a poll; posts keep no
session alive; past ``max_buffered_bytes`` a client that posts is too slow (4413), as
the core gives up a slow socket.  In memory first (a Clock), then against the daemon.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import pytest_twisted

from redmessenger.dialects.engineio.codec import Packet, PacketType

from ..conftest import publish, wait_until
from .test_engineio_http import handshake, request, v3_packets
from .test_engineio_session import SETTINGS, Poll, handler, make, message

# -- in memory ------------------------------------------------------------------------------------


def test_a_client_that_posts_while_more_than_max_buffered_bytes_wait_is_backed_up():
    clock, server, session = make(4, settings=replace(SETTINGS, max_buffered_bytes=100))
    session.poll(Poll())  # the handshake; no poll after it
    for _ in range(10):
        session.send(message("x" * 9))  # 10 bytes each: 100, not past the bound
    session.receive([Packet(PacketType.MESSAGE, "read")])
    assert handler(session).messages == ["read"] and handler(session).backed_up == []
    session.send(message("y"))
    waiting: list[bool] = []
    session.confirm().addCallback(waiting.append)
    session.receive([Packet(PacketType.MESSAGE, "not read"), Packet(PacketType.PING)])
    assert handler(session).backed_up == [102], "told once, with the bytes waiting"
    assert handler(session).messages == ["read"], "the rest of the post is not read"
    assert waiting == [False], "dropped packets are never confirmed"
    assert not session._buffer and session._buffer.bytes == 0


def test_dropped_packets_are_never_confirmed_and_what_was_written_still_can_be():
    clock, server, session = make(4)
    session.poll(Poll())
    session.poll(pending := Poll())
    session.send(message("written"))
    assert pending.answers == [b"4written"]
    written: list[bool] = []
    session.confirm().addCallback(written.append)
    session.send(message("buffered"))
    clock.advance(SETTINGS.ping_interval)  # the heartbeat's ping, buffered behind it
    dropped: list[bool] = []
    session.confirm().addCallback(dropped.append)
    assert session.drop_buffered() is True, "it says it dropped some (the connection then never reports all read)"
    assert dropped == [False] and written == [] and not session._pings
    assert session.drop_buffered() is False, "nothing left to drop"
    session.send(message("report"))
    report: list[bool] = []
    session.confirm().addCallback(report.append)
    session.poll(poll := Poll())
    assert poll.answers == [b"4report"] and written == [True] and report == []
    session.poll(Poll())
    assert report == [True]
    session.abort("test")


# -- against the daemon -----------------------------------------------------------------------------


@pytest.mark.parametrize("version, blind", [(3, b"1:2" * 1300), (4, b"3\x1e" * 2000 + b"3")])
@pytest_twisted.ensureDeferred
async def test_a_client_that_posts_and_never_polls_holds_one_pong_and_is_timed_out(daemon_factory, version, blind):
    """The reviewer's probe: revision 3 posts pings, revision 4 pongs to pings it never fetched."""
    from twisted.internet import reactor

    from redmessenger.dialects.engineio.session import State

    daemon = await daemon_factory(ping_interval=0.2)
    sid, _ = await handshake(daemon.port, version)
    session = daemon.service.socketio.engine.get(sid)
    query = f"EIO={version}&transport=polling&sid={sid}"
    deadline = reactor.seconds() + 5
    posts, most = 0, 0
    while session.is_open:
        assert reactor.seconds() < deadline, f"{posts} posts kept the session alive"
        code, _, body = await request(daemon.port, "POST", query, blind)
        assert (code, body) == (200, b"ok") or not session.is_open
        posts += 1
        most = max(most, len(session._buffer))
    assert session.state is State.CLOSED and session.close_reason == "ping timeout"
    assert most == 1, "one pong (revision 3) or the heartbeat's ping (revision 4) waiting, never more"
    assert daemon.service.limit.in_use == 0


@pytest_twisted.ensureDeferred
async def test_a_ping_from_an_engineio_4_client_ends_its_session(daemon):
    from twisted.internet.defer import ensureDeferred

    sid, _ = await handshake(daemon.port, 4)
    query = f"EIO=4&transport=polling&sid={sid}"
    pending = ensureDeferred(request(daemon.port, "GET", query))
    await wait_until(lambda: daemon.service.socketio.engine.get(sid)._poll is not None, 5, "the poll waiting")
    assert (await request(daemon.port, "POST", query, b"2"))[2] == b"ok"
    assert (await pending)[2] == b"1", "no pong: the close packet"
    assert (await request(daemon.port, "GET", query))[0] == 400
    assert daemon.service.limit.in_use == 0


@pytest.mark.parametrize("version", [3, 4])
@pytest_twisted.ensureDeferred
async def test_a_polling_client_that_posts_while_too_much_waits_unread_is_closed_as_too_slow(daemon, redis, version):
    """
    Replies pile up for a client that never polls (here: refusals of other
    namespaces); past ``max_buffered_bytes`` its next packet closes it as too slow,
    as the core closes a socket that does not confirm: the message it had not
    fetched goes back to the queue, the report waits for its next poll, then the end.
    """
    engine = daemon.service.socketio.engine
    engine.settings = replace(engine.settings, max_buffered_bytes=1000)
    sid, _ = await handshake(daemon.port, version)
    query = f"EIO={version}&transport=polling&sid={sid}"

    def payload(*packets: str) -> bytes:
        return ("".join(f"{len(p)}:{p}" for p in packets) if version == 3 else "\x1e".join(packets)).encode()

    def packets(body: bytes) -> list[str]:
        return v3_packets(body) if version == 3 else body.decode().split("\x1e")

    await request(daemon.port, "POST", query, payload("40/rm,", '42/rm,["identifier","user1"]'))
    await wait_until(lambda: daemon.service.presence.get("user1") is not None, 5, "user1 online")
    assert packets((await request(daemon.port, "GET", query))[2])[0].startswith("40/rm,")
    publish(redis, "rm.users.user1", "never fetched")
    session = engine.get(sid)
    await wait_until(lambda: session._buffer, 5, "the message waiting for a poll")
    unread = session._buffer.bytes
    refusal = '44/x,"Invalid namespace"' if version == 3 else '44/x,{"message":"Invalid namespace"}'
    while unread <= 1000:
        unread += len(refusal)
    code, _, body = await request(daemon.port, "POST", query, payload(*["40/x,"] * 100))
    assert (code, body) == (200, b"ok")
    assert daemon.service.hub.counters.refused == {"TOO_SLOW": 1}
    assert daemon.service.presence.get("user1") is None
    await daemon.idle()
    assert [json.loads(e)["payload"] for e in redis.lrange("rm:users:user1:messages", 0, -1)] == ["never fetched"]

    (report,) = packets((await request(daemon.port, "GET", query))[2])
    kind, _, data = report.partition(",")
    error = {"code": 4413, "name": "TOO_SLOW", "message": f"too slow: it sends while {unread} bytes sent to it wait unread"}
    assert (kind, json.loads(data)) == (("42/rm", ["error", error]) if version == 4 else ("44/rm", error))
    assert packets((await request(daemon.port, "GET", query))[2]) == ["1"], "then the close packet: no disconnect"
    assert (await request(daemon.port, "GET", query))[0] == 400
    assert len(engine) == 0 and daemon.service.limit.in_use == 0
