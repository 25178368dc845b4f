"""
Summarise a py-spy ``--format raw`` profile (what ``bench/run.py --profile DIR`` writes):
the functions with the most samples, by own time and including callees.

    .venv/bin/python bench/profile_summary.py DIR/a-plain-1.txt [--top 30] [--filter idle]
"""

from __future__ import annotations

import argparse
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--drop", default="select (selectors.py", help="leave out stacks whose leaf contains this (idle)")
    args = parser.parse_args()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with open(args.path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            count = int(count_text)
            frames = stack.split(";")
            if args.drop and args.drop in frames[-1]:
                continue
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    print(f"{total} busy samples")
    print("\n-- own time")
    for frame, count in own.most_common(args.top):
        print(f"{100 * count / total:5.1f}%  {frame}")
    print("\n-- including callees")
    for frame, count in inclusive.most_common(args.top):
        print(f"{100 * count / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
