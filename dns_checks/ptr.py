"""PTR / forward-confirmed reverse DNS of the sending IP: receivers such as Gmail refuse mail from an
address whose PTR name is missing or does not resolve back to it (550 5.7.25).
"""

from __future__ import annotations

import asyncio
import ipaddress

from dns_checks.resolver import DnsLookup, normalize, reverse_name
from dns_checks.result import CheckResult, Problem, Status


async def check_ptr(dns: DnsLookup, ip: str, helo_name: str | None = None) -> CheckResult:
    addr = ipaddress.ip_address(ip)
    rname = reverse_name(ip)
    ans = await dns.query(rname, "PTR")
    if ans.is_error:
        return CheckResult("ptr", Status.UNKNOWN, f"PTR of {ip}: {ans.describe()}")
    names = ans.targets()
    if not names:
        return CheckResult("ptr", Status.FAIL, f"{ip} has no PTR record: many receivers (Gmail, Microsoft) "
                           "reject mail from addresses without reverse DNS; ask the IP's owner to set one")
    rtype = "A" if addr.version == 4 else "AAAA"
    forwards = await asyncio.gather(*(dns.query(n, rtype) for n in names))
    records = [f"{rname} PTR {n}" for n in names]
    confirmed = []
    problems: list[Problem] = []
    for name, fwd in zip(names, forwards, strict=True):
        records.append(f"{name} {rtype} {', '.join(fwd.addresses()) or fwd.outcome}")
        if fwd.is_error:
            problems.append(Problem(Status.UNKNOWN, f"cannot confirm {name}: {fwd.describe()}"))
        elif any(ipaddress.ip_address(a) == addr for a in fwd.addresses()):
            confirmed.append(name)
    if not confirmed and not problems:
        problems.append(Problem(Status.FAIL, f"PTR {', '.join(names)} does not resolve back to {ip} "
                                "(no forward-confirmed reverse DNS): receivers treat the host as unidentified "
                                "and reject or junk its mail"))
    if len(names) > 1:
        problems.append(Problem(Status.WARN, f"{ip} has {len(names)} PTR records: receivers use one at "
                                "random; keep one"))
    if confirmed and helo_name and normalize(helo_name) not in confirmed:
        problems.append(Problem(Status.OK, f"HELO name {helo_name} differs from the PTR name {confirmed[0]} "
                                "(allowed, but the same name is better liked)"))
    return CheckResult.from_problems("ptr", problems, f"{ip} -> {', '.join(confirmed)} -> {ip}", records)
