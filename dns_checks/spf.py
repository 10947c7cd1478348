"""The SPF check: the record's health (RFC 7208) and whether the gateway's IP may send for the domain.

Two passes. `analyze_spf` walks the whole include/redirect tree without short-cuts, the way receivers see
it when the sender is *not* listed: it counts the DNS-lookup terms (limit 10) and void lookups (limit 2)
and finds broken includes, so the limits are reported before mail from some host hits them.
`check_host` (spf_eval) then evaluates the real decision for `--ip`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dns_checks.resolver import DnsLookup, normalize
from dns_checks.result import CheckResult, Problem, Status
from dns_checks.spf_eval import LOOKUP_LIMIT, MX_PTR_LIMIT, VOID_LIMIT, check_host, fetch_spf
from dns_checks.spf_record import Mechanism, SpfRecord, SpfSyntaxError, parse_spf

Role = Literal["both", "bounce", "from"]
_MAX_DEPTH = 12  # deeper than any legal tree (10 lookups); stops include loops early


@dataclass
class SpfAnalysis:
    domain: str
    record: SpfRecord | None = None
    found: bool = False  # a single SPF record exists at the domain
    lookups: int = 0
    voids: int = 0
    final_all: Mechanism | None = None  # the `all` that ends evaluation (through redirects)
    records: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    uses_macros: bool = False
    dns_error: bool = False  # some record of the tree could not be read: the IP is not evaluated


async def analyze_spf(dns: DnsLookup, domain: str) -> SpfAnalysis:
    out = SpfAnalysis(normalize(domain))
    out.record, out.final_all = await _walk(dns, out, out.domain, via=None, stack=())
    out.found = out.record is not None
    return out


async def _walk(dns: DnsLookup, out: SpfAnalysis, domain: str, via: str | None,
                stack: tuple[str, ...]) -> tuple[SpfRecord | None, Mechanism | None]:
    """Visit one record; `via` is the term that led here (None at the top).

    Returns the parsed record and the `all` that ends its evaluation (its own, or its redirect's).
    """
    where = f"{via} (from {stack[-1]})" if via else domain
    if domain in stack or len(stack) > _MAX_DEPTH:
        out.problems.append(Problem(Status.FAIL, f"SPF loop: {' -> '.join([*stack, domain])} (permerror)"))
        return None, None
    ans, texts = await fetch_spf(dns, domain)
    if ans.is_error:
        out.dns_error = True
        out.problems.append(Problem(Status.UNKNOWN, f"cannot read SPF: {ans.describe()}"))
        return None, None
    if not texts:
        if via is None:
            return None, None  # reported by the caller: what is missing depends on the role
        if ans.is_void:
            out.voids += 1
        out.problems.append(Problem(Status.FAIL, f"{where} has no SPF record: receivers get permerror"))
        return None, None
    for text in texts:
        out.records.append(f"{domain}: {text}")
    if len(texts) > 1:
        out.problems.append(Problem(Status.FAIL, f"{len(texts)} SPF records at {domain}: receivers get "
                                    "permerror (merge them into one)"))
        return None, None
    try:
        record = parse_spf(texts[0])
    except SpfSyntaxError as exc:
        out.problems.append(Problem(Status.FAIL, f"SPF syntax error at {domain}: {exc} (permerror)"))
        return None, None
    for mech in record.mechanisms:
        if mech.costs_lookup:
            out.lookups += 1
        if mech.has_macros:
            out.uses_macros = True
            continue  # depends on the sender: cannot be followed here
        await _visit_mechanism(dns, out, domain, mech, stack)
    final_all = record.all_mechanism
    redirect = record.effective_redirect
    if redirect is not None:
        out.lookups += 1
        if "%" in redirect:
            out.uses_macros = True
        else:
            target = normalize(redirect)
            _, final_all = await _walk(dns, out, target, f"redirect={target}", (*stack, domain))
    return record, final_all


async def _visit_mechanism(dns: DnsLookup, out: SpfAnalysis, domain: str, mech: Mechanism,
                           stack: tuple[str, ...]) -> None:
    target = normalize(mech.domain_spec) if mech.domain_spec else domain
    if mech.name == "include":
        await _walk(dns, out, target, f"include:{target}", (*stack, domain))
    elif mech.name == "a":
        a, aaaa = await dns.query(target, "A"), await dns.query(target, "AAAA")
        if a.is_void and aaaa.is_void:
            out.voids += 1
            out.problems.append(Problem(Status.OK, f"'{mech.text}' in {domain}: {target} has no address"))
    elif mech.name == "mx":
        mx = await dns.query(target, "MX")
        if mx.is_void:
            out.voids += 1
            out.problems.append(Problem(Status.OK, f"'{mech.text}' in {domain}: {target} has no MX"))
        elif len(mx.rdatas) > MX_PTR_LIMIT:
            out.problems.append(Problem(Status.FAIL, f"'{mech.text}' in {domain}: {target} has "
                                        f"{len(mx.rdatas)} MX hosts (limit {MX_PTR_LIMIT}): permerror"))
    elif mech.name == "ptr":
        out.problems.append(Problem(Status.WARN, f"'{mech.text}' in {domain}: the ptr mechanism is "
                                    "deprecated (RFC 7208 §5.5), slow, and ignored by some receivers"))


def _record_problems(a: SpfAnalysis) -> list[Problem]:
    problems = list(a.problems)
    if a.lookups > LOOKUP_LIMIT:
        problems.append(Problem(Status.FAIL, f"{a.lookups} DNS-lookup terms (limit {LOOKUP_LIMIT}): "
                                "receivers get permerror; flatten includes or drop unused ones"))
    elif a.lookups >= LOOKUP_LIMIT - 1:
        problems.append(Problem(Status.OK, f"{a.lookups} of {LOOKUP_LIMIT} DNS lookups used"))
    if a.voids > VOID_LIMIT:
        problems.append(Problem(Status.FAIL, f"{a.voids} void lookups (limit {VOID_LIMIT}): receivers get "
                                "permerror; remove terms naming hosts without records"))
    if a.record is not None:
        final = a.final_all
        if final is None:
            if not a.uses_macros:
                problems.append(Problem(Status.WARN, "no 'all' at the end: unlisted hosts get neutral, "
                                        "spoofing is not discouraged (end with ~all or -all)"))
        elif final.qualifier == "+":
            problems.append(Problem(Status.FAIL, f"'{final.text}' authorises every host on the internet: "
                                    "anyone may send as this domain and receivers distrust it"))
        elif final.qualifier == "?":
            problems.append(Problem(Status.WARN, f"'{final.text}' gives no protection: unlisted hosts get "
                                    "neutral (use ~all or -all)"))
    if a.uses_macros:
        problems.append(Problem(Status.OK, "macros present: their targets were not followed"))
    return problems


async def check_spf(dns: DnsLookup, domain: str, *, ip: str | None = None, role: Role = "both",
                    check: str = "spf", from_domain: str | None = None) -> CheckResult:
    """SPF of `domain` acting as bounce (envelope sender) domain, From domain, or both."""
    domain = normalize(domain)
    a = await analyze_spf(dns, domain)
    problems = _record_problems(a)
    if a.record is None and not a.problems:
        if role == "from":
            problems.append(Problem(Status.WARN, f"no SPF record at {domain}: mail sent with this domain "
                                    "as envelope sender cannot pass SPF"))
        else:
            problems.append(Problem(Status.WARN, f"no SPF record at {domain} (bounce domain): receivers "
                                    "cannot authorise the gateway; Gmail/Yahoo require SPF or DKIM"))
    if ip and a.record is not None and not a.dns_error:
        problems.append(await _ip_problem(dns, domain, ip, role, from_domain))
    elif not ip and a.record is not None:
        problems.append(Problem(Status.OK, "pass --ip to check the gateway's address"))
    summary = f"one valid record, {a.lookups}/{LOOKUP_LIMIT} lookups"
    if a.final_all is not None:
        summary += f", ends in {a.final_all.text}"
    return CheckResult.from_problems(check, problems, summary, a.records)


async def _ip_problem(dns: DnsLookup, domain: str, ip: str, role: Role, from_domain: str | None) -> Problem:
    out = await check_host(dns, ip, domain, f"bounce@{domain}")
    what = {"both": "bounce and From domain", "bounce": "bounce domain", "from": "From domain"}[role]
    if out.result == "pass":
        return Problem(Status.OK, f"{ip} is authorised for {domain} ({out.matched})")
    detail = f"SPF {out.result}" + (f": {out.reason}" if out.reason else "")
    if out.result == "temperror":
        return Problem(Status.UNKNOWN, f"could not evaluate SPF for {ip}: {out.reason}")
    if role == "from":
        bounce = f" (the bounce domain {from_domain} is what receivers check)" if from_domain else ""
        return Problem(Status.WARN, f"{ip} is not authorised for {domain} as {what} ({detail}){bounce}")
    status = Status.FAIL if out.result in ("fail", "permerror") else Status.WARN
    effect = ("receivers reject or junk mail whose Return-Path is @" + domain if status is Status.FAIL
              else "mail from the gateway fails SPF and DMARC's SPF leg")
    return Problem(status, f"{ip} is not authorised for {domain} as {what} ({detail}): {effect}")
