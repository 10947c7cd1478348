"""Outbound worker: drains the outbound spool (Odoo's submissions, the gateway's DSNs).

Per message: recipients in our own domains are handed back to the inbound spool (local delivery, as an MTA
does; a DSN to our bounce address reaches Odoo this way); the rest is DKIM-signed once and sent per domain,
with a VERP return path per recipient when the envelope sender is one of our bounce addresses. Each
recipient has its own status, so a retry only sends to those still pending: 2xx sent, 5xx failed (DSN to
the sender), 4xx pending until `outbound.lifetime`, then failed. The entry ends `sent` when every recipient
is done and at least one was delivered, `exception` when none was — Odoo's mail.mail words.
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
from gateway.headers import header_fields, split_message
from gateway.logs import get_logger
from gateway.outbound.dkim import DkimSigner
from gateway.outbound.sender import RcptResult, SmtpSender, Transaction, group_by_domain
from gateway.retry import backoff_delay
from gateway.spool import Direction, Envelope, Spool, SpoolEntry, State

log = get_logger("mailgw.outbound")

# Headers that must not leave: Return-Path is the final MTA's to write (Odoo puts its bounce address there),
# Bcc would disclose blind recipients.
STRIPPED_HEADERS = frozenset({b"return-path", b"bcc"})
DONE = frozenset({"sent", "failed"})


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
        self.hostname = hostname
        self.sender = sender or SmtpSender(self.cfg, helo=self.cfg.helo_name or hostname)
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

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        poll = self.config.delivery.poll_interval
        while not self._stopping:
            free = self.cfg.concurrency - len(self._inflight)
            entries = await self.spool.claim(Direction.OUTBOUND, self.worker_id, limit=free) if free > 0 else []
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

    async def _guarded(self, entry: SpoolEntry) -> None:
        async with self._slots:
            try:
                await self.process(entry)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await self.spool.release(entry.queue_id)
                raise
            except Exception as exc:  # keep the worker alive; the entry waits and is retried
                log.error("outbound.crashed", queue_id=entry.queue_id, message_id=entry.message_id, error=repr(exc))
                with contextlib.suppress(Exception):
                    await self.spool.transition(entry.queue_id, State.OUTGOING, error=f"internal error: {exc!r}",
                                                next_attempt_at=self.clock() + self._backoff(entry.attempts + 1),
                                                count_attempt=True)

    def _backoff(self, attempts: int) -> float:
        return backoff_delay(attempts, self.cfg.retry_initial, self.cfg.retry_max, self._rng)

    async def process(self, entry: SpoolEntry) -> SpoolEntry:
        raw = await self.spool.raw(entry.queue_id)
        status: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (entry.rcpt_status or {}).items()}
        rcpts = list(entry.envelope.rcpt_tos)
        pending = [r for r in rcpts if status.get(r, {}).get("state") not in DONE]
        local = self.local_domains
        mine = [r for r in pending if r.rpartition("@")[2].lower() in local]
        if mine:
            await self._deliver_locally(entry, raw, mine, status)
        remote = [r for r in pending if r not in mine]
        if remote:
            message = self.signer.sign(strip_headers(raw))
            for domain, domain_rcpts in group_by_domain(remote).items():
                results = await self.sender.deliver(domain, self._transactions(entry, domain_rcpts), message)
                for rcpt in domain_rcpts:
                    self._record(status, rcpt, results.get(rcpt) or RcptResult("temporary", 451, "4.4.0 no result"))
        return await self._finish(entry, raw, status)

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
        status[rcpt] = {"state": state, "code": result.code, "status": result.status,
                        "text": result.text[:500], "attempts": int(previous.get("attempts", 0)) + 1}

    async def _finish(self, entry: SpoolEntry, raw: bytes, status: dict[str, dict[str, Any]]) -> SpoolEntry:
        now = self.clock()
        expired = now - entry.envelope.received_at >= self.cfg.lifetime
        newly_failed: list[FailedRecipient] = []
        for rcpt in entry.envelope.rcpt_tos:
            st = status.get(rcpt, {})
            if st.get("state") == "deferred" and expired:
                st.update(state="failed", status="5.4.7",
                          text=f"5.4.7 delivery time expired; last error: {st.get('text', '')}"[:500])
            if st.get("state") == "failed" and not st.get("dsn"):
                newly_failed.append(FailedRecipient(rcpt, st.get("status", "5.0.0"), st.get("text", "")))
                st["dsn"] = True
        if newly_failed:
            await send_dsn(self.spool, entry, raw, newly_failed, hostname=self.hostname)
        states = [status.get(r, {}).get("state") for r in entry.envelope.rcpt_tos]
        summary = "; ".join(f"{r}: {status[r]['text']}" for r in entry.envelope.rcpt_tos
                            if status.get(r, {}).get("state") in ("failed", "deferred"))[:1000] or None
        if any(s not in DONE for s in states):
            target, when = State.OUTGOING, now + self._backoff(entry.attempts + 1)
        elif "sent" in states:
            target, when = State.SENT, now
        else:
            target, when = State.EXCEPTION, now
        new = await self.spool.transition(entry.queue_id, target, error=summary, next_attempt_at=when,
                                          rcpt_status=status, count_attempt=True)
        log.info("outbound.processed", queue_id=entry.queue_id, message_id=entry.message_id, state=str(target),
                 sent=states.count("sent"), failed=states.count("failed"), pending=len(states) - sum(
                     s in DONE for s in states))
        return new
