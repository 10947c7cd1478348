"""SMTP TLS reporting (RFC 8460): the ``_smtp._tls`` TXT record that says where TLS failure reports go."""

from __future__ import annotations

import re

from dns_checks.resolver import DnsLookup, normalize
from dns_checks.result import CheckResult, Status


async def check_tls_rpt(dns: DnsLookup, domain: str) -> CheckResult:
    name = f"_smtp._tls.{normalize(domain)}"
    ans = await dns.query(name, "TXT")
    if ans.is_error:
        return CheckResult("tls-rpt", Status.WARN, ans.describe())
    texts = [t for t in ans.texts() if re.match(r"v=TLSRPTv1\s*(;|\Z)", t)]
    records = tuple(f"{name}: {t}" for t in texts)
    if not texts:
        return CheckResult("tls-rpt", Status.OK, "not published (optional: senders report TLS failures to "
                           "the address it names)")
    if len(texts) > 1:
        return CheckResult("tls-rpt", Status.WARN, f"{len(texts)} TLS-RPT records: senders send no reports "
                           "(RFC 8460 §3); keep one", records)
    tags = {}
    for part in texts[0].split(";"):
        key, _, value = part.partition("=")
        tags[key.strip().lower()] = value.strip()
    uris = [u.strip() for u in tags.get("rua", "").split(",") if u.strip()]
    if not uris:
        return CheckResult("tls-rpt", Status.WARN, "no rua=: the record names nowhere to send reports", records)
    bad = [u for u in uris if not re.match(r"(mailto:[^@\s]+@[^@\s]+|https://\S+)\Z", u, re.I)]
    if bad:
        return CheckResult("tls-rpt", Status.WARN, f"rua {', '.join(bad)} is not a mailto: or https: URI",
                           records)
    return CheckResult("tls-rpt", Status.OK, f"reports go to {', '.join(uris)}", records)
