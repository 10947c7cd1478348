"""Scoring the bounce parser against a corpus with an answer key (pure: the caller reads the files).

The answer key is a list of rows, one per bounced recipient (`file`, 1-based `index`, `status`,
`reply_code`, `reason`, `hard_bounce`, `feedback_type`); `index` 0 and reason `not-a-bounce` mark mail
that must not be taken for a bounce. For each row the recipient at that index is looked up in what
`bounce.dsn.parse` returned, and status, reply code, reason and hard/soft are compared.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bounce.dsn import BounceReport, parse

# Minimum shares (per cent) the parser must reach; `mailgw bounce score` exits 1 below any of them.
FLOORS = {"detected": 98.0, "count": 95.0, "status": 90.0, "reason": 85.0, "hard": 95.0}
NEGATIVE = "not-a-bounce"


@dataclass
class Scorecard:
    files: int = 0
    rows: int = 0
    detected: int = 0
    count_right: int = 0
    found: int = 0
    status: int = 0
    reply_code: int = 0
    reason: int = 0
    hard: int = 0
    negatives: int = 0
    false_positives: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    per_reason: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)

    def pct(self, name: str) -> float:
        if name == "detected":
            return _pct(self.detected, self.files - self.negatives)
        if name == "count":
            return _pct(self.count_right, self.files - self.negatives)
        return _pct(getattr(self, name), self.rows)

    def below_floors(self) -> list[str]:
        low = [f"{k} {self.pct(k):.1f}% < {v:.0f}%" for k, v in FLOORS.items() if self.pct(k) < v]
        if self.false_positives:
            low.append(f"false positives: {', '.join(self.false_positives)}")
        return low

    def table(self) -> str:
        lines = [
            f"files {self.files} (negatives {self.negatives}), answer rows {self.rows}",
            f"{'metric':<22}{'score':>10}{'floor':>8}",
            f"{'bounce detected':<22}{self.pct('detected'):>9.1f}%{FLOORS['detected']:>7.0f}%",
            f"{'recipient count':<22}{self.pct('count'):>9.1f}%{FLOORS['count']:>7.0f}%",
            f"{'recipient found':<22}{_pct(self.found, self.rows):>9.1f}%{'':>8}",
            f"{'DSN status':<22}{self.pct('status'):>9.1f}%{FLOORS['status']:>7.0f}%",
            f"{'reply code':<22}{_pct(self.reply_code, self.rows):>9.1f}%{'':>8}",
            f"{'reason':<22}{self.pct('reason'):>9.1f}%{FLOORS['reason']:>7.0f}%",
            f"{'hard/soft':<22}{self.pct('hard'):>9.1f}%{FLOORS['hard']:>7.0f}%",
            f"{'false positives':<22}{len(self.false_positives):>10}{0:>8}",
        ]
        return "\n".join(lines)

    def reason_table(self) -> str:
        rows = sorted(self.per_reason.items(), key=lambda kv: (-kv[1][1], kv[0]))
        return "\n".join(f"  {name:<16}{ok:>4}/{total:<4}" for name, (ok, total) in rows)


def _pct(n: int, d: int) -> float:
    return 100.0 * n / d if d else 100.0


def _category(rows: list[Mapping[str, Any]]) -> str:
    reasons = {r.get("reason") for r in rows}
    if NEGATIVE in reasons:
        return "negative"
    if reasons == {"vacation"}:
        return "auto_reply"
    if reasons == {"feedback"}:
        return "feedback"
    if reasons == {"delivered"}:
        return "delivered"
    return "bounce"


def _detected(category: str, report: BounceReport) -> bool:
    if category == "auto_reply":
        return report.is_auto_reply
    if category == "feedback":
        return report.is_feedback
    if category == "delivered":
        return bool(report.recipients) and not report.is_bounce
    return report.is_bounce


Parser = Callable[[bytes], BounceReport]


def score(files: Mapping[str, bytes], answers: Iterable[Mapping[str, Any]],
          parser: Parser = parse, *, parser_for: Callable[[str], Parser] | None = None) -> Scorecard:
    """Score `parser` (or, per file name, `parser_for(name)`) against the answer rows."""
    by_file: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in answers:
        if isinstance(row, Mapping) and row.get("file") and str(row.get("index", "")).isdigit():
            by_file[str(row["file"])].append(row)
    card = Scorecard()
    for name in sorted(by_file):
        if name not in files:
            continue
        rows = by_file[name]
        report = (parser_for(name) if parser_for is not None else parser)(files[name])
        category = _category(rows)
        card.files += 1
        if category == "negative":
            card.negatives += 1
            if report.is_bounce or report.is_feedback:
                card.false_positives.append(name)
            continue
        ok = _detected(category, report)
        card.detected += ok
        if not ok:
            card.misses.append(f"{name}: not detected")
        expected_count = max(int(r["index"]) for r in rows)
        card.count_right += len(report.recipients) == expected_count
        for row in rows:
            card.rows += 1
            want_reason = str(row.get("reason") or "")
            stats = card.per_reason[want_reason]
            stats[1] += 1
            idx = int(row["index"]) - 1
            if not 0 <= idx < len(report.recipients):
                card.misses.append(f"{name}#{idx + 1}: no recipient (want {want_reason})")
                card.confusion[(want_reason, "-")] += 1
                continue
            got = report.recipients[idx]
            card.found += 1
            want_status = str(row.get("status") or "")
            card.status += got.status == want_status
            card.reply_code += got.reply_code == str(row.get("reply_code") or "")
            good_reason = got.reason == want_reason
            card.reason += good_reason
            stats[0] += good_reason
            card.hard += got.hard == bool(row.get("hard_bounce"))
            if not good_reason:
                card.confusion[(want_reason, got.reason)] += 1
            if not good_reason or got.status != want_status:
                card.misses.append(f"{name}#{idx + 1}: want {want_status}/{want_reason} "
                                   f"got {got.status}/{got.reason}")
    return card


# --- generalisation: per family, leave one family out, held-out split --------------------------------
_NUMBERED = re.compile(r"-\d+$")
# Corpus engine names that other names in the parser stand for (Lotus Notes is Domino, and so on).
ALIASES: dict[str, frozenset[str]] = {
    "notes": frozenset({"domino"}), "domino": frozenset({"notes"}),
    "yahoo": frozenset({"yahooinc"}), "yahooinc": frozenset({"yahoo"}),
    "ezweb": frozenset({"kddi"}), "microsoft": frozenset({"outlook"}), "spectrum": frozenset({"cox"}),
    "exchange2007": frozenset({"exchange2003"}), "gsuite": frozenset({"gmail", "google"}),
    "google": frozenset({"gmail"}), "v5sendmail": frozenset({"sendmail"}),
}


def family_of(name: str) -> str:
    """The family a corpus file belongs to, from its name: `lhost-postfix-01.eml` → `lhost-postfix`."""
    stem = _NUMBERED.sub("", name.removesuffix(".eml"))
    parts = stem.split("-")
    return "-".join(parts[:2]) if parts[0] in ("lhost", "rhost") and len(parts) > 1 else stem


def engine_of(family: str) -> str:
    """The engine a family names (`lhost-postfix` → `postfix`), as the parser's detectors name it."""
    kind, _, engine = family.partition("-")
    return engine if kind in ("lhost", "rhost") and engine else family


