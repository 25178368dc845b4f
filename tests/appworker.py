"""
An application answering subscription requests at the Redis level, exactly as
``docs/protocol.md`` (*Channels: the application's side*) tells an application
without our library to do it: a consumer group on ``rm:requests``, XREADGROUP,
an answer PUBLISHed on the request's ``reply_to``, XACK.  Runs in a thread with
a blocking client (another process's view: it cannot deadlock the reactor).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import valkey

#: What a policy returns: an answer object (without its id), or None to leave the request unanswered.
Policy = Callable[[dict[str, str]], "dict[str, Any] | None"]


def permit(mode: str = "read_write") -> Policy:
    return lambda request: {"permit": mode}


class AppWorker:
    """One worker of the application's consumer group; every request it saw is in :attr:`requests`."""

    def __init__(self, port: int, policy: Policy, *, group: str = "app", name: str = "worker-1", create: bool = True) -> None:
        self.redis = valkey.Valkey(host="127.0.0.1", port=port)
        self.policy = policy
        self.group = group
        self.name = name
        self.requests: list[dict[str, str]] = []
        self._stop = threading.Event()
        if create:
            try:
                self.redis.xgroup_create("rm:requests", group, id="$", mkstream=True)
            except valkey.ResponseError as e:  # BUSYGROUP: another worker made it
                if "BUSYGROUP" not in str(e):
                    raise
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> AppWorker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.redis.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            batches = self.redis.xreadgroup(self.group, self.name, {"rm:requests": ">"}, count=100, block=50)
            for _stream, entries in batches or []:
                for entry_id, raw in entries:
                    request = {k.decode(): v.decode() for k, v in raw.items()}
                    self.requests.append(request)
                    answer = self.policy(request)
                    if answer is not None:
                        self.redis.publish(request["reply_to"], json.dumps({"id": request["id"], **answer}))
                    self.redis.xack("rm:requests", self.group, entry_id)
