"""The MX checks: can the domain receive mail at all, and does it receive it where the gateway listens?

`inspect_mx` gathers the MX hosts and their addresses once; `check_mx` judges the records (RFC 5321 §5,
RFC 7505 null MX, RFC 2181 §10.3 no CNAME targets) and `check_mx_gateway` compares them with the hosts
the gateway is known by (``--expect-mx`` / ``dns_check.expect_mx`` / the SMTP listeners).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from dns_checks.resolver import Answer, DnsLookup, normalize
from dns_checks.result import CheckResult, Problem, Status


@dataclass
class MxHost:
    preference: int
    name: str
    addresses: list[str] = field(default_factory=list)
    alias_of: str | None = None  # the CNAME target when the MX name is an alias
    errors: list[str] = field(default_factory=list)  # DNS errors while resolving it

    @property
    def is_ip_literal(self) -> bool:
        return is_ip(self.name)

    def describe(self) -> str:
        addrs = ", ".join(self.addresses) or "no address"
        alias = f" CNAME {self.alias_of}" if self.alias_of else ""
        return f"MX {self.preference} {self.name}{alias} ({addrs})"


@dataclass
class MxInfo:
    domain: str
    answer: Answer
    hosts: list[MxHost] = field(default_factory=list)
    null_mx: bool = False
    implicit: MxHost | None = None  # no MX: the domain's own A/AAAA (RFC 5321 §5.1)

    @property
    def receiving_hosts(self) -> list[MxHost]:
        """Where senders deliver, most preferred first."""
        if self.implicit is not None:
            return [self.implicit]
        return sorted((h for h in self.hosts if h.name), key=lambda h: h.preference)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


async def resolve_host(dns: DnsLookup, name: str, preference: int = 0) -> MxHost:
    host = MxHost(preference, normalize(name))
    if host.is_ip_literal or not host.name:
        return host
    a, aaaa = await asyncio.gather(dns.query(host.name, "A"), dns.query(host.name, "AAAA"))
    for ans in (a, aaaa):
        host.addresses += ans.addresses()
        if ans.is_error:
            host.errors.append(ans.describe())
        if ans.canonical and not host.alias_of:
            host.alias_of = ans.canonical
    return host


async def inspect_mx(dns: DnsLookup, domain: str) -> MxInfo:
    domain = normalize(domain)
    ans = await dns.query(domain, "MX")
    info = MxInfo(domain, ans)
    if ans.outcome == "nodata":
        info.implicit = await resolve_host(dns, domain)
        return info
    if not ans.is_ok:
        return info
    exchanges = [(int(rd.preference), normalize(str(rd.exchange))) for rd in ans.rdatas]
    info.null_mx = any(name == "" for _, name in exchanges)
    info.hosts = list(await asyncio.gather(*(resolve_host(dns, n, p) for p, n in exchanges)))
    return info


def check_mx(info: MxInfo) -> CheckResult:
    ans = info.answer
    records = [h.describe() for h in sorted(info.hosts, key=lambda h: h.preference)]
    if ans.is_error:
        return CheckResult("mx", Status.UNKNOWN, ans.describe(), ())
    if ans.outcome == "nxdomain":
        return CheckResult("mx", Status.FAIL, f"{info.domain} does not exist (NXDOMAIN): mail to it bounces")
    if info.implicit is not None:
        h = info.implicit
        if h.addresses:
            return CheckResult("mx", Status.WARN, f"no MX record: senders fall back to the address of "
                               f"{info.domain} ({', '.join(h.addresses)}); publish an MX",
                               (f"A/AAAA {info.domain} ({', '.join(h.addresses)})",))
        if h.errors:
            return CheckResult("mx", Status.UNKNOWN, f"no MX record, and {'; '.join(h.errors)}")
        return CheckResult("mx", Status.FAIL, f"no MX and no address for {info.domain}: mail to it bounces")
    if info.null_mx:
        if len(info.hosts) == 1 and info.hosts[0].preference == 0:
            return CheckResult("mx", Status.FAIL, f"null MX (RFC 7505): {info.domain} declares it receives "
                               "no mail, so replies to Odoo and bounces are refused", ("MX 0 .",))
        return CheckResult("mx", Status.FAIL, "a null MX ('.') mixed with other MX records is invalid "
                           "(RFC 7505): some senders refuse to deliver", tuple(records))
    problems: list[Problem] = []
    usable = 0
    for h in sorted(info.hosts, key=lambda h: h.preference):
        if h.is_ip_literal:
            problems.append(Problem(Status.WARN, f"MX {h.name} is an IP address: MX must name a host "
                                    "(senders look it up as a name and find nothing)"))
            continue
        if h.alias_of:
            problems.append(Problem(Status.WARN, f"MX {h.name} is a CNAME to {h.alias_of}: not allowed "
                                    "(RFC 2181 §10.3); some senders refuse it, point the MX at the real name"))
        if h.addresses:
            usable += 1
        elif h.errors:
            problems.append(Problem(Status.UNKNOWN, f"MX {h.name}: {'; '.join(h.errors)}"))
        else:
            problems.append(Problem(Status.WARN, f"MX {h.name} has no A/AAAA record: senders skip it"))
    if usable == 0 and not any(h.errors for h in info.hosts):
        problems.append(Problem(Status.FAIL, "no MX host has an address: mail to the domain bounces"))
    names = ", ".join(h.name for h in info.receiving_hosts)
    return CheckResult.from_problems("mx", problems, f"{len(info.hosts)} MX host(s), resolvable: {names}",
                                     records)


@dataclass
class GatewayHosts:
    """What the gateway is reachable as: host names and addresses (expected hosts resolved)."""

    names: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def is_gateway(self, host: MxHost) -> bool:
        if host.name in self.names or (host.alias_of and host.alias_of in self.names):
            return True
        return any(_same_ip(a, b) for a in host.addresses for b in self.addresses)


def _same_ip(a: str, b: str) -> bool:
    return ipaddress.ip_address(a) == ipaddress.ip_address(b)


async def resolve_expected(dns: DnsLookup, expect: Sequence[str]) -> GatewayHosts:
    out = GatewayHosts()
    hosts = []
    for item in expect:
        item = item.strip()
        if is_ip(item):
            out.addresses.add(item.strip("[]"))
        elif item:
            out.names.add(normalize(item))
            hosts.append(resolve_host(dns, item))
    for h in await asyncio.gather(*hosts):
        out.addresses.update(h.addresses)
        out.errors.extend(h.errors)
    return out


async def check_mx_gateway(dns: DnsLookup, info: MxInfo, expect: Sequence[str]) -> CheckResult:
    """Do senders deliver this domain's mail to the gateway (one of `expect`)?"""
    gw = await resolve_expected(dns, expect)
    shown = ", ".join(expect)
    hosts = info.receiving_hosts
    records = [h.describe() for h in hosts] + [f"expected: {shown}"]
    if info.answer.is_error:
        return CheckResult("mx-gateway", Status.UNKNOWN, f"cannot compare with {shown}: "
                           f"{info.answer.describe()}", tuple(records))
    if not hosts or info.null_mx:
        return CheckResult("mx-gateway", Status.FAIL, f"mail for {info.domain} never reaches the gateway "
                           f"({shown}): the domain has no usable MX", tuple(records))
    ours = [h for h in hosts if gw.is_gateway(h)]
    others = [h for h in hosts if not gw.is_gateway(h)]
    if not ours:
        unresolved = f" ({'; '.join(gw.errors)})" if gw.errors else ""
        return CheckResult("mx-gateway", Status.FAIL,
                           f"MX of {info.domain} points to {', '.join(h.name for h in hosts)}, not to the "
                           f"gateway ({shown}){unresolved}: mail for Odoo's catchall and aliases goes "
                           "elsewhere", tuple(records))
    best = min(h.preference for h in hosts)
    if any(h.preference == best for h in others):
        return CheckResult("mx-gateway", Status.WARN,
                           f"the most preferred MX ({', '.join(h.name for h in others if h.preference == best)}) "
                           f"is not the gateway ({shown}): mail reaches Odoo only if that host relays to it",
                           tuple(records))
    if others:
        return CheckResult("mx-gateway", Status.WARN,
                           f"backup MX {', '.join(h.name for h in others)} is not the gateway: make sure it "
                           "relays to the gateway (and checks recipients), or remove it", tuple(records))
    return CheckResult("mx-gateway", Status.OK,
                       f"every MX is the gateway ({', '.join(h.name for h in ours)})", tuple(records))
