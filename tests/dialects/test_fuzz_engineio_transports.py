"""
Fuzz tests of the Socket.IO dialect's transports, in memory on a fake clock:
the Engine.IO WebSocket protocol fed anything a client can send (a session of
its own, or the upgrade of a polling session), and the ``/socket.io/`` HTTP
resource given any method, query, headers and body (twisted.web's DummyRequest).
"""

from __future__ import annotations

import json
import re
from io import BytesIO
from typing import Any
from urllib.parse import quote

from hypothesis import event, given
from hypothesis import strategies as st

from redmessenger.core.admission import ConnectionLimit
from redmessenger.core.hub import Hub
from redmessenger.dialects.engineio.contract import EngineSettings
from redmessenger.dialects.socketio.server import SocketIOServer
from redmessenger.model.envelope import Message, decode_payload

from ..fakes import MemoryDirectory, MemoryQueues
from ..fuzzing import (
    CLOSE,
    IN_MEMORY_OPTIONS,
    PING,
    PONG,
    TEXT,
    InMemoryWebSocket,
    client_frames,
    close_code,
    decode_frames,
    deep_json,
    describe,
    encode_frame,
    errors_logged,
    fuzz,
    fuzzed_text,
    masks,
    split,
)
from .test_fuzz_engineio_codec import client_payload_v3, client_payload_v4, sio_texts

NAMESPACE = "/rm"
MAX_FRAME = 8192


class World:
    """A Socket.IO server of its own, the core's ports in memory, all on one fake clock."""

    def __init__(self, data: Any) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.queues, directory = MemoryQueues(), MemoryDirectory()
        directory.keys["user1"] = b"key"
        self.published: list[str] = []
        for n, payload in enumerate(data.draw(st.lists(st.text(max_size=10), max_size=3), label="queued")):
            self.published.append(payload)
            self.queues.enqueue(["user1"], Message("rm.users.user1", n, payload, f"q.{n}").queue_entry())
        self.hub = Hub(
            self.queues,
            directory,
            self.clock,
            secure_mode=data.draw(st.booleans(), label="secure_mode"),
            max_pending_bytes=data.draw(st.sampled_from([8 << 20, 400]), label="max_pending_bytes"),
        )
        self.limit = ConnectionLimit(data.draw(st.sampled_from([2, 100]), label="conn_limit"))
        self.server = SocketIOServer(
            hub=self.hub,
            clock=self.clock,
            limit=self.limit,
            namespace=NAMESPACE,
            identify_timeout=10,
            listen_label="fuzz",
            # max_frame_bytes 8192 (its default is 4096): room for a Socket.IO number longer than int() reads
            settings=EngineSettings(ping_interval=5, ping_timeout=5, max_payload=MAX_FRAME, upgrade_timeout=3),
            allowed_origins=data.draw(st.sampled_from([("*",), ("http://good.example",)]), label="allowed_origins"),
            websocket_options={**IN_MEMORY_OPTIONS, "maxFramePayloadSize": MAX_FRAME, "maxMessagePayloadSize": MAX_FRAME},
        )

    def publish(self, data: Any) -> None:
        for payload in data.draw(st.lists(st.binary(max_size=20), min_size=1, max_size=4), label="payloads"):
            self.published.append(decode_payload(payload)[0])
            self.hub.on_publish(b"rm.users.user1", payload)
        self.clock.advance(0)

    def end(self) -> None:
        """Shutdown, as the daemon does it: every session ended, the core's timers stopped."""
        self.server.engine.close_all("fuzz over")
        self.clock.advance(0)
        stopped = self.hub.stop()
        self.clock.advance(0)
        assert stopped.called, "a handover still running once every session is gone"

    def check_nothing_held(self) -> None:
        assert len(self.server.engine) == 0 and self.limit.in_use == 0, "a session or its conn_limit slot kept"
        assert not self.server.websockets.sockets, "a WebSocket kept"
        assert self.hub.presence.get("user1") is None, "the user is offline once every session is gone"
        assert not [call for call in self.clock.getDelayedCalls() if call.active()], "no timer left running"

    def check_nothing_lost(self, confirmed: set[str]) -> None:
        """Every message published is in the user's queue, unless the client may have confirmed it."""
        left = {json.loads(entry)["payload"] for entry in self.queues.queues.get("user1", [])}
        missing = [payload for payload in self.published if payload not in left | confirmed]
        assert not missing, f"messages neither queued nor confirmed: {missing}"


