"""`mailgw tls-report [--date YYYY-MM-DD]`: the day's TLS-RPT (RFC 8460) reports, one per policy domain."""

from __future__ import annotations

import argparse
import json
import sys
import time

from gateway.commands import SubParsers, add_config_arg, load_config_or_report
from gateway.exitcodes import EX_CONFIG, EX_USAGE


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "tls-report", help="print the TLS reports (RFC 8460) built from a day's counters",
        description="Print the SMTP TLS reports (RFC 8460 JSON, one per recipient policy domain) built from the "
        "counters the daemon keeps in <state_dir>/tls-reports/. Sending them to the address a domain publishes "
        "in its _smtp._tls record (rua=) is left to you, e.g. from a daily cron job.")
    add_config_arg(p)
    p.add_argument("--date", help="UTC day YYYY-MM-DD (default: yesterday, the last complete day)")
    p.add_argument("--domain", action="append", help="only this policy domain (repeatable)")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from gateway.outbound.tlsrpt import build_reports, day_of, load_day

    config = load_config_or_report(args.config)
    if config is None:
        return EX_CONFIG
    day = args.date or day_of(time.time() - 86400)
    if len(day) != 10 or day[4] != "-" or day[7] != "-":
        print(f"--date {day!r} is not YYYY-MM-DD", file=sys.stderr)
        return EX_USAGE
    tr = config.outbound.tls_reports
    organization = tr.organization or config.outbound.helo_name or "mailgw"
    reports = build_reports(load_day(config.state_dir / "tls-reports", day), day, organization=organization,
                            contact=tr.contact)
    if args.domain:
        wanted = {d.lower().rstrip(".") for d in args.domain}
        reports = [r for r in reports if r["report-id"].split("_", 1)[1] in wanted]
    print(json.dumps(reports, indent=1))
    return 0
