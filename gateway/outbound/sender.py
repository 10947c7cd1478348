"""SMTP client side: hand a message to a relay or to the recipients' MX, with one result per recipient.

Results are classified the way the outbound worker acts on them: 2xx delivered, 4xx and every connection
problem temporary (retry later), 5xx permanent (the sender gets a DSN).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from dns_checks.resolver import parse_nameserver
from gateway.config import ConfigError, OutboundConfig, RelayConfig, resolve_secret
from gateway.logs import get_logger

log = get_logger("mailgw.outbound")

Outcome = Literal["delivered", "temporary", "permanent"]


@dataclass(frozen=True, slots=True)
class RcptResult:
    outcome: Outcome
    code: int
    text: str

    @property
    def status(self) -> str:
        """Enhanced status code from the reply text, or one derived from the reply code."""
        head = self.text.split(" ", 1)[0]
        parts = head.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and head[0] in "245":
            return head
        return {"delivered": "2.0.0", "temporary": "4.0.0", "permanent": "5.0.0"}[self.outcome]


def classify(code: int) -> Outcome:
    if 200 <= code < 300:
        return "delivered"
    if 500 <= code < 600:
        return "permanent"
    return "temporary"


@dataclass(frozen=True, slots=True)
class Transaction:
    """One MAIL FROM with its recipients (VERP gives each recipient its own)."""

    mail_from: str
    rcpts: tuple[str, ...]


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
        records = sorted(answer, key=lambda r: r.preference)
        hosts = [r.exchange.to_text().rstrip(".") for r in records]
        if hosts in ([""], ["."]) or (len(records) == 1 and records[0].exchange.to_text() == "."):
            raise PermanentDnsError(f"domain {domain} accepts no mail (null MX)")
        return [h for h in hosts if h]


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
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
                errors.append(str(exc))
        if not found and errors:
            raise TemporaryDnsError(f"address lookup for {host} failed: {errors[0]}")
        return found


class TemporaryDnsError(Exception):
    pass


class PermanentDnsError(Exception):
    pass


class SmtpSender:
    """Delivers transactions to the relay (all domains) or to each domain's MX."""

    def __init__(self, cfg: OutboundConfig, *, helo: str, mx_resolver: MxResolver | None = None):
        self.cfg = cfg
        self.helo = helo
        self.relay = cfg.relay
        self.mx = mx_resolver or MxResolver.from_nameservers(cfg.nameservers)
        self.smtp_port = cfg.smtp_port
        self.timeout = cfg.timeout
        # Built once: a default context loads the system CA store, which is not worth doing per connection.
        self._relay_tls = ssl.create_default_context()
        # MX delivery: opportunistic STARTTLS without certificate checks, as MTAs do without MTA-STS/DANE.
        self._mx_tls = ssl.create_default_context()
        self._mx_tls.check_hostname = False
        self._mx_tls.verify_mode = ssl.CERT_NONE
        self._relay_password: str | None = None
        self._relay_problem: str | None = None  # the relay's password cannot be read: defer, never bounce
        if cfg.relay and (cfg.relay.password_env or cfg.relay.password_file):
            try:
                self._relay_password = resolve_secret(cfg.relay.password_env, cfg.relay.password_file,
                                                      what="outbound.relay.password")
            except ConfigError as exc:
                self._relay_problem = "; ".join(exc.errors)

    async def deliver(self, domain: str, transactions: Sequence[Transaction], message: bytes
                      ) -> dict[str, RcptResult]:
        """Send to every recipient (all in `domain`); never raises: failures become per-recipient results."""
        all_rcpts = [r for t in transactions for r in t.rcpts]
        if self._relay_problem is not None:
            return {r: RcptResult("temporary", 451, f"4.3.5 {self._relay_problem}") for r in all_rcpts}
        if self.relay is not None:
            targets = [(self.relay.host, self.relay.port)]
        else:
            try:
                targets = await self._mx_targets(domain)
            except PermanentDnsError as exc:
                return {r: RcptResult("permanent", 550, f"5.1.2 {exc}") for r in all_rcpts}
            except TemporaryDnsError as exc:
                return {r: RcptResult("temporary", 451, f"4.4.3 {exc}") for r in all_rcpts}
            if not targets:
                return {r: RcptResult("temporary", 451, f"4.4.4 no address for the MX hosts of {domain}")
                        for r in all_rcpts}
        last: dict[str, RcptResult] = {}
        for host, port in targets:
            try:
                return await self._session(host, port, transactions, message)
            except (TimeoutError, OSError, aiosmtplib.SMTPException) as exc:
                # This host did not take it at all: try the next MX before deferring.
                text = f"4.4.1 {host}:{port}: {type(exc).__name__}: {exc}".replace("\n", " ")[:300]
                log.info("outbound.host_failed", host=host, port=port, error=text)
                last = {r: RcptResult("temporary", 451, text) for r in all_rcpts}
        return last

    async def _mx_targets(self, domain: str) -> list[tuple[str, int]]:
        """(address, port) in MX preference order; an MX host whose lookup fails temporarily is skipped unless
        every host fails that way."""
        targets: list[tuple[str, int]] = []
        temporary: TemporaryDnsError | None = None
        for host in await self.mx.hosts(domain):
            try:
                targets += [(addr, self.smtp_port) for addr in await self.mx.addresses(host)]
            except TemporaryDnsError as exc:
                temporary = exc
        if not targets and temporary is not None:
            raise temporary
        return targets

    def _client(self, host: str, port: int) -> aiosmtplib.SMTP:
        relay: RelayConfig | None = self.relay
        if relay is not None:
            return aiosmtplib.SMTP(hostname=host, port=port, local_hostname=self.helo, timeout=self.timeout,
                                   use_tls=relay.tls == "implicit", start_tls=relay.tls == "starttls",
                                   tls_context=self._relay_tls, validate_certs=True)
        return aiosmtplib.SMTP(hostname=host, port=port, local_hostname=self.helo, timeout=self.timeout,
                               start_tls=None, tls_context=self._mx_tls, validate_certs=False)

    async def _session(self, host: str, port: int, transactions: Sequence[Transaction], message: bytes
                       ) -> dict[str, RcptResult]:
        results: dict[str, RcptResult] = {}
        client = self._client(host, port)
        await client.connect()
        try:
            if self.relay is not None and self.relay.username and self._relay_password is not None:
                await client.login(self.relay.username, self._relay_password)
            options = ["BODY=8BITMIME"] if client.supports_extension("8BITMIME") else []
            if client.supports_extension("SMTPUTF8") and _needs_smtputf8(transactions):
                options.append("SMTPUTF8")
            for tx in transactions:
                results.update(await self._transaction(client, tx, message, options))
        finally:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()
        return results

    async def _transaction(self, client: aiosmtplib.SMTP, tx: Transaction, message: bytes, options: list[str]
                           ) -> dict[str, RcptResult]:
        try:
            await client.mail(tx.mail_from, options=options)
        except aiosmtplib.SMTPResponseException as exc:
            await _rset(client)
            return {r: RcptResult(classify(exc.code), exc.code, exc.message) for r in tx.rcpts}
        results: dict[str, RcptResult] = {}
        accepted = []
        for rcpt in tx.rcpts:
            try:
                await client.rcpt(rcpt)
                accepted.append(rcpt)
            except aiosmtplib.SMTPResponseException as exc:
                results[rcpt] = RcptResult(classify(exc.code), exc.code, exc.message)
        if not accepted:
            await _rset(client)
            return results
        try:
            response = await client.data(message)
            outcome = RcptResult("delivered", response.code, response.message)
        except aiosmtplib.SMTPResponseException as exc:
            outcome = RcptResult(classify(exc.code), exc.code, exc.message)
        for rcpt in accepted:
            results[rcpt] = outcome
        return results


async def _rset(client: aiosmtplib.SMTP) -> None:
    try:
        await client.rset()
    except aiosmtplib.SMTPException:
        pass


def _needs_smtputf8(transactions: Sequence[Transaction]) -> bool:
    return any(not s.isascii() for t in transactions for s in (t.mail_from, *t.rcpts))


def group_by_domain(rcpts: Sequence[str]) -> Mapping[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in rcpts:
        out.setdefault(r.rpartition("@")[2].lower(), []).append(r)
    return out
