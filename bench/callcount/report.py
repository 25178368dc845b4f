"""
Calls per message from the counts bench/callcount/sitecustomize.py wrote: a message
is a call of ``Router.on_publish``.

    .venv/bin/python bench/callcount/report.py /tmp/calls.<pid>.json [--top 40]
"""

from __future__ import annotations

import argparse
import json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("counts")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    with open(args.counts) as f:
        counts: dict[str, int] = json.load(f)
    messages = sum(n for name, n in counts.items() if name.startswith("Router.on_publish "))
    if not messages:
        print("no message was routed while counting (RM_CALLCOUNT_AT outside the publishing?)")
        return 1
    python = sum(n for name, n in counts.items() if not name.startswith("C "))
    c = sum(n for name, n in counts.items() if name.startswith("C "))
    print(f"{messages} messages: {python / messages:.1f} Python calls and {c / messages:.1f} C calls per message")
    for name, n in sorted(counts.items(), key=lambda item: -item[1])[: args.top]:
        print(f"{n / messages:6.2f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
