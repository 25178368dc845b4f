"""
Socket.IO packets (protocol 4 over Engine.IO 3, protocol 5 over Engine.IO 4), as
the client's socket.io-parser writes and reads them; no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from redmessenger.dialects.engineio.codec import EncodedPacket, PacketType
from redmessenger.model.envelope import Message
from redmessenger.model.jsontext import LoneSurrogate, loads


class SIOType(IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4  # called ERROR in protocol 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


_NO_DATA: Any = object()


@dataclass(frozen=True)
class SIOPacket:
    type: SIOType
    nsp: str = "/"
    data: Any = _NO_DATA
    id: int | None = None
    attachments: int = 0


class SIOProtocolError(ValueError):
    """Not a Socket.IO packet."""


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_sio(packet: SIOPacket) -> str:
    """``<type>[<attachments>-][<nsp>,][<id>][<json>]``, the namespace only if not ``/``."""
    parts = [str(int(packet.type))]
    if packet.type in (SIOType.BINARY_EVENT, SIOType.BINARY_ACK):
        parts.append(f"{packet.attachments}-")
    if packet.nsp != "/":
        parts.append(packet.nsp + ",")
    if packet.id is not None:
        parts.append(str(packet.id))
    if packet.data is not _NO_DATA:
        parts.append(_dumps(packet.data))
    return "".join(parts)


def decode_sio(text: str) -> SIOPacket:
    """A packet as the client's socket.io-parser writes it (a query after the namespace is dropped)."""
    if not text or not ("0" <= text[0] <= "6"):
        raise SIOProtocolError("unknown packet type")
    kind = SIOType(int(text[0]))
    position, end = 1, len(text)
    attachments = 0
    if kind in (SIOType.BINARY_EVENT, SIOType.BINARY_ACK):
        dash = text.find("-", position)
        digits = text[position:dash] if dash >= 0 else ""
        if not digits.isascii() or not digits.isdigit() or len(digits) > 15:  # int() refuses > 4300 digits
            raise SIOProtocolError("binary packet without an attachment count")
        attachments, position = int(digits), dash + 1
    nsp = "/"
    if position < end and text[position] == "/":
        comma = text.find(",", position)
        stop = comma if comma >= 0 else end
        nsp = text[position:stop].split("?", 1)[0]
        position = stop + 1 if comma >= 0 else end
    start = position
    while position < end and text[position].isascii() and text[position].isdigit():
        position += 1
    ack_id = int(text[start:position]) if position > start and position - start <= 15 else None
    if position - start > 15:
        raise SIOProtocolError("acknowledgement id too long")
    data: Any = _NO_DATA
    if position < end:
        try:
            data = loads(text[position:])
        except LoneSurrogate as e:
            raise SIOProtocolError(f"payload: {e}") from None
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the stack
            raise SIOProtocolError("payload is not JSON") from None
    return SIOPacket(kind, nsp, data, ack_id, attachments)


def packet_key(nsp: str, bubble: bool) -> tuple[str, str, bool]:
    """The key of a message packet in the message's encoding cache; the packet is built from the key's parts alone."""
    return ("socket.io", nsp, bubble)


def message_packet(message: Message, nsp: str, bubble: bool) -> EncodedPacket:
    """
    ``42<nsp>,["message",<envelope>]`` as an Engine.IO message packet, built once per
    message, namespace and bubble value from the envelope JSON the plain dialect
    sends too, and shared by every session (its WebSocket frame too, see
    :attr:`EncodedPacket.frame`).
    """
    key = packet_key(nsp, bubble)
    return message.encoded(key, build_message_packet, message, key)


def build_message_packet(message: Message, key: tuple[str, str, bool]) -> EncodedPacket:
    _, nsp, bubble = key
    prefix = "42" + (nsp + "," if nsp != "/" else "")
    return EncodedPacket(prefix + '["message",' + message.envelope_json(bubble).decode("utf-8") + "]")


def engine_packet(packet: SIOPacket) -> EncodedPacket:
    return EncodedPacket.of(PacketType.MESSAGE, encode_sio(packet))
