"""
What a daemon spends on a PUBLISH it leaves to another daemon (docs/scale-out.md):
with N daemons on one Redis each hears every PUBLISH and drops the N-1 parts in
N it does not own, so this runs N-1 times per message across the daemons.

The real Router and the real Owners view (two nodes, this one "a"), in this
process, warm: the PUBLISHes to the 1,000 users of bench case a that node "b"
owns, each handed to ``Router.on_publish`` as the subscriber hands it.  Prints
the time per dropped PUBLISH for each round, and checks that nothing was delivered.

    .venv/bin/python bench/drop_path.py [--rounds 5] [--repeat 200]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from twisted.internet.task import Clock

from redmessenger.core.counters import Counters
from redmessenger.core.ownership import Owners
from redmessenger.core.routing import Router
from redmessenger.model.envelope import Message


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
    if delivered:
        print(f"FAILED: {len(delivered)} messages for users node b owns were delivered here")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
