"""The outbound side of `mailgw queue`: `list --destination`, `cancel`, `flush`, `stats`.

A message's destinations are the domains of its recipients still waiting (neither sent nor failed). Kept apart
from gateway/commands/queue.py, which calls `register` and filters `list` with `matches_destination`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.exitcodes import EX_DATAERR
from gateway.spool import Direction, Spool, SpoolEntry, State, UnknownEntry
from gateway.spool.base import InvalidTransition

DONE = ("sent", "failed")

WithSpool = Callable[[argparse.Namespace, Callable[[Spool, argparse.Namespace], Awaitable[int]]], int]


def register(qsub: Any, list_parser: argparse.ArgumentParser, with_spool: WithSpool,
             add_config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    list_parser.add_argument("--destination", metavar="DOMAIN",
                             help="only outbound mail with a recipient at DOMAIN still waiting")
    cancel = qsub.add_parser("cancel", help="cancel outbound mail (outgoing or exception -> cancel)",
                             description="Stop delivering an outbound message, as Odoo's Cancel does. `queue retry` "
                             "puts it back to outgoing.")
    add_config_arg(cancel)
    cancel.add_argument("queue_id", nargs="+")
    cancel.set_defaults(func=lambda a: with_spool(a, _cancel))
    flush = qsub.add_parser("flush", help="retry waiting outbound mail now (all, or one destination)",
                            description="Make outgoing messages due now instead of at their next retry time. A "
                            "destination that asked the gateway to slow down (421, 4.7.x) is still paced.")
    add_config_arg(flush)
    flush.add_argument("destination", nargs="?", metavar="DOMAIN", help="only mail with a recipient at DOMAIN")
    flush.set_defaults(func=lambda a: with_spool(a, _flush))
    stats = qsub.add_parser("stats", help="counts per state and per destination",
                            description="Entries per direction and state, and outbound messages and recipients "
                            "waiting (outgoing) or failed (exception) per destination domain.")
    add_config_arg(stats)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=lambda a: with_spool(a, _stats))


def destinations(entry: SpoolEntry) -> list[str]:
    """Domains of the recipients not yet done (all recipients before the first attempt)."""
    status = entry.rcpt_status or {}
    out = []
    for rcpt in entry.envelope.rcpt_tos:
        if (status.get(rcpt) or {}).get("state") not in DONE:
            domain = rcpt.rpartition("@")[2].lower()
            if domain not in out:
                out.append(domain)
    return out


def matches_destination(entry: SpoolEntry, domain: str | None) -> bool:
    if not domain:
        return True
    return entry.direction == Direction.OUTBOUND and domain.lower().rstrip(".") in destinations(entry)


async def _cancel(spool: Spool, args: argparse.Namespace) -> int:
    rc = 0
    for queue_id in args.queue_id:
        entry = await spool.get(queue_id)
        if entry is None:
            print(f"no entry {queue_id}", file=sys.stderr)
            rc = EX_DATAERR
            continue
        if entry.direction != Direction.OUTBOUND:
            print(f"{queue_id}: cancel is for outbound mail; inbound entries are retried or deleted", file=sys.stderr)
            rc = EX_DATAERR
            continue
        if entry.claimed_by:
            print(f"{queue_id}: being delivered right now; try again in a moment", file=sys.stderr)
            rc = EX_DATAERR
            continue
        try:
            await spool.transition(queue_id, State.CANCEL, error="cancelled by an operator",
                                   rcpt_status=entry.rcpt_status)
        except (InvalidTransition, UnknownEntry) as exc:
            print(f"cannot cancel: {exc}", file=sys.stderr)
            rc = EX_DATAERR
            continue
        print(f"{queue_id}: cancel")
    return rc


async def _flush(spool: Spool, args: argparse.Namespace) -> int:
    due = [e.queue_id async for e in spool.scan(state=State.OUTGOING, direction=Direction.OUTBOUND)
           if matches_destination(e, args.destination)]
    moved = await spool.wake(due)
    where = f" for {args.destination}" if args.destination else ""
    print(f"{moved} outgoing message{'s' if moved != 1 else ''}{where} due now "
          f"({len(due) - moved} already due); the daemon picks them up at its next poll")
    return 0


async def _stats(spool: Spool, args: argparse.Namespace) -> int:
    counts = await spool.counts()
    per_dest: dict[str, Counter[str]] = {}
    for state in (State.OUTGOING, State.EXCEPTION):
        async for entry in spool.scan(state=state, direction=Direction.OUTBOUND):
            status = entry.rcpt_status or {}
            seen: set[str] = set()
            for rcpt in entry.envelope.rcpt_tos:
                st = (status.get(rcpt) or {}).get("state")
                if (state == State.OUTGOING and st in DONE) or (state == State.EXCEPTION and st != "failed"):
                    continue
                domain = rcpt.rpartition("@")[2].lower()
                c = per_dest.setdefault(domain, Counter())
                c[f"{state}_recipients"] += 1
                if domain not in seen:
                    c[f"{state}_messages"] += 1
                    seen.add(domain)
    if args.json:
        print(json.dumps({"states": [{"direction": d, "state": s, "count": n} for (d, s), n in sorted(counts.items())],
                          "destinations": {d: dict(c) for d, c in sorted(per_dest.items())}}, indent=1))
        return 0
    print(f"{'DIRECTION':<9} {'STATE':<10} {'COUNT':>8}")
    for (direction, state_name), n in sorted(counts.items()):
        print(f"{direction:<9} {state_name:<10} {n:>8}")
    if per_dest:
        print()
        print(f"{'DESTINATION':<32} {'WAITING MSGS':>12} {'RCPTS':>6} {'FAILED MSGS':>12} {'RCPTS':>6}")
        ranked = sorted(per_dest.items(), key=lambda kv: (-kv[1]["outgoing_recipients"], kv[0]))
        for domain, c in ranked:
            print(f"{domain:<32} {c['outgoing_messages']:>12} {c['outgoing_recipients']:>6} "
                  f"{c['exception_messages']:>12} {c['exception_recipients']:>6}")
    return 0
