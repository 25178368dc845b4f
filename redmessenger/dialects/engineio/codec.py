"""
The Engine.IO wire format, protocol revisions 3 and 4: packets, polling payloads, JSONP.  No I/O.

Why our own codec: python-engineio 4 and later speak revision 4 only (revision 3
was dropped with python-engineio 4.0), and one process cannot import two major
versions of one package; the framing is a page of code, so it is written here and
tested against the examples of the protocol documents
(``docs/engine.io-protocol/v3.md`` and ``v4-current.md`` of the Socket.IO project),
while the clients in the tests are the independent implementations.

Packet (both revisions)::

    <type digit>[<data>]        0 open, 1 close, 2 ping, 3 pong, 4 message, 5 upgrade, 6 noop

A WebSocket frame carries one packet.  A long-polling body (a *payload*) carries several:

- revision 3, text: ``<length>:<packet>`` repeated, the length counted in UTF-16 code
  units as JavaScript's ``String.length`` counts them (``"€"`` is ``2:4€``);
  ``b<type><base64>`` marks a binary packet; with JSONP (query ``j=N``) the server
  answers ``___eio[N]("<payload as a JSON string>");`` and the client POSTs a form
  field ``d=<payload>`` whose newlines it escaped as ``\\n`` (and ``\\n`` as ``\\\\n``);
- revision 3, binary (a client with XHR2, which said so by not sending ``b64=1`` at
  its handshake): for each packet ``0x00`` (text; ``0x01`` is binary data), the
  length *in bytes* as one byte per decimal digit, ``0xFF``, then the packet in UTF-8
  (``"€"`` is ``00 04 ff 34 e2 82 ac``), sent as ``application/octet-stream``;
- revision 4: packets joined by the record separator ``\\x1e``; ``b<base64>`` marks a binary packet.

What revision 3 clients read (issue 12).  engine.io 1.x, the server of
socket.io-client 1.x, UTF-8-encoded every packet of a text payload once more and
counted its length in bytes; engine.io 3, the server of 2.x, does neither.  Their
clients decode text payloads the two ways, and nothing tells the server which
client it talks to.  So a revision-3 text payload carries each packet's ASCII form
(:attr:`EncodedPacket.ascii`): every non-ASCII character written as a JSON
``\\uXXXX`` escape (a character outside the BMP as its surrogate pair), which both
decodings leave as it is, and JSON.parse turns back into the character.  That is
exact because the packets RedMessenger sends are Socket.IO packets whose non-ASCII
characters are all inside JSON strings (``rm_route`` is ASCII; only a namespace a
client asked for, echoed when it is refused, could be otherwise).  Clients with XHR2
get the binary form, which 1.x and 2.x decode alike, as UTF-8: 1.x turns a *text*
response into a string with one ``String.fromCharCode.apply`` over all its bytes,
which overflows the browser's stack past about 150 KB.

RedMessenger sends text only, so binary packets (``b...``, ``0x01``) are recognised
in what clients send and refused, never produced.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Iterable

from redmessenger.transport.frames import text_frame

SEPARATOR_V4 = "\x1e"


class PacketType(IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


class ProtocolError(ValueError):
    """The peer sent something that is not Engine.IO (the session is closed for it)."""


class BinaryNotSupported(ProtocolError):
    """A binary packet: RedMessenger's clients only ever send text."""


@dataclass(frozen=True)
class Packet:
    """A packet received from a client."""

    type: PacketType
    data: str = ""


class EncodedPacket:
    """
    A packet on its way out, encoded once.  A message's packet is built once and
    shared by every session it goes to, whatever their protocol revision and
    transport: its UTF-8 (polling payloads) and its WebSocket frame are computed
    up front, so that a delivery on a WebSocket only copies a reference.
    """

    __slots__ = ("text", "utf8", "frame", "_ascii", "_prepared")

    def __init__(self, text: str) -> None:
        self.text = text
        self.utf8 = text.encode("utf-8")
        #: The WebSocket text frame, written as is to every socket (redmessenger.transport.fastpath).
        self.frame = text_frame(self.utf8)
        self._ascii: bytes | None = None
        self._prepared: Any = None

    @classmethod
    def of(cls, type: PacketType, data: str = "") -> EncodedPacket:
        return cls(f"{int(type)}{data}")

    def __repr__(self) -> str:
        shown = self.text if len(self.text) <= 40 else self.text[:40] + "..."
        return f"<EncodedPacket {shown!r}>"

    @property
    def ascii(self) -> bytes:
        """
        The packet in a revision-3 text payload: every non-ASCII character as a JSON
        ``\\uXXXX`` escape (see the module's documentation), so that its length is
        the same in bytes and in UTF-16 code units.  Computed once, on first use.
        """
        if self._ascii is None:
            self._ascii = ascii_escaped(self.text).encode("ascii")
        return self._ascii

    def prepared(self, factory: Any) -> Any:
        """The WebSocket frame, framed once by Autobahn and sent as is on every socket."""
        if self._prepared is None:
            self._prepared = factory.prepareMessage(self.utf8, isBinary=False)
        return self._prepared


