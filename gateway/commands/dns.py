"""`mailgw dns-check`: find the DNS mistakes that make Odoo mail fail (MX, SPF, DKIM, DMARC, PTR, ...).

Exit status: 0 all ok, 1 warnings, 2 failures (for monitoring); 64 bad usage, 78 bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import sys
from pathlib import Path

from dns_checks import (
    DnsClient,
    MailDomain,
    exit_code,
    parse_nameserver,
    plan_checks,
    render_json,
    render_table,
    run_checks,
)
from dns_checks.resolver import DEFAULT_LIFETIME
from gateway.commands import DEFAULT_CONFIG, SubParsers, add_config_arg, report_config_error
from gateway.config import Config, ConfigError, load_config
from gateway.exitcodes import EX_CONFIG, EX_USAGE
from routing.directory import Directory


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "dns-check", help="check MX, SPF, DKIM, DMARC, PTR, MTA-STS and TLS-RPT of the mail domains",
        description="Check the DNS of each mail domain (default: every odoo[].domains entry of the config) "
        "for the mistakes that make Odoo mail fail. Exit status: 0 all ok, 1 warnings, 2 failures.",
    )
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="domains to check (default: from the config)")
    add_config_arg(p)
    p.add_argument("--selector", help="DKIM selector to check (default: dns_check.selector and the "
                   "selectors of outbound.dkim)")
    p.add_argument("--ip", help="the gateway's sending IP: SPF authorisation, PTR/FCrDNS "
                   "(default: dns_check.ip)")
    p.add_argument("--nameserver", action="append", default=[], metavar="HOST[:PORT]",
                   help="ask this server instead of the system resolver (repeatable; [v6]:port for IPv6)")
    p.add_argument("--expect-mx", action="extend", nargs="+", default=[], metavar="HOST",
                   help="host names or addresses the MX must point to (default: dns_check.expect_mx, "
                   "else the SMTP listeners' hostname/address); put DOMAINs before this option or end "
                   "its list with --")
    p.add_argument("--bounce-domain", help="envelope-sender (Return-Path) domain, if not the domain itself")
    p.add_argument("--directory", type=Path, metavar="FILE",
                   help="an alias-directory snapshot (JSON, as `mailgw directory show --json` prints) whose "
                   "alias domains are checked too, with their bounce domains (default: the daemon's cached "
                   "<state_dir>/directory.json, when checking the config's domains)")
    p.add_argument("--timeout", type=float, default=DEFAULT_LIFETIME, metavar="SECONDS",
                   help="time limit per DNS query (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per domain")
    p.add_argument("-v", "--verbose", action="store_true", help="show the records of every check")
    p.set_defaults(func=run)


def _load(args: argparse.Namespace) -> Config | None:
    """The config, or None when domains were given and the default config file does not exist."""
    if args.domains and args.config == DEFAULT_CONFIG and not Path(args.config).exists():
        return None
    return load_config(args.config)


def _read_snapshot(path: Path) -> Directory:
    try:
        return Directory.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read directory snapshot {path}: {exc}") from None


def _alias_domains(snapshot: Directory) -> list[MailDomain]:
    """Odoo's alias domains, each with the domain of its bounce address (its Return-Path)."""
    out = []
    for inst in snapshot.instances.values():
        for dom in inst.domains:
            out.append(MailDomain(dom.name, dom.bounce_email.rpartition("@")[2] or None))
    return out


def run(args: argparse.Namespace) -> int:
    try:
        cfg = _load(args)
    except ConfigError as exc:
        report_config_error(args.config, exc)
        return EX_CONFIG
    try:
        if args.ip:
            ipaddress.ip_address(args.ip)
        servers = [parse_nameserver(ns) for ns in args.nameserver]
        extra = _alias_domains(_read_snapshot(args.directory)) if args.directory else []
    except ValueError as exc:
        print(f"mailgw dns-check: {exc}", file=sys.stderr)
        return EX_USAGE
    if cfg is not None and not args.directory and not args.domains:
        # The daemon's cached snapshot: alias domains Odoo knows beyond odoo[].domains.
        from gateway.odoo.directory import load_cached

        extra = _alias_domains(load_cached(cfg))
    if args.timeout <= 0:
        print("mailgw dns-check: --timeout must be positive", file=sys.stderr)
        return EX_USAGE
    plan = plan_checks(cfg, args.domains, extra_domains=extra, bounce_domain=args.bounce_domain,
                       selector=args.selector, ip=args.ip, expect_mx=args.expect_mx)
    if not plan.targets:
        print("mailgw dns-check: no domains to check (give DOMAINs or set odoo[].domains in the config)",
              file=sys.stderr)
        return EX_USAGE
    reports = asyncio.run(run_checks(plan, DnsClient.create(servers, lifetime=args.timeout)))
    if args.json:
        print(render_json(reports))
    else:
        colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        print(render_table(reports, colour=colour, verbose=args.verbose))
    return exit_code(reports)
