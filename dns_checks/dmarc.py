"""DMARC (RFC 7489): the policy record, and whether the gateway's mail can pass it.

DMARC passes when SPF passes for a Return-Path domain aligned with the From domain, or a valid DKIM
signature has a d= aligned with it. Odoo sends From: a user or notifications@ its domain with the
Return-Path bounce@ the alias domain; when those domains differ under strict alignment and the gateway
does not DKIM-sign, p=reject makes receivers refuse every notification. `check_alignment` says so.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from publicsuffixlist import PublicSuffixList

from dns_checks.resolver import Answer, DnsLookup, normalize
from dns_checks.result import CheckResult, Problem, Status

# The Public Suffix List, bundled with the package (nothing is fetched at run time). Loaded on first use.
_PSL: PublicSuffixList | None = None


class DmarcRecordError(ValueError):
    """Receivers ignore the record (as if there were none)."""


@dataclass(frozen=True, slots=True)
class DmarcPolicy:
    text: str
    p: str  # none | quarantine | reject
    sp: str | None = None
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()


@dataclass
class DmarcLookup:
    """The DMARC record that applies to a domain (its own, or its organizational domain's)."""

    domain: str
    policy: DmarcPolicy | None = None
    found_at: str | None = None  # the domain whose _dmarc record applies
    answer: Answer | None = None  # set when the lookup failed (DNS error)
    records: list[str] = field(default_factory=list)
    problem: str = ""  # why there is no usable policy
    invalid: bool = False  # a record was found but cannot be used (syntax, several records): DMARC permerror

    @property
    def effective_p(self) -> str | None:
        """The policy for `domain`: sp= applies to subdomains of the organizational domain."""
        if self.policy is None:
            return None
        if self.found_at != self.domain and self.policy.sp:
            return self.policy.sp
        return self.policy.p


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label (``mail.example.co.uk`` -> ``example.co.uk``). The whole
    list is used, private section included: names under a hosting suffix (``x.github.io``) are separate
    organisations. A name that is itself a public suffix is its own organizational domain."""
    global _PSL
    if _PSL is None:
        _PSL = PublicSuffixList()
    name = normalize(domain)
    return _PSL.privatesuffix(name) or name


def is_aligned(domain: str, from_domain: str, mode: str) -> bool:
    """Strict: the same name; relaxed: the same organizational domain (RFC 7489 §3.1)."""
    a, b = normalize(domain), normalize(from_domain)
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


def is_dmarc_record(text: str) -> bool:
    return re.match(r"\s*v\s*=\s*DMARC1\s*(;|\Z)", text) is not None


@functools.lru_cache(maxsize=4096)  # pure; the daemon reads the same few records for every message
def parse_dmarc(text: str) -> DmarcPolicy:
    if not is_dmarc_record(text):
        raise DmarcRecordError("must start with v=DMARC1")
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        if not eq:
            raise DmarcRecordError(f"{part.strip()!r} is not tag=value")
        tags[key.strip().lower()] = value.strip()
    rua = _uris(tags.get("rua", ""))
    ruf = _uris(tags.get("ruf", ""))
    p = tags.get("p", "").lower()
    if p not in ("none", "quarantine", "reject"):
        if not rua:
            raise DmarcRecordError(f"p={tags.get('p', '')!r} must be none, quarantine or reject" if "p" in tags
                                   else "no p= tag")
        p = "none"  # §6.6.3: a record with a valid rua but a bad p is treated as p=none
    sp = tags.get("sp", "").lower() or None
    if sp is not None and sp not in ("none", "quarantine", "reject"):
        raise DmarcRecordError(f"sp={sp!r} must be none, quarantine or reject")
    pct_text = tags.get("pct", "100")
    if not pct_text.isdigit() or int(pct_text) > 100:
        raise DmarcRecordError(f"pct={pct_text!r} must be 0-100")
    modes = {}
    for tag in ("adkim", "aspf"):
        modes[tag] = tags.get(tag, "r").lower()
        if modes[tag] not in ("r", "s"):
            raise DmarcRecordError(f"{tag}={modes[tag]!r} must be r or s")
    return DmarcPolicy(text, p, sp, int(pct_text), modes["adkim"], modes["aspf"], rua, ruf)


def _uris(value: str) -> tuple[str, ...]:
    return tuple(u.strip() for u in value.split(",") if u.strip())


async def lookup_dmarc(dns: DnsLookup, domain: str) -> DmarcLookup:
    domain = normalize(domain)
    out = DmarcLookup(domain)
    candidates = [domain]
    org = organizational_domain(domain)
    if org != domain:
        candidates.append(org)
    for name in candidates:
        ans = await dns.query(f"_dmarc.{name}", "TXT")
        if ans.is_error:
            out.answer = ans
            out.problem = ans.describe()
            return out
        texts = [t for t in ans.texts() if is_dmarc_record(t)]
        out.records.extend(f"_dmarc.{name}: {t}" for t in texts)
        if not texts:
            continue
        if len(texts) > 1:
            out.problem = f"{len(texts)} DMARC records at _dmarc.{name}: receivers ignore them all"
            out.invalid = True
            return out
        try:
            out.policy = parse_dmarc(texts[0])
        except DmarcRecordError as exc:
            out.problem = f"invalid DMARC record at _dmarc.{name} ({exc}): receivers ignore it"
            out.invalid = True
            return out
        out.found_at = name
        return out
    out.problem = "no DMARC record at " + " or ".join(f"_dmarc.{c}" for c in candidates)
    return out


async def check_dmarc(dns: DnsLookup, found: DmarcLookup) -> CheckResult:
    if found.answer is not None:
        return CheckResult("dmarc", Status.UNKNOWN, found.problem, tuple(found.records))
    pol = found.policy
    if pol is None:
        return CheckResult("dmarc", Status.WARN, f"{found.problem}: Gmail and Yahoo require DMARC from bulk "
                           "senders, and you get no reports", tuple(found.records))
    problems: list[Problem] = []
    where = "" if found.found_at == found.domain else f" (inherited from {found.found_at})"
    p = found.effective_p
    if p == "none":
        # It protects nothing: internet.nl and MXToolbox flag it too. Fine for a first weeks of reports.
        problems.append(Problem(Status.WARN, "p=none: monitoring only, mail spoofing the domain is delivered; "
                                "move to p=quarantine or p=reject once the reports show your own mail passes"))
    if pol.pct < 100 and p != "none":
        problems.append(Problem(Status.OK, f"pct={pol.pct}: the policy applies to {pol.pct}% of failing mail"))
    if not pol.rua:
        problems.append(Problem(Status.OK, "no rua=: you receive no aggregate reports"))
    for uri in (*pol.rua, *pol.ruf):
        problems.extend(await _report_uri_problems(dns, found.found_at or found.domain, uri))
    summary = (f"p={p}{where}, adkim={pol.adkim}, aspf={pol.aspf}, pct={pol.pct}"
               + (f", rua={','.join(pol.rua)}" if pol.rua else ""))
    return CheckResult.from_problems("dmarc", problems, summary, found.records)


async def _report_uri_problems(dns: DnsLookup, policy_domain: str, uri: str) -> list[Problem]:
    if not uri.lower().startswith("mailto:"):
        if uri.lower().startswith("https:"):
            return []
        return [Problem(Status.WARN, f"report URI {uri!r} is not mailto: (reports are not sent)")]
    address = uri[7:].split("!", 1)[0]
    _, at, target = address.rpartition("@")
    if not at or "." not in target:
        return [Problem(Status.WARN, f"report URI {uri!r} has no valid address")]
    target = normalize(target)
    if organizational_domain(target) == organizational_domain(policy_domain):
        return []
    # RFC 7489 §7.1: an outside destination must publish that it accepts reports for us.
    name = f"{policy_domain}._report._dmarc.{target}"
    ans = await dns.query(name, "TXT")
    if ans.is_error:
        return [Problem(Status.UNKNOWN, f"cannot verify report destination {target}: {ans.describe()}")]
    if not any(is_dmarc_record(t) for t in ans.texts()):
        return [Problem(Status.WARN, f"{target} does not accept DMARC reports for {policy_domain} "
                        f"(no v=DMARC1 at {name}): receivers will not send them")]
    return []


@dataclass(frozen=True, slots=True)
class DkimSigner:
    """A key the gateway (or the operator, with --selector) signs this domain's mail with."""

    domain: str  # d=
    selector: str
    # Its DKIM check found a valid published key (and, if configured, the matching one): True, False, or None
    # when the key could not be looked up (DNS error).
    usable: bool | None


def check_alignment(found: DmarcLookup, *, from_domain: str, bounce_domain: str, spf_result: str | None,
                    signers: Sequence[DkimSigner]) -> CheckResult:
    """Will mail From `from_domain`, Return-Path @`bounce_domain`, signed by `signers`, pass DMARC?

    `spf_result` is check_host() for the gateway IP at the bounce domain; None when it could not be
    evaluated (no IP given, or the record could not be read), but "none" when the bounce domain has no SPF
    record. Each leg (SPF, DKIM) passes, fails or is unknown; DMARC passes when one leg passes, fails when
    both fail, and is `unknown` otherwise — never "ok" on something that was not looked at. When the DMARC
    record itself could not be read, a leg counts as passing only if it passes under strict alignment.
    """
    pol = found.policy
    policy_unknown = found.answer is not None
    aspf = pol.aspf if pol else ("s" if policy_unknown else "r")
    adkim = pol.adkim if pol else ("s" if policy_unknown else "r")
    records = [f"From: @{from_domain}", f"Return-Path: @{bounce_domain}"]
    records += [f"DKIM d={s.domain} s={s.selector}"
                + {True: "", False: " (broken)", None: " (not looked up: DNS error)"}[s.usable] for s in signers]
    if spf_result is not None:
        records.append(f"SPF at {bounce_domain}: {spf_result}")

    # The SPF leg: (passes, fails, unknown) -> (True, False, None), and why when it does not pass.
    spf: bool | None
    if not is_aligned(bounce_domain, from_domain, aspf):
        spf = False
        spf_why = (f"Return-Path @{bounce_domain} is not aligned with From @{from_domain}"
                   f" ({'aspf=s needs the same domain' if aspf == 's' else 'different organizational domain'})")
    elif spf_result == "pass":
        spf, spf_why = True, ""
    elif spf_result is None:
        spf, spf_why = None, f"SPF at {bounce_domain} was not evaluated (give --ip, the gateway's sending address)"
    elif spf_result == "temperror":
        spf, spf_why = None, f"SPF at {bounce_domain} could not be evaluated (DNS error, see spf)"
    elif spf_result == "none":
        spf, spf_why = False, f"no SPF record at {bounce_domain}"
    else:
        spf, spf_why = False, f"SPF {spf_result} for the gateway IP at {bounce_domain}"

    aligned_signers = [s for s in signers if is_aligned(s.domain, from_domain, adkim)]
    dkim: bool | None
    if any(s.usable for s in aligned_signers):
        dkim, dkim_why = True, ""
    elif any(s.usable is None for s in aligned_signers):
        dkim, dkim_why = None, "the aligned DKIM key could not be looked up (DNS error, see dkim)"
    elif aligned_signers:
        dkim, dkim_why = False, "the aligned DKIM key is broken (see dkim)"
    elif signers:
        dkim, dkim_why = False, (f"DKIM d={signers[0].domain} is not aligned with @{from_domain}"
                                 + (" (adkim=s)" if adkim == "s" else ""))
    else:
        dkim, dkim_why = False, "no DKIM signature (no key configured for this domain)"

    if spf and dkim:
        return CheckResult("dmarc-alignment", Status.OK, "SPF and DKIM both aligned", tuple(records))
    if spf or dkim:
        leg, other, known = ("SPF", dkim_why, dkim is False) if spf else ("DKIM", spf_why, spf is False)
        return CheckResult("dmarc-alignment", Status.OK, f"passes DMARC through {leg}{' only' if known else ''}; "
                           f"{other}", tuple(records))
    if policy_unknown:
        return CheckResult("dmarc-alignment", Status.UNKNOWN,
                           f"cannot tell: the DMARC record could not be read ({found.problem}); "
                           f"{'; '.join(w for w in (spf_why, dkim_why) if w)}", tuple(records))
    why = f"{spf_why}; {dkim_why}"
    if spf is None or dkim is None:
        return CheckResult("dmarc-alignment", Status.UNKNOWN,
                           f"cannot tell whether DMARC passes: {why}", tuple(records))
    p = found.effective_p
    if p in ("reject", "quarantine"):
        effect = "rejects" if p == "reject" else "sends to spam"
        return CheckResult("dmarc-alignment", Status.FAIL,
                           f"DMARC fails: {why}. With p={p} the receiver {effect} the gateway's mail "
                           "(Odoo's notifications); sign with DKIM for the From domain or use a bounce "
                           "address in the From domain", tuple(records))
    return CheckResult("dmarc-alignment", Status.WARN,
                       f"DMARC would fail: {why} (p={p or 'absent'}, so not enforced yet; Gmail and Yahoo "
                       "want alignment from bulk senders)", tuple(records))
