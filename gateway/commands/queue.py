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
from gateway.config import Config, ConfigError
from gateway.exitcodes import EX_CONFIG, EX_DATAERR, EX_TEMPFAIL, EX_USAGE
from gateway.spool import Spool, SpoolEntry, SpoolError, State, UnknownEntry, opened_spool
from gateway.spool.base import InvalidTransition

TEXT_LIMIT = 1000  # entries `queue list` prints without --json unless told otherwise
LIST_FIELDS = ("queue_id", "state", "mail_from", "rcpt_tos", "message_id", "attempts", "last_error",
               "next_attempt_at", "direction", "intake", "received_at", "size")


def register(sub: SubParsers) -> None:
    p = sub.add_parser("queue", help="inspect and act on the spool",
                       description="Inspect and act on the spool. Works whether the daemon runs or not.")
    qsub = p.add_subparsers(dest="queue_command", metavar="ACTION")
    lst = qsub.add_parser("list", help="list entries (oldest first)", description=(
        "List spool entries, oldest first: inbound and outbound, every state, or those of --state. The text "
        f"listing stops at --limit ({TEXT_LIMIT} by default) and says on stderr how many it left out; --json "
        "prints every entry unless --limit is given, streamed as it is read."))
    add_config_arg(lst)
    lst.add_argument("--state", choices=[str(s) for s in State], help="only entries in this state")
    lst.add_argument("--limit", type=int, default=None, metavar="N",
                     help=f"at most N entries (default: all with --json, {TEXT_LIMIT} otherwise; 0: all)")
    lst.add_argument("--json", action="store_true", help="one JSON array of objects, one object per line")
    lst.set_defaults(func=lambda a: _with_spool(a, _list))
    for name, helptext, description, fn in (
        ("show", "show one entry with its headers",
         "Show one entry: envelope, state, attempts, errors, routing, per-recipient status, then the "
         "message's header section. --json prints the same as one JSON object.", _show),
        ("retry", "requeue a failed/deferred entry now (re-routed and redelivered)",
         "Requeue an entry now: an inbound entry goes back to `received` (routed and delivered again), an "
         "outbound one to `outgoing`. For a dead letter whose cause an operator fixed (an alias, Odoo's "
         "configuration). A placeholder of a message left in its mailbox is refused: it holds no message.", _retry),
        ("delete", "delete an entry and its message",
         "Delete an entry and its message from the spool, whatever its state. There is no undo.", _delete),
        ("release", "deliver a held entry (sender authentication) as if it had passed",
         "Release an entry held by sender authentication (odoo[].auth): it is delivered to Odoo as if it had "
         "passed (docs/authentication.md).", _release),
    ):
        sp = qsub.add_parser(name, help=helptext, description=description)
        add_config_arg(sp)
        sp.add_argument("queue_id", help="the entry's queue id (see `mailgw queue list`)")
        if name == "show":
            sp.add_argument("--json", action="store_true", help="one JSON object, headers included")
        sp.set_defaults(func=lambda a, fn=fn: _with_spool(a, fn))
    queue_outbound.register(qsub, lst, _with_spool, add_config_arg)  # list --destination, cancel, flush, stats
    p.set_defaults(func=lambda a: (p.print_help(), EX_USAGE)[1])


def _with_spool(args: argparse.Namespace, fn: Callable[[Spool, argparse.Namespace], Awaitable[int]]) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return EX_CONFIG

    async def go(cfg: Config) -> int:
        if cfg.spool.backend == "sqlite" and not cfg.spool_path.exists():
            print(f"no spool at {cfg.spool_path} (nothing received yet)", file=sys.stderr)
            return 0 if args.queue_command == "list" and not getattr(args, "json", False) else _empty(args)
        async with opened_spool(cfg) as spool:
            return await fn(spool, args)

    try:
        return asyncio.run(go(config))
    except (SpoolError, ConfigError) as exc:  # the database is down, the DSN secret is missing …
        print(f"mailgw queue: {exc}", file=sys.stderr)
        return EX_TEMPFAIL


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


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


async def _list(spool: Spool, args: argparse.Namespace) -> int:
    state = State(args.state) if args.state else None
    destination = getattr(args, "destination", None)
    limit = args.limit if args.limit is not None else (0 if args.json else TEXT_LIMIT)
    shown = 0
    out = sys.stdout
    if args.json:
        # Streamed: one object per line, written as the spool reads them, so memory stays flat.
        out.write("[")
        async for e in spool.scan(state=state):
            if destination and not queue_outbound.matches_destination(e, destination):
                continue
            if limit and shown >= limit:
                break
            out.write(("\n" if not shown else ",\n") + json.dumps(_row(e)))
            shown += 1
        out.write("\n]\n" if shown else "]\n")
    else:
        now = time.time()
        async for e in spool.scan(state=state):
            if destination and not queue_outbound.matches_destination(e, destination):
                continue
            if limit and shown >= limit:
                break
            if not shown:
                out.write(f"{'QUEUE ID':<20} {'STATE':<9} {'SIZE':>8} {'ARRIVED (UTC)':<19} {'TRIES':>5} "
                          f"{'NEXT':<8} SENDER -> RECIPIENTS\n")
            nxt = "-" if e.state not in (State.DEFERRED, State.OUTGOING) else (
                "now" if e.next_attempt_at <= now else f"+{int(e.next_attempt_at - now)}s")
            out.write(f"{e.queue_id:<20} {e.state!s:<9} {e.size:>8} {_when(e.envelope.received_at):<19} "
                      f"{e.attempts:>5} {nxt:<8} <{e.envelope.mail_from}> -> {', '.join(e.envelope.rcpt_tos)}\n")
            if e.last_error:
                out.write(f"{'':<20} ({e.last_error})\n")
            shown += 1
        out.write(f"-- {_entries(shown)}\n" if shown else "queue is empty\n")
    out.flush()
    if limit and shown >= limit and not destination:
        total = sum(n for (_d, s), n in (await spool.counts()).items() if state is None or s == state)
        if total > shown:
            print(f"mailgw queue list: showing the first {_entries(shown)} of {total}; {total - shown} left out "
                  "(--limit N, or 0 for all)", file=sys.stderr)
    return 0


