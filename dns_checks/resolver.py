"""DNS lookups for the checks: one `Answer` type that keeps "missing" apart from "could not tell".

Checks depend on the `DnsLookup` protocol only, so the daemon, the CLI and the tests can hand them any
source of answers. `DnsClient` is the real one (dnspython's async resolver). For dns-check it uses no cache
(answers must be fresh on every run) and remembers answers for the duration of one run only, so SPF analysis
and SPF evaluation do not query the same name twice. Sender authentication at intake (gateway/auth) creates
it with an `AnswerCache`, which keeps answers for their TTL across messages (negative ones for the negative TTL
of RFC 2308), so a cached answer costs a dict lookup, not a resolver call.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import dns.asyncresolver
import dns.exception
import dns.message
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


class AnswerCache:
    """Answers by (name, type) until their TTL runs out; bounded (the oldest entries go first)."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self._data: dict[tuple[str, str], tuple[Answer, float]] = {}

    def get(self, key: tuple[str, str]) -> Answer | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        if hit[1] > time.monotonic():
            return hit[0]
        del self._data[key]
        return None

    def put(self, key: tuple[str, str], answer: Answer, ttl: float) -> None:
        if ttl <= 0:
            return
        if len(self._data) >= self.size:
            for old in list(self._data)[: max(1, self.size // 10)]:
                del self._data[old]
        self._data[key] = (answer, time.monotonic() + ttl)


def _negative_ttl(response: Any) -> float:
    """RFC 2308: the SOA's TTL, at most its MINIMUM field; 0 (do not keep) without an SOA."""
    for rrset in getattr(response, "authority", ()) or ():
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum))
    return 0.0


class DnsClient:
    """dnspython's async resolver answering in `Answer`s; dnspython's own cache is never used."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, cache: AnswerCache | None = None):
        self._resolver = resolver
        self._cache = cache
        self._memo: dict[tuple[str, str], asyncio.Future[Answer]] = {}

    @classmethod
    def create(cls, nameservers: Sequence[tuple[str, int]] = (), *, lifetime: float = DEFAULT_LIFETIME,
               cache_size: int = 0) -> DnsClient:
        """Explicit (ip, port) servers; with none, the system's resolver configuration (operators only).
        `cache_size` > 0 keeps that many answers for their TTL (0: every query goes to the server)."""
        if nameservers:
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers]
        else:
            r = dns.asyncresolver.Resolver()
        r.cache = None
        r.lifetime = lifetime
        r.timeout = min(r.timeout, lifetime)
        # EDNS avoids a TCP retry for every DKIM key (an RSA-2048 TXT does not fit 512 bytes).
        r.use_edns(0, 0, 1232)
        return cls(r, AnswerCache(cache_size) if cache_size > 0 else None)

    def session(self) -> DnsClient:
        """The same servers (and cache) with an empty per-run memo (one per `run_checks`, one per message)."""
        return DnsClient(self._resolver, self._cache)

    async def drop_silent_servers(self) -> tuple[str | None, bool]:
        """Ask every server once (`probe`) and keep those that answer for this client's queries: dnspython tries
        the servers in order and would spend each query's whole time limit on a dead first one. Returns
        ("no answer from SERVER (why); …" or None, whether any server is left). Call it on a `session()`."""
        servers: list[tuple[str, int]] = []
        for ns in self._resolver.nameservers:
            if isinstance(ns, dns.nameserver.Do53Nameserver):
                servers.append((ns.address, ns.port))
            elif isinstance(ns, str):
                servers.append((ns, self._resolver.port))
            else:
                return None, True  # DoH/DoT and the like: not probed
        whys = await asyncio.gather(*(probe(ip, port, self._resolver.lifetime) for ip, port in servers))
        silent = [(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}", why)
                  for (ip, port), why in zip(servers, whys, strict=True) if why is not None]
        if not silent:
            return None, True
        answering = [s for s, why in zip(servers, whys, strict=True) if why is None]
        if answering:
            resolver = copy.copy(self._resolver)  # the caller's client keeps its list
            resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in answering]
            self._resolver = resolver
        return "no answer from " + "; ".join(f"{name} ({why})" for name, why in silent), bool(answering)

    async def query(self, name: str, rdtype: str) -> Answer:
        key = (normalize(name), rdtype.upper())
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            return hit
        fut = self._memo.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._query(*key))
            self._memo[key] = fut
        return await asyncio.shield(fut)

    async def _query(self, name: str, rdtype: str) -> Answer:
        answer, ttl = await self._resolve(name, rdtype)
        if self._cache is not None:
            self._cache.put((name, rdtype), answer, ttl)
        return answer

    async def _resolve(self, name: str, rdtype: str) -> tuple[Answer, float]:
        """The answer and how long it may be kept (0 for errors)."""
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            return Answer(name, rdtype, "error", error=f"bad name: {exc}"), 0.0
        try:
            ans = await self._resolver.resolve(qname, rdtype, search=False)
        except dns.resolver.NXDOMAIN as exc:
            responses = exc.kwargs.get("responses") or {}
            return Answer(name, rdtype, "nxdomain"), _negative_ttl(next(iter(responses.values()), None))
        except dns.resolver.NoAnswer as exc:
            return Answer(name, rdtype, "nodata"), _negative_ttl(exc.kwargs.get("response"))
        except dns.exception.Timeout:
            return Answer(name, rdtype, "timeout"), 0.0
        except dns.resolver.NoNameservers as exc:
            return Answer(name, rdtype, *_servfail_or_error(exc)), 0.0
        except dns.exception.DNSException as exc:
            return Answer(name, rdtype, "error", error=str(exc) or type(exc).__name__), 0.0
        except OSError as exc:  # e.g. no route to an IPv6 server: the server could not tell us
            return Answer(name, rdtype, "error", error=exc.strerror or str(exc)), 0.0
        canonical = normalize(ans.canonical_name.to_text())
        ttl = float(ans.rrset.ttl) if ans.rrset is not None else 0.0
        return Answer(name, rdtype, "ok", tuple(ans), canonical if canonical != name else None), ttl


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


class _Probe(asyncio.DatagramProtocol):
    def __init__(self, answered: asyncio.Future[None]):
        self.answered = answered

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.answered.done():
            self.answered.set_result(None)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable on the connected socket
        if not self.answered.done():
            self.answered.set_exception(exc)


async def probe(ip: str, port: int, timeout: float) -> str | None:
    """None when the DNS server at ip:port answers a query (whatever the answer: REFUSED is an answer); else
    why not. A connected UDP socket hears the ICMP "port unreachable" that dnspython's resolver ignores, so a
    port nobody listens on is "refused", not a timeout. The query goes out twice (UDP may lose one)."""
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[None] = loop.create_future()
    wire = dns.message.make_query(".", "NS").to_wire()
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: _Probe(answered), remote_addr=(ip, port))
    except OSError as exc:
        return f"cannot send to it: {exc.strerror or exc}"
    try:
        for wait in (timeout / 2, timeout / 2):
            transport.sendto(wire)
            try:
                await asyncio.wait_for(asyncio.shield(answered), wait)
                return None
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                return "connection refused: nothing listens on that port"
            except OSError as exc:
                return exc.strerror or str(exc)
        return f"no reply within {timeout:g}s"
    finally:
        transport.close()
