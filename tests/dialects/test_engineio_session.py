"""
Engine.IO sessions in memory: a Clock for time, fake transports that record what
they are given.  Heartbeats in both directions, confirmations, the upgrade, the end.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from redmessenger.core.admission import ConnectionLimit
from redmessenger.dialects.engineio.codec import EncodedPacket, Packet, PacketType
from redmessenger.dialects.engineio.contract import EngineError, EngineSettings
from redmessenger.dialects.engineio.server import EngineServer
from redmessenger.dialects.engineio.session import Session, State

SETTINGS = EngineSettings(ping_interval=25.0, ping_timeout=20.0, max_payload=1000, upgrade_timeout=10.0)


class Handler:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.messages: list[str] = []
        self.closed: list[str] = []
        self.backed_up: list[int] = []

    def on_open(self) -> None:
        pass

    def on_message(self, data: str) -> None:
        self.messages.append(data)

    def on_backed_up(self, unread: int) -> None:
        self.backed_up.append(unread)
        self.session.drop_buffered()

    def on_close(self, reason: str) -> None:
        self.closed.append(reason)


class Poll:
    def __init__(self, binary: bool = False) -> None:
        self.answers: list[bytes] = []
        self.binary = binary

    def answer(self, payload: bytes) -> None:
        self.answers.append(payload)


class FakeWebSocket:
    def __init__(self) -> None:
        self.written: list[str] = []
        self.pings: list[int] = []
        self.closed: tuple[int, str] | None = None

    def write(self, packet: EncodedPacket) -> bool:
        if self.closed is not None:
            return False
        self.written.append(packet.text)
        return True

    def ping(self, token: int) -> None:
        if self.closed is None:
            self.pings.append(token)

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)


def make(
    version: int, websocket: FakeWebSocket | None = None, limit: int = 10, settings: EngineSettings = SETTINGS
) -> tuple[Clock, EngineServer, Session]:
    clock = Clock()
    server = EngineServer(settings, clock, ConnectionLimit(limit), Handler)
    assert server.reserve()
    return clock, server, server.open_session(version, "127.0.0.1:1234", websocket)


def handler(session: Session) -> Handler:
    assert isinstance(session.handler, Handler)
    return session.handler


def message(text: str) -> EncodedPacket:
    return EncodedPacket.of(PacketType.MESSAGE, text)


def test_v4_heartbeat_pings_and_times_out_a_silent_client():
    clock, server, session = make(4, FakeWebSocket())
    ws = session._websocket
    assert isinstance(ws, FakeWebSocket) and ws.written[0].startswith('0{"sid"')
    clock.advance(25)
    assert ws.written[-1] == "2"
    session.websocket_packet(ws, Packet(PacketType.PONG))
    clock.advance(25)
    assert ws.written[-1] == "2"
    clock.advance(19.9)
    assert session.state is State.OPEN
    clock.advance(0.2)
    assert session.state is State.CLOSED and session.close_reason == "ping timeout"
    assert handler(session).closed == ["ping timeout"]
    assert not clock.getDelayedCalls()
    assert server.limit.in_use == 0 and len(server) == 0


def test_v3_heartbeat_is_the_clients_and_only_a_poll_keeps_a_polling_session():
    clock, server, session = make(3)
    poll = Poll()
    session.poll(poll)
    assert poll.answers[0].startswith(b"9") and b':0{"sid"' in poll.answers[0]
    clock.advance(40)
    session.receive([Packet(PacketType.PING)])
    second = Poll()
    session.poll(second)
    assert second.answers == [b"1:3"]
    clock.advance(40)
    assert session.state is State.OPEN, "the poll at 40 s kept it"
    session.receive([Packet(PacketType.PING)])  # posted, never fetched: keeps nothing
    clock.advance(5.1)
    assert session.state is State.CLOSED and session.close_reason == "ping timeout"
    assert not clock.getDelayedCalls()


def test_v3_on_a_websocket_any_packet_keeps_the_session():
    clock, server, session = make(3, ws := FakeWebSocket())
    clock.advance(40)
    session.websocket_packet(ws, Packet(PacketType.PING))
    clock.advance(40)
    assert session.state is State.OPEN and ws.written[1:] == ["3"]
    clock.advance(5.1)
    assert session.state is State.CLOSED and session.close_reason == "ping timeout"


def test_v3_at_most_one_pong_waits_for_a_poll():
    """The reviewer's probe: posts of pings, no GET; one pong answers them all, the next poll's pings get theirs."""
    clock, server, session = make(3)
    session.poll(Poll())  # the handshake
    for _ in range(3):
        session.receive([Packet(PacketType.PING)] * 1000)
    assert [packet.text for packet in session._buffer] == ["3"] and session._buffer.bytes == 1
    poll = Poll()
    session.poll(poll)
    assert poll.answers == [b"1:3"]
    session.receive([Packet(PacketType.PING, "x"), Packet(PacketType.PING)])
    session.poll(poll := Poll())
    assert poll.answers == [b"2:3x"]
    session.poll(poll := Poll())
    session.receive([Packet(PacketType.PING)])
    assert poll.answers == [b"1:3"], "a pending poll takes each pong at once"


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_v4_a_ping_from_the_client_ends_the_session_as_engineio_does(transport):
    """Revision 4's heartbeat is the server's: engine.io closes a session whose client pings ("invalid heartbeat direction")."""
    ws = FakeWebSocket() if transport == "websocket" else None
    clock, server, session = make(4, ws)
    pending = Poll()
    if ws is None:
        session.poll(Poll())
        session.poll(pending)
        session.receive([Packet(PacketType.PING), Packet(PacketType.MESSAGE, "not read")])
        assert pending.answers == [b"1"], "no pong: the close packet"
    else:
        session.websocket_packet(ws, Packet(PacketType.PING))
        assert ws.closed == (1002, "invalid heartbeat direction") and len(ws.written) == 1
    assert session.state is State.CLOSED and session.close_reason == "invalid heartbeat direction"
    assert handler(session).messages == [] and server.limit.in_use == 0 and not clock.getDelayedCalls()


def test_v4_only_a_pong_to_a_ping_the_client_was_sent_keeps_a_polling_session():
    clock, server, session = make(4)
    session.poll(Poll())  # the handshake; the client polls no more
    session.receive([Packet(PacketType.PONG)])  # no ping sent yet: nothing to answer
    clock.advance(SETTINGS.ping_interval)  # the heartbeat's ping, buffered: never fetched
    assert [packet.text for packet in session._buffer] == ["2"]
    session.receive([Packet(PacketType.PONG)] * 3)  # blind pongs
    assert session._pings, "still waiting for the pong to the ping in the buffer"
    clock.advance(SETTINGS.ping_timeout)
    assert session.state is State.CLOSED and session.close_reason == "ping timeout"

    clock, server, session = make(4)
    session.poll(Poll())
    session.poll(pending := Poll())
    clock.advance(SETTINGS.ping_interval)
    assert pending.answers == [b"2"]
    session.receive([Packet(PacketType.PONG)])  # the answer to the ping it fetched
    clock.advance(SETTINGS.ping_timeout)
    assert session.state is State.OPEN and not session._pings
    session.abort("test")


def test_v3_polls_of_a_client_with_xhr2_are_answered_with_binary_payloads():
    """Issue 12: the poll says which form its client reads; a long queue still goes out over several polls."""
    from dataclasses import replace

    clock, server, session = make(3, settings=replace(SETTINGS, max_poll_bytes=1000))
    binary = Poll(binary=True)
    session.poll(binary)
    assert binary.answers[0].startswith(b"\x00\x09\x07\xff0{")
    for _ in range(8):
        session.send(message('2["m","' + "😀" * 30 + '"]'))  # 130 bytes, 370 ASCII characters
    text = Poll()
    session.poll(text)
    assert text.answers[0].isascii() and text.answers[0].count(b"370:4") == 2, "ASCII counted, not UTF-8"
    binary = Poll(binary=True)
    session.poll(binary)
    assert binary.answers[0].count(b"\x00\x01\x03\x00\xff4") == 6, "the rest, in bytes"
    assert not session._buffer
    session.abort("test")


def test_polling_confirmation_is_the_next_poll():
    clock, server, session = make(4)
    session.poll(Poll())  # the handshake
    session.poll(Poll())  # waiting
    assert session.send(message("one"))
    confirmed: list[bool] = []
    session.confirm().addCallback(confirmed.append)
    assert confirmed == []
    session.poll(Poll())  # the client read "one" before polling again
    assert confirmed == [True]
    assert session.all_confirmed


def test_buffered_packets_are_never_confirmed_when_the_client_vanishes():
    clock, server, session = make(4)
    session.poll(Poll())
    session.send(message("a"))
    session.send(message("b"))
    results: list[bool] = []
    session.confirm().addCallback(results.append)
    waiting = Poll()
    session.poll(waiting)
    assert waiting.answers == [b"4a\x1e4b"]
    session.poll_lost(Poll())  # not the pending one: ignored
    assert session.state is State.OPEN
    clock.advance(25)  # a ping, sent into the buffer: never fetched, never answered
    clock.advance(20)
    assert results == [False]
    assert not session.all_confirmed
    assert handler(session).closed == ["ping timeout"]


def test_a_dropped_pending_poll_ends_the_session():
    clock, server, session = make(4)
    session.poll(Poll())
    pending = Poll()
    session.poll(pending)
    session.poll_lost(pending)
    assert session.state is State.CLOSED and session.close_reason == "poll connection lost"
    assert not clock.getDelayedCalls()


def test_overlapping_polls_are_refused_and_end_the_session():
    clock, server, session = make(3)
    session.poll(Poll())
    first = Poll()
    session.poll(first)
    with pytest.raises(EngineError) as refused:
        session.poll(Poll())
    assert refused.value.status == 400
    assert first.answers == [b"1:1"]
    assert session.state is State.CLOSED


def test_upgrade_to_websocket():
    clock, server, session = make(4)
    session.poll(Poll())
    pending = Poll()
    session.poll(pending)
    session.send(message("polled"))  # answered at once: pending has it
    assert pending.answers == [b"4polled"]
    session.poll(pending := Poll())
    ws = FakeWebSocket()
    assert session.can_probe(4) and session.attach_probe(ws)
    session.websocket_packet(ws, Packet(PacketType.PING, "probe"))
    assert ws.written == ["3probe"]
    assert pending.answers == [b"6"], "the pending GET is released with a noop"
    session.send(message("buffered"))  # the client has paused polling
    confirmed: list[bool] = []
    session.confirm().addCallback(confirmed.append)
    session.websocket_packet(ws, Packet(PacketType.UPGRADE))
    assert session.transport == "websocket"
    assert ws.written[1:] == ["4buffered", "2"], "the buffer, then an Engine.IO ping to confirm it"
    assert ws.pings == [] and confirmed == []
    session.websocket_packet(ws, Packet(PacketType.PONG))
    assert confirmed == [True]
    with pytest.raises(EngineError):
        session.check_polling()
    session.websocket_packet(ws, Packet(PacketType.MESSAGE, "hello"))
    assert handler(session).messages == ["hello"]


def test_a_probe_that_never_upgrades_is_closed_and_polling_goes_on():
    clock, server, session = make(4)
    session.poll(Poll())
    ws = FakeWebSocket()
    session.attach_probe(ws)
    clock.advance(10)
    assert ws.closed == (1000, "upgrade timeout")
    assert session.state is State.OPEN and session.transport == "polling"
    session.websocket_closed(ws)
    assert session.can_probe(4)


def test_server_close_waits_for_the_next_poll_then_ends():
    clock, server, session = make(4)
    session.poll(Poll())
    session.send(message("last words"))
    session.close("bad_key")
    assert session.state is State.CLOSING
    assert not session.send(message("too late"))
    final = Poll()
    session.poll(final)
    assert final.answers == [b"4last words\x1e1"]
    assert session.state is State.CLOSED and session.close_reason == "bad_key"
    assert not clock.getDelayedCalls()


def test_server_close_gives_up_waiting_for_a_poll():
    clock, server, session = make(4)
    session.poll(Poll())
    session.close("bad_key")
    clock.advance(SETTINGS.ping_timeout)
    assert session.state is State.CLOSED
    assert not clock.getDelayedCalls()


def test_client_close_packet():
    clock, server, session = make(4, FakeWebSocket())
    session.websocket_packet(session._websocket, Packet(PacketType.CLOSE))  # type: ignore[arg-type]
    assert session.close_reason == "client close"
    assert server.limit.in_use == 0


def test_shutdown_closes_websockets_with_1001():
    clock, server, session = make(4, FakeWebSocket())
    ws: Any = session._websocket
    server.close_all("server shutting down")
    assert ws.closed == (1001, "server shutting down")
    assert len(server) == 0 and not clock.getDelayedCalls()


def test_websocket_confirmations_count_what_was_written_before_each_engineio_ping():
    """Revision 4: the page's JavaScript answers Engine.IO pings, in order, after the packets before them."""
    clock, server, session = make(4, ws := FakeWebSocket())
    session.send(message("a"))
    session.send(message("b"))
    first: list[bool] = []
    session.confirm().addCallback(first.append)
    session.send(message("c"))
    second: list[bool] = []
    session.confirm().addCallback(second.append)
    assert ws.written[1:] == ["4a", "4b", "2", "4c", "2"] and ws.written[0].startswith("0{")
    session.websocket_packet(ws, Packet(PacketType.PONG))
    assert first == [True] and second == [] and not session.all_confirmed, "c was written after the first ping"
    session.websocket_packet(ws, Packet(PacketType.PONG))
    assert second == [True] and session.all_confirmed


