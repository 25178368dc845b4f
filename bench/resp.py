"""
A minimal blocking Redis client for the benchmark's own processes.

The bench talks to Redis from three places (the runner's setup, the publisher,
the bare PSUBSCRIBE "ceiling" client); each needs raw speed or raw control
(pipelining a pre-built burst, reading pub/sub pushes), not a client library's
conveniences.  Replies are parsed by hiredis, which the daemon depends on anyway.
"""

from __future__ import annotations

import socket
from typing import Any

import hiredis


def command(*args: bytes | str | int | float) -> bytes:
    """One command in RESP, ready to be written (and concatenated into a pipeline)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            raw = arg.encode("utf-8")
        elif isinstance(arg, bytes):
            raw = arg
        else:
            raw = str(arg).encode("ascii")
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class Redis:
    """A connection: send raw commands, read replies in order."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float | None = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()

    def close(self) -> None:
        self.sock.close()

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def read(self) -> Any:
        """The next reply (or pub/sub push); raises on a Redis error reply."""
        while True:
            reply = self.reader.gets()
            if reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise reply
                return reply
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self.reader.feed(data)

    def call(self, *args: bytes | str | int | float) -> Any:
        self.send(command(*args))
        return self.read()

    def pipeline(self, commands: list[bytes]) -> list[Any]:
        """Write every command at once, then read all the replies."""
        self.send(b"".join(commands))
        return [self.read() for _ in commands]
