"""SMTP client side: hand a message to a relay or to the recipients' MX, with one result per recipient.

Per destination (gateway/outbound/destinations.py) a delivery waits for one of its sessions and for its pace,
takes an open session from the pool (gateway/outbound/pool.py) or opens one — TCP, banner, EHLO, STARTTLS
(required and verified for the relay and for MTA-STS `enforce` domains, opportunistic otherwise), EHLO again,
AUTH for the relay — and reads the server's extensions only after EHLO, so that `BODY=8BITMIME` and
`SMTPUTF8` are declared whenever the next hop offers them. A recipient whose address needs SMTPUTF8 (a
non-ASCII local part) fails with 5.6.7 when the next hop does not offer it (RFC 6531 §3.5); a non-ASCII
domain alone goes out as its A-label.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import aiosmtplib

from gateway.config import ConfigError, OutboundConfig, resolve_secret
from gateway.logs import get_logger
from gateway.outbound.destinations import MAX_PACE_WAIT, Destination, Destinations
from gateway.outbound.mta_sts import MtaSts, PolicyLookup, StsPolicy
from gateway.outbound.mx import MxResolver, PermanentDnsError, TemporaryDnsError
from gateway.outbound.pool import SessionPool, SmtpSession
from gateway.outbound.results import RcptResult, Transaction, permanent, reply_result, temporary
from gateway.outbound.tlsrpt import TlsReportCounters

log = get_logger("mailgw.outbound")

TlsMode = Literal["none", "opportunistic", "required", "implicit"]
Verify = Literal["no", "try", "must"]  # try: check the certificate, deliver anyway (MTA-STS testing)
_RELAY_TLS: dict[str, TlsMode] = {"none": "none", "starttls": "required", "implicit": "implicit"}
_CONNECTION_ERRORS = (aiosmtplib.SMTPException, OSError, TimeoutError, ssl.SSLError)


@dataclass(frozen=True, slots=True)
class Target:
    address: str  # IP address (MX) or host name (relay)
    port: int
    name: str  # the MX or relay host name: TLS server name and logs
    tls: TlsMode
    verify: Verify

    @property
    def key(self) -> tuple[str, int, str, str, str]:
        return (self.address, self.port, self.tls, self.verify, self.name if self.verify != "no" else "")

    def weaker(self) -> Target | None:
        """What opportunistic delivery falls back to when TLS as asked failed (RFC 7435, RFC 8461 testing)."""
        if self.verify == "try":
            return replace(self, verify="no")
        if self.tls == "opportunistic" and self.verify == "no":
            return replace(self, tls="none")
        return None


class TlsFailure(Exception):
    def __init__(self, result_type: str, text: str):
        super().__init__(text)
        self.result_type = result_type


def tls_result_type(exc: BaseException) -> str:
    """RFC 8460 result type for a failed TLS handshake."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            code = getattr(seen, "verify_code", 0)
            return {10: "certificate-expired", 62: "certificate-host-mismatch"}.get(code, "certificate-not-trusted")
        seen = seen.__cause__ or seen.__context__
    return "validation-failure"


def wire_address(address: str, smtputf8: bool) -> str | None:
    """The address as it may be written on this session; None when it needs SMTPUTF8 and the server lacks it."""
    if address.isascii() or smtputf8:
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        return None
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return None


