"""The one-record-per-name, `v=<version>; tag=value; …` TXT policies (MTA-STS, TLS-RPT): find the record and
parse its tags, or say why there is nothing to check."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dns_checks.resolver import DnsLookup
from dns_checks.result import CheckResult, Status


@dataclass(frozen=True, slots=True)
class TaggedRecord:
    tags: dict[str, str]  # lower-cased tag -> value
    records: tuple[str, ...]  # "name: text", for the report


def parse_tags(text: str) -> dict[str, str]:
    """'v=STSv1; id=2024' -> {'v': 'STSv1', 'id': '2024'}; tag names lower-cased, values stripped."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if part.strip():
            key, _, value = part.partition("=")
            tags[key.strip().lower()] = value.strip()
    return tags


async def lookup_tagged_txt(dns: DnsLookup, name: str, version: str, check: str, *, absent: str,
                            several: str) -> TaggedRecord | CheckResult:
    """The single `v=<version>` TXT record at `name`, or the result that ends the check: a DNS error (unknown),
    none published (info, `absent`: these records are optional), more than one (warn, `several`: receivers then
    ignore them all)."""
    ans = await dns.query(name, "TXT")
    if ans.is_error:
        return CheckResult(check, Status.UNKNOWN, ans.describe())
    start = re.compile(rf"v={re.escape(version)}\s*(;|\Z)")
    texts = [t for t in ans.texts() if start.match(t)]
    records = tuple(f"{name}: {t}" for t in texts)
    if not texts:
        return CheckResult(check, Status.INFO, absent)
    if len(texts) > 1:
        return CheckResult(check, Status.WARN, f"{len(texts)} {several}", records)
    return TaggedRecord(parse_tags(texts[0]), records)
