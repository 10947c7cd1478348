"""MTA-STS (RFC 8461): the ``_mta-sts`` TXT record and its policy host. Fetching the HTTPS policy is out of
scope (it needs the internet); a published record whose policy host does not even resolve is reported.
"""

from __future__ import annotations

import asyncio
import re

from dns_checks.resolver import DnsLookup, normalize
from dns_checks.result import CheckResult, Status
from dns_checks.tagged_txt import lookup_tagged_txt

_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")


async def check_mta_sts(dns: DnsLookup, domain: str) -> CheckResult:
    domain = normalize(domain)
    found = await lookup_tagged_txt(
        dns, f"_mta-sts.{domain}", "STSv1", "mta-sts",
        absent="not published (optional: MTA-STS makes senders require TLS to your MX)",
        several="MTA-STS records: senders then assume no policy (RFC 8461 §3.1); keep one")
    if isinstance(found, CheckResult):
        return found
    records = found.records
    policy_id = found.tags.get("id", "")
    if not _ID.match(policy_id):
        return CheckResult("mta-sts", Status.WARN, f"id={policy_id!r} must be 1-32 letters or digits: "
                           "senders ignore the record", records)
    host = f"mta-sts.{domain}"
    a, aaaa = await asyncio.gather(dns.query(host, "A"), dns.query(host, "AAAA"))
    if a.is_error or aaaa.is_error:
        bad = a if a.is_error else aaaa
        return CheckResult("mta-sts", Status.UNKNOWN, f"record ok (id={policy_id}); policy host: "
                           f"{bad.describe()}", records)
    if not (a.addresses() or aaaa.addresses()):
        return CheckResult("mta-sts", Status.WARN, f"record published (id={policy_id}) but the policy host "
                           f"{host} does not resolve: senders cannot fetch the policy", records)
    return CheckResult("mta-sts", Status.OK, f"record published (id={policy_id}); policy host {host} "
                       "resolves (HTTPS policy not fetched)", records)

