"""
How the link reads Redis's replies: hiredis parsing them straight from the
bytes read (the live path skips txredisapi's conversions), and how much the
subscriber reads at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: Bytes the subscriber reads from Redis per reactor turn at most (Twisted's default: 64 KB), and at least.
SUBSCRIBER_READ_SIZE = 1 << 20
SUBSCRIBER_MIN_READ_SIZE = 1 << 16


def next_read_size(size: int, read: int) -> int:
    """
    How much the subscriber's next read may take, after a read of ``read`` bytes
    into ``size``.  A read that filled the buffer means a burst: the next takes
    the most at once (each read ends with one ``send()`` per socket written to,
    so a burst read in small pieces costs a send per message; doubling step by
    step cost a 20,000-message burst four extra reads and ~4,000 sends).  A small
    read halves it back: CPython allocates the whole size per read, and glibc
    maps and unmaps anything above 128 KB, so 1 MB per 700-byte read cost ~8 µs
    a message at a steady rate.
    """
    if read >= size:
        return SUBSCRIBER_READ_SIZE
    if read < size >> 3 and size > SUBSCRIBER_MIN_READ_SIZE:
        return max(size >> 1, SUBSCRIBER_MIN_READ_SIZE)
    return size


def parsed(reader: Any, data: bytes) -> Iterator[Any]:
    """The complete replies hiredis can parse once ``data`` is fed to it."""
    if data:
        reader.feed(data)
    reply = reader.gets()
    while reply is not False:
        yield reply
        reply = reader.gets()


def lean(protocol: Any) -> bool:
    """Whether replies can skip txredisapi's conversions: hiredis parses them, and they stay raw bytes."""
    return hasattr(protocol, "_reader") and protocol.charset is None and not protocol.convertNumbers
