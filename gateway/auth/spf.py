"""SPF (RFC 7208) of the SMTP client: the MAIL FROM identity (what DMARC uses) and the HELO identity.

The evaluation is dns-check's `check_host()` (dns_checks/spf_eval.py): one RFC 7208 evaluator for both
uses, running on whatever async `DnsLookup` it is given — here the gateway's cached resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Any

from dns_checks.resolver import DnsLookup, normalize
from dns_checks.spf_eval import SpfOutcome, check_host, is_valid_domain


@dataclass(frozen=True, slots=True)
class SpfVerdict:
    result: str  # pass fail softfail neutral none permerror temperror
    domain: str  # the domain evaluated for the MAIL FROM identity ("" when there was none to evaluate)
    mail_from: str  # smtp.mailfrom: the envelope sender, or postmaster@HELO for the null sender (§2.4)
    helo: str
    helo_result: str  # the HELO identity's own result ("none" when HELO is not a domain name)
    reason: str = ""
    matched: str = ""
    lookups: int = 0
    ip: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"result": self.result, "domain": self.domain, "mail_from": self.mail_from, "helo": self.helo,
                "helo_result": self.helo_result, "reason": self.reason, "matched": self.matched,
                "lookups": self.lookups, "ip": self.ip}


def _describe(out: SpfOutcome, domain: str, ip: str) -> str:
    if out.result == "pass":
        return f"{ip} is allowed by {out.matched}" if out.matched else f"{ip} is allowed"
    if out.result in ("fail", "softfail", "neutral"):
        how = f": matched {out.matched}" if out.matched else ""
        return f"{ip} is not allowed to send for {domain}{how}"
    return out.reason or f"{out.result} for {domain}"


def helo_domain(helo: str | None) -> str:
    """The HELO name as a domain to evaluate, or "" (an address literal or a single label is no identity)."""
    name = normalize(helo or "")
    return name if name and not name.startswith("[") and is_valid_domain(name) else ""


async def check_spf(dns: DnsLookup, ip: str | None, mail_from: str, helo: str | None) -> SpfVerdict:
    """Both identities, evaluated together. `mail_from` is "" for the null sender."""
    helo_name = helo_domain(helo)
    sender = mail_from.strip().strip("<>")
    if sender:
        domain = normalize(sender.rpartition("@")[2])
    else:
        domain = helo_name
        sender = f"postmaster@{helo_name}" if helo_name else ""
    try:
        addr = ipaddress.ip_address((ip or "").strip("[]"))
    except ValueError:
        return SpfVerdict("none", domain, sender, helo or "", "none", reason="the client's address is not known")
    if not domain or not is_valid_domain(domain):
        why = "null sender and no usable HELO name" if not mail_from else f"{domain or sender!r} is not a domain"
        return SpfVerdict("none", domain, sender, helo or "", "none", reason=why, ip=str(addr))
    mail_task = check_host(dns, addr, domain, sender, helo=helo_name or "unknown")
    if helo_name and helo_name != domain:
        out, helo_out = await asyncio.gather(mail_task, check_host(dns, addr, helo_name, f"postmaster@{helo_name}",
                                                                   helo=helo_name))
        helo_result = helo_out.result
    else:
        out = await mail_task
        helo_result = out.result if helo_name else "none"
    return SpfVerdict(out.result, domain, sender, helo or "", helo_result, _describe(out, domain, str(addr)),
                      out.matched, out.lookups, str(addr))
