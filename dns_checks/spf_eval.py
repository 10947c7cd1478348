"""RFC 7208 check_host(): is this IP allowed to send mail for this domain?

Written here rather than taken from pyspf (unmaintained, blocking DNS): it runs on the async `DnsLookup`
so the daemon can evaluate without threads, and it reports what it did (lookups, void lookups, trail)
for the operator. Limits: 10 lookup terms (include, a, mx, ptr, exists, redirect), 2 void lookups,
10 MX and PTR names per term.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from dns_checks.resolver import Answer, DnsLookup, normalize, reverse_name
from dns_checks.spf_record import (
    MacroContext,
    Mechanism,
    SpfRecord,
    SpfSyntaxError,
    expand,
    is_spf_record,
    parse_spf,
)

LOOKUP_LIMIT = 10
VOID_LIMIT = 2
MX_PTR_LIMIT = 10

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Abort(Exception):
    """Stops the evaluation with temperror or permerror."""

    def __init__(self, result: str, reason: str):
        super().__init__(reason)
        self.result = result
        self.reason = reason


@dataclass
class SpfOutcome:
    result: str  # pass fail softfail neutral none permerror temperror
    reason: str = ""
    lookups: int = 0
    voids: int = 0
    matched: str = ""  # the mechanism that decided, e.g. "ip4:192.0.2.0/24 in example.com"
    records: list[str] = field(default_factory=list)  # "domain: v=spf1 ..." in evaluation order


def is_valid_domain(domain: str) -> bool:
    """What check_host() accepts as a domain (§4.3): a multi-label name with sane label lengths."""
    labels = domain.rstrip(".").split(".")
    return (len(labels) >= 2 and len(domain) <= 253
            and all(0 < len(label) <= 63 for label in labels))


async def fetch_spf(dns: DnsLookup, domain: str) -> tuple[Answer, list[str]]:
    """The TXT answer and the SPF records in it (zero, one, or — an error — several)."""
    ans = await dns.query(domain, "TXT")
    return ans, [t for t in ans.texts() if is_spf_record(t)]


async def check_host(dns: DnsLookup, ip: str | IPAddress, domain: str, sender: str | None = None,
                     helo: str = "unknown") -> SpfOutcome:
    """Evaluate SPF for `ip` sending as `sender` (default ``postmaster@domain``)."""
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped  # §5: an IPv4-mapped client is evaluated as IPv4
    domain = normalize(domain)
    sender = sender or f"postmaster@{domain}"
    if "@" not in sender:
        sender = f"postmaster@{sender}"
    ev = _Evaluation(dns, addr, sender, helo)
    try:
        result = await ev.run(domain, depth=0)
    except _Abort as stop:
        ev.out.result, ev.out.reason = stop.result, stop.reason
        return ev.out
    ev.out.result = result
    return ev.out


class _Evaluation:
    def __init__(self, dns: DnsLookup, ip: IPAddress, sender: str, helo: str):
        self.dns = dns
        self.ip = ip
        self.sender = sender
        self.helo = helo
        self.out = SpfOutcome("none")

    def _count_lookup(self, what: str) -> None:
        self.out.lookups += 1
        if self.out.lookups > LOOKUP_LIMIT:
            raise _Abort("permerror", f"more than {LOOKUP_LIMIT} DNS lookups (at {what})")

    def _count_void(self, ans: Answer) -> None:
        if ans.is_void:
            self.out.voids += 1
            if self.out.voids > VOID_LIMIT:
                raise _Abort("permerror", f"more than {VOID_LIMIT} void lookups (at {ans.name})")

    @staticmethod
    def _raise_dns_error(ans: Answer) -> None:
        if ans.is_error:
            raise _Abort("temperror", ans.describe())

    async def run(self, domain: str, depth: int) -> str:
        if not is_valid_domain(domain):
            return "none"
        ans, records = await fetch_spf(self.dns, domain)
        self._raise_dns_error(ans)
        if not records:
            if depth == 0:
                self.out.reason = f"no SPF record at {domain}"
            return "none"
        if len(records) > 1:
            raise _Abort("permerror", f"{len(records)} SPF records at {domain}")
        self.out.records.append(f"{domain}: {records[0]}")
        try:
            record = parse_spf(records[0])
        except SpfSyntaxError as exc:
            raise _Abort("permerror", f"{domain}: {exc}") from None
        ctx = MacroContext(self.sender, self.ip, domain, self.helo)
        for mech in record.mechanisms:
            if await self._matches(mech, ctx, depth):
                if not self.out.matched:
                    self.out.matched = f"{mech.text} in {domain}"
                return mech.result
        return await self._redirect(record, ctx, depth)

    async def _redirect(self, record: SpfRecord, ctx: MacroContext, depth: int) -> str:
        if record.redirect is None:
            return "neutral"
        self._count_lookup(f"redirect={record.redirect}")
        target = await self._target(record.redirect, ctx)
        result = await self.run(target, depth + 1)
        if result == "none":
            raise _Abort("permerror", f"redirect={target} has no SPF record")
        return result

    async def _target(self, spec: str | None, ctx: MacroContext) -> str:
        if spec is None:
            return ctx.domain
        if "%{p" in spec.lower():
            ctx = replace(ctx, validated=await self._validated_for(ctx.domain))
        try:
            return normalize(expand(spec, ctx))
        except SpfSyntaxError as exc:
            raise _Abort("permerror", str(exc)) from None

    async def _validated_for(self, domain: str) -> str:
        """%{p} (§7.3): a validated PTR name, preferring one inside `domain`."""
        names = await self.validated_names()
        for name in names:
            if name == domain or name.endswith("." + domain):
                return name
        return names[0] if names else "unknown"

    async def _matches(self, mech: Mechanism, ctx: MacroContext, depth: int) -> bool:
        name = mech.name
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            assert mech.network is not None
            return mech.network.version == self.ip.version and self.ip in mech.network
        self._count_lookup(mech.text)
        target = await self._target(mech.domain_spec, ctx)
        if name == "include":
            if not is_valid_domain(target):
                raise _Abort("permerror", f"include of invalid domain {target!r}")
            result = await self.run(target, depth + 1)
            if result == "pass":
                return True
            if result in ("fail", "softfail", "neutral"):
                return False
            if result == "temperror":
                raise _Abort("temperror", self.out.reason)
            # An include that finds no SPF record is a broken record (§5.2).
            raise _Abort("permerror", self.out.reason or f"include:{target} has no SPF record")
        if not is_valid_domain(target):
            return False  # a name that cannot exist matches nothing (§4.8 via §5)
        if name == "a":
            return await self._host_matches(target, mech, count_void=True)
        if name == "mx":
            return await self._mx_matches(target, mech)
        if name == "ptr":
            return await self._ptr_matches(target)
        # exists: an A lookup whatever the client's address family (§5.7)
        ans = await self.dns.query(target, "A")
        self._raise_dns_error(ans)
        self._count_void(ans)
        return ans.is_ok

    def _rtype(self) -> str:
        return "A" if self.ip.version == 4 else "AAAA"

    def _in_prefix(self, address: str, mech: Mechanism) -> bool:
        bits = (mech.cidr4 if self.ip.version == 4 else mech.cidr6)
        try:
            net = ipaddress.ip_network(f"{address}/{bits if bits is not None else self.ip.max_prefixlen}",
                                       strict=False)
        except ValueError:
            return False
        return net.version == self.ip.version and self.ip in net

    async def _host_matches(self, host: str, mech: Mechanism, *, count_void: bool) -> bool:
        ans = await self.dns.query(host, self._rtype())
        self._raise_dns_error(ans)
        if count_void:
            self._count_void(ans)
        return any(self._in_prefix(a, mech) for a in ans.addresses())

    async def _mx_matches(self, domain: str, mech: Mechanism) -> bool:
        ans = await self.dns.query(domain, "MX")
        self._raise_dns_error(ans)
        self._count_void(ans)
        hosts = [normalize(str(rd.exchange)) for rd in ans.rdatas]
        if len(hosts) > MX_PTR_LIMIT:
            raise _Abort("permerror", f"mx:{domain} has more than {MX_PTR_LIMIT} MX records")
        for host in hosts:
            if not host:
                continue  # null MX
            if await self._host_matches(host, mech, count_void=False):
                return True
        return False

    async def validated_names(self) -> Sequence[str]:
        """PTR names of the IP whose forward lookup contains the IP (§5.5), at most 10 tried."""
        ans = await self.dns.query(reverse_name(str(self.ip)), "PTR")
        if ans.is_error:
            return []  # §5.5: a failed PTR lookup means "no match", not temperror
        self._count_void(ans)
        out = []
        for name in ans.targets()[:MX_PTR_LIMIT]:
            fwd = await self.dns.query(name, self._rtype())
            if fwd.is_error:
                continue
            if any(ipaddress.ip_address(a) == self.ip for a in fwd.addresses()):
                out.append(name)
        return out

    async def _ptr_matches(self, target: str) -> bool:
        names = await self.validated_names()
        return any(name == target or name.endswith("." + target) for name in names)
