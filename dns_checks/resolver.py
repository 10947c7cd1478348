"""DNS lookups for the checks: one `Answer` type that keeps "missing" apart from "could not tell".

Checks depend on the `DnsLookup` protocol only, so the daemon, the CLI and the tests can hand them any
source of answers. `DnsClient` is the real one (dnspython's async resolver). For dns-check it uses no cache
(answers must be fresh on every run) and remembers answers for the duration of one run only, so SPF analysis
and SPF evaluation do not query the same name twice. Sender authentication at intake (gateway/auth) creates
it with dnspython's LRU cache, which keeps answers, negative ones included, for their TTL across messages.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.reversename

Outcome = Literal["ok", "nxdomain", "nodata", "timeout", "servfail", "error"]

DEFAULT_LIFETIME = 5.0


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one query. `rdatas` are dnspython rdata objects (empty unless outcome is ok)."""

    name: str
    rdtype: str
    outcome: Outcome
    rdatas: tuple[Any, ...] = ()
    canonical: str | None = None  # the target when `name` is an alias (CNAME), else None
    error: str = ""

    @property
    def is_ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def is_void(self) -> bool:
        """NXDOMAIN or an empty answer: what RFC 7208 calls a void lookup."""
        return self.outcome in ("nxdomain", "nodata")

    @property
    def is_error(self) -> bool:
        """The server could not tell us (timeout, SERVFAIL, ...): never to be read as "missing"."""
        return self.outcome in ("timeout", "servfail", "error")

    def texts(self) -> list[str]:
        """TXT records with their character-strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        out = []
        for rd in self.rdatas:
            strings = getattr(rd, "strings", None)
            if strings is not None:
                out.append(b"".join(strings).decode("utf-8", "replace"))
        return out

    def addresses(self) -> list[str]:
        return [rd.address for rd in self.rdatas if hasattr(rd, "address")]

    def targets(self) -> list[str]:
        """PTR/CNAME/NS targets as lower-case names without the trailing dot."""
        return [normalize(str(rd.target)) for rd in self.rdatas if hasattr(rd, "target")]

    def describe(self) -> str:
        """For findings: ``"_dmarc.example.com TXT: timeout"``."""
        what = {"ok": "ok", "nxdomain": "no such name (NXDOMAIN)", "nodata": "no record",
                "timeout": "DNS timeout", "servfail": "DNS server failure (SERVFAIL)",
                "error": f"DNS error ({self.error})"}[self.outcome]
        return f"{self.name} {self.rdtype}: {what}"


class DnsLookup(Protocol):
    async def query(self, name: str, rdtype: str) -> Answer: ...


def normalize(name: str) -> str:
    return name.strip().rstrip(".").lower()


def reverse_name(ip: str) -> str:
    return normalize(dns.reversename.from_address(ip).to_text())


def parse_nameserver(text: str) -> tuple[str, int]:
    """``HOST[:PORT]``, ``[v6]:PORT`` or a bare IPv6 address -> (ip, port); host names are resolved."""
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"bad nameserver {text!r}: expected [ADDRESS]:PORT")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        if not p.isdigit():
            raise ValueError(f"bad nameserver {text!r}: port must be a number")
        port = int(p)
    if not 0 < port < 65536:
        raise ValueError(f"bad nameserver {text!r}: port out of range")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = str(socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0])
        except OSError as exc:
            raise ValueError(f"cannot resolve nameserver {host!r}: {exc}") from None
    return host, port


class DnsClient:
    """dnspython's async resolver, without a cache, answering in `Answer`s."""

    def __init__(self, resolver: dns.asyncresolver.Resolver):
        self._resolver = resolver
        self._memo: dict[tuple[str, str], asyncio.Future[Answer]] = {}

    @classmethod
    def create(cls, nameservers: Sequence[tuple[str, int]] = (), *, lifetime: float = DEFAULT_LIFETIME,
               cache: dns.resolver.LRUCache | None = None) -> DnsClient:
        """Explicit (ip, port) servers; with none, the system's resolver configuration (operators only).
        `cache`: keep answers for their TTL (None: every query goes to the server)."""
        if nameservers:
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers]
        else:
            r = dns.asyncresolver.Resolver()
        r.cache = cache
        r.lifetime = lifetime
        r.timeout = min(r.timeout, lifetime)
        # EDNS avoids a TCP retry for every DKIM key (an RSA-2048 TXT does not fit 512 bytes).
        r.use_edns(0, 0, 1232)
        return cls(r)

    def session(self) -> DnsClient:
        """The same servers with an empty per-run memo (one per `run_checks`)."""
        return DnsClient(self._resolver)

    async def query(self, name: str, rdtype: str) -> Answer:
        key = (normalize(name), rdtype.upper())
        fut = self._memo.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._query(*key))
            self._memo[key] = fut
        return await asyncio.shield(fut)

    async def _query(self, name: str, rdtype: str) -> Answer:
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            return Answer(name, rdtype, "error", error=f"bad name: {exc}")
        try:
            ans = await self._resolver.resolve(qname, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return Answer(name, rdtype, "nxdomain")
        except dns.resolver.NoAnswer:
            return Answer(name, rdtype, "nodata")
        except dns.exception.Timeout:
            return Answer(name, rdtype, "timeout")
        except dns.resolver.NoNameservers as exc:
            return Answer(name, rdtype, *_servfail_or_error(exc))
        except dns.exception.DNSException as exc:
            return Answer(name, rdtype, "error", error=str(exc) or type(exc).__name__)
        except OSError as exc:  # e.g. no route to an IPv6 server: the server could not tell us
            return Answer(name, rdtype, "error", error=exc.strerror or str(exc))
        canonical = normalize(ans.canonical_name.to_text())
        return Answer(name, rdtype, "ok", tuple(ans), canonical if canonical != name else None)


def _servfail_or_error(exc: dns.resolver.NoNameservers) -> tuple[Outcome, tuple[Any, ...], None, str]:
    """SERVFAIL from every server is the common case; REFUSED and the like are reported verbatim."""
    rcodes = set()
    for err in exc.kwargs.get("errors", []):
        response = err[-1] if isinstance(err, tuple) and err else None
        if response is not None and hasattr(response, "rcode"):
            rcodes.add(response.rcode())
    if not rcodes or rcodes == {dns.rcode.SERVFAIL}:
        return "servfail", (), None, ""
    return "error", (), None, ", ".join(sorted(dns.rcode.to_text(r) for r in rcodes))
