"""Outbound worker: drains the outbound spool (Odoo's submissions, the gateway's DSNs).

Per message: recipients in our own domains are handed back to the inbound spool (local delivery, as an MTA
does; a DSN to our bounce address reaches Odoo this way); the rest gets a Received line for this hop, is
DKIM-signed once and sent per domain (gateway/outbound/sender.py), with a VERP return path per recipient when
the envelope sender is one of our bounce addresses. Each recipient has its own status, so a retry only sends
to those still pending: 2xx sent, 5xx failed (DSN to the sender), 4xx pending until `outbound.lifetime`, then
failed. Every other failure — a bug, a broken spool read, an address nothing can encode — is a temporary
failure of the pending recipients under the same lifetime, so every path ends. A destination that asked us
to slow down keeps its recipients pending without counting an attempt. The entry ends `sent` when every
recipient is done and at least one was delivered, `exception` when none was — Odoo's mail.mail words.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.config import Config
from gateway.dsn_sender import FailedRecipient, send_dsn
from gateway.headers import header_fields, received_field, split_message
from gateway.logs import get_logger
from gateway.outbound.dkim import DkimSigner
from gateway.outbound.results import RcptResult, Transaction, temporary
from gateway.outbound.sender import SmtpSender, group_by_domain
from gateway.retry import backoff_delay
from gateway.spool import Direction, Envelope, Spool, SpoolEntry, State

log = get_logger("mailgw.outbound")

# Headers that must not leave: Return-Path is the final MTA's to write (Odoo puts its bounce address there),
# Bcc would disclose blind recipients.
STRIPPED_HEADERS = frozenset({b"return-path", b"bcc"})
DONE = frozenset({"sent", "failed"})
THROTTLE_RETRY_MIN = 1.0  # seconds: a throttled entry comes back no sooner than this


def strip_headers(raw: bytes) -> bytes:
    head, blank, body = split_message(raw)
    kept = b"".join(data for name, data in header_fields(head) if name.lower() not in STRIPPED_HEADERS)
    return kept + blank + body


class OutboundWorker:
    def __init__(self, config: Config, spool: Spool, *, hostname: str, sender: SmtpSender | None = None,
                 signer: DkimSigner | None = None,
                 bounce_addresses: Callable[[], Mapping[str, tuple[str, str]]] | None = None,
                 verp_secret: bytes | None = None, clock: Callable[[], float] = time.time):
        self.config = config
        self.cfg = config.outbound
        self.spool = spool
        # Who this hop is: EHLO, Received, DSNs. The configured helo_name wins over the machine's name.
        self.hostname = self.cfg.helo_name or hostname
        self.sender = sender or SmtpSender(self.cfg, helo=self.hostname, state_dir=config.state_dir)
        self.signer = signer if signer is not None else DkimSigner.from_config(self.cfg.dkim)
        self.local_domains = set(config.domain_owner)
        # bounce address -> (bounce alias, domain): senders that get a VERP return path
        self.bounce_addresses = bounce_addresses or (lambda: {f"bounce@{d}": ("bounce", d)
                                                              for inst in config.odoo for d in inst.domains})
        self.verp_secret = verp_secret if config.bounce.verp else None
        self.clock = clock
        self.worker_id = f"outbound-{hostname}-{id(self):x}"
        self._rng = random.Random()
        self._stopping = False
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._slots = asyncio.Semaphore(self.cfg.concurrency)
        self._claim_error: str | None = None

    def kick(self) -> None:
        self._wake.set()

    async def reload(self, config: Config) -> None:
        """SIGHUP: new DKIM keys (rotation), retry times and lifetime apply to the next attempt. Sessions,
        destinations, the relay and MTA-STS settings keep running as started (a restart applies them)."""
        signer = DkimSigner.from_config(config.outbound.dkim)  # raises on an unreadable key: the old one stays
        self.signer = signer
        self.config, self.cfg = config, config.outbound
        self.local_domains = set(config.domain_owner)

    async def run(self) -> None:
        poll = self.config.delivery.poll_interval
        while not self._stopping:
            free = self.cfg.concurrency - len(self._inflight)
            try:
                entries = await self.spool.claim(Direction.OUTBOUND, self.worker_id, limit=free) if free > 0 else []
            except Exception as exc:  # the spool is unreachable (database restarting): retry at the next poll
                entries = []
                if str(exc) != self._claim_error:
                    log.error("outbound.claim_failed", error=str(exc))
                self._claim_error = str(exc)
            else:
                self._claim_error = None
            for entry in entries:
                task = asyncio.create_task(self._guarded(entry))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if not entries:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll):
                        await self._wake.wait()
            elif free <= len(entries):
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)

    async def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._inflight:
            _done, pending = await asyncio.wait(self._inflight, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        await self.sender.close()

    async def _guarded(self, entry: SpoolEntry) -> None:
        async with self._slots:
            try:
                await self.process(entry)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await self.spool.release(entry.queue_id)
                raise
            except Exception as exc:  # only the final spool write can get here; the entry waits and is retried
                log.error("outbound.crashed", queue_id=entry.queue_id, message_id=entry.message_id, error=repr(exc))
                with contextlib.suppress(Exception):
                    current = await self.spool.get(entry.queue_id)
                    if current is None or current.state != State.OUTGOING:  # e.g. cancelled meanwhile: leave it
                        await self.spool.release(entry.queue_id)
                        return
                    await self.spool.transition(entry.queue_id, State.OUTGOING, error=f"internal error: {exc!r}",
                                                next_attempt_at=self.clock() + self._backoff(entry.attempts + 1),
                                                count_attempt=True)

    def _backoff(self, attempts: int) -> float:
        return backoff_delay(attempts, self.cfg.retry_initial, self.cfg.retry_max, self._rng)

    def _expired(self, entry: SpoolEntry) -> bool:
        return self.clock() - entry.envelope.received_at >= self.cfg.lifetime

    async def process(self, entry: SpoolEntry) -> SpoolEntry:
        status: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (entry.rcpt_status or {}).items()}
        pending = [r for r in entry.envelope.rcpt_tos if status.get(r, {}).get("state") not in DONE]
        raw = b""
        try:
            raw = await self.spool.raw(entry.queue_id)
            if pending:  # even past the lifetime once more: after a long outage the mail may still go
                await self._attempt(entry, raw, pending, status)
        except Exception as exc:  # whatever it was, it is retried under the lifetime like a 4xx
            log.error("outbound.attempt_failed", queue_id=entry.queue_id, message_id=entry.message_id,
                      error=repr(exc))
            for rcpt in pending:
                if status.get(rcpt, {}).get("state") not in DONE:
                    self._record(status, rcpt, RcptResult("temporary", 451, f"4.3.0 internal error: {exc!r}"))
        return await self._finish(entry, raw, status)

    async def _attempt(self, entry: SpoolEntry, raw: bytes, pending: list[str],
                       status: dict[str, dict[str, Any]]) -> None:
        mine = [r for r in pending if r.rpartition("@")[2].lower() in self.local_domains]
        if mine:
            await self._deliver_locally(entry, raw, mine, status)
        groups = group_by_domain([r for r in pending if r not in mine])
        for domain in list(groups):  # a destination that asked us to slow down: no signing, no connection
            resume = self.sender.destinations.waiting(domain)
            if resume is not None:
                for rcpt in groups.pop(domain):
                    self._record(status, rcpt, RcptResult("temporary", 451, "4.7.0 waiting for destination", True,
                                                          resume))
        if not groups:
            return
        body = strip_headers(raw)
        if entry.message_id_generated and entry.message_id:  # given at intake; the same on every attempt
            body = f"Message-Id: {entry.message_id}\r\n".encode("ascii", "replace") + body
        message = self._received(entry) + self.signer.sign(body)
        outcomes = await asyncio.gather(*(self.sender.deliver(domain, self._transactions(entry, rcpts), message)
                                          for domain, rcpts in groups.items()), return_exceptions=True)
        for (domain, rcpts), outcome in zip(groups.items(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("outbound.domain_failed", queue_id=entry.queue_id, domain=domain, error=repr(outcome))
                outcome = temporary(rcpts, f"4.3.0 internal error: {outcome!r}")
            for rcpt in rcpts:
                self._record(status, rcpt, outcome.get(rcpt) or RcptResult("temporary", 451, "4.4.0 no result"))

    def _received(self, entry: SpoolEntry) -> bytes:
        """This hop's trace field (RFC 5321 §4.4): who handed us the message, when, under which queue id."""
        env = entry.envelope
        field = received_field(hostname=self.hostname, queue_id=entry.queue_id, intake=env.intake,
                               received_at=env.received_at, tls=bool((env.source or {}).get("tls")), helo=env.helo,
                               peer=env.peer, recipients=env.rcpt_tos, client=env.client)
        return field.encode("utf-8", "surrogateescape") + b"\r\n"

    def _transactions(self, entry: SpoolEntry, rcpts: list[str]) -> list[Transaction]:
        sender = entry.envelope.mail_from
        verp = self.bounce_addresses().get(sender.lower()) if sender and self.verp_secret else None
        if verp is None:
            return [Transaction(sender, tuple(rcpts))]
        from bounce.verp import encode

        alias, domain = verp
        index = {r: i for i, r in enumerate(entry.envelope.rcpt_tos)}
        return [Transaction(encode(alias, domain, entry.queue_id, index[r], self.verp_secret or b""), (r,))
                for r in rcpts]

    async def _deliver_locally(self, entry: SpoolEntry, raw: bytes, rcpts: list[str],
                               status: dict[str, dict[str, Any]]) -> None:
        env = Envelope(mail_from=entry.envelope.mail_from, rcpt_tos=tuple(rcpts), intake="internal",
                       peer="outbound", helo=self.hostname, source={"outbound": entry.queue_id})
        queue_id, _ = await self.spool.put(env, raw, message_id=entry.message_id,
                                           dedup_key=f"local:{entry.queue_id}:{','.join(sorted(rcpts))}")
        for rcpt in rcpts:
            self._record(status, rcpt, RcptResult("delivered", 250, f"2.0.0 delivered locally as {queue_id}"))

    def _record(self, status: dict[str, dict[str, Any]], rcpt: str, result: RcptResult) -> None:
        previous = status.get(rcpt, {})
        state = {"delivered": "sent", "permanent": "failed", "temporary": "deferred"}[result.outcome]
        attempts = int(previous.get("attempts", 0)) + (0 if result.throttled else 1)
        status[rcpt] = {"state": state, "code": result.code, "status": result.status,
                        "text": result.reply[:500], "attempts": attempts}
        if result.throttled:
            status[rcpt]["throttled"] = True
            status[rcpt]["retry_at"] = result.retry_at
            # a real failure seen before stays the one reported if the lifetime runs out meanwhile
            if previous.get("state") == "deferred" and not previous.get("throttled"):
                status[rcpt]["last_failure"] = previous.get("text", "")
            elif previous.get("last_failure"):
                status[rcpt]["last_failure"] = previous["last_failure"]

    async def _finish(self, entry: SpoolEntry, raw: bytes, status: dict[str, dict[str, Any]]) -> SpoolEntry:
        now = self.clock()
        expired = self._expired(entry)
        newly_failed: list[FailedRecipient] = []
        for rcpt in entry.envelope.rcpt_tos:
            st = status.setdefault(rcpt, {"state": "deferred", "text": "not attempted", "attempts": 0})
            if st.get("state") == "deferred" and expired:
                last = st.get("last_failure") or st.get("text", "")
                st.update(state="failed", status="5.4.7", code=550, throttled=False,
                          text=f"5.4.7 delivery time expired; last error: {last}"[:500])
            if st.get("state") == "failed" and not st.get("dsn"):
                newly_failed.append(FailedRecipient(rcpt, st.get("status", "5.0.0"), st.get("text", "")))
                st["dsn"] = True
        if newly_failed:
            await send_dsn(self.spool, entry, raw, newly_failed, hostname=self.hostname)
        states = [status[r].get("state") for r in entry.envelope.rcpt_tos]
        waiting = [status[r] for r in entry.envelope.rcpt_tos if status[r].get("state") not in DONE]
        summary = "; ".join(f"{r}: {status[r]['text']}" for r in entry.envelope.rcpt_tos
                            if status[r].get("state") in ("failed", "deferred"))[:1000] or None
        count = True
        if waiting:
            target = State.OUTGOING
            if all(st.get("throttled") for st in waiting):
                # only waiting for a destination's pace: back when it is ready, and no attempt is counted
                when = max(now + THROTTLE_RETRY_MIN, min(float(st.get("retry_at") or 0) for st in waiting))
                when += self._rng.uniform(0, THROTTLE_RETRY_MIN)
                count = False
            else:
                when = now + self._backoff(entry.attempts + 1)
        elif "sent" in states:
            target, when = State.SENT, now
        else:
            target, when = State.EXCEPTION, now
        new = await self.spool.transition(entry.queue_id, target, error=summary, next_attempt_at=when,
                                          rcpt_status=status, count_attempt=count)
        log.info("outbound.processed", queue_id=entry.queue_id, message_id=entry.message_id, state=str(target),
                 sent=states.count("sent"), failed=states.count("failed"), pending=len(waiting))
        return new