def envelopes(packet: str) -> list[str]:
    """The payloads of the envelopes in an Engine.IO packet (``42/rm,["message",{...}]``)."""
    if not packet.startswith("42" + NAMESPACE + ","):
        return []
    event_ = json.loads(packet[len(NAMESPACE) + 3 :])
    return [event_[1]["payload"]] if event_[0] == "message" else []


# -- the Engine.IO WebSocket ------------------------------------------------------------------

#: docs/protocol.md, *Errors a Socket.IO client can see*: a session's end (1000), shutdown (1001), garbage
#: (1002, 1007 for text that is not UTF-8), binary (1003), too big (1009), too slow (4413).
ENGINEIO_CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1009, 4413}


@st.composite
def engineio_texts(draw: Any) -> str:
    """What an Engine.IO client sends in a text frame: its packets, Socket.IO inside, or anything."""
    return draw(
        st.sampled_from(["2probe", "5", "3", "2", "1", "6", "0", "40/rm,", "40", "41/rm,", "3probe"])
        | st.sampled_from(['42/rm,["identifier","user1:key"]', '42/rm,["identifier","user1"]', '42/rm,["identifier",7]'])
        | st.builds(lambda text: "4" + text, fuzzed_text(sio_texts()))
        | deepest
        | fuzzed_text(st.sampled_from(["2probe", "5", "42/rm,[]"]))
    )


#: Noise where it reaches deepest: the data of a Socket.IO event nested deeper than Python's stack (balanced or
#: not; deeper than Hypothesis's raised recursion limit too), a binary event's attachment count longer than int() reads.
deepest = (
    st.builds(lambda depth, close: "42/rm," + "[" * depth + ("]" * depth if close else ""), st.sampled_from([3000, 4000, 6000]), st.booleans())
    | st.builds(lambda text: "42/rm," + text, deep_json())
    | st.builds(lambda n: "45" + "1" * n + "-/rm,[]", st.sampled_from([4300, 4301, 6000]))
)


