"""DNS diagnostics for mail domains (MX, SPF, DKIM, DMARC, PTR, MTA-STS, TLS-RPT) with dnspython.

    plan = plan_checks(cfg)                               # or plan_checks(None, ["example.com"], ip=...)
    reports = await run_checks(plan, DnsClient.create())  # DnsClient.create([("127.0.0.1", 5353)]) in tests
    summary = summarize(reports)                          # .line for the log, .metric 0/1/2 for a gauge

Depends only on dnspython, dkimpy and `gateway.config` types.
"""

from dns_checks.plan import CheckPlan, DomainTarget, MailDomain, plan_checks
from dns_checks.report import Summary, exit_code, render_json, render_table, summarize
from dns_checks.resolver import Answer, DnsClient, DnsLookup, parse_nameserver
from dns_checks.result import CheckResult, DomainReport, Status
from dns_checks.runner import run_checks

__all__ = [
    "Answer",
    "CheckPlan",
    "CheckResult",
    "DnsClient",
    "DnsLookup",
    "DomainReport",
    "DomainTarget",
    "MailDomain",
    "Status",
    "Summary",
    "exit_code",
    "parse_nameserver",
    "plan_checks",
    "render_json",
    "render_table",
    "run_checks",
    "summarize",
]
