"""
What a daemon spends on a PUBLISH it leaves to another daemon (docs/scale-out.md):
with N daemons on one Redis each hears every PUBLISH and drops the N-1 parts in
N it does not own, so this runs N-1 times per message across the daemons.

The real Router and the real Owners view (two nodes, this one "a"), in this
process, warm: the PUBLISHes to the 1,000 users of bench case a that node "b"
owns, each handed to ``Router.on_publish`` as the subscriber hands it.  Prints
the time per dropped PUBLISH for each round, and checks that nothing was delivered.
Then the same from the wire: the PUBLISHes as Redis sends them to a PSUBSCRIBE
(RESP ``pmessage`` replies, read 64 KiB at a time), parsed by hiredis and handed
on as the subscriber's lean path does (redis_edge/link.py): all a daemon does for
a PUBLISH it leaves to another, after the kernel's read.

    .venv/bin/python bench/drop_path.py [--rounds 5] [--repeat 200]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import hiredis

from twisted.internet.task import Clock

from redmessenger.core.counters import Counters
from redmessenger.core.ownership import Owners
from redmessenger.core.routing import Router
from redmessenger.model.envelope import Message
from redmessenger.redis_edge.replies import parsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=200, help="times each of the dropped PUBLISHes is handed over")
    args = parser.parse_args()

    delivered: list[Message] = []

    def deliver(message: Message, uids: Sequence[str], channel: str | None = None) -> None:
        delivered.append(message)

    owners = Owners("a")
    owners.set_nodes(["a", "b"])
    router = Router(None, deliver, Counters(), Clock(), lambda: None)  # type: ignore[arg-type]  # no group looked up
    router.owners = owners
    router.joined(alone=False)
    theirs = [b"rm.users.user%d" % i for i in range(1000) if owners.elsewhere("user%d" % i) is not None]
    payload = b'{"text": "hello"}'
    on_publish = router.on_publish
    for _ in range(args.rounds):
        started = time.perf_counter()
        for _ in range(args.repeat):
            for channel in theirs:
                on_publish(channel, payload)
        took = time.perf_counter() - started
        print(f"{took / (args.repeat * len(theirs)) * 1e6:.3f} µs per dropped PUBLISH ({len(theirs)} users of 1,000 owned by b)")
    wire = b"".join(_pmessage(channel, payload) for channel in theirs) * 20
    chunks = [wire[i : i + 65536] for i in range(0, len(wire), 65536)]
    count = 20 * len(theirs)
    for _ in range(args.rounds):
        started = time.perf_counter()
        _from_the_wire(chunks, on_publish)
        took = time.perf_counter() - started
        print(f"{took / count * 1e6:.3f} µs per dropped PUBLISH from the wire (hiredis, dispatch, router)")
    if delivered:
        print(f"FAILED: {len(delivered)} messages for users node b owns were delivered here")
        return 1
    return 0


def _pmessage(channel: bytes, payload: bytes) -> bytes:
    parts = [b"pmessage", b"rm.users.*", channel, payload]
    return b"*4\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def _from_the_wire(chunks: list[bytes], on_publish: Callable[[bytes, bytes], None]) -> None:
    """What redis_edge/link.py's subscriber does with each read: hiredis, then messageReceived's dispatch."""
    reader = hiredis.Reader()
    for data in chunks:
        for reply in parsed(reader, data):
            if type(reply) is list and len(reply) == 4 and reply[0] == b"pmessage":
                pattern, channel, message = reply[1], reply[2], reply[3]
                if pattern is None:  # (the subscriber's checks for rm.nodes and its own channel)
                    continue
                on_publish(channel, message)


if __name__ == "__main__":
    raise SystemExit(main())
