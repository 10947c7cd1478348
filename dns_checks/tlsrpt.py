"""SMTP TLS reporting (RFC 8460): the ``_smtp._tls`` TXT record that says where TLS failure reports go."""

from __future__ import annotations

import re

from dns_checks.resolver import DnsLookup, normalize
from dns_checks.result import CheckResult, Status
from dns_checks.tagged_txt import lookup_tagged_txt


async def check_tls_rpt(dns: DnsLookup, domain: str) -> CheckResult:
    found = await lookup_tagged_txt(
        dns, f"_smtp._tls.{normalize(domain)}", "TLSRPTv1", "tls-rpt",
        absent="not published (optional: senders report TLS failures to the address it names)",
        several="TLS-RPT records: senders send no reports (RFC 8460 §3); keep one")
    if isinstance(found, CheckResult):
        return found
    records = found.records
    uris = [u.strip() for u in found.tags.get("rua", "").split(",") if u.strip()]
    if not uris:
        return CheckResult("tls-rpt", Status.WARN, "no rua=: the record names nowhere to send reports", records)
    bad = [u for u in uris if not re.match(r"(mailto:[^@\s]+@[^@\s]+|https://\S+)\Z", u, re.I)]
    if bad:
        return CheckResult("tls-rpt", Status.WARN, f"rua {', '.join(bad)} is not a mailto: or https: URI",
                           records)
    return CheckResult("tls-rpt", Status.OK, f"reports go to {', '.join(uris)}", records)
