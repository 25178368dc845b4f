"""
The Engine.IO and Socket.IO codecs against the examples of the protocol documents
(Socket.IO project: docs/engine.io-protocol/v3.md and v4-current.md,
docs/socket.io-protocol/v4.md and v5-current.md).  Pure unit tests.
"""

from __future__ import annotations

import json

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory

from redmessenger.dialects.engineio.codec import (
    BinaryNotSupported,
    EncodedPacket,
    Packet,
    PacketType,
    ProtocolError,
    decode_packet,
    decode_payload,
    encode_payload,
    jsonp_unescape,
    jsonp_wrap,
    open_packet,
    utf16_length,
)
from redmessenger.model.envelope import Message
from redmessenger.transport.frames import text_frame
from redmessenger.dialects.socketio.codec import SIOPacket, SIOProtocolError, SIOType, decode_sio, encode_sio, message_packet

from ..node import run_node
from ..sioclients import HARD_PAYLOADS, JS_DIR, as_delivered, ensure_node_modules


def packets(*texts: str) -> list[EncodedPacket]:
    return [EncodedPacket(t) for t in texts]


# -- Engine.IO packets ---------------------------------------------------------------------------


def test_packet_vectors():
    assert decode_packet("2probe") == Packet(PacketType.PING, "probe")
    assert decode_packet("4HelloWorld") == Packet(PacketType.MESSAGE, "HelloWorld")
    assert decode_packet("5") == Packet(PacketType.UPGRADE)
    assert EncodedPacket.of(PacketType.PONG, "probe").text == "3probe"
    with pytest.raises(ProtocolError):
        decode_packet("")
    with pytest.raises(ProtocolError):
        decode_packet("abc")  # the v3 test suite's "invalid packet format"
    with pytest.raises(BinaryNotSupported):
        decode_packet("bAQIDBA==")


def test_handshake_v3_and_v4():
    v3 = open_packet(3, "lv_VI97HAXpY6yYWAAAC", ["websocket"], 25.0, 5.0, 1000000)
    assert v3.text == '0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000}'
    # the Socket.IO v4 document's first response: 96 characters, then the CONNECT to "/"
    assert encode_payload(3, [v3, EncodedPacket("40")]) == (
        b'96:0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000}2:40'
    )
    v4 = open_packet(4, "lv_VI97HAXpY6yYWAAAC", ["websocket"], 25.0, 20.0, 1000000)
    assert json.loads(v4.text[1:]) == {
        "sid": "lv_VI97HAXpY6yYWAAAC",
        "upgrades": ["websocket"],
        "pingInterval": 25000,
        "pingTimeout": 20000,
        "maxPayload": 1000000,
    }


# -- payloads ------------------------------------------------------------------------------------


def test_v4_payload_vectors():
    assert encode_payload(4, packets("4hello", "2", "4world")) == b"4hello\x1e2\x1e4world"
    assert decode_payload(4, '42["hello"]\x1e42["world"]') == [
        Packet(PacketType.MESSAGE, '2["hello"]'),
        Packet(PacketType.MESSAGE, '2["world"]'),
    ]
    assert encode_payload(4, packets("4€")) == "4€".encode()
    with pytest.raises(BinaryNotSupported):
        decode_payload(4, "4hello\x1ebAQIDBA==")


def test_v3_payload_vectors():
    assert encode_payload(3, packets('42["hey","Jude"]')) == b'16:42["hey","Jude"]'
    assert decode_payload(3, '11:42["hello"]11:42["world"]') == [
        Packet(PacketType.MESSAGE, '2["hello"]'),
        Packet(PacketType.MESSAGE, '2["world"]'),
    ]
    assert decode_payload(3, "6:4test16:4test26:4test3") == [Packet(PacketType.MESSAGE, f"test{i}") for i in (1, 2, 3)]
    assert decode_payload(3, "1:2") == [Packet(PacketType.PING)]


def test_v3_lengths_count_utf16_code_units_as_javascript_does():
    # "€" is one UTF-16 unit (3 UTF-8 bytes): the v4 document's example "2:4€"
    assert decode_payload(3, "2:4€") == [Packet(PacketType.MESSAGE, "€")]
    # an astral character is two units, one Python character
    assert utf16_length("4😀") == 3
    assert decode_payload(3, "3:4😀2:4a") == [Packet(PacketType.MESSAGE, "😀"), Packet(PacketType.MESSAGE, "a")]


