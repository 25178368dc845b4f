"""
python-socketio's client (an independent Engine.IO 4 / Socket.IO 5 implementation)
doing what the seed's browser client does, reporting like tests/js/seed_client.js.

    python py_sio_client.py '{"url": "http://127.0.0.1:8080", "namespace": "/rm",
                              "uid": "user1", "key": "", "transports": ["websocket"]}'

stdout: one JSON object per line (connect, message, error, connect_error, disconnect);
stdin: {"cmd": "emit", "args": [...]} or {"cmd": "exit"}.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import socketio

_lock = threading.Lock()


def report(event: str, **fields: Any) -> None:
    with _lock:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


def main() -> None:
    args = json.loads(sys.argv[1])
    namespace = args["namespace"]
    sio = socketio.Client(reconnection=args.get("reconnection", True))

    @sio.on("connect", namespace=namespace)
    def connect() -> None:
        report("connect", transport=sio.transport())
        if args.get("identify", True):
            sio.emit("identifier", f"{args['uid']}:{args.get('key', '')}", namespace=namespace)

    @sio.on("message", namespace=namespace)
    def message(envelope: Any) -> None:
        report("message", message=envelope)

    @sio.on("error", namespace=namespace)
    def error(data: Any) -> None:
        report("error", data=data)

    @sio.on("connect_error", namespace=namespace)
    def connect_error(data: Any) -> None:
        report("connect_error", data=data if isinstance(data, (dict, str)) else str(data))

    @sio.on("disconnect", namespace=namespace)
    def disconnect(*reason: Any) -> None:
        report("disconnect", reason=[str(r) for r in reason])

    report("started", generation="python-socketio")
    try:
        sio.connect(args["url"], namespaces=[namespace], transports=args.get("transports"), wait_timeout=10)
    except socketio.exceptions.ConnectionError as e:
        report("connect_failed", message=str(e))
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "emit":
            sio.emit(*command["args"], namespace=namespace)
        elif command["cmd"] == "exit":
            break
    sio.disconnect()


if __name__ == "__main__":
    main()
