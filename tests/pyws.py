"""
The `websockets` library's client, an implementation independent of Autobahn
(it negotiates permessage-deflate by default and answers pings by itself).  Its
blocking calls run in threads and are awaited from the reactor.
"""

from __future__ import annotations

import json
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection, connect


class _CountingConnection(ClientConnection):
    """Counts the pings the server sent (the library still answers each one)."""

    pings = 0

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings += 1
        super().process_event(event)


class ThreadedClient:
    def __init__(self, ws: _CountingConnection) -> None:
        self.ws = ws
        self.received: list[Any] = []
        #: Frames that came compressed (RSV1 set: permessage-deflate), whatever their kind.
        self.compressed_frames = 0
        for extension in ws.protocol.extensions:
            if extension.name == "permessage-deflate":
                decode = extension.decode

                def counting(frame: Frame, *, max_size: int | None = None, decode: Any = decode) -> Frame:
                    if frame.rsv1:
                        self.compressed_frames += 1
                    return decode(frame, max_size=max_size)  # type: ignore[no-any-return]

                extension.decode = counting  # type: ignore[method-assign]

    @classmethod
    async def connect(cls, url: str, **options: Any) -> ThreadedClient:
        from twisted.internet.threads import deferToThread

        options.setdefault("open_timeout", 5)
        options.setdefault("ping_interval", None)  # only the server's pings
        def open_connection() -> _CountingConnection:
            # entered as a context manager (the library's way), left by close()
            return connect(url, create_connection=_CountingConnection, **options).__enter__()  # type: ignore[return-value]

        return cls(await deferToThread(open_connection))

    @property
    def extensions(self) -> str:
        """The Sec-WebSocket-Extensions the server accepted ("" for none)."""
        assert self.ws.response is not None
        return self.ws.response.headers.get("Sec-WebSocket-Extensions", "")

    @property
    def pings(self) -> int:
        return self.ws.pings

    @property
    def local_port(self) -> int:
        return int(self.ws.socket.getsockname()[1])

    def attached(self, presence: Any, uid: str) -> bool:
        user = presence.get(uid)
        return user is not None and any(a.sink.client_address.endswith(f":{self.local_port}") for a in user.attachments)

    async def send(self, text: str) -> None:
        from twisted.internet.threads import deferToThread

        await deferToThread(self.ws.send, text)

    async def receive(self, count: int, timeout: float = 10.0) -> list[Any]:
        from twisted.internet.threads import deferToThread

        def read() -> list[Any]:
            return [json.loads(self.ws.recv(timeout)) for _ in range(count)]

        got = await deferToThread(read)
        self.received += got
        return got

    async def unread(self) -> list[Any]:
        """The messages received and not read yet (never waits for more)."""
        from twisted.internet.threads import deferToThread

        def read() -> list[Any]:
            found = []
            while True:
                try:
                    found.append(json.loads(self.ws.recv(0)))
                except TimeoutError:
                    return found

        got = await deferToThread(read)
        self.received += got
        return got

    async def close(self) -> None:
        from twisted.internet.threads import deferToThread

        await deferToThread(self.ws.close)
