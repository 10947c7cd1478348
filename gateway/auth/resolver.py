"""The resolver sender authentication uses: the dns-check client (dns_checks/resolver.py) with a TTL cache.

One `DnsClient` per daemon (dnspython's async resolver: no thread, no blocking call on the event loop), its
answers — negative ones included — kept for their TTL in its `AnswerCache`, each query bounded by
`auth.dns_timeout`. Each message gets a `session()`: the same servers and cache, plus a memo that makes the
SPF, DKIM, DMARC and ARC checks of one message share every lookup, even those still in flight.
"""

from __future__ import annotations

from collections.abc import Sequence

from dns_checks.resolver import DnsClient, parse_nameserver


def build_resolver(nameservers: Sequence[str] = (), *, timeout: float = 5.0, cache_size: int = 10000) -> DnsClient:
    """`nameservers` as ``HOST[:PORT]`` (empty: the system's resolver configuration)."""
    servers = [parse_nameserver(s) for s in nameservers]
    return DnsClient.create(servers, lifetime=timeout, cache_size=cache_size)
