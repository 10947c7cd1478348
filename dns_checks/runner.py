"""Run every check for every domain of a `CheckPlan`, concurrently, on any `DnsLookup`.

The daemon calls ``await run_checks(plan, DnsClient.create(...))`` on a timer and logs `summarize(...)`;
`mailgw dns-check` calls it once and renders the reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from dns_checks.dkim import check_dkim
from dns_checks.dmarc import DkimSigner, check_alignment, check_dmarc, lookup_dmarc
from dns_checks.mta_sts import check_mta_sts
from dns_checks.mx import check_mx, check_mx_gateway, inspect_mx
from dns_checks.plan import CheckPlan, DomainTarget
from dns_checks.ptr import check_ptr
from dns_checks.resolver import DnsClient, DnsLookup, normalize
from dns_checks.result import CheckResult, DomainReport, Status
from dns_checks.spf import check_spf
from dns_checks.spf_eval import check_host, fetch_spf
from dns_checks.tlsrpt import check_tls_rpt
from gateway.config import DkimConfig

CHECK_ORDER = ("resolver", "mx", "mx-gateway", "spf", "spf-bounce", "dkim", "dmarc", "dmarc-alignment", "ptr",
               "mta-sts", "tls-rpt")


async def run_checks(plan: CheckPlan, dns: DnsLookup) -> list[DomainReport]:
    """One report per domain, in plan order. DNS failures become findings, never exceptions. Resolvers that do
    not answer at all are a `resolver` result: a failure when none answers (nothing was checked: one line, not
    a list of timeouts), a warning when the others were used instead."""
    resolver: CheckResult | None = None
    if isinstance(dns, DnsClient):
        dns = dns.session()  # answers are shared within this run only
        silent, usable = await dns.drop_silent_servers()
        if not usable:
            resolver = CheckResult("resolver", Status.FAIL, f"{silent}: nothing was checked")
            return [DomainReport(t.domain, (resolver,)) for t in plan.targets]
        if silent:
            resolver = CheckResult("resolver", Status.WARN, f"{silent}: the checks asked the other servers")
    reports = await asyncio.gather(*(check_domain(dns, t, plan) for t in plan.targets))
    if resolver is not None:
        reports = [DomainReport(r.domain, (resolver, *r.checks)) for r in reports]
    return list(reports)


async def _guard(check: str, coro: Awaitable[CheckResult]) -> CheckResult:
    """A bug in one check must not hide the others' results."""
    try:
        return await coro
    except Exception as exc:
        return CheckResult(check, Status.WARN, f"internal error in the {check} check: {exc!r}")


async def check_domain(dns: DnsLookup, target: DomainTarget, plan: CheckPlan) -> DomainReport:
    domain, bounce, ip = target.domain, target.bounce_domain, plan.ip
    checks: list[Awaitable[CheckResult | list[CheckResult]]] = [_mx_checks(dns, domain, plan)]
    separate_bounce = bounce != domain
    checks.append(_guard("spf", check_spf(dns, domain, ip=ip, role="from" if separate_bounce else "both",
                                          from_domain=bounce if separate_bounce else None)))
    if separate_bounce:
        checks.append(_guard("spf-bounce", check_spf(dns, bounce, ip=ip, role="bounce", check="spf-bounce")))
    keyed: list[tuple[str, str, DkimConfig | None]] = [(k.domain, k.selector, k) for k in target.signers]
    keyed += [(domain, s, None) for s in target.selectors]
    # The alignment check needs the DKIM results: one shared future, awaited by both.
    dkim = asyncio.ensure_future(asyncio.gather(*(_guard("dkim", check_dkim(dns, d, s, k)) for d, s, k in keyed)))
    checks.append(_list(dkim))
    if not keyed:
        checks.append(_no_selector(domain))
    signers = [(normalize(d), s) for d, s, _ in keyed]
    checks.append(_dmarc_checks(dns, target, plan, signers, dkim))
    if ip:
        checks.append(_guard("ptr", check_ptr(dns, ip, plan.helo_name)))
    checks.append(_guard("mta-sts", check_mta_sts(dns, domain)))
    checks.append(_guard("tls-rpt", check_tls_rpt(dns, domain)))
    results: list[CheckResult] = []
    for item in await asyncio.gather(*checks):
        results.extend(item if isinstance(item, list) else [item])
    results.sort(key=lambda c: CHECK_ORDER.index(c.check) if c.check in CHECK_ORDER else len(CHECK_ORDER))
    return DomainReport(domain, tuple(results))


async def _list(fut: Awaitable[list[CheckResult]]) -> list[CheckResult]:
    return list(await fut)


async def _no_selector(domain: str) -> CheckResult:
    return CheckResult("dkim", Status.WARN, f"no DKIM key configured for {domain} and no selector given "
                       "(--selector, dns_check.selector or outbound.dkim): mail is unsigned, DMARC rests on "
                       "SPF alone and Gmail/Yahoo want DKIM")


async def _mx_checks(dns: DnsLookup, domain: str, plan: CheckPlan) -> list[CheckResult]:
    try:
        info = await inspect_mx(dns, domain)
    except Exception as exc:
        return [CheckResult("mx", Status.WARN, f"internal error in the mx check: {exc!r}")]
    out = [check_mx(info)]
    if plan.expect_mx:
        out.append(await _guard("mx-gateway", check_mx_gateway(dns, info, plan.expect_mx)))
    return out


async def _dmarc_checks(dns: DnsLookup, target: DomainTarget, plan: CheckPlan,
                        keyed: list[tuple[str, str]], dkim: Awaitable[list[CheckResult]]) -> list[CheckResult]:
    try:
        found = await lookup_dmarc(dns, target.domain)
        out = [await check_dmarc(dns, found)]
        spf_result: str | None = None
        if plan.ip:
            spf_result = (await check_host(dns, plan.ip, target.bounce_domain,
                                           f"bounce@{target.bounce_domain}")).result
        else:
            # Without an IP SPF cannot be evaluated, but without a record it cannot pass either.
            ans, records = await fetch_spf(dns, target.bounce_domain)
            if ans.is_error:
                spf_result = "temperror"
            elif not records:
                spf_result = "none"
        # A key is usable for DMARC when its dkim check did not fail (a short key still verifies); unknown when
        # it could not be looked up.
        signers = [DkimSigner(d, s, None if res.status is Status.UNKNOWN else res.status is not Status.FAIL)
                   for (d, s), res in zip(keyed, await dkim, strict=True)]
        out.append(check_alignment(found, from_domain=target.domain, bounce_domain=target.bounce_domain,
                                   spf_result=spf_result, signers=signers))
        return out
    except Exception as exc:
        return [CheckResult("dmarc", Status.WARN, f"internal error in the dmarc check: {exc!r}")]