def test_a_websocket_pong_confirms_nothing_on_revision_4():
    """Issue 13: a browser answers WebSocket pings for a page frozen in the back/forward cache."""
    clock, server, session = make(4, ws := FakeWebSocket())
    session.send(message("a"))
    confirmed: list[bool] = []
    session.confirm().addCallback(confirmed.append)
    session.websocket_pong(ws, 10**9)
    assert confirmed == [] and not session.all_confirmed
    assert ws.pings == [], "no WebSocket ping is asked for"


def test_the_heartbeat_ping_confirms_too_and_keeps_the_order_of_pongs():
    clock, server, session = make(4, ws := FakeWebSocket())
    session.send(message("a"))
    clock.advance(SETTINGS.ping_interval)  # the heartbeat's ping, after "a"
    session.send(message("b"))
    confirmed: list[bool] = []
    session.confirm().addCallback(confirmed.append)  # a second ping, after "b"
    assert ws.written[1:] == ["4a", "2", "4b", "2"]
    session.websocket_packet(ws, Packet(PacketType.PONG))
    assert confirmed == [] and session._receipts._confirmed == 3, "the heartbeat's pong confirms the open packet, a and itself"
    session.websocket_packet(ws, Packet(PacketType.PONG))
    assert confirmed == [True]
    session.websocket_packet(ws, Packet(PacketType.PONG))  # one too many: ignored
    assert session.all_confirmed and session.state is State.OPEN