def test_v3_text_payloads_carry_ascii_with_json_escapes():
    """
    Issue 12: engine.io-client 1.8 UTF-8-decodes each packet of a text payload once
    more, 3.x does not; ASCII reads the same to both, and JSON's escapes give back
    every character (astral ones as surrogate pairs, as JavaScript has them).
    """
    text = '42/rm,["message",{"payload":"é € 😀 𝄞 \ufffd \u2028 \\"\\\\"}]'
    (packet,) = packets(text)
    assert packet.ascii == (
        b'42/rm,["message",{"payload":"\\u00e9 \\u20ac \\ud83d\\ude00 \\ud834\\udd1e \\ufffd \\u2028 \\"\\\\"}]'
    )
    assert json.loads(packet.ascii[6:]) == json.loads(text[6:])
    assert encode_payload(3, packets('42["m","€"]', "3")) == b'16:42["m","\\u20ac"]1:3'
    assert packet.utf8 == text.encode("utf-8"), "WebSocket frames and revision 4 keep UTF-8"
    assert encode_payload(4, [packet]) == text.encode("utf-8")


def test_v3_binary_payloads_count_bytes():
    """The protocol document's example (``00 04 ff 34 e2 82 ac``), and a length of several digits."""
    assert encode_payload(3, packets("4€"), binary=True) == bytes.fromhex("00 04 ff 34 e2 82 ac")
    long = "4" + "😀" * 30  # 121 bytes
    assert encode_payload(3, packets("3", long), binary=True) == (
        bytes.fromhex("00 01 ff") + b"3" + bytes.fromhex("00 01 02 01 ff") + long.encode()
    )


#: Decodes payloads with the parsers of the real clients: engine.io-parser 1.3.2
#: (socket.io-client 1.7) and 2.2 (2.x), each as Node.js and as a browser bundle load them,
#: given what engine.io-client hands them: an ArrayBuffer for a binary response, else the text.
DECODE_WITH_REAL_PARSERS = r"""
const [parserDir, file, hexBody, binary] = JSON.parse(process.argv[1]);
const parser = require(parserDir + "/lib/" + file);
const body = Buffer.from(hexBody, "hex");
let data = body.toString("utf8");
if (binary) data = file === "browser.js" ? body.buffer.slice(body.byteOffset, body.byteOffset + body.length) : body;
const decoded = [];
parser.decodePayload(data, function (packet) { decoded.push(packet); });
process.stdout.write(JSON.stringify(decoded));
"""


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("file", ["index.js", "browser.js"])
@pytest.mark.parametrize("generation", ["v1", "v2"])
def test_v3_payloads_decode_exactly_with_the_real_client_parsers(generation, file, binary):
    ensure_node_modules()
    parser_dir = JS_DIR / "node_modules" / f"socket.io-client-{generation}" / "node_modules" / "engine.io-parser"
    texts = [as_delivered(payload) for payload in HARD_PAYLOADS] + ["x" * 20_000, "plain"]
    sent = [EncodedPacket("4" + json.dumps(["message", text], ensure_ascii=False)) for text in texts]
    body = encode_payload(3, sent, binary=binary)
    decoded = json.loads(run_node(DECODE_WITH_REAL_PARSERS, [str(parser_dir), file, body.hex(), binary]))
    assert [packet["type"] for packet in decoded] == ["message"] * len(texts), decoded[:1]
    assert [json.loads(packet["data"])[1] for packet in decoded] == texts


@pytest.mark.parametrize("bad", ["abc", "5:4a", "x:4a", ":4", "2:4a3", "2"])
def test_v3_malformed_payloads_are_refused(bad):
    with pytest.raises(ProtocolError):
        decode_payload(3, bad)


def test_v3_binary_packets_are_refused():
    with pytest.raises(BinaryNotSupported):
        decode_payload(3, "6:4hello9:bAQIDBA==")


# -- JSONP ---------------------------------------------------------------------------------------


def test_jsonp_frame():
    assert jsonp_wrap("4", b"packet data") == b'___eio[4]("packet data");'
    body = encode_payload(3, packets('42["message",{"payload":"a \\"quote\\"\\n\u2028"}]'))
    wrapped = jsonp_wrap("0", body).decode()
    assert wrapped.startswith('___eio[0]("') and wrapped.endswith('");')
    assert "\u2028" not in wrapped  # escaped: valid JavaScript
    assert json.loads(wrapped[len("___eio[0](") : -2]) == body.decode()