def disabled_for(family: str) -> frozenset[str]:
    engine = engine_of(family)
    return frozenset({engine}) | ALIASES.get(engine, frozenset())


def leave_one_out_parser(name: str) -> Parser:
    """A parser that reads `name` with its own family's detectors and provider rules switched off."""
    off = disabled_for(family_of(name))
    return lambda raw: parse(raw, disabled=off)


def held_out(name: str, share: int = 30) -> bool:
    """Whether `name` is in the held-out part (`share` per cent of files, fixed by a hash of the name)."""
    return hashlib.sha256(name.encode()).digest()[0] * 100 < share * 256


def by_family(files: Mapping[str, bytes], answers: list[Mapping[str, Any]],
              parser_for: Callable[[str], Parser] | None = None) -> dict[str, Scorecard]:
    """One scorecard per family (negatives: the mail that is not a bounce, together)."""
    groups: dict[str, dict[str, bytes]] = defaultdict(dict)
    for name, raw in files.items():
        groups[family_of(name)][name] = raw
    return {family: score(group, answers, parser_for=parser_for) for family, group in sorted(groups.items())}


def family_table(cards: Mapping[str, Scorecard], baseline: Mapping[str, Scorecard] | None = None) -> str:
    """Per family: files, detected, recipients, status, reason, hard/soft (and the leave-one-out
    figures beside them when `baseline`, the plain cards, is given)."""
    metrics = ("detected", "count", "status", "reason", "hard")
    head = f"{'family':<22}{'files':>6}" + "".join(f"{m:>10}" for m in metrics)
    if baseline is not None:
        head += "   (leave-one-family-out, plain in brackets)"
    lines = [head]
    for family, card in cards.items():
        cells = []
        for m in metrics:
            cell = f"{card.pct(m):.0f}"
            if baseline is not None and family in baseline and round(baseline[family].pct(m)) != round(
                    card.pct(m)):
                cell += f"({baseline[family].pct(m):.0f})"
            cells.append(f"{cell:>10}")
        fp = f"  false positives {len(card.false_positives)}" if card.false_positives else ""
        lines.append(f"{family:<22}{card.files:>6}" + "".join(cells) + fp)
    return "\n".join(lines)
