"""
The packets of an Engine.IO session waiting for the client's next poll (or for
its upgrade to WebSocket), with their size: a poll response takes as many as
``max_poll_bytes`` allows, and the session tells a client too slow by their
bytes (``max_buffered_bytes``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from redmessenger.dialects.engineio.codec import EncodedPacket


class PollBuffer:
    """Packets in the order sent, and their bytes (UTF-8)."""

    __slots__ = ("_packets", "bytes")

    def __init__(self) -> None:
        self._packets: deque[EncodedPacket] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._packets)

    def __iter__(self) -> Iterator[EncodedPacket]:
        return iter(self._packets)

    def append(self, packet: EncodedPacket) -> None:
        self._packets.append(packet)
        self.bytes += len(packet.utf8)

    def take(self, limit: int, ascii: bool) -> list[EncodedPacket]:
        """
        The first packets, as many as one poll response of at most ``limit``
        bytes carries (always one); ``ascii``: measured in their ASCII form
        (revision 3's text payloads, up to 6 bytes a character).
        """
        packets = self._packets
        taken: list[EncodedPacket] = []
        size = 0
        while packets and (not taken or size + len(packets[0].ascii if ascii else packets[0].utf8) <= limit):
            packet = packets.popleft()
            taken.append(packet)
            self.bytes -= len(packet.utf8)
            size += len(packet.ascii if ascii else packet.utf8) + 8
        return taken

    def take_all(self) -> list[EncodedPacket]:
        taken = list(self._packets)
        self.clear()
        return taken

    def clear(self) -> int:
        """Drop every packet; how many there were."""
        dropped = len(self._packets)
        self._packets.clear()
        self.bytes = 0
        return dropped