async def _show(spool: Spool, args: argparse.Namespace) -> int:
    entry = await spool.get(args.queue_id)
    if entry is None:
        print(f"no entry {args.queue_id}", file=sys.stderr)
        return EX_DATAERR
    raw = await spool.raw(args.queue_id)
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    if args.json:
        print(json.dumps({**entry.to_dict(), "headers": head.decode("utf-8", "replace")}, indent=1))
        return 0
    for label, value in describe(entry, time.time()):
        print(f"{label:<17}{value}" if value is not None else label)
    if entry.state == State.HELD:
        print(_held_note(entry))
    print()
    print(head.decode("utf-8", "replace"))
    return 0


def _plain(value: Any) -> str:
    """A JSON-ish value as words: no Python reprs, no braces for flat mappings."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items()) or "-"
    return str(value)


def _in(seconds: float) -> str:
    """Time to a due date, in words: "in 1h 5m", or "due now"."""
    if seconds <= 0:
        return "due now"
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "in " + " ".join(parts[:2] or ["1s"])


def describe(entry: SpoolEntry, now: float) -> list[tuple[str, str | None]]:
    """`queue show`'s lines: (label, value), or (text, None) for a line of its own."""
    env = entry.envelope
    intake = env.intake + (f" from {env.peer}" if env.peer else "") + (f" (HELO {env.helo})" if env.helo else "")
    due = "-"
    if entry.state in (State.DEFERRED, State.OUTGOING, State.RECEIVED, State.ROUTED):
        due = f"{_when(entry.next_attempt_at)} UTC ({_in(entry.next_attempt_at - now)})"
    lines: list[tuple[str, str | None]] = [
        ("Queue ID", entry.queue_id),
        ("Direction", str(entry.direction)),
        ("State", str(entry.state) + (f" (claimed by {entry.claimed_by})" if entry.claimed_by else "")),
        ("Sender", f"<{env.mail_from}>"),
        ("Recipients", _plain(env.rcpt_tos)),
        ("Intake", intake),
    ]
    if env.source:
        lines.append(("Source", _plain(dict(env.source))))
    lines += [
        ("Received", f"{_when(env.received_at)} UTC"),
        ("Updated", f"{_when(entry.updated_at)} UTC"),
        ("Message-Id", (entry.message_id or "-") + (" (assigned by the gateway)" if entry.message_id_generated
                                                     else "")),
        ("Size", f"{entry.size} bytes"),
        ("Attempts", f"{entry.attempts}" + (f" ({entry.crashes} crashed the worker)" if entry.crashes else "")),
        ("Next attempt", due),
        ("Last error", entry.last_error or "-"),
    ]
    if entry.route:
        lines.append(("Route", None))
        for d in entry.route if isinstance(entry.route, list) else [entry.route]:
            if not isinstance(d, dict):
                lines.append((f"  {_plain(d)}", None))
                continue
            target = " ".join(str(x) for x in (d.get("instance"), d.get("model")) if x)
            if d.get("thread_id"):
                target += f" #{d['thread_id']}"
            why = "; ".join(str(x) for x in (d.get("rule"), d.get("reason")) if x)
            lines.append((f"  {d.get('recipient', '?')}: {d.get('route', '?')}"
                          + (f" -> {target}" if target else "") + (f" ({why})" if why else ""), None))
    if entry.rcpt_status:
        lines.append(("Recipient status", None))
        for rcpt, st in entry.rcpt_status.items():
            if not isinstance(st, dict):
                lines.append((f"  {rcpt}: {_plain(st)}", None))
                continue
            rest = {k: (f"{_when(v)} UTC" if k == "at" and isinstance(v, int | float) else v)
                    for k, v in st.items() if k != "state"}
            lines.append((f"  {rcpt}: {st.get('state', '?')}" + (f" ({_plain(rest)})" if rest else ""), None))
    return lines


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


async def _retry(spool: Spool, args: argparse.Namespace) -> int:
    from gateway.intake.mailbox import is_placeholder

    current = await spool.get(args.queue_id)
    if current is not None and is_placeholder(current):
        src = current.envelope.source or {}
        print(f"cannot retry {args.queue_id}: it only records a message left in mailbox {src.get('mailbox')!r} "
              "(there is no message in it to deliver); the poller spools the message itself once it can fetch "
              "it whole (see docs/mailboxes.md)", file=sys.stderr)
        return EX_DATAERR
    return await _move(args.queue_id, "retry", spool.requeue(args.queue_id),
                       lambda e: f"{e.state}, due now (the daemon re-routes and redelivers it)")


async def _release(spool: Spool, args: argparse.Namespace) -> int:
    from gateway.auth.held import release

    return await _move(args.queue_id, "release", release(spool, args.queue_id),
                       lambda e: "released, due now (the daemon delivers it as if it had passed)")


async def _delete(spool: Spool, args: argparse.Namespace) -> int:
    try:
        await spool.delete(args.queue_id)
    except UnknownEntry:
        print(f"no entry {args.queue_id}", file=sys.stderr)
        return EX_DATAERR
    print(f"{args.queue_id}: deleted")
    return 0