def test_jsonp_post_newline_escaping_round_trip():
    """engine.io-client 3 escapes ``\\n`` as ``\\\\n`` and newlines as ``\\n`` before posting."""

    def client_escape(data: str) -> str:  # polling-jsonp.js, doWrite
        return data.replace("\\n", "\\\n").replace("\n", "\\n")

    for original in ["plain", "a\nb", "a\\nb", "\\\\n\n\\n", '42/rm,["identifier","u\\nx"]']:
        assert jsonp_unescape(client_escape(original)) == original


# -- Socket.IO packets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "packet, encoded",
    [
        (SIOPacket(SIOType.CONNECT), "0"),
        (
            SIOPacket(SIOType.CONNECT, "/admin", {"sid": "oSO0OpakMV_3jnilAAAA"}),
            '0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}',
        ),
        (SIOPacket(SIOType.CONNECT_ERROR, "/", {"message": "Not authorized"}), '4{"message":"Not authorized"}'),
        (SIOPacket(SIOType.CONNECT_ERROR, "/admin", "Not authorized"), '4/admin,"Not authorized"'),
        (SIOPacket(SIOType.EVENT, "/", ["foo"]), '2["foo"]'),
        (SIOPacket(SIOType.EVENT, "/admin", ["bar"]), '2/admin,["bar"]'),
        (SIOPacket(SIOType.EVENT, "/", ["foo"], 12), '212["foo"]'),
        (SIOPacket(SIOType.EVENT, "/admin", ["project:delete", 123], 456), '2/admin,456["project:delete",123]'),
        (SIOPacket(SIOType.ACK, "/admin", ["bar"], 13), '3/admin,13["bar"]'),
        (SIOPacket(SIOType.ACK, "/admin", [], 456), "3/admin,456[]"),
        (SIOPacket(SIOType.DISCONNECT, "/admin"), "1/admin,"),
        (SIOPacket(SIOType.DISCONNECT), "1"),
        (SIOPacket(SIOType.CONNECT, "/admin"), "0/admin,"),
    ],
)
def test_socketio_vectors(packet, encoded):
    assert encode_sio(packet) == encoded
    assert decode_sio(encoded) == packet


def test_socketio_decoding_details():
    assert decode_sio('51-["baz",{"_placeholder":true,"num":0}]') == SIOPacket(
        SIOType.BINARY_EVENT, "/", ["baz", {"_placeholder": True, "num": 0}], None, 1
    )
    # protocol 4: a query after the namespace (io("/admin?token=1234"))
    assert decode_sio("0/admin?token=1234&uid=abcd,").nsp == "/admin"
    assert decode_sio("0/rm").nsp == "/rm"  # no trailing comma
    assert decode_sio('0/admin,{"token":"123"}').data == {"token": "123"}
    for bad in ["", "9", "x", '2["unterminated', "5[]"]:
        with pytest.raises(SIOProtocolError):
            decode_sio(bad)


def test_message_packet_is_built_once_per_message_and_bubble():
    message = Message("rm.users.user1", 1438480701712, 'Hello, "world"\x1e!', "run.1")
    first = message_packet(message, "/rm", True)
    assert message_packet(message, "/rm", True) is first
    assert message_packet(message, "/rm", False) is not first
    kind, sio = first.text[0], decode_sio(first.text[1:])
    assert kind == "4"
    assert sio == SIOPacket(
        SIOType.EVENT,
        "/rm",
        [
            "message",
            {"id": "run.1", "source": "rm.users.user1", "timestamp": 1438480701712, "bubble": True, "payload": 'Hello, "world"\x1e!'},
        ],
    )
    assert "\x1e" not in first.text, "JSON escapes the v4 record separator"
    assert message_packet(message, "/", False).text.startswith('42["message",')
    assert first.frame == text_frame(first.text.encode("utf-8")), "one WebSocket frame per packet, written as is to every socket"
    # sockets that cannot take the raw frame (permessage-deflate) share one prepared by Autobahn
    factory = WebSocketServerFactory()
    prepared = first.prepared(factory)
    assert first.prepared(factory) is prepared and prepared.payload == first.utf8
