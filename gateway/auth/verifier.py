"""One message's sender authentication: SPF, DKIM, ARC and DMARC, and the Authentication-Results value.

`Verifier` holds what every message shares (the resolver and its cache, the authserv-id, the trusted ARC
sealers); `Verifier.session()` is one message. SPF needs only the envelope, so the SMTP intake starts it
at MAIL FROM (`start_spf`); `prefetch(header)` starts the DMARC and key lookups as soon as the header section
is in; `verdict(raw)` finishes at the end of DATA. Every lookup of one message goes through one memo, so the
early starts are never repeated, and the whole verdict is bounded by `timeout`: whatever is not done by
then is a temperror.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dns_checks.dmarc import is_aligned, organizational_domain
from dns_checks.resolver import DnsClient, DnsLookup
from gateway.auth.arc import ArcVerdict, verify_arc
from gateway.auth.dkim import DkimVerdict, key_name, parsed_headers, signature_tags, verify_dkim
from gateway.auth.dmarc import DmarcVerdict, evaluate_dmarc, from_domain
from gateway.auth.results import build_value, resinfo
from gateway.auth.spf import SpfVerdict, check_spf
from gateway.headers import header_section
from gateway.logs import get_logger

log = get_logger("mailgw.auth")
T = TypeVar("T")
DEFAULT_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    authserv_id: str
    spf: SpfVerdict
    dkim: tuple[DkimVerdict, ...]
    dmarc: DmarcVerdict
    arc: ArcVerdict
    arc_override: str = ""  # why a failing From domain is still taken as authenticated (trusted ARC hop)
    elapsed: float = field(default=0.0, compare=False)

    @property
    def authenticated(self) -> bool:
        """The From domain authenticated the message: aligned SPF or DKIM, or a trusted ARC hop saw that."""
        return self.dmarc.aligned or bool(self.arc_override)

    @property
    def temporary(self) -> bool:
        """Not authenticated, and a temporary error may be why: the answer could change on a retry."""
        if self.authenticated:
            return False
        return self.dmarc.result == "temperror" or (self.arc.temporary and self.dmarc.result == "fail")

    @property
    def from_domain(self) -> str:
        return self.dmarc.from_domain

    def results(self) -> list[str]:
        """Each method's resinfo for the Authentication-Results header."""
        spf, dmarc, arc = self.spf, self.dmarc, self.arc
        out = [resinfo("spf", spf.result, spf.reason, [("smtp.mailfrom", spf.mail_from or spf.domain),
                                                       ("smtp.helo", spf.helo)])]
        for d in self.dkim:
            out.append(resinfo("dkim", d.result, d.reason, [
                ("header.d", d.domain), ("header.s", d.selector), ("header.a", d.algorithm),
                ("header.i", d.identity), ("header.b", d.header_b)]))
        if not self.dkim:
            out.append(resinfo("dkim", "none", "message not signed"))
        note = f"p={dmarc.policy or 'none'} dis={dmarc.disposition.upper()}" if dmarc.policy else ""
        note = "; ".join(x for x in (note, dmarc.reason, self.arc_override and f"accepted: {self.arc_override}")
                         if x)
        out.append(resinfo("dmarc", dmarc.result, note, [("header.from", dmarc.from_domain)]))
        out.append(resinfo("arc", arc.result, arc.reason, [("smtp.remote-ip", spf.ip)] if arc.result != "none"
                           else []))
        return out

    def header_value(self) -> str:
        """The Authentication-Results value (RFC 8601) the gateway prepends."""
        return build_value(self.authserv_id, self.results())

    def to_dict(self) -> dict[str, Any]:
        return {"spf": self.spf.to_dict(), "dkim": [d.to_dict() for d in self.dkim], "dmarc": self.dmarc.to_dict(),
                "arc": {**self.arc.to_dict(), "override": self.arc_override or None},
                "authenticated": self.authenticated, "temporary": self.temporary,
                "authentication_results": " ".join(self.header_value().split())}

    def summary(self) -> dict[str, Any]:
        """What the spool keeps with the message: enough for the worker's decision and for `queue show`."""
        return {"authserv_id": self.authserv_id, "ar": self.header_value(), "from_domain": self.from_domain,
                "dmarc": self.dmarc.result, "policy": self.dmarc.policy, "disposition": self.dmarc.disposition,
                "authenticated": self.authenticated, "temporary": self.temporary, "spf": self.spf.result,
                "dkim": [f"{d.result}:{d.domain}" for d in self.dkim], "arc": self.arc.result,
                "why": self.dmarc.reason}


def _arc_override(arc: ArcVerdict, domain: str) -> str:
    """The trusted hop's record that the From domain was authenticated when it received the message, or ""."""
    if not arc.trusted_hop or not domain:
        return ""
    for r in arc.trusted_results:
        if r.method == "dmarc" and r.result == "pass" and (r.prop("header.from") or "").lower() == domain:
            return f"trusted ARC sealer {arc.trusted_sealer} (i={arc.trusted_hop}) recorded dmarc=pass"
    if not any(r.method == "dmarc" for r in arc.trusted_results):
        for r in arc.trusted_results:
            if r.method == "dkim" and r.result == "pass" and is_aligned(r.prop("header.d") or "", domain, "r"):
                return (f"trusted ARC sealer {arc.trusted_sealer} (i={arc.trusted_hop}) recorded an aligned "
                        "dkim=pass")
    return ""


