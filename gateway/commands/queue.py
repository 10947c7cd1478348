"""`mailgw queue list|show|retry|delete` (+ cancel|flush|stats, gateway/commands/queue_outbound.py): postqueue-style
view of the spool (works with the daemon down)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from gateway.commands import SubParsers, add_config_arg, load_config_or_report, queue_outbound
from gateway.config import Config
from gateway.exitcodes import EX_CONFIG, EX_DATAERR, EX_USAGE
from gateway.spool import SpoolEntry, SqliteSpool, State, UnknownEntry, open_spool
from gateway.spool.base import InvalidTransition

LIST_FIELDS = ("queue_id", "state", "mail_from", "rcpt_tos", "message_id", "attempts", "last_error",
               "next_attempt_at", "direction", "intake", "received_at", "size")


def register(sub: SubParsers) -> None:
    p = sub.add_parser("queue", help="inspect and act on the spool",
                       description="Inspect and act on the spool. Works whether the daemon runs or not.")
    qsub = p.add_subparsers(dest="queue_command", metavar="ACTION")
    lst = qsub.add_parser("list", help="list entries (oldest first)")
    add_config_arg(lst)
    lst.add_argument("--state", choices=[str(s) for s in State], help="only entries in this state")
    lst.add_argument("--limit", type=int, default=1000)
    lst.add_argument("--json", action="store_true", help="one JSON array of objects")
    lst.set_defaults(func=lambda a: _with_spool(a, _list))
    for name, helptext, fn in (
        ("show", "show one entry with its headers", _show),
        ("retry", "requeue a failed/deferred entry now (re-routed and redelivered)", _retry),
        ("delete", "delete an entry and its message", _delete),
        ("release", "deliver a held entry (sender authentication) as if it had passed", _release),
    ):
        sp = qsub.add_parser(name, help=helptext)
        add_config_arg(sp)
        sp.add_argument("queue_id")
        if name == "show":
            sp.add_argument("--json", action="store_true")
        sp.set_defaults(func=lambda a, fn=fn: _with_spool(a, fn))
    queue_outbound.register(qsub, lst, _with_spool, add_config_arg)  # list --destination, cancel, flush, stats
    p.set_defaults(func=lambda a: (p.print_help(), EX_USAGE)[1])


def _with_spool(args: argparse.Namespace, fn: Callable[[SqliteSpool, argparse.Namespace], Awaitable[int]]) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return EX_CONFIG

    async def go(cfg: Config) -> int:
        if not cfg.spool_path.exists():
            print(f"no spool at {cfg.spool_path} (nothing received yet)", file=sys.stderr)
            return 0 if args.queue_command == "list" and not getattr(args, "json", False) else _empty(args)
        spool = await open_spool(cfg)
        try:
            return await fn(spool, args)
        finally:
            await spool.close()

    return asyncio.run(go(config))


def _empty(args: argparse.Namespace) -> int:
    if getattr(args, "json", False) and args.queue_command == "list":
        print("[]")
        return 0
    return EX_DATAERR


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _row(e: SpoolEntry) -> dict[str, Any]:
    d = e.to_dict()
    return {k: d[k] for k in LIST_FIELDS}


async def _list(spool: SqliteSpool, args: argparse.Namespace) -> int:
    entries = await queue_outbound.listed(spool, State(args.state) if args.state else None, args)
    if args.json:
        print(json.dumps([_row(e) for e in entries], indent=1))
        return 0
    if not entries:
        print("queue is empty")
        return 0
    now = time.time()
    print(f"{'QUEUE ID':<20} {'STATE':<9} {'SIZE':>8} {'ARRIVED (UTC)':<19} {'TRIES':>5} {'NEXT':<8} "
          "SENDER -> RECIPIENTS")
    for e in entries:
        nxt = "-" if e.state not in (State.DEFERRED, State.OUTGOING) else (
            "now" if e.next_attempt_at <= now else f"+{int(e.next_attempt_at - now)}s")
        print(f"{e.queue_id:<20} {e.state!s:<9} {e.size:>8} {_when(e.envelope.received_at):<19} {e.attempts:>5} "
              f"{nxt:<8} <{e.envelope.mail_from}> -> {', '.join(e.envelope.rcpt_tos)}")
        if e.last_error:
            print(f"{'':<20} ({e.last_error})")
    print(f"-- {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    return 0


async def _show(spool: SqliteSpool, args: argparse.Namespace) -> int:
    entry = await spool.get(args.queue_id)
    if entry is None:
        print(f"no entry {args.queue_id}", file=sys.stderr)
        return EX_DATAERR
    raw = await spool.raw(args.queue_id)
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    if args.json:
        print(json.dumps({**entry.to_dict(), "headers": head.decode("utf-8", "replace")}, indent=1))
        return 0
    for key, value in entry.to_dict().items():
        if key in ("received_at", "updated_at", "next_attempt_at"):
            value = _when(value)
        print(f"{key:>22}: {value}")
    if entry.state == State.HELD:
        print(_held_note(entry))
    print()
    print(head.decode("utf-8", "replace"))
    return 0


def _held_note(entry: SpoolEntry) -> str:
    """Why a held entry is held and what the operator can do (docs/authentication.md)."""
    auth = (entry.envelope.source or {}).get("auth") or {}
    lines = ["", "HELD by sender authentication: the From domain did not authenticate this message and its",
             "Odoo instance's policy (odoo[].auth) holds such mail instead of delivering it.",
             f"  reason: {entry.last_error or '-'}"]
    if auth:
        lines.append(f"  verdict: dmarc={auth.get('dmarc')} spf={auth.get('spf')} dkim={auth.get('dkim')} "
                     f"arc={auth.get('arc')} from_domain={auth.get('from_domain')}")
        lines.append(f"  Authentication-Results: {' '.join(str(auth.get('ar', '')).split())}")
    lines += [f"  release: mailgw queue release {entry.queue_id}   (delivered to Odoo as if it had passed)",
              f"  delete:  mailgw queue delete {entry.queue_id}",
              "  unreleased, it is deleted once auth.held_lifetime has passed (logged as auth.held_expired)"]
    return "\n".join(lines)


async def _move(queue_id: str, verb: str, move: Awaitable[SpoolEntry], done: Callable[[SpoolEntry], str]) -> int:
    try:
        entry = await move
    except UnknownEntry:
        print(f"no entry {queue_id}", file=sys.stderr)
        return EX_DATAERR
    except InvalidTransition as exc:
        print(f"cannot {verb}: {exc}", file=sys.stderr)
        return EX_DATAERR
    print(f"{entry.queue_id}: {done(entry)}")
    return 0


async def _retry(spool: SqliteSpool, args: argparse.Namespace) -> int:
    return await _move(args.queue_id, "retry", spool.requeue(args.queue_id),
                       lambda e: f"{e.state}, due now (the daemon re-routes and redelivers it)")


async def _release(spool: SqliteSpool, args: argparse.Namespace) -> int:
    from gateway.auth.held import release

    return await _move(args.queue_id, "release", release(spool, args.queue_id),
                       lambda e: "released, due now (the daemon delivers it as if it had passed)")


async def _delete(spool: SqliteSpool, args: argparse.Namespace) -> int:
    try:
        await spool.delete(args.queue_id)
    except UnknownEntry:
        print(f"no entry {args.queue_id}", file=sys.stderr)
        return EX_DATAERR
    print(f"{args.queue_id}: deleted")
    return 0
