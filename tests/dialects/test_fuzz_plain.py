"""
Fuzz tests of the plain dialect: the version-1 session frames (parse_frame),
and a PlainWebSocketProtocol in memory fed anything a client can send (valid
identifiers, hellos and acks, garbage, frames that break RFC 6455, split at
random points), with the core's ports in memory (tests/fakes.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from redmessenger.core.admission import ConnectionLimit
from redmessenger.core.hub import Hub
from redmessenger.dialects.plain.frames import Ack, Frame, Hello, Request, parse_frame
from redmessenger.dialects.plain.websocket import PlainWebSocketFactory
from redmessenger.model.envelope import Message, decode_payload
from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.model.identity import parse_identifier
from redmessenger.transport import fastpath

from ..fakes import MemoryDirectory, MemoryQueues
from ..fuzzing import (
    CLOSE,
    IN_MEMORY_OPTIONS,
    PING,
    PONG,
    TEXT,
    InMemoryWebSocket,
    awkward_text,
    client_frames,
    close_code,
    decode_frames,
    deep_json,
    describe,
    encode_frame,
    errors_logged,
    events_logged,
    fuzz,
    fuzzed_text,
    json_text,
    json_values,
    masks,
    split,
    uids,
)

# -- parse_frame -----------------------------------------------------------------------------

message_ids = st.text(min_size=1, max_size=10) | st.sampled_from([0, 1, 64, 65]).flatmap(
    lambda n: st.text("abc.-0123456789", min_size=n, max_size=n)
)


@st.composite
def session_objects(draw: Any) -> dict[str, Any]:
    """A hello, an ack, or another object, each field right or wrong, sometimes missing."""
    kind = draw(st.sampled_from(["hello", "ack", "request", "other"]))
    if kind == "hello":
        fields: dict[str, Any] = {
            "type": "hello",
            "v": draw(st.sampled_from([1, 1, 1, 2, 0, "1", 1.0, True, None])),
            "uid": draw(uids | uids.map(lambda u: u + draw(st.sampled_from([":", ":k", "\n", "\r\n", " "]))) | awkward_text | json_values),
            "key": draw(st.none() | st.text(max_size=10) | json_values),
            "pkey": draw(st.none() | st.text(max_size=10) | json_values),
        }
    elif kind == "request":
        fields = {
            "type": draw(st.sampled_from(["subscribe", "unsubscribe", "publish"])),
            "ref": draw(st.integers(-2, 2**53 + 1) | st.text(max_size=70) | json_values),
            "channel": draw(uids | awkward_text | json_values),
            "client_auth": draw(st.text(max_size=10) | json_values),
            "message": draw(json_values),
        }
    elif kind == "ack":
        fields = {"type": "ack", "id": draw(message_ids | json_values)}
    else:
        fields = {"type": draw(st.text(max_size=40) | json_values), "id": draw(message_ids)}
    obj = {name: value for name, value in fields.items() if name == "type" or draw(st.integers(0, 7))}
    if draw(st.integers(0, 3)) == 0:
        obj.update(draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2)))  # fields a later version adds
    return obj


def expected_frame(obj: Any) -> Frame | int:
    """docs/protocol.md, *Version 1* and *Channels*: the frame, or the close code its refusal carries."""
    if not isinstance(obj, dict):
        return CloseCode.BAD_FRAME
    kind = obj.get("type")
    if kind in ("subscribe", "unsubscribe", "publish"):
        ref = obj.get("ref")
        if type(ref) is str and 1 <= len(ref) <= 64 or type(ref) is int and 0 <= ref <= 2**53 - 1:
            return Request(kind, ref, obj)  # the core reads (and answers) the rest
        return CloseCode.BAD_FRAME
    if obj.get("type") == "ack":
        message_id = obj.get("id")
        if isinstance(message_id, str) and 1 <= len(message_id) <= 64:
            return Ack(message_id)
        return CloseCode.BAD_FRAME
    if obj.get("type") != "hello":
        return CloseCode.BAD_FRAME
    uid, key, pkey = obj.get("uid"), obj.get("key"), obj.get("pkey")
    # 'v' must be 1; a JSON 1.0 is 1, and so (leniently, not documented) is true
    if obj.get("v") != 1 or not (pkey is None or isinstance(pkey, str)):
        return CloseCode.BAD_FRAME
    if uid is None:  # no uid: channels only; a key without a uid is a mistake
        return Hello(None, pkey) if key is None else CloseCode.BAD_FRAME
    if not isinstance(uid, str) or not (key is None or isinstance(key, str)):
        return CloseCode.BAD_FRAME
    try:
        # the identifier's grammar, its one trailing line end included (leniently: JSON has no typed Enter)
        identifier = parse_identifier(uid)
    except ClientError:
        return CloseCode.INVALID_IDENTIFIER
    if ":" in uid:
        return CloseCode.INVALID_IDENTIFIER
    return Hello(type(identifier)(identifier.uid, key or None), pkey)


@st.composite
def session_texts(draw: Any) -> str:
    return json_text(draw(session_objects()), draw)


@fuzz(400)
@given(fuzzed_text(session_texts()))
def test_parse_frame_reads_a_session_frame_or_refuses_it_with_4422_or_4400(text: str) -> None:
    try:
        obj: Any = json.loads(text)
    except (ValueError, RecursionError):
        obj = None  # not JSON (or too deep for the stack): refused as not an object
    expected = expected_frame(obj)
    try:
        frame = parse_frame(text)
    except ClientError as e:
        assert e.code in (CloseCode.BAD_FRAME, CloseCode.INVALID_IDENTIFIER)
        assert e.code == expected, f"refused with {int(e.code)} ({e.reason}), expected {expected!r}"
        assert len(e.reason.encode("utf-8")) < 200
        return
    assert frame == expected


# -- a PlainWebSocketProtocol in memory ----------------------------------------------------------

#: docs/protocol.md, *Errors a client can see* (plain dialect).
PLAIN_CLOSE_CODES = {1001, 1002, 1003, 1007, 1009, 1013, 4400, 4401, 4408, 4409, 4413, 4422, 4429}


@st.composite
def plain_texts(draw: Any) -> str:
    """What a plain client sends as text: a legacy identifier, a hello, an ack, or anything."""
    kind = draw(st.sampled_from(["legacy", "hello", "ack", "deep", "fuzz"]))
    if kind == "legacy":
        return draw(legacy_identifiers)
    if kind == "hello":
        return draw(hellos)
    if kind == "ack":
        return json_text({"type": "ack", "id": draw(st.text(max_size=8))}, draw)
    if kind == "deep":
        return draw(deep_json())
    return draw(fuzzed_text(session_texts()))


#: Identifiers, the right key (secure_mode) most often.
legacy_identifiers = st.sampled_from(["user1:key"] * 4 + ["user1", "user1:", "user1\n", "user1:key\r\n", "user1:bad", "a b", ""])
hellos = st.builds(
    lambda key: json.dumps({"type": "hello", "v": 1, "uid": "user1", **({} if key is None else {"key": key})}),
    st.sampled_from(["key"] * 4 + [None, "bad", ""]),
)


@pytest.fixture
def fast_path(request: Any) -> Iterator[bool]:
    on = request.param
    if not on:
        fastpath.disable("fuzz test")
    try:
        yield on
    finally:
        fastpath.enable()


def run_plain_session(data: Any) -> None:
    """One client's life on a plain socket: draws what it sends and when; checks what the server did."""
    from twisted.internet.task import Clock

    clock = Clock()
    queues, directory = MemoryQueues(), MemoryDirectory()
    directory.keys["user1"] = b"key"
    queued = data.draw(st.lists(st.text(max_size=10), max_size=3), label="queued")
    for n, payload in enumerate(queued):
        queues.enqueue(["user1"], Message("rm.users.user1", n, payload, f"q.{n}").queue_entry())
    hub = Hub(
        queues,
        directory,
        clock,
        secure_mode=data.draw(st.booleans(), label="secure_mode"),
        max_pending_bytes=data.draw(st.sampled_from([8 << 20, 400]), label="max_pending_bytes"),
    )
    ping_interval = data.draw(st.sampled_from([0, 5]), label="ping_interval")
    limit = ConnectionLimit(10)
    factory = PlainWebSocketFactory(
        hub=hub,
        clock=clock,
        route="/rm",
        identify_timeout=10,
        listen_label="fuzz",
        ping_interval=ping_interval,
        limit=limit,
        **IN_MEMORY_OPTIONS,
    )
    factory.start()
    published: list[str] = list(queued)
    #: What the client sent, each with how many frames the server had written once it was read.
    sends: list[tuple[int, bytes]] = []

    def send(data_bytes: bytes, chunks: list[bytes] | None = None) -> None:
        for chunk in chunks if chunks is not None else [data_bytes]:
            socket.feed(chunk)
        # (frames written while it was read count: a pong read after the ping in the same read confirms)
        sends.append((len(socket.frames()[0]), data_bytes))

    with errors_logged() as errors, events_logged() as infos:
        socket = InMemoryWebSocket(factory, clock, b"/rm")
        assert socket.opened, socket.response
        # most clients start the way the protocol says: an identifier, or a hello
        opening = data.draw(st.sampled_from(["legacy", "hello", "hello", "none"]), label="opening")
        if opening != "none":
            text = data.draw(legacy_identifiers if opening == "legacy" else hellos, label="first frame")
            send(encode_frame(TEXT, text.encode("utf-8"), mask=data.draw(masks)))
        for _ in range(data.draw(st.integers(1, 8), label="steps")):
            if socket.lost:
                break
            if socket.closing and data.draw(st.integers(0, 4), label="answers the close"):
                # the server sent its close: most clients answer with theirs (then the server drops the connection)
                send(encode_frame(CLOSE, b"\x03\xe8", mask=data.draw(masks)))
                continue
            step = data.draw(st.sampled_from(["send", "send", "publish", "publish", "ack", "ack", "pong", "time"]), label="step")
            if step == "send":
                sent = b"".join(data.draw(st.lists(client_frames(plain_texts()), min_size=1, max_size=4), label="frames"))
                send(sent, data.draw(split(sent), label="chunks"))
            elif step == "ack":  # acks of messages the server sent, whole in one read: the fast path's
                sent_ids = [obj["id"] for obj in _texts(socket) if obj.get("type") == "message"] or ["none"]
                acks = []
                for _ in range(data.draw(st.integers(1, 3), label="acks")):
                    ack = json.dumps({"type": "ack", "id": data.draw(st.sampled_from(sent_ids))}, separators=(",", ":"))
                    raw = ack.encode("utf-8")
                    spoilt = data.draw(st.sampled_from(["no", "no", "not UTF-8", "cut"]), label="ack spoilt")
                    if spoilt != "no":  # after its '{"type":"ack"': still one the fast path takes
                        at = data.draw(st.integers(13, len(raw)), label="at")
                        raw = raw[:at] + (b"\xff\xc3" + raw[at:] if spoilt == "not UTF-8" else b"")
                    acks.append(encode_frame(TEXT, raw, mask=data.draw(masks)))
                send(b"".join(acks))
            elif step == "pong":  # the answers to the server's pings so far, in one read: the fast path's
                pings = [f.payload for f in socket.frames()[0] if f.opcode == PING]
                if pings:
                    send(b"".join(encode_frame(PONG, token, mask=data.draw(masks)) for token in pings))
            elif step == "publish":
                for payload in data.draw(st.lists(st.binary(max_size=20), min_size=1, max_size=4), label="payloads"):
                    published.append(decode_payload(payload)[0])
                    hub.on_publish(b"rm.users.user1", payload)
                socket.settle()
            else:
                clock.advance(data.draw(st.sampled_from([1, 5, 11]), label="seconds"))
                socket.settle()
        socket.lose()  # the client goes, if the server has not closed the connection already
        factory.stop()
        stopped = hub.stop()  # as at shutdown: the core's own timers
        clock.advance(0)
        assert stopped.called, "a handover still running once its only socket is gone"
    assert not errors, describe(errors)
    logged = describe(infos)

    frames, rest = socket.frames()
    assert rest == b"", f"the server wrote something that is not a frame: {rest[:40]!r}"
    for frame in frames:
        assert frame.fin and not frame.rsv and not frame.masked, frame
    closes = [frame for frame in frames if frame.opcode == CLOSE]
    event(f"closed with {close_code(closes[0])}" if closes else "dropped" if socket.transport.disconnecting else "open until the client left")
    if not closes and socket.transport.disconnecting:
        # dropped without a close frame: only a client that left a ping unanswered (docs/protocol.md, step 4)
        assert ping_interval and "no pong" in logged, "dropped without a close frame"
    if closes:
        assert len(closes) == 1 and frames[-1] is closes[0], "nothing after the close frame, and one close frame"
        code = close_code(closes[0])
        # or the answer to the client's own close: 1000 (Autobahn does not echo the client's code)
        echoes = {1000} if any(frame.opcode == CLOSE for _, sent in sends for frame in decode_frames(sent)[0]) else set()
        assert code in PLAIN_CLOSE_CODES or code in echoes, f"closed with {code}: {closes[0].payload!r}"
        assert len(closes[0].payload) <= 125 and closes[0].payload[2:].decode("utf-8") is not None
    for frame in frames:
        assert frame.opcode in (TEXT, PING, PONG, CLOSE), frame
    texts = _texts(socket)
    welcomes = [obj for obj in texts if obj.get("type") == "welcome"]
    assert len(welcomes) <= 1 and (not welcomes or texts[0] is welcomes[0]), "the welcome, once, before anything else"

    # Nothing lost: every message published is in the user's queue, unless it was written to the
    # socket and the client may have confirmed it after.
    written = {
        json.loads(frame.payload)["payload"]
        for position, frame in enumerate(frames)
        if frame.opcode == TEXT and "payload" in json.loads(frame.payload)
        and any(written_then > position and _may_confirm(sent, version_1=bool(welcomes)) for written_then, sent in sends)
    }
    event(f"{'some' if written else 'no'} messages delivered and maybe confirmed")
    left = {json.loads(entry)["payload"] for entry in queues.queues.get("user1", [])}
    missing = [payload for payload in published if payload not in written | left]
    assert not missing, f"messages neither queued nor confirmed: {missing}"
    # and nothing held: the socket is forgotten, its slot given back
    assert not factory.sockets and limit.in_use == 0
    assert hub.presence.get("user1") is None, "the user is offline once the socket is gone"
    assert not [call for call in clock.getDelayedCalls() if call.active()], "no timer left running"


