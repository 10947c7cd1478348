"""Rendering and summarising reports: a table for people, JSON for tools, one line and a number for the
daemon's log and metrics. Exit code / metric: 0 all ok, 1 warnings, 2 failures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from dns_checks.result import CheckResult, DomainReport, Status, severity, worst

_COLOURS = {Status.OK: "\033[32m", Status.INFO: "\033[36m", Status.UNKNOWN: "\033[35m", Status.WARN: "\033[33m",
            Status.FAIL: "\033[1;31m"}
_RESET = "\033[0m"


def exit_code(reports: Sequence[DomainReport]) -> int:
    return worst(r.status for r in reports).rank


def render_json(reports: Sequence[DomainReport]) -> str:
    """A JSON array of ``{"domain", "status", "checks": [{"check", "status", "finding", "records"}]}``."""
    return json.dumps([r.to_dict() for r in reports], indent=2, ensure_ascii=False)


def render_table(reports: Sequence[DomainReport], *, colour: bool = False, verbose: bool = False) -> str:
    """Columns DOMAIN CHECK STATUS FINDING; records under each check that is not ok (all with verbose)."""
    rows: list[tuple[str, CheckResult]] = [(r.domain, c) for r in reports for c in r.checks]
    w_dom = max([len("DOMAIN"), *(len(d) for d, _ in rows)])
    w_chk = max([len("CHECK"), *(len(c.check) for _, c in rows)])
    lines = [f"{'DOMAIN':<{w_dom}}  {'CHECK':<{w_chk}}  STATUS   FINDING"]
    previous = None
    for domain, c in rows:
        shown = domain if domain != previous else ""
        previous = domain
        status = f"{c.status.value:<7}"
        if colour:
            status = f"{_COLOURS[c.status]}{status}{_RESET}"
        lines.append(f"{shown:<{w_dom}}  {c.check:<{w_chk}}  {status}  {c.finding}")
        if verbose or c.status is not Status.OK:
            indent = " " * (w_dom + w_chk + 15)
            lines.extend(f"{indent}| {rec}" for rec in c.records)
    summary = summarize(reports)
    lines += ["", summary.line]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Summary:
    status: Status
    counts: dict[str, int]  # checks per status value
    domains: dict[str, str]  # domain -> worst status value
    problems: list[str] = field(default_factory=list)  # "domain check status: finding", worst first

    @property
    def exit_code(self) -> int:
        return self.status.rank

    @property
    def metric(self) -> int:
        """For a gauge such as ``mailgw_dns_check_status`` (0 ok, 1 warn, 2 fail)."""
        return self.status.rank

    @property
    def line(self) -> str:
        n = len(self.domains)
        head = (f"dns-check {self.status.value}: {n} domain{'s' if n != 1 else ''}, {self.counts['ok']} ok, "
                f"{self.counts['warn']} warn, {self.counts['fail']} fail")
        extra = [f"{self.counts[s]} {s}" for s in ("info", "unknown") if self.counts[s]]
        head += f", {', '.join(extra)}" if extra else ""
        bad = [f"{d} {s}" for d, s in self.domains.items() if s != "ok"]
        return head + (f" ({', '.join(bad)})" if bad else "")

    def to_dict(self) -> dict[str, object]:
        return {"status": self.status.value, "counts": self.counts, "domains": self.domains,
                "problems": self.problems}


def summarize(reports: Sequence[DomainReport]) -> Summary:
    counts = {s.value: 0 for s in Status}
    problems: list[tuple[tuple[int, int], str]] = []
    for r in reports:
        for c in r.checks:
            counts[c.status.value] += 1
            if c.status.rank:
                problems.append((severity(c.status), f"{r.domain} {c.check} {c.status.value}: {c.finding}"))
    problems.sort(key=lambda p: p[0])
    return Summary(worst(r.status for r in reports), counts, {r.domain: r.status.value for r in reports},
                   [p for _, p in problems])
