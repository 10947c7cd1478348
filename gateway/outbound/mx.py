"""Where a domain's mail goes: its MX hosts and their addresses, asked of the gateway's own resolver (never the
system's `getaddrinfo`, so tests and split-horizon set-ups see the same answers as `mailgw dns-check`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from dns_checks.resolver import parse_nameserver


class TemporaryDnsError(Exception):
    pass


class PermanentDnsError(Exception):
    pass


class MxResolver:
    """MX hosts for a domain, best first; implicit MX (RFC 5321 §5.1) and null MX (RFC 7505)."""

    def __init__(self, nameservers: Sequence[tuple[str, int]] = (), lifetime: float = 10.0):
        if nameservers:
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            self.resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers]
        else:
            self.resolver = dns.asyncresolver.Resolver()
        self.resolver.lifetime = lifetime

    @classmethod
    def from_nameservers(cls, nameservers: Sequence[str]) -> MxResolver:
        """From config strings `HOST[:PORT]` / `[v6]:PORT`, parsed as `mailgw dns-check --nameserver` does."""
        return cls([parse_nameserver(ns) for ns in nameservers])

    async def hosts(self, domain: str) -> list[str]:
        """Raises PermanentDnsError for NXDOMAIN / null MX, TemporaryDnsError for timeouts and SERVFAIL."""
        try:
            answer = await self.resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN as exc:
            raise PermanentDnsError(f"domain {domain} does not exist") from exc
        except dns.resolver.NoAnswer:
            return [domain]  # implicit MX: the domain's own address record
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise TemporaryDnsError(f"MX lookup for {domain} failed: {exc}") from exc
        except dns.exception.DNSException as exc:  # e.g. a name that cannot be encoded: nothing to retry
            raise PermanentDnsError(f"domain {domain}: {exc}") from exc
        records = sorted(answer, key=lambda r: r.preference)
        hosts = [r.exchange.to_text().rstrip(".") for r in records]
        if hosts in ([""], ["."]) or (len(records) == 1 and records[0].exchange.to_text() == "."):
            raise PermanentDnsError(f"domain {domain} accepts no mail (null MX)")
        return [h.lower() for h in hosts if h]

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of an MX host (an address literal is returned as is)."""
        try:
            ipaddress.ip_address(host.strip("[]"))
            return [host.strip("[]")]
        except ValueError:
            pass
        found: list[str] = []
        errors = []
        for rdtype in ("A", "AAAA"):
            try:
                found += [r.to_text() for r in await self.resolver.resolve(host, rdtype)]
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                errors.append(str(exc))
        if not found and errors:
            raise TemporaryDnsError(f"address lookup for {host} failed: {errors[0]}")
        return found

    async def txt(self, name: str) -> list[str] | None:
        """TXT strings at `name` (each record's strings joined), None when the name has none.
        Raises TemporaryDnsError when the lookup itself fails."""
        try:
            answer = await self.resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as exc:
            raise TemporaryDnsError(f"TXT lookup for {name} failed: {exc}") from exc
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
