"""
What the daemon's keys and scripts meet on a Redis Cluster (docs/scale-out.md,
*Redis Cluster*): three valkey-server masters on loopback with the slots split
between them, then, through one node as the daemon would use it,

1. a queue write (RPUSH rm:users:u<i>:messages) for 1,000 users,
2. the heartbeat script (rm:nodes and rm:nodes:sockets in one call),
3. 1,000 PUBLISHes on another node, heard by a PSUBSCRIBE on the first.

    .venv/bin/python bench/cluster_probe.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import valkey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from redmessenger.redis_edge import scripts  # noqa: E402
from redmessenger.redis_edge.embedded import find_server_binary  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    binary, directory = find_server_binary(), Path(tempfile.mkdtemp(prefix="rm-cluster-"))
    ports = [free_port() for _ in range(3)]
    processes = []
    for port in ports:
        (directory / str(port)).mkdir()
        processes.append(subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--save", "",
             "--cluster-config-file", str(directory / str(port) / "nodes.conf"), "--dir", str(directory / str(port))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    try:
        nodes = [valkey.Valkey(host="127.0.0.1", port=port, socket_timeout=5) for port in ports]
        for node in nodes:
            for _ in range(100):
                try:
                    node.ping()
                    break
                except valkey.ConnectionError:
                    time.sleep(0.05)
        for node, (first, last) in zip(nodes, [(0, 5460), (5461, 10922), (10923, 16383)]):
            node.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for node in nodes[1:]:
            node.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0])
        while not all(b"cluster_state:ok" in node.execute_command("CLUSTER", "INFO") for node in nodes):
            time.sleep(0.1)
        one = nodes[0]
        refused, why = 0, ""
        for i in range(1000):
            try:
                one.rpush(f"rm:users:u{i}:messages", "x")
            except valkey.ResponseError as e:
                refused, why = refused + 1, str(e).split(" ")[0]
        print(f"1. queue writes through one node: {refused} of 1000 refused ({why})")
        try:
            one.eval(scripts.HEARTBEAT, 2, "rm:nodes", "rm:nodes:sockets", "probe", 10, "beat", 0)
            print("2. the heartbeat script: ran")
        except valkey.ResponseError as e:
            print(f"2. the heartbeat script: {str(e).split(' ')[0]}")
        listener = one.pubsub()
        listener.psubscribe("rm.users.*")
        listener.get_message(timeout=1)
        for i in range(1000):
            nodes[2].publish(f"rm.users.u{i}", "x")
        heard, deadline = 0, time.time() + 5
        while heard < 1000 and time.time() < deadline:
            message = listener.get_message(timeout=1)
            heard += bool(message and message["type"] == "pmessage")
        print(f"3. PUBLISH on another node, PSUBSCRIBE here: {heard} of 1000 heard")
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


if __name__ == "__main__":
    main()
