"""
The demo's application (``demo: true``, off by default): answers subscription
requests the way any application does, through Redis (docs/protocol.md,
*Channels: the application's side*), in a consumer group of its own: channels
whose name starts with ``demo`` are permitted read_write, all others denied.

It exists so that ``/demo`` works with nothing but the daemon; a real
application answers with its own group.  While both run, both answer each
request and the first answer counts: keep ``demo`` off in production.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from redmessenger.logs import make_logger
from redmessenger.model.keyspace import REQUESTS_STREAM
from redmessenger.redis_edge.commands import RedisCommands
from redmessenger.redis_edge.intake import _entries, _text

DEMO_GROUP = "redmessenger-demo"
#: Channels the demo permits: their names start with this.
DEMO_PREFIX = "demo"


def demo_answer(request_id: str, channel: str) -> bytes:
    if channel.startswith(DEMO_PREFIX):
        return json.dumps({"id": request_id, "permit": "read_write"}).encode()
    return json.dumps({"id": request_id, "deny": f"the demo application permits {DEMO_PREFIX}* channels only"}).encode()


class DemoApplication:
    """Reads ``rm:requests`` every ``interval`` seconds (no blocking read: it shares the command connection)."""

    log = make_logger()

    def __init__(self, commands: RedisCommands, clock: IReactorTime, interval: float = 0.1) -> None:
        self._commands = commands
        self._loop = LoopingCall(self._read)
        self._loop.clock = clock
        self._interval = interval
        self._reading = False
        self._group_ready = False

    def start(self) -> None:
        self.log.warn("demo: true: /demo is served and demo* channels are permitted to anyone; not for production")
        self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _read(self) -> None:
        if self._reading:
            return
        self._reading = True
        d = ensureDeferred(self._answer_waiting())
        d.addErrback(lambda failure: self.log.debug("demo: reading requests failed: {why}", why=failure.getErrorMessage()))
        d.addBoth(self._done)

    def _done(self, result: Any) -> None:
        self._reading = False

    async def _answer_waiting(self) -> None:
        commands = self._commands
        if not self._group_ready:
            try:
                await commands.execute_command("XGROUP", "CREATE", REQUESTS_STREAM, DEMO_GROUP, "$", "MKSTREAM")
            except Exception as e:  # BUSYGROUP: made at an earlier start
                if "BUSYGROUP" not in str(e):
                    raise
            self._group_ready = True
        reply = await commands.execute_command(
            "XREADGROUP", "GROUP", DEMO_GROUP, "demo", "COUNT", 100, "STREAMS", REQUESTS_STREAM, ">"
        )
        for entry_id, raw in _entries(reply):
            fields = dict(zip((_text(k) for k in raw[::2]), (_text(v) for v in raw[1::2]))) if raw else {}
            if fields.get("reply_to") and fields.get("id"):
                await commands.execute_command("PUBLISH", fields["reply_to"], demo_answer(fields["id"], fields.get("channel", "")))
            await commands.execute_command("XACK", REQUESTS_STREAM, DEMO_GROUP, entry_id)
