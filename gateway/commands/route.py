"""`mailgw route`: explain what the gateway (and Odoo behind it) will do with a message, without delivering it.

The directory is the snapshot the daemon cached (``<state_dir>/directory.json``) or, with ``--directory``,
any file in the format ``mailgw directory show --json`` prints. With ``--directory`` (or ``--offline``)
nothing is asked of Odoo, so a reply is recognised only through ``--known``; otherwise the message's
References are looked up on the owning instances, as the inbound worker does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.commands import SubParsers, add_config_arg, load_config_or_report, read_message
from gateway.config import Config, ConfigError
from gateway.exitcodes import EX_CONFIG, EX_DATAERR, EX_NOINPUT, EX_USAGE
from gateway.routing_policy import policy_from_config
from routing.directory import Directory
from routing.message import MessageView, parse_model_id
from routing.replies import KnownMessage
from routing.router import Router, explain, header_recipients


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "route", help="explain the routing decision for a message (delivers nothing)",
        description="Explain, per recipient, which route the gateway and Odoo take for a message: bounce, "
        "reply, alias, subaddress, fallback or refuse, with the rule that fired and why. Without --rcpt the "
        "recipients are the message's Delivered-To, To and Cc addresses.")
    add_config_arg(p)
    p.add_argument("file", metavar="FILE.eml", help="the message (only its headers are read); - for stdin")
    p.add_argument("--rcpt", action="append", default=[], metavar="ADDR",
                   help="an envelope recipient (repeatable)")
    p.add_argument("--directory", metavar="FILE.json",
                   help="a directory snapshot (as `mailgw directory show --json` prints); implies --offline")
    p.add_argument("--offline", action="store_true", help="do not look up References on Odoo")
    p.add_argument("--known", action="append", default=[], metavar="MSGID=INSTANCE:MODEL-ID",
                   help="treat a Message-Id as known to Odoo, e.g. '<a@b>=odoo:crm.lead-7' (repeatable)")
    p.add_argument("--json", action="store_true", help='print {"recipients": [...]} as JSON')
    p.set_defaults(func=run)


def _load_directory(cfg: Config, name: str | None) -> Directory:
    owner = cfg.domain_owner
    if name is None:
        from gateway.odoo.directory import load_cached

        return load_cached(cfg)
    data = json.loads(Path(name).read_text())
    if not isinstance(data, dict):
        raise ValueError("a directory snapshot is a JSON object")
    snapshot = Directory.from_dict(data)
    # Domain ownership: the snapshot's, with the config's on top (the config is what the daemon enforces).
    return Directory.build(snapshot.instances.values(), {**snapshot.domain_owner, **owner})


def parse_known(items: Sequence[str]) -> dict[str, KnownMessage]:
    """``<id>=instance:model-id`` (or ``instance:`` alone for a message without record) -> KnownMessage."""
    out: dict[str, KnownMessage] = {}
    for item in items:
        mid, eq, target = item.rpartition("=")
        instance, colon, record = target.partition(":")
        if not eq or not colon or not mid.strip() or not instance:
            raise ValueError(f"--known {item!r}: expected MSGID=INSTANCE:MODEL-ID")
        parsed = parse_model_id(record) if record else None
        if record and parsed is None:
            raise ValueError(f"--known {item!r}: {record!r} is not MODEL-ID (e.g. crm.lead-7)")
        mid = mid.strip()
        out[mid] = KnownMessage(instance, parsed[0] if parsed else None, parsed[1] if parsed else None, mid)
    return out


async def _lookup(cfg: Config, router: Router, refs: Sequence[str], recipients: Sequence[str]) -> \
        tuple[dict[str, KnownMessage], list[str]]:
    """Look the references up on each instance owning a recipient (as the inbound worker does)."""
    from gateway.odoo.client import OdooClient

    known: dict[str, KnownMessage] = {}
    warnings: list[str] = []
    instances = dict.fromkeys(o for r in recipients if (o := router.owner_of(r.rpartition("@")[2])))
    for name in instances:
        try:
            client = OdooClient(cfg.instance(name))
        except (ConfigError, KeyError) as exc:
            warnings.append(f"{name}: no reply lookup ({exc})")
            continue
        try:
            row = await client.find_message(refs)
        except Exception as exc:  # any failure only costs the reply prediction, which the output says
            warnings.append(f"{name}: reply lookup failed ({exc}); routed as if no reference were known")
            row = None
        finally:
            await client.close()
        if row and row.get("message_id"):
            mid = str(row["message_id"])
            known[mid] = KnownMessage(name, row.get("model") or None, row.get("res_id") or None, mid,
                                      id=int(row.get("id") or 0))
    return known, warnings


def render(decisions: Sequence[Any], msg: MessageView, refs: Sequence[str], known: Mapping[str, KnownMessage],
           warnings: Sequence[str]) -> str:
    head = [
        f"Message-Id: {msg.message_id or '(none)'}",
        f"From:       {msg.email_from or '(none)'}",
        f"Subject:    {msg.subject or '(none)'}",
    ]
    if refs:
        found = [f"{k} -> {v.instance}:{v.model or '-'}/{v.res_id or '-'}" for k, v in known.items() if k in refs]
        head.append(f"References: {len(refs)} looked up, {len(found)} known" + (":" if found else ""))
        head += [f"  {line}" for line in found]
    head += [f"warning: {w}" for w in warnings]
    return "\n".join(head) + "\n\n" + explain(decisions)


def run(args: argparse.Namespace) -> int:
    cfg = load_config_or_report(args.config)
    if cfg is None:
        return EX_CONFIG
    try:
        raw = read_message(args.file)
    except OSError as exc:
        print(f"mailgw route: {args.file}: {exc.strerror}", file=sys.stderr)
        return EX_NOINPUT
    try:
        directory = _load_directory(cfg, args.directory)
    except OSError as exc:
        print(f"mailgw route: {args.directory}: {exc.strerror}", file=sys.stderr)
        return EX_NOINPUT
    except (ValueError, KeyError, TypeError) as exc:
        print(f"mailgw route: {args.directory}: not a directory snapshot: {exc}", file=sys.stderr)
        return EX_DATAERR
    try:
        known = parse_known(args.known)
    except ValueError as exc:
        print(f"mailgw route: {exc}", file=sys.stderr)
        return EX_USAGE

    router = Router(directory, policy_from_config(cfg))
    msg = MessageView.from_bytes(raw)
    recipients = list(args.rcpt) or header_recipients(msg)
    if not recipients:
        print("mailgw route: no recipients: the message has no Delivered-To, To or Cc; give --rcpt", file=sys.stderr)
        return EX_USAGE
    refs = router.reference_ids(msg)
    warnings: list[str] = []
    if refs and not (args.offline or args.directory):
        found, warnings = asyncio.run(_lookup(cfg, router, refs, recipients))
        known = {**found, **known}
    missing = [i for i in cfg.odoo if not directory.is_ready(i.name)]
    warnings += [f"{i.name}: no directory snapshot (run the daemon, or give --directory)" for i in missing]

    decisions = router.route(msg, recipients, known)
    if args.json:
        print(json.dumps({"recipients": [d.to_dict() for d in decisions]}, indent=2, ensure_ascii=False))
        for w in warnings:
            print(f"mailgw route: warning: {w}", file=sys.stderr)
    else:
        print(render(decisions, msg, refs, known, warnings))
    return 0
