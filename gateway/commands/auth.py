"""`mailgw auth check`: verify a message's sender (SPF, DKIM, DMARC, ARC) as the gateway would at intake,
and say what each recipient's Odoo instance would do with it. Delivers nothing, stores nothing."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from gateway.commands import DEFAULT_CONFIG, SubParsers, add_config_arg, read_message, report_config_error
from gateway.config import Config, ConfigError, load_config
from gateway.exitcodes import EX_CONFIG, EX_NOINPUT, EX_USAGE


def register(sub: SubParsers) -> None:
    p = sub.add_parser("auth", help="sender authentication (SPF, DKIM, DMARC, ARC)",
                       description="Sender authentication, as the gateway does it at intake.")
    asub = p.add_subparsers(dest="auth_command", metavar="ACTION")
    c = asub.add_parser(
        "check", help="verify a message's sender and say what the gateway would do with it",
        description="Check SPF (of --mail-from and --helo against --ip), every DKIM signature, DMARC of the From "
        "domain and the ARC chain, as the gateway does at intake; print each result with its reason, the "
        "DMARC policy, the action each recipient's Odoo instance would take (odoo[].auth) and the "
        "Authentication-Results header the gateway would add. Recipients: --rcpt, else the message's "
        "Delivered-To, To and Cc addresses in the configured domains.")
    add_config_arg(c)
    c.add_argument("file", metavar="FILE.eml", help="the message; - for stdin")
    c.add_argument("--ip", required=True, help="the SMTP client's address")
    c.add_argument("--helo", help="the name the client gave in HELO/EHLO")
    c.add_argument("--mail-from", default=None, metavar="ADDR",
                   help="the envelope sender (default: the message's Return-Path; '' for the null sender)")
    c.add_argument("--rcpt", action="append", default=[], metavar="ADDR", help="an envelope recipient (repeatable)")
    c.add_argument("--nameserver", action="append", default=[], metavar="HOST[:PORT]",
                   help="ask this server (repeatable; default: auth.nameservers, else the system's resolver)")
    c.add_argument("--offline", action="store_true", help="do not ask Odoo whether References name a known thread")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=run)
    p.set_defaults(func=lambda a: (p.print_help(), EX_USAGE)[1])


def _config(path: str) -> Config:
    if path == DEFAULT_CONFIG and not Path(path).exists():
        return Config()
    return load_config(path)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = _config(args.config)
    except ConfigError as exc:
        report_config_error(args.config, exc)
        return EX_CONFIG
    try:
        ipaddress.ip_address(args.ip)
    except ValueError:
        print(f"mailgw auth check: --ip {args.ip!r} is not an IP address", file=sys.stderr)
        return EX_USAGE
    try:
        raw = read_message(args.file)
    except OSError as exc:
        print(f"mailgw auth check: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EX_NOINPUT
    try:
        out = asyncio.run(_check(cfg, args, raw))
    except ValueError as exc:  # a bad --nameserver
        print(f"mailgw auth check: {exc}", file=sys.stderr)
        return EX_USAGE
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(render(out))
    return 0


async def _check(cfg: Config, args: argparse.Namespace, raw: bytes) -> dict[str, Any]:
    from gateway.auth.gate import recipient_decisions
    from gateway.auth.resolver import build_resolver
    from gateway.auth.verifier import Verifier
    from gateway.commands.route import _lookup
    from gateway.headers import envelope_from_headers
    from gateway.host import default_hostname
    from gateway.odoo.directory import load_cached
    from gateway.routing_policy import policy_from_config
    from routing.message import MessageView
    from routing.router import Router

    auth = cfg.auth
    resolver = build_resolver(args.nameserver or auth.nameservers, timeout=auth.dns_timeout, cache_size=0)
    verifier = Verifier(resolver, authserv_id=auth.authserv_id or default_hostname(),
                        trusted_sealers=auth.trusted_arc_sealers, timeout=auth.timeout)
    return_path, header_rcpts, _mid = envelope_from_headers(raw, lambda d: d in cfg.domain_owner)
    mail_from = return_path if args.mail_from is None else args.mail_from
    verdict = await verifier.check(raw, ip=args.ip, helo=args.helo, mail_from=mail_from)
    out = verdict.to_dict()
    rcpts = list(args.rcpt or header_rcpts)
    warnings: list[str] = []
    if rcpts:
        directory = load_cached(cfg)
        router = Router(directory, policy_from_config(cfg))
        view = MessageView.from_bytes(raw)
        known: dict[str, Any] = {}
        refs = router.reference_ids(view)
        if refs and not args.offline and not verdict.authenticated:
            known, warnings = await _lookup(cfg, router, refs, rcpts)
        decisions = list(router.route(view, rcpts, known))
        actions = recipient_decisions(cfg, verdict.summary(), view, rcpts, decisions, directory)
        out["recipients"] = {r: {**d.to_dict(), "smtp_reply": d.smtp_reply()} for r, d in actions.items()}
    else:
        out["recipients"] = {}
        warnings.append("no recipient in the configured domains: give --rcpt to see the actions")
    out["envelope"] = {"ip": args.ip, "helo": args.helo, "mail_from": mail_from}
    out["warnings"] = warnings
    return out


def render(out: dict[str, Any]) -> str:
    spf, dmarc, arc = out["spf"], out["dmarc"], out["arc"]
    lines = [f"SPF     {spf['result']:<9} {spf['mail_from'] or '(null sender)'}: {spf['reason']}"]
    if spf.get("helo"):
        lines.append(f"        HELO {spf['helo']}: {spf['helo_result']}")
    for d in out["dkim"] or [{"result": "none", "domain": "", "selector": "", "reason": "message not signed"}]:
        where = f"d={d['domain']} s={d['selector']} " if d["domain"] else ""
        lines.append(f"DKIM    {d['result']:<9} {where}{d.get('algorithm') or ''} {d['reason']}".rstrip())
    policy = f"p={dmarc['policy']} pct={dmarc['pct']} (record at _dmarc.{dmarc['policy_domain']})" \
        if dmarc["policy"] else "no policy"
    lines.append(f"DMARC   {dmarc['result']:<9} From {dmarc['from_domain'] or '(none)'}: {dmarc['reason']}")
    lines.append(f"        policy {policy}; the policy asks: {dmarc['disposition']}")
    lines.append(f"ARC     {arc['result']:<9} {arc['reason']}")
    if arc.get("override"):
        lines.append(f"        accepted: {arc['override']}")
    lines.append(f"sender authenticated: {'yes' if out['authenticated'] else 'no'}"
                 + (" (temporary error)" if out["temporary"] else ""))
    lines.append("")
    for rcpt, d in out["recipients"].items():
        lines.append(f"{rcpt}: {d['action']} ({d['rule']}) {d['reason']}")
    lines += [f"warning: {w}" for w in out["warnings"]]
    lines += ["", f"Authentication-Results: {out['authentication_results']}"]
    return "\n".join(lines)
