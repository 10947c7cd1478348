"""What a check returns: a status, a one-line finding and the DNS records it looked at."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


class Status(enum.Enum):
    """What a check found. `rank` orders them and is the exit code: 0 ok/info, 1 warn/unknown, 2 fail.

    info: worth knowing, nothing wrong (an optional record is not published). unknown: the verdict depends on
    something that could not be read (a DNS timeout, SERVFAIL, refused) or was not given (no --ip) — never
    "ok", never "missing"."""

    OK = "ok"
    INFO = "info"
    UNKNOWN = "unknown"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def __str__(self) -> str:
        return self.value


_RANK = {Status.OK: 0, Status.INFO: 0, Status.UNKNOWN: 1, Status.WARN: 1, Status.FAIL: 2}
_PLAIN = (Status.OK, Status.WARN, Status.FAIL)  # a domain's status, by rank


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe rank as ok, warn or fail (a domain's status, the exit code); OK for nothing."""
    return _PLAIN[max((s.rank for s in statuses), default=0)]


def severity(status: Status) -> tuple[int, int]:
    """Sort key, most severe first; at one rank what was found (warn) before what could not be (unknown)."""
    return -status.rank, int(status in (Status.UNKNOWN, Status.INFO))


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing a check noticed; a check's status is its worst problem's."""

    status: Status
    text: str


@dataclass(frozen=True, slots=True)
class CheckResult:
    check: str  # "mx", "spf", "dkim", ...
    status: Status
    finding: str  # one line for an operator: what is wrong and what it breaks
    records: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status.value, "finding": self.finding,
                "records": list(self.records)}

    @classmethod
    def from_problems(cls, check: str, problems: Sequence[Problem], ok_text: str,
                      records: Iterable[str] = ()) -> CheckResult:
        """Worst problem first, then the others; `ok_text` when nothing is wrong."""
        bad = sorted((p for p in problems if p.status is not Status.OK), key=lambda p: severity(p.status))
        notes = [p.text for p in problems if p.status is Status.OK]
        if not bad:
            finding = "; ".join([ok_text, *notes]) if ok_text else "; ".join(notes)
            return cls(check, Status.OK, finding, tuple(records))
        return cls(check, bad[0].status, "; ".join(p.text for p in bad), tuple(records))


@dataclass(frozen=True, slots=True)
class DomainReport:
    domain: str
    checks: tuple[CheckResult, ...] = field(default_factory=tuple)

    @property
    def status(self) -> Status:
        return worst(c.status for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "status": self.status.value,
                "checks": [c.to_dict() for c in self.checks]}
