"""Bounces parsed per second over the bounce corpus, beside the bare stdlib parser in the same run.

    .venv/bin/python bench/bounce.py [--dir CORPUS] [--rounds 5]

CORPUS: a directory of bounces in eml/ (default: $MAILGW_BOUNCE_CORPUS, else ../shared/corpus/bounces next to
the checkout); docs/bounces.md says where such a corpus comes from.

On one core (the process is pinned to one CPU when the OS allows it), over every .eml file:
  stdlib      email.message_from_bytes(raw) (policy compat32): only builds the MIME tree
  mailgw      bounce.dsn.parse(raw): reads the whole report: recipients, status, reason, original id
Prints messages per second for each (best of --rounds), mailgw's ratio to the reference, and whether
mailgw reaches the issue's target (>= 2,000 bounces/s).
"""

from __future__ import annotations

import argparse
import email
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bounce.dsn import parse  # noqa: E402

TARGET = 2000.0


def rate(func: Callable[[bytes], object], corpus: list[bytes], rounds: int) -> float:
    for raw in corpus:  # warm-up: imports, regex compilation, caches
        func(raw)
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for raw in corpus:
            func(raw)
        best = max(best, len(corpus) / (time.perf_counter() - start))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=os.environ.get("MAILGW_BOUNCE_CORPUS")
                    or str(HERE.parent.parent / "shared" / "corpus" / "bounces"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    root = Path(args.dir)
    folder = root / "eml" if (root / "eml").is_dir() else root
    corpus = [p.read_bytes() for p in sorted(folder.glob("*.eml"))]
    if not corpus:
        print(f"no .eml files in {folder}", file=sys.stderr)
        return 66
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    size = sum(map(len, corpus))
    print(f"corpus: {len(corpus)} messages, {size / 1024:.0f} KiB, {args.rounds} rounds, one core")
    stdlib = rate(email.message_from_bytes, corpus, args.rounds)
    mailgw = rate(parse, corpus, args.rounds)
    print(f"{'stdlib email.message_from_bytes':<34}{stdlib:>10,.0f} msg/s   (reference)")
    print(f"{'mailgw bounce.dsn.parse':<34}{mailgw:>10,.0f} msg/s   {mailgw / stdlib:.2f}x the reference")
    verdict = "meets" if mailgw >= TARGET else "BELOW"
    print(f"target {TARGET:,.0f} bounces/s: {verdict}")
    return 0 if mailgw >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