def run_websocket_session(data: Any) -> None:
    world = World(data)
    clock, server = world.clock, world.server
    version = data.draw(st.sampled_from([3, 4]), label="EIO")
    upgrade = data.draw(st.booleans(), label="upgrades a polling session")
    polling = None
    query = f"EIO={version}&transport=websocket"
    if upgrade:
        assert server.engine.reserve()
        polling = server.engine.open_session(version, "127.0.0.1:1")
        query += "&sid=" + polling.sid
    query = data.draw(st.just(query) | st.sampled_from(["EIO=5&transport=websocket", "EIO=4", "EIO=4&transport=websocket&sid=nope"]), label="query")
    #: What the client sent, each with how many frames the server had written once it was read.
    sends: list[tuple[int, bytes]] = []

    with errors_logged() as errors:
        socket = InMemoryWebSocket(server.websockets, clock, b"/socket.io/?" + query.encode())

        def send(raw: bytes, chunks: list[bytes] | None = None) -> None:
            for chunk in chunks if chunks is not None else [raw]:
                socket.feed(chunk)
            sends.append((len(socket.frames()[0]), raw))

        if not socket.opened:
            event("handshake refused")
            assert re.match(rb"HTTP/1.1 (400|503) ", socket.response), socket.response
        else:
            if data.draw(st.booleans(), label="connects"):  # most clients go straight to the namespace
                opening = ["2probe", "5"] if upgrade else []
                for text in [*opening, "40/rm,", '42/rm,["identifier","user1:key"]']:
                    send(encode_frame(TEXT, text.encode(), mask=data.draw(masks)))
            for _ in range(data.draw(st.integers(1, 8), label="steps")):
                if socket.lost:
                    break
                if socket.closing and data.draw(st.integers(0, 4), label="answers the close"):
                    send(encode_frame(CLOSE, b"\x03\xe8", mask=data.draw(masks)))
                    continue
                step = data.draw(st.sampled_from(["send", "send", "deepest", "publish", "publish", "pong", "time"]), label="step")
                if step == "deepest":
                    send(encode_frame(TEXT, data.draw(deepest).encode(), mask=data.draw(masks)))
                elif step == "send":
                    sent = b"".join(data.draw(st.lists(client_frames(engineio_texts()), min_size=1, max_size=4), label="frames"))
                    send(sent, data.draw(split(sent), label="chunks"))
                elif step == "pong":  # the answers to the server's pings so far (Engine.IO's "2", WebSocket pings)
                    answers = [
                        encode_frame(TEXT, b"3", mask=data.draw(masks)) if frame.opcode == TEXT else encode_frame(PONG, frame.payload, mask=data.draw(masks))
                        for frame in socket.frames()[0]
                        if frame.opcode == PING or frame.opcode == TEXT and frame.payload == b"2"
                    ]
                    if answers:
                        send(b"".join(answers))
                elif step == "publish":
                    world.publish(data)
                    socket.settle()
                else:
                    clock.advance(data.draw(st.sampled_from([1, 4, 6, 11]), label="seconds"))
                    socket.settle()
        socket.lose()
        if polling is not None:
            polling.abort("fuzz over")
        world.clock.advance(0)
        assert len(server.engine) == 0 and world.limit.in_use == 0, "a session outlived its transports"
        world.end()
    assert not errors, describe(errors)

    frames, rest = socket.frames()
    assert rest == b"", f"the server wrote something that is not a frame: {rest[:40]!r}"
    closes = [frame for frame in frames if frame.opcode == CLOSE]
    event(f"closed with {close_code(closes[0])}" if closes else "no close frame")
    if closes:
        assert len(closes) == 1 and frames[-1] is closes[0], "nothing after the close frame, and one close frame"
        code = close_code(closes[0])
        assert code in ENGINEIO_CLOSE_CODES, f"closed with {code}: {closes[0].payload!r}"
    confirmed: set[str] = set()
    for position, frame in enumerate(frames):
        assert frame.fin and not frame.rsv and not frame.masked and frame.opcode in (TEXT, PING, PONG, CLOSE), frame
        if frame.opcode == TEXT:
            packet = frame.payload.decode("utf-8")
            assert packet[:1] in set("0123456"), f"not an Engine.IO packet: {packet[:40]!r}"
            # a pong (Engine.IO's or the WebSocket's) read after it may have confirmed it
            if any(later > position and _may_confirm(sent) for later, sent in sends):
                confirmed.update(envelopes(packet))
    if polling is not None and not polling.is_open:
        event(f"polling session ended: {polling.close_reason}")
    world.check_nothing_lost(confirmed)
    world.check_nothing_held()


def _may_confirm(sent: bytes) -> bool:
    return any(frame.opcode in (PONG, CLOSE) or frame.opcode == TEXT and frame.payload[:1] in (b"3", b"5") for frame in decode_frames(sent)[0])


@fuzz(150)
@given(data=st.data())
def test_an_engineio_websocket_survives_anything_a_client_sends(data: Any) -> None:
    run_websocket_session(data)


# -- the /socket.io/ resource ---------------------------------------------------------------------

#: docs/protocol.md: the answers of /socket.io/ (200 ok and polls, 204 preflights, 400 with engine.io's
#: error JSON, 403 Origin, 413 too large, 503 conn_limit).
HTTP_STATUSES = {200, 204, 400, 403, 413, 503}


