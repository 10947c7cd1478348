"""MTA-STS (RFC 8461): the ``_mta-sts`` TXT record and its policy host. Fetching the HTTPS policy is out of
scope (it needs the internet); a published record whose policy host does not even resolve is reported.
"""

from __future__ import annotations

import asyncio
import re

from dns_checks.resolver import DnsLookup, normalize
from dns_checks.result import CheckResult, Status

_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")


async def check_mta_sts(dns: DnsLookup, domain: str) -> CheckResult:
    domain = normalize(domain)
    name = f"_mta-sts.{domain}"
    ans = await dns.query(name, "TXT")
    if ans.is_error:
        return CheckResult("mta-sts", Status.WARN, ans.describe())
    texts = [t for t in ans.texts() if re.match(r"v=STSv1\s*(;|\Z)", t)]
    records = tuple(f"{name}: {t}" for t in texts)
    if not texts:
        return CheckResult("mta-sts", Status.OK, "not published (optional: MTA-STS makes senders require "
                           "TLS to your MX)")
    if len(texts) > 1:
        return CheckResult("mta-sts", Status.WARN, f"{len(texts)} MTA-STS records: senders then assume no "
                           "policy (RFC 8461 §3.1); keep one", records)
    tags = dict(_tag(part) for part in texts[0].split(";") if part.strip())
    policy_id = tags.get("id", "")
    if not _ID.match(policy_id):
        return CheckResult("mta-sts", Status.WARN, f"id={policy_id!r} must be 1-32 letters or digits: "
                           "senders ignore the record", records)
    host = f"mta-sts.{domain}"
    a, aaaa = await asyncio.gather(dns.query(host, "A"), dns.query(host, "AAAA"))
    if a.is_error or aaaa.is_error:
        bad = a if a.is_error else aaaa
        return CheckResult("mta-sts", Status.WARN, f"record ok (id={policy_id}); policy host: "
                           f"{bad.describe()}", records)
    if not (a.addresses() or aaaa.addresses()):
        return CheckResult("mta-sts", Status.WARN, f"record published (id={policy_id}) but the policy host "
                           f"{host} does not resolve: senders cannot fetch the policy", records)
    return CheckResult("mta-sts", Status.OK, f"record published (id={policy_id}); policy host {host} "
                       "resolves (HTTPS policy not fetched)", records)


def _tag(part: str) -> tuple[str, str]:
    key, _, value = part.partition("=")
    return key.strip().lower(), value.strip()