class Verifier:
    """Shared by every message: resolver (with its TTL cache), authserv-id, trusted ARC sealers, time bound."""

    def __init__(self, resolver: DnsClient, *, authserv_id: str, trusted_sealers: Iterable[str] = (),
                 timeout: float = DEFAULT_TIMEOUT, rng: random.Random | None = None):
        self.resolver = resolver
        self.authserv_id = authserv_id
        self.trusted_sealers = tuple(trusted_sealers)
        self.timeout = timeout
        self.rng = rng or random.Random()

    def session(self) -> AuthSession:
        return AuthSession(self, self.resolver.session())

    async def check(self, raw: bytes, *, ip: str | None, helo: str | None, mail_from: str) -> AuthVerdict:
        """Everything at once (the CLI, and intakes that know the whole message from the start)."""
        s = self.session()
        s.start_spf(ip, helo, mail_from)
        return await s.verdict(raw)


class AuthSession:
    """One message. Every method is cheap to call; lookups run as tasks on the running loop."""

    def __init__(self, verifier: Verifier, dns: DnsLookup):
        self.verifier = verifier
        self.dns = dns
        self._spf: asyncio.Task[SpfVerdict] | None = None
        self._spf_args: tuple[str | None, str | None, str] = (None, None, "")
        self._prefetch: list[asyncio.Task[Any]] = []

    def start_spf(self, ip: str | None, helo: str | None, mail_from: str) -> None:
        """The envelope is known: evaluate SPF now, while the client sends its recipients and data."""
        if self._spf is not None:
            if self._spf_args == (ip, helo, mail_from):
                return
            self._spf.cancel()
        self._spf_args = (ip, helo, mail_from)
        self._spf = asyncio.ensure_future(check_spf(self.dns, ip, mail_from, helo))
        self._spf.add_done_callback(_consume)

    def prefetch(self, header: bytes) -> None:
        """The header section is in: start the DMARC policy and key lookups (their answers land in the memo)."""
        if self._prefetch:
            return
        names: list[tuple[str, str]] = []
        domain, _ = from_domain(header)
        if domain:
            names.append((f"_dmarc.{domain}", "TXT"))
            org = organizational_domain(domain)
            if org != domain:
                names.append((f"_dmarc.{org}", "TXT"))
        lower = header.lower()
        headers = parsed_headers(header) if b"dkim-signature" in lower or b"arc-" in lower else []
        for kind in (b"DKIM-Signature", b"ARC-Seal", b"ARC-Message-Signature"):
            for tags in signature_tags(headers, kind)[:10]:
                if not isinstance(tags, str) and (name := key_name(tags)):
                    names.append((name, "TXT"))
        for name, rdtype in dict.fromkeys(names):
            task = asyncio.ensure_future(self.dns.query(name, rdtype))
            task.add_done_callback(_consume)
            self._prefetch.append(task)

    def cancel(self) -> None:
        """The transaction was abandoned (RSET, QUIT, lost connection)."""
        for task in [self._spf, *self._prefetch]:
            if task is not None:
                task.cancel()

    async def verdict(self, raw: bytes) -> AuthVerdict:
        started = time.monotonic()
        deadline = started + self.verifier.timeout
        if self._spf is None:
            self.start_spf(*self._spf_args)
        assert self._spf is not None
        spf_task = self._spf
        head = header_section(raw).lower()
        # Unsigned mail (most of it) needs no task for DKIM or ARC.
        dkim_task: asyncio.Future[list[DkimVerdict]] = asyncio.ensure_future(verify_dkim(raw, self.dns)) \
            if b"dkim-signature" in head else _done([])
        arc_task = asyncio.ensure_future(verify_arc(raw, self.dns, self.verifier.trusted_sealers)) \
            if b"\narc-" in head or head.startswith(b"arc-") else _done(NO_ARC)
        tasks: list[asyncio.Future[Any]] = [spf_task, dkim_task, arc_task]
        if not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        ip, helo, mail_from = self._spf_args
        spf = _result(spf_task, SpfVerdict("temperror", "", mail_from, helo or "", "none",
                                           reason="SPF evaluation timed out", ip=ip or ""))
        timed_out: list[DkimVerdict] = [DkimVerdict("temperror", "", "", reason="DKIM verification timed out")]
        dkim_list = _result(dkim_task, timed_out)
        dkims = tuple(dkim_list)
        arc = _result(arc_task, ArcVerdict("fail", "ARC validation timed out", temporary=True))
        dmarc = await _bounded(evaluate_dmarc(self.dns, raw, spf, dkims, self.verifier.rng), deadline)
        if dmarc is None:
            dmarc = DmarcVerdict("temperror", from_domain(raw)[0], reason="DMARC evaluation timed out")
        override = "" if dmarc.aligned else _arc_override(arc, dmarc.from_domain)
        return AuthVerdict(self.verifier.authserv_id, spf, dkims, dmarc, arc, override,
                           elapsed=time.monotonic() - started)


NO_ARC = ArcVerdict("none", "no ARC headers")


def _done(value: T) -> asyncio.Future[T]:
    fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve a background task's outcome so an abandoned one never logs 'exception was never retrieved'."""
    if not task.cancelled():
        task.exception()


def _result(task: asyncio.Future[T], fallback: T) -> T:
    """The task's result; `fallback` (a temperror) when it did not finish in time or crashed (logged: a bug)."""
    if task.done() and not task.cancelled():
        exc = task.exception()
        if exc is None:
            return task.result()
        log.error("auth.check_crashed", error=repr(exc))
    task.cancel()
    return fallback


async def _bounded(coro: Awaitable[T], deadline: float) -> T | None:
    """The result, or None when `deadline` passed first."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + max(0.001, deadline - time.monotonic())):
            return await coro
    return None

