"""
A version-1 client of the plain dialect for the channel tests: requests with
refs, replies matched to them, messages acknowledged as they come (Autobahn).
"""

from __future__ import annotations

import json
from typing import Any


def hello(uid: str | None = None, **more: Any) -> str:
    return json.dumps({"type": "hello", "v": 1, **({"uid": uid} if uid else {}), **more})


class Session:
    """A version-1 client: requests with refs, replies matched, messages and syncs apart."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.ref = 0
        self.replies: dict[Any, dict] = {}
        self.messages: list[dict] = []

    async def pump(self, until: Any, timeout: float = 5.0) -> None:
        while not until():
            frame = await self.client.next(timeout)
            if frame.get("type") == "reply":
                self.replies[frame["ref"]] = frame
            elif frame.get("type") == "message":
                self.messages.append(frame)
                self.client.send(json.dumps({"type": "ack", "id": frame["id"]}))

    async def request(self, kind: str, timeout: float = 5.0, **fields: Any) -> dict:
        self.ref += 1
        ref = self.ref
        self.client.send(json.dumps({"type": kind, "ref": ref, **fields}))
        await self.pump(lambda: ref in self.replies, timeout)
        return self.replies.pop(ref)

    async def subscribe(self, channel: Any, **fields: Any) -> dict:
        return await self.request("subscribe", channel=channel, **fields)

    async def receive(self, count: int) -> list[dict]:
        await self.pump(lambda: len(self.messages) >= count)
        got, self.messages = self.messages[:count], self.messages[count:]
        return got


async def session(daemon: Any, uid: str | None = None, **more: Any) -> Session:
    client = await daemon.client()
    client.send(hello(uid, **more))
    welcome = await client.next()
    assert welcome == {"type": "welcome", "v": 1, "uid": uid}
    return Session(client)


def error(reply: dict) -> str:
    assert reply["ok"] is False, reply
    assert reply["error"]["reason"], reply
    return reply["error"]["code"]