def test_revision_3_confirms_with_websocket_pings():
    """Revision 3 has no ping the server can send: a WebSocket ping (the documented limit: a frozen page seems to answer)."""
    clock, server, session = make(3, ws := FakeWebSocket())
    session.send(message("a"))
    first: list[bool] = []
    session.confirm().addCallback(first.append)
    session.send(message("b"))
    second: list[bool] = []
    session.confirm().addCallback(second.append)
    assert len(set(ws.pings)) == 2
    session.websocket_pong(ws, ws.pings[0])
    assert first == [True] and second == []
    session.websocket_pong(ws, ws.pings[1])
    assert second == [True] and session.all_confirmed


def test_a_write_the_websocket_refuses_is_neither_sent_nor_awaited():
    clock, server, session = make(4, ws := FakeWebSocket())
    session.confirm()
    session.websocket_packet(ws, Packet(PacketType.PONG))  # confirms the open packet
    assert session.all_confirmed
    ws.closed = (1006, "")  # closing: the session learns it from websocket_closed, a little later
    assert not session.send(message("lost"))
    assert session.all_confirmed, "the core keeps the message: nothing to wait for"
    confirmed: list[bool] = []
    session.confirm().addCallback(confirmed.append)
    assert confirmed == [True]


def test_packets_buffered_during_the_upgrade_go_before_the_ones_written_after():
    clock, server, session = make(4)
    session.poll(Poll())
    ws = FakeWebSocket()
    session.attach_probe(ws)
    session.websocket_packet(ws, Packet(PacketType.PING, "probe"))
    session.send(message("first"))
    session.send(message("second"))
    session.websocket_packet(ws, Packet(PacketType.UPGRADE))
    session.send(message("third"))
    assert ws.written == ["3probe", "4first", "4second", "4third"]
    confirmed: list[bool] = []
    session.confirm().addCallback(confirmed.append)
    session.websocket_packet(ws, Packet(PacketType.PONG))
    assert confirmed == [True] and session.all_confirmed


def test_a_poll_after_the_probe_is_answered_at_once_until_the_probe_ends():
    """Clients that poll again after ``3probe`` (not socket.io-client) get a noop, or what is buffered, at once."""
    clock, server, session = make(4)
    session.poll(Poll())  # the handshake
    ws = FakeWebSocket()
    session.attach_probe(ws)
    before = Poll()
    session.poll(before)
    assert before.answers == [], "before the probe's ping, a GET waits as usual"
    session.websocket_packet(ws, Packet(PacketType.PING, "probe"))
    assert before.answers == [b"6"]
    again = Poll()
    session.poll(again)
    assert again.answers == [b"6"], "a new GET after 3probe is answered at once"
    session.send(message("buffered"))
    with_packet = Poll()
    session.poll(with_packet)
    assert with_packet.answers == [b"4buffered"]
    clock.advance(SETTINGS.upgrade_timeout)  # no upgrade packet: the probe is closed
    session.websocket_closed(ws)
    after = Poll()
    session.poll(after)
    assert after.answers == [] and session.transport == "polling", "polling goes on as before"
    session.send(message("polled"))
    assert after.answers == [b"4polled"]