def _texts(socket: InMemoryWebSocket) -> list[dict[str, Any]]:
    """The server's text frames, each a JSON object (an envelope, a welcome, a message)."""
    texts = []
    for frame in socket.frames()[0]:
        if frame.opcode == TEXT:
            obj = json.loads(frame.payload.decode("utf-8"))
            assert isinstance(obj, dict), obj
            texts.append(obj)
    return texts


def _may_confirm(sent: bytes, version_1: bool) -> bool:
    """
    Whether what the client sent holds something that may confirm messages sent before:
    version 1, an ack; the legacy protocol, a pong, or its close after the server's.
    """
    if version_1:
        return any(frame.opcode == TEXT and b"ack" in frame.payload for frame in decode_frames(sent)[0])
    return any(frame.opcode in (PONG, CLOSE) for frame in decode_frames(sent)[0])


@pytest.mark.parametrize("fast_path", [True], indirect=True, ids=["fast path"])
@fuzz(150)
@given(data=st.data())
def test_a_plain_socket_survives_anything_a_client_sends(fast_path: bool, data: Any) -> None:
    run_plain_session(data)


@pytest.mark.parametrize("fast_path", [False], indirect=True, ids=["public APIs"])
@fuzz(100)
@given(data=st.data())
def test_a_plain_socket_survives_anything_a_client_sends_without_the_fast_path(fast_path: bool, data: Any) -> None:
    run_plain_session(data)


def test_a_session_frame_nested_deeper_than_the_stack_is_refused_with_4422() -> None:
    """Found by the fuzz tests above: json.loads raised RecursionError out of parse_frame, and out of dataReceived."""
    from twisted.internet.task import Clock

    with pytest.raises(ClientError) as refused:
        parse_frame("[" * 2001)
    assert refused.value.code is CloseCode.BAD_FRAME
    clock = Clock()
    factory = PlainWebSocketFactory(
        hub=Hub(MemoryQueues(), MemoryDirectory(), clock),
        clock=clock,
        route="/rm",
        identify_timeout=10,
        listen_label="fuzz",
        **IN_MEMORY_OPTIONS,
    )
    socket = InMemoryWebSocket(factory, clock, b"/rm")
    socket.feed(encode_frame(TEXT, b'{"type": "hello", "v": 1, "uid": "user1"}'))
    socket.feed(encode_frame(TEXT, b"[" * 2001))
    assert [close_code(frame) for frame in socket.frames()[0] if frame.opcode == CLOSE] == [4422]
    socket.lose()