# Packets without data, shared.
CLOSE = EncodedPacket.of(PacketType.CLOSE)
PING = EncodedPacket.of(PacketType.PING)
PONG = EncodedPacket.of(PacketType.PONG)
NOOP = EncodedPacket.of(PacketType.NOOP)
PROBE_PONG = EncodedPacket.of(PacketType.PONG, "probe")


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
#: json's C string escaper, quotes included: for runs of non-ASCII characters only.
_escape_ascii = json.encoder.encode_basestring_ascii


def ascii_escaped(text: str) -> str:
    """``text`` with each non-ASCII character as JSON's ``\\uXXXX`` (UTF-16: astral characters as surrogate pairs)."""
    if text.isascii():
        return text
    return _NON_ASCII.sub(lambda run: _escape_ascii(run.group())[1:-1], text)


def utf16_length(text: str) -> int:
    """How many UTF-16 code units JavaScript counts in ``text`` (astral characters count two)."""
    if text.isascii():
        return len(text)
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def open_packet(
    version: int, sid: str, upgrades: list[str], ping_interval: float, ping_timeout: float, max_payload: int
) -> EncodedPacket:
    """The handshake: ``0{"sid":...}``; revision 4 adds ``maxPayload``.  Times in seconds, sent in milliseconds."""
    handshake: dict[str, Any] = {
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": int(ping_interval * 1000),
        "pingTimeout": int(ping_timeout * 1000),
    }
    if version >= 4:
        handshake["maxPayload"] = max_payload
    return EncodedPacket.of(PacketType.OPEN, json.dumps(handshake, separators=(",", ":")))


# -- decoding what clients send ---------------------------------------------------------


def decode_packet(text: str) -> Packet:
    """One packet from a WebSocket text frame or a payload."""
    if not text:
        raise ProtocolError("empty packet")
    kind = text[0]
    if kind == "b":
        raise BinaryNotSupported("binary packets are not accepted")
    if not ("0" <= kind <= "6"):
        raise ProtocolError(f"unknown packet type {kind!r}")
    return Packet(PacketType(int(kind)), text[1:])


def decode_payload(version: int, text: str) -> list[Packet]:
    """The packets of a long-polling body (already decoded from UTF-8, JSONP unescaped)."""
    if version >= 4:
        return [decode_packet(part) for part in text.split(SEPARATOR_V4)]
    return _decode_payload_v3(text)


def _decode_payload_v3(text: str) -> list[Packet]:
    packets: list[Packet] = []
    position, end = 0, len(text)
    if not text:
        raise ProtocolError("empty payload")
    while position < end:
        colon = text.find(":", position)
        digits = text[position:colon] if colon >= 0 else ""
        if not digits or not digits.isascii() or not digits.isdigit() or len(digits) > 9:
            raise ProtocolError("payload length prefix missing or not a number")
        wanted = int(digits)
        cursor, counted = colon + 1, 0
        while counted < wanted and cursor < end:
            counted += 2 if ord(text[cursor]) > 0xFFFF else 1
            cursor += 1
        if counted != wanted:
            raise ProtocolError("payload shorter than its length prefix")
        if cursor > colon + 1:  # an empty packet is skipped, as engine.io-parser does
            packets.append(decode_packet(text[colon + 1 : cursor]))
        position = cursor
    return packets


_JSONP_SINGLE = re.compile(r"(\\)?\\n")


def jsonp_unescape(data: str) -> str:
    """
    Undo the newline escaping of an Engine.IO 3 JSONP form post: ``\\n`` is a
    newline, ``\\\\n`` a backslash followed by ``n`` (as engine.io 3 does it).
    """
    data = _JSONP_SINGLE.sub(lambda m: m.group(0) if m.group(1) else "\n", data)
    return data.replace("\\\\n", "\\n")


# -- encoding what the server sends -------------------------------------------------------


#: Decimal digits as the byte values 0-9, for the lengths of revision 3's binary payloads.
_DIGIT_BYTES = bytes.maketrans(b"0123456789", bytes(range(10)))


def encode_payload(version: int, packets: Iterable[EncodedPacket], binary: bool = False) -> bytes:
    """
    A long-polling body carrying ``packets`` in order: revision 4's in UTF-8;
    revision 3's in ASCII, or its binary form if ``binary`` (for a client with XHR2).
    """
    if version >= 4:
        return b"\x1e".join(packet.utf8 for packet in packets)
    if binary:
        return b"".join(
            b"\x00%s\xff%s" % ((b"%d" % len(packet.utf8)).translate(_DIGIT_BYTES), packet.utf8) for packet in packets
        )
    return b"".join(b"%d:%s" % (len(packet.ascii), packet.ascii) for packet in packets)


def jsonp_wrap(index: str, payload: bytes) -> bytes:
    """
    A JSONP response: ``___eio[N]("...");``.  JSON string escaping makes it valid
    JavaScript once U+2028 and U+2029 are escaped too (JSON allows them raw, JavaScript
    string literals did not).
    """
    literal = json.dumps(payload.decode("utf-8"), ensure_ascii=False)
    literal = literal.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f"___eio[{index}]({literal});".encode("utf-8")
