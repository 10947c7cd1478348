"""DMARC (RFC 7489) of the From domain: policy discovery, identifier alignment, the result and what the
policy asks for this message.

Discovery and the record's syntax are dns-check's (dns_checks/dmarc.py), with the organizational domain from
the Public Suffix List. `aligned` is computed even when the domain publishes no record (relaxed alignment
then): the gateway's identity protection asks "did the From domain authenticate this message?" whatever
the domain's own policy says.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from dns_checks.dmarc import is_aligned, lookup_dmarc
from dns_checks.resolver import DnsLookup, normalize
from gateway.auth.dkim import DkimVerdict
from gateway.auth.spf import SpfVerdict
from gateway.headers import addresses, header_fields, header_section, unfold

_DOWNGRADE = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@dataclass(frozen=True, slots=True)
class DmarcVerdict:
    result: str  # pass fail none temperror permerror
    from_domain: str
    policy: str = ""  # the p= (or sp=) that applies; "" without a usable record
    disposition: str = "none"  # what the policy asks for this message, pct applied: none | quarantine | reject
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    aligned: bool = False  # an aligned SPF or DKIM pass, under the record's modes (relaxed without one)
    aligned_by: str = ""  # "spf", "dkim" or "spf,dkim"
    policy_domain: str = ""  # where the record was found
    record: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"result": self.result, "policy": self.policy or None, "from_domain": self.from_domain,
                "disposition": self.disposition, "pct": self.pct, "adkim": self.adkim, "aspf": self.aspf,
                "aligned": self.aligned, "aligned_by": self.aligned_by or None,
                "policy_domain": self.policy_domain or None, "record": self.record or None, "reason": self.reason}


def from_domain(raw: bytes) -> tuple[str, str]:
    """(the RFC5322.From domain, "") or ("", why DMARC cannot use it): exactly one From field whose addresses
    all share one domain (RFC 7489 §6.6.1)."""
    values = [unfold(d.split(b":", 1)[1]).decode("utf-8", "replace")
              for n, d in header_fields(header_section(raw)) if n.lower() == b"from" and b":" in d]
    if not values:
        return "", "no From header"
    if len(values) > 1:
        return "", f"{len(values)} From headers"
    domains = {normalize(addr.rpartition("@")[2]) for addr in addresses(values) if "@" in addr}
    if not domains or "" in domains:
        return "", "no address with a domain in From"
    if len(domains) > 1:
        return "", f"From names several domains ({', '.join(sorted(domains))})"
    return domains.pop(), ""


async def evaluate_dmarc(dns: DnsLookup, raw: bytes, spf: SpfVerdict, dkims: Sequence[DkimVerdict],
                         rng: random.Random | None = None) -> DmarcVerdict:
    domain, problem = from_domain(raw)
    if not domain:
        return DmarcVerdict("permerror", "", reason=problem)
    found = await lookup_dmarc(dns, domain)
    pol = found.policy
    adkim, aspf = (pol.adkim, pol.aspf) if pol else ("r", "r")
    spf_ok = spf.result == "pass" and bool(spf.domain) and is_aligned(spf.domain, domain, aspf)
    dkim_ok = any(d.result == "pass" and is_aligned(d.domain, domain, adkim) for d in dkims)
    aligned_by = ",".join(n for n, ok in (("spf", spf_ok), ("dkim", dkim_ok)) if ok)
    base = DmarcVerdict("none", domain, adkim=adkim, aspf=aspf, aligned=bool(aligned_by), aligned_by=aligned_by,
                        policy_domain=found.found_at or "", record=pol.text if pol else "")
    if found.answer is not None:
        return replace(base, result="temperror", reason=f"policy lookup failed: {found.problem}")
    if found.invalid:
        return replace(base, result="permerror", reason=found.problem)
    if pol is None:
        how = f"authenticated by aligned {aligned_by}" if aligned_by else "not authenticated"
        return replace(base, reason=f"{found.problem}; {how}")
    p = found.effective_p or "none"
    base = replace(base, policy=p, pct=pol.pct)
    where = "" if found.found_at == domain else f" (policy of {found.found_at})"
    if aligned_by:
        return replace(base, result="pass", reason=f"aligned {aligned_by}{where}")
    if ((spf.result == "temperror" and is_aligned(spf.domain or "", domain, aspf))
            or any(d.result == "temperror" and is_aligned(d.domain, domain, adkim) for d in dkims)):
        return replace(base, result="temperror", reason="an aligned check had a temporary error")
    sampled = pol.pct >= 100 or (rng or random).random() * 100 < pol.pct
    disposition = p if sampled else _DOWNGRADE[p]
    note = "" if sampled else f"; outside pct={pol.pct}: {p} lowered to {disposition}"
    return replace(base, result="fail", disposition=disposition,
                   reason=f"{_why_not(spf, dkims, aspf, adkim)}{note}{where}")


def _why_not(spf: SpfVerdict, dkims: Sequence[DkimVerdict], aspf: str, adkim: str) -> str:
    if spf.result != "pass":
        spf_why = f"SPF {spf.result}" + (f" for {spf.domain}" if spf.domain else "")
    else:
        spf_why = f"SPF domain {spf.domain} not aligned" + (" (aspf=s)" if aspf == "s" else "")
    passing = [d for d in dkims if d.result == "pass"]
    if not dkims:
        dkim_why = "no DKIM signature"
    elif not passing:
        dkim_why = "no valid DKIM signature"
    else:
        dkim_why = f"DKIM d={passing[0].domain} not aligned" + (" (adkim=s)" if adkim == "s" else "")
    return f"{spf_why}; {dkim_why}"