@st.composite
def queries(draw: Any, sids: list[str]) -> str:
    """A query string: Engine.IO's parameters, right or wrong, in any order, with noise; or no structure at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=30).map(lambda t: quote(t, safe="=&%?")) | st.text(max_size=30))
    params: list[tuple[str, str]] = []
    eio = draw(st.sampled_from(["3", "4", "4", "3", "5", "", "x", None]))
    if eio is not None:
        params.append(("EIO", eio))
    transport = draw(st.sampled_from(["polling", "polling", "polling", "websocket", "flashsocket", "", None]))
    if transport is not None:
        params.append(("transport", transport))
    sid = draw(st.sampled_from([*sids, *sids, "unknown", "", None]) if sids else st.sampled_from(["unknown", None]))
    if sid is not None:
        params.append(("sid", sid))
    if draw(st.integers(0, 4)) == 0:
        params.append(("j", draw(st.sampled_from(["0", "12", "x", "1" * 10, "٣", ""]))))
    if draw(st.booleans()):
        params.append(("b64", draw(st.sampled_from(["1", "0", ""]))))
    if draw(st.booleans()):
        params.append(("t", draw(st.text(max_size=8))))
    params.extend(draw(st.lists(st.tuples(st.text(max_size=4), st.text(max_size=6)), max_size=2)))
    params = draw(st.permutations(params))
    return "&".join(f"{quote(name)}={quote(value)}" for name, value in params)


@st.composite
def bodies(draw: Any, version: int | None = None) -> bytes:
    """
    A POST body: a payload of Engine.IO packets (in the framing of the session's
    revision, or either), a JSONP form, noise, or too much.
    """
    packets = draw(st.lists(engineio_texts(), min_size=1, max_size=4))
    framing = f"v{version}" if version is not None and draw(st.integers(0, 3)) else draw(st.sampled_from(["v3", "v4"]))
    kind = draw(st.sampled_from([framing, framing, "deep", "deep", "jsonp", "bytes", "big"]))
    if kind == "deep":  # noise where it reaches deepest, after packets that get it there
        packets = draw(st.lists(st.sampled_from(["40/rm,", '42/rm,["identifier","user1:key"]', "6", "2"]), max_size=2))
        packets.append(draw(deepest))
        kind = framing
    if kind == "v3":
        return client_payload_v3(packets).encode("utf-8", "surrogatepass")
    if kind == "v4":
        return client_payload_v4(packets).encode("utf-8", "surrogatepass")
    if kind == "jsonp":
        text = client_payload_v3(packets).replace("\\n", "\\\n").replace("\n", "\\n")
        return draw(st.sampled_from(["d=", "x=", "d=&d="])).encode() + quote(text).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    return b"4" * draw(st.sampled_from([MAX_FRAME, MAX_FRAME + 1, 100_001]))


def run_http_requests(data: Any) -> None:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    from twisted.web.server import NOT_DONE_YET
    from twisted.web.test.requesthelper import DummyRequest

    world = World(data)
    resource = world.server.resource
    sids: list[str] = []
    versions: dict[str, int] = {}
    requests: list[Any] = []
    confirmed: set[str] = set()
    # Half the examples follow a client's script (handshake, connect, then polls with messages published
    # meanwhile, a fault here and there), so that they get deep into a session; the others are any requests.
    scripted = data.draw(st.booleans(), label="a client's script")
    with errors_logged() as errors:
        for n in range(data.draw(st.integers(1, 10), label="requests")):
            step = "request" if n <= int(scripted) else data.draw(st.sampled_from(["request"] * 5 + ["publish", "publish", "time", "drop a poll"]), label="step")
            if step == "publish":
                world.publish(data)
                continue
            if step == "time":
                world.clock.advance(data.draw(st.sampled_from([1, 6, 11]), label="seconds"))
                continue
            if step == "drop a poll":  # a client whose pending GET's connection breaks
                pending = [r for r in requests if not r.finished and r._finishedDeferreds]
                if pending:
                    data.draw(st.sampled_from(pending), label="dropped").processingFailed(Failure(ConnectionDone()))
                    world.clock.advance(0)
                continue
            # most requests are what a client sends (a handshake, a poll, a post: each valid but for its body),
            # the rest anything
            if scripted:
                kinds = ["poll", "poll", "poll", "post", "deepest", "anything"]
            else:
                kinds = ["handshake", "connect", "connect", "poll", "poll", "post", "post", "deepest", "anything", "anything"]
            kind = "handshake" if n == 0 else "connect" if scripted and n == 1 else data.draw(st.sampled_from(kinds), label="kind")
            sid, connecting = None, None
            if kind == "handshake" or kind in ("connect", "poll", "post", "deepest") and not sids:
                method, version = b"GET", data.draw(st.sampled_from([3, 4]), label="EIO")
                query = f"EIO={version}&transport=polling" + data.draw(st.sampled_from(["", "", "&b64=1", "&j=0", "&t=Ab1"]), label="more")
                if version == 4:
                    query = query.replace("&j=0", "")
            elif kind in ("connect", "poll", "post", "deepest"):
                # a session still open, most often (the others answer 400)
                open_sids = [sid for sid in sids if world.server.engine.get(sid) is not None]
                if scripted:
                    sid = sids[0]
                else:
                    sid = data.draw(st.sampled_from(open_sids if open_sids and data.draw(st.integers(0, 4)) else sids), label="sid")
                if kind == "poll" and scripted and any(r.uri.endswith(sid.encode()) and r.method == b"GET" and not r.finished and r._finishedDeferreds for r in requests):
                    world.publish(data)  # a client polls again once its poll is answered: a message answers it
                    continue
                method = b"GET" if kind == "poll" else b"POST"
                encode = client_payload_v3 if versions[sid] == 3 else client_payload_v4
                if kind == "connect":  # what a client posts after its handshake: the namespace, its identifier
                    connecting = encode(["40/rm,", '42/rm,["identifier","user1:key"]']).encode()
                elif kind == "deepest":
                    connecting = encode(["40/rm,", data.draw(deepest, label="deepest")]).encode()
                query = f"EIO={versions[sid]}&transport=polling&sid={sid}"
            else:
                method = data.draw(st.sampled_from([b"GET", b"POST", b"OPTIONS", b"HEAD", b"PUT", b"BREW"]), label="method")
                query = data.draw(queries(sids), label="query")
            request = DummyRequest([b""])
            request.method = method
            request.uri = b"/socket.io/?" + query.encode("utf-8", "surrogatepass")
            origins = [None, None, "http://good.example", "http://evil.example", "null"]
            origin = data.draw(st.sampled_from(origins if kind == "anything" else origins[:3]), label="origin")
            if origin is not None:
                request.requestHeaders.setRawHeaders(b"origin", [origin.encode()])
            if data.draw(st.booleans(), label="content-type"):
                request.requestHeaders.setRawHeaders(
                    b"content-type", [data.draw(st.sampled_from([b"text/plain;charset=UTF-8", b"application/octet-stream", b"application/x-www-form-urlencoded"]))]
                )
            if data.draw(st.integers(0, 5)) == 0 and "transport=websocket" not in query:
                # an Upgrade header on a polling request (a WebSocket upgrade itself needs a real connection: the
                # in-memory WebSocket test above and tests/test_fuzz_http.py have those)
                request.requestHeaders.setRawHeaders(b"upgrade", [b"websocket"])
            if "transport=websocket" in query and method == b"GET":
                request.method = method = b"POST"
            if connecting is not None:
                body = connecting
            elif method == b"POST":
                body = data.draw(bodies(versions.get(sid) if kind in ("connect", "post") else None), label="body")
            else:
                body = b""
            request.content = BytesIO(body)
            rendered = resource.render(request)
            world.clock.advance(0)
            if rendered is not NOT_DONE_YET:
                request.write(rendered)
                request.finish()
            requests.append(request)
            code = request.responseCode or 200
            if request.finished:
                event(f"{method.decode()} answered {code}")
                assert code in HTTP_STATUSES, f"{method!r} ?{query} answered {code}"
                if code == 400:
                    error = json.loads(b"".join(request.written))
                    assert isinstance(error["code"], int) and isinstance(error["message"], str)
            for sid in re.findall(r'\\?"sid\\?":\\?"([\w-]+)', b"".join(request.written).decode("utf-8", "replace")):
                if sid not in versions and world.server.engine.get(sid) is not None:
                    versions[sid] = world.server.engine.get(sid).version
                    sids.append(sid)
        world.end()
        # a GET confirms what the previous GET of its session carried: a client polls again only once it
        # processed the previous answer
        gets = [(re.search(r"(?:^|&)sid=([^&]*)", r.uri.decode("utf-8", "replace").partition("?")[2]), r) for r in requests]
        gets = [(match.group(1) if match else None, r) for match, r in gets if r.method == b"GET"]
        for n, (sid, request) in enumerate(gets):
            if sid is not None and any(later == sid for later, _ in gets[n + 1 :]):
                confirmed.update(_payloads_in(b"".join(request.written)))
    assert not errors, describe(errors)
    unanswered = [r.uri for r in requests if not r.finished and r._finishedDeferreds is not None]
    assert not unanswered, f"requests never answered once their sessions ended: {unanswered}"
    event(f"{'some' if any(_payloads_in(b''.join(r.written)) for r in requests) else 'no'} envelopes polled")
    world.check_nothing_lost(confirmed)
    world.check_nothing_held()


def _payloads_in(body: bytes) -> set[str]:
    """The envelopes' payloads in a poll response, whatever its form."""
    text = body.decode("utf-8", "replace")
    return {json.loads(f'"{match}"') for match in re.findall(r'"payload":"((?:[^"\\]|\\.)*)"', text)}


@fuzz(250)
@given(data=st.data())
def test_the_socketio_resource_answers_any_request_with_a_documented_status(data: Any) -> None:
    run_http_requests(data)