class SmtpSender:
    """Delivers transactions to the relay (all domains) or to each domain's MX."""

    def __init__(self, cfg: OutboundConfig, *, helo: str, mx_resolver: MxResolver | None = None,
                 state_dir: Path | None = None):
        self.cfg = cfg
        self.helo = helo
        self.relay = cfg.relay
        self.mx = mx_resolver or MxResolver.from_nameservers(cfg.nameservers)
        self.pool = SessionPool(cfg.sessions)
        self.destinations = Destinations(cfg)
        direct = cfg.relay is None
        # Built once: a default context loads the system CA store, which is not worth doing per connection.
        ca_file = cfg.mta_sts.ca_file if direct else cfg.relay.ca_file if cfg.relay else None
        self._verified_tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        # Opportunistic STARTTLS without certificate checks, as MTAs do without MTA-STS/DANE: no CA store to load.
        self._any_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._any_tls.check_hostname = False
        self._any_tls.verify_mode = ssl.CERT_NONE
        self.sts = (MtaSts(cfg.mta_sts, self.mx, state_dir / "mta-sts.json" if state_dir else None,
                           tls=self._verified_tls)
                    if direct and cfg.mta_sts.enabled else None)
        self.tls_reports = (TlsReportCounters(state_dir / "tls-reports" if state_dir else None)
                            if direct and cfg.tls_reports.enabled else None)
        self._relay_targets: list[Target] = []
        if cfg.relay is not None:
            tls = _RELAY_TLS[cfg.relay.tls]
            self._relay_targets = [Target(cfg.relay.host, cfg.relay.port, cfg.relay.host, tls,
                                          "no" if tls == "none" else "must")]
        self._relay_password: str | None = None
        self._relay_problem: str | None = None  # the relay's password cannot be read: defer, never bounce
        if cfg.relay and (cfg.relay.password_env or cfg.relay.password_file):
            try:
                self._relay_password = resolve_secret(cfg.relay.password_env, cfg.relay.password_file,
                                                      what="outbound.relay.password")
            except ConfigError as exc:
                self._relay_problem = "; ".join(exc.errors)

    async def close(self) -> None:
        await self.pool.close()
        if self.tls_reports is not None:
            self.tls_reports.flush()

    # -- one domain ------------------------------------------------------------------------------------------

    async def deliver(self, domain: str, transactions: Sequence[Transaction], message: bytes
                      ) -> dict[str, RcptResult]:
        """Send to every recipient (all in `domain`); never raises: failures become per-recipient results."""
        all_rcpts = [r for t in transactions for r in t.rcpts]
        if self._relay_problem is not None:
            return temporary(all_rcpts, f"4.3.5 {self._relay_problem}")
        policy: StsPolicy | None = None
        if self.relay is not None:
            targets = self._relay_targets
            dest = self.destinations.relay()
        else:
            try:
                hosts = await self.mx.hosts(domain)
            except PermanentDnsError as exc:
                return permanent(all_rcpts, f"5.1.2 {exc}")
            except TemporaryDnsError as exc:
                return temporary(all_rcpts, f"4.4.3 {exc}")
            lookup = await self.sts.policy(domain) if self.sts is not None else PolicyLookup(None)
            if lookup.error and self.tls_reports is not None:
                self.tls_reports.failure(domain, lookup.policy, "sts-policy-fetch-error", detail=lookup.error)
            policy = lookup.policy if lookup.policy is not None and lookup.policy.mode != "none" else None
            if policy is not None and policy.mode == "enforce":
                allowed = [h for h in hosts if policy.matches(h)]
                if not allowed:
                    if self.tls_reports is not None:
                        self.tls_reports.failure(domain, policy, "validation-failure", mx_host=hosts[0],
                                                 detail="no MX host matches the policy")
                    return temporary(all_rcpts, f"4.7.5 MTA-STS policy of {domain} (enforce) allows none of its MX "
                                                f"hosts ({', '.join(hosts)}; policy mx: {', '.join(policy.mx)})")
                hosts = allowed
            dest = self.destinations.for_domain(domain, hosts)
            try:
                targets = await self._mx_targets(domain, hosts, policy)
            except TemporaryDnsError as exc:
                return temporary(all_rcpts, f"4.4.3 {exc}")
            if not targets:
                return temporary(all_rcpts, f"4.4.4 no address for the MX hosts of {domain}")
        return await self._deliver(dest, domain, policy, targets, list(transactions), message)

    async def _mx_targets(self, domain: str, hosts: Sequence[str], policy: StsPolicy | None) -> list[Target]:
        """Targets in MX preference order; an MX host whose lookup fails temporarily is skipped unless every
        host fails that way."""
        targets: list[Target] = []
        failure: TemporaryDnsError | None = None
        verify: Verify = "no" if policy is None else "must" if policy.mode == "enforce" else "try"
        tls: TlsMode = "required" if verify == "must" else "opportunistic"
        for host in hosts:
            try:
                addresses = await self.mx.addresses(host)
            except TemporaryDnsError as exc:
                failure = exc
                continue
            if policy is not None and policy.mode == "testing" and not policy.matches(host):
                if self.tls_reports is not None:
                    self.tls_reports.failure(domain, policy, "validation-failure", mx_host=host,
                                             detail="MX host does not match the policy")
                targets += [Target(a, self.cfg.smtp_port, host, "opportunistic", "no") for a in addresses]
                continue
            targets += [Target(a, self.cfg.smtp_port, host, tls, verify) for a in addresses]
        if not targets and failure is not None:
            raise failure
        return targets

    async def _deliver(self, dest: Destination, domain: str, policy: StsPolicy | None, targets: Sequence[Target],
                       transactions: list[Transaction], message: bytes) -> dict[str, RcptResult]:
        results: dict[str, RcptResult] = {}
        remaining = transactions
        failure = "4.4.1 no host was tried"
        for target in targets:
            if not remaining:
                break
            wait = dest.wait_time()
            if wait > MAX_PACE_WAIT or not await dest.acquire():
                self._later(dest, remaining, results)
                return results
            try:
                try:
                    session = await self._session(target, domain, policy)
                except TlsFailure as exc:
                    failure = f"4.7.5 {target.name}[{target.address}]: {exc}"
                    continue
                except _CONNECTION_ERRORS as exc:
                    failure = f"4.4.1 {target.name}[{target.address}]:{target.port}: {_describe(exc)}"
                    log.info("outbound.host_failed", host=target.name, address=target.address, port=target.port,
                             error=failure)
                    continue
                remaining = await self._run(session, dest, remaining, message, results)
                self.pool.give_back(session)
            finally:
                await dest.release()
        for tx in remaining:
            results.update(temporary(tx.rcpts, failure[:400]))
        return results

    def _later(self, dest: Destination, transactions: Sequence[Transaction], results: dict[str, RcptResult]) -> None:
        """The destination is paused or at its limit: these wait, without counting an attempt."""
        retry_at = dest.resume_at()
        text = f"4.7.0 waiting for destination {dest.name} (rate and session limits)"
        for tx in transactions:
            results.update(temporary(tx.rcpts, text, throttled=True, retry_at=retry_at))

    # -- one session -----------------------------------------------------------------------------------------

    async def _run(self, session: SmtpSession, dest: Destination, transactions: list[Transaction], message: bytes,
                   results: dict[str, RcptResult]) -> list[Transaction]:
        """Run transactions on `session` at the destination's pace. Returns those not run because the session
        broke (the next host may take them)."""
        eightbit = not message.isascii()
        for i, tx in enumerate(transactions):
            wait = dest.wait_time()
            if wait > MAX_PACE_WAIT:
                self._later(dest, transactions[i:], results)
                return []
            if wait > 0:
                await asyncio.sleep(wait)
            dest.take()
            try:
                outcome = await self._transaction(session, tx, message, eightbit)
            except _CONNECTION_ERRORS as exc:
                session.broken = True
                log.info("outbound.session_lost", host=session.host, error=_describe(exc), done=i)
                return transactions[i:]
            session.messages += 1
            results.update(outcome)
            if any(r.outcome == "delivered" for r in outcome.values()):
                dest.delivered_one()
            slow = next((r for r in outcome.values() if r.throttled), None)
            if slow is not None:
                dest.throttled(slow.reply)
                if slow.code == 421:
                    session.broken = True
                retry_at = dest.resume_at()
                for rcpt, r in outcome.items():
                    if r.throttled:
                        results[rcpt] = replace(r, retry_at=retry_at)
                self._later(dest, transactions[i + 1:], results)
                return []
        return []

    async def _transaction(self, session: SmtpSession, tx: Transaction, message: bytes, eightbit: bool
                           ) -> dict[str, RcptResult]:
        client = session.client
        utf8 = session.supports("smtputf8")
        sender = wire_address(tx.mail_from, utf8)
        if sender is None:
            return permanent(tx.rcpts, f"5.6.7 the sender address {tx.mail_from} is not ASCII and {session.host} "
                                       "does not offer SMTPUTF8", code=553)
        results: dict[str, RcptResult] = {}
        wires: list[tuple[str, str]] = []
        for rcpt in tx.rcpts:
            wire = wire_address(rcpt, utf8)
            if wire is None:
                results[rcpt] = RcptResult("permanent", 553, f"5.6.7 {session.host} does not offer SMTPUTF8, which "
                                           "the non-ASCII address needs (RFC 6531)")
            else:
                wires.append((rcpt, wire))
        if not wires:
            return results
        need_utf8 = utf8 and not all(a.isascii() for a in (sender, *(w for _, w in wires)))
        options = ["BODY=8BITMIME"] if eightbit and session.supports("8bitmime") else []
        if need_utf8:
            options.append("SMTPUTF8")
        encoding = "utf-8" if need_utf8 else "ascii"
        try:
            await client.mail(sender, options=options, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            await _rset(session)
            results.update({r: reply_result(exc.code, exc.message) for r, _ in wires})
            return results
        accepted = []
        for rcpt, wire in wires:
            try:
                await client.rcpt(wire, encoding=encoding)
                accepted.append(rcpt)
            except aiosmtplib.SMTPResponseException as exc:
                results[rcpt] = reply_result(exc.code, exc.message)
                if exc.code == 421:
                    break
        if not accepted:
            await _rset(session)
            return results
        try:
            response = await client.data(message)
            outcome = reply_result(response.code, response.message)
        except aiosmtplib.SMTPResponseException as exc:
            outcome = reply_result(exc.code, exc.message)
        for rcpt in accepted:
            results[rcpt] = outcome
        return results

    async def _session(self, target: Target, domain: str, policy: StsPolicy | None) -> SmtpSession:
        """A reused or new session for `target`; TLS that fails as asked falls back where the policy allows."""
        current: Target | None = target
        while current is not None:
            reused = await self.pool.take(current.key)
            if reused is not None:
                return reused
            try:
                session = await self._connect(current)
            except TlsFailure as exc:
                self._report_tls(domain, policy, current, None, exc)
                current = current.weaker()  # None for required TLS: the relay's, MTA-STS enforce
                if current is None:
                    raise
                continue
            self._report_tls(domain, policy, current, session, None)
            return session
        raise AssertionError("unreachable")

    async def _connect(self, target: Target) -> SmtpSession:
        implicit = target.tls == "implicit"
        client = aiosmtplib.SMTP(hostname=target.address, port=target.port, local_hostname=self.helo,
                                 timeout=self.cfg.timeout, use_tls=implicit, start_tls=False,
                                 tls_context=self._verified_tls if implicit else None, validate_certs=implicit)
        await client.connect(timeout=self.cfg.connect_timeout)
        self.pool.opened_one()
        session = SmtpSession(client, target.key, target.name, tls=implicit, verified=implicit)
        try:
            await _hello(client)
            if target.tls in ("opportunistic", "required"):
                if client.supports_extension("starttls"):
                    verify = target.verify != "no"
                    try:
                        await client.starttls(server_hostname=target.name, validate_certs=verify,
                                              tls_context=self._verified_tls if verify else self._any_tls)
                    except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
                        raise TlsFailure(tls_result_type(exc), f"STARTTLS failed: {_describe(exc)}") from exc
                    session.tls, session.verified = True, verify
                    await _hello(client)
                elif target.tls == "required":
                    raise TlsFailure("starttls-not-supported", f"{target.name} does not offer STARTTLS")
            if self.relay is not None and self.relay.username and self._relay_password is not None:
                await client.login(self.relay.username, self._relay_password)
        except BaseException:
            session.broken = True
            client.close()
            raise
        return session

    def _report_tls(self, domain: str, policy: StsPolicy | None, target: Target, session: SmtpSession | None,
                    failure: TlsFailure | None) -> None:
        reports = self.tls_reports
        if reports is None:  # also with a relay: TLS-RPT is about MX delivery
            return
        if failure is not None:
            if policy is not None or failure.result_type == "starttls-not-supported":
                reports.failure(domain, policy, failure.result_type, mx_host=target.name,
                                receiving_ip=target.address, detail=str(failure)[:200])
            return
        assert session is not None
        if session.tls and (policy is None or session.verified):
            reports.success(domain, policy)
        elif policy is None and target.tls != "none":
            reports.failure(domain, None, "starttls-not-supported", mx_host=target.name, receiving_ip=target.address)


async def _hello(client: aiosmtplib.SMTP) -> None:
    """EHLO (HELO when refused), so that the extensions are known before MAIL."""
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        await client.helo()


async def _rset(session: SmtpSession) -> None:
    try:
        await session.client.rset()
    except _CONNECTION_ERRORS:
        session.broken = True


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]


def group_by_domain(rcpts: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in rcpts:
        out.setdefault(r.rpartition("@")[2].lower(), []).append(r)
    return out
