"""InboundWorker: claims inbound mail and delivers each message (see the package docstring): sender lanes,
claims and write-behind here, a message's recipient statuses in outcomes.py, the reply lookup in replies.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from gateway.auth.gate import AuthGate
from gateway.config import Config
from gateway.dsn_sender import FailedRecipient, send_dsn
from gateway.errors import ConfigProblem, PermFailure, TempFailure
from gateway.headers import get_header, line_ending
from gateway.inbound.outage import IntakeHold, OutagePolicy, SenderHold, sender_lane
from gateway.inbound.outcomes import (
    FINAL,
    BounceHandler,
    delivery_plans,
    handle_bounces,
    instance_wide,
    record_result,
    resolve_lookups,
    split_decisions,
)
from gateway.inbound.replies import known_replies
from gateway.logs import get_logger
from gateway.odoo.breaker import BreakerOpenError
from gateway.odoo.client import NoRouteError, OdooClient, OdooRefusedError, ProcessResult
from gateway.odoo.directory import DirectorySync
from gateway.odoo.headers import delivery_headers, stable_message_id
from gateway.retry import backoff_delay
from gateway.routing_policy import policy_from_config
from gateway.spool import Direction, Spool, SpoolEntry, State
from routing.decision import DeliveryPlan, RouteDecision
from routing.directory import Directory
from routing.message import MessageView
from routing.router import Router

log = get_logger("mailgw.inbound")

_PREFETCH_BYTES = 256 * 1024
_ADOPT_LIMIT = 100_000  # deferred entries adopted at start; any beyond come due at their own time


class InboundWorker:
    """Run with `await worker.run()`; `await worker.stop()` drains. `kick()` after spooling new mail."""

    def __init__(self, config: Config, spool: Spool, clients: Mapping[str, OdooClient],
                 directory: DirectorySync | Directory, *,
                 bounce_handler: BounceHandler | None = None, hostname: str | None = None,
                 worker_id: str | None = None, rng: random.Random | None = None):
        self.config = config
        self.delivery = config.delivery
        self.spool = spool
        self.clients = dict(clients)
        self.bounce_handler = bounce_handler
        self.hostname = hostname or socket.gethostname()
        self.worker_id = worker_id or f"inbound-{os.getpid()}"
        self._rng = rng or random.Random()
        if isinstance(directory, DirectorySync):
            self._directory = directory.current
            directory.subscribe(self.set_directory)
        else:
            self._directory = directory
        self._router = Router(self._directory, policy_from_config(config))
        # Sender authentication between routing and delivery (the daemon gives it a verifier when auth is on);
        # without one it still removes forged Authentication-Results claiming our authserv-id.
        self.auth_gate = AuthGate(config, lambda: self._directory, hostname=self.hostname)
        self._kick = asyncio.Event()
        self._stopping = False
        self._running: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(self.delivery.concurrency)
        self._queues: dict[str, deque[SpoolEntry]] = {}
        self._sender_tasks: dict[str, asyncio.Task[None]] = {}
        self._claimed: dict[str, SpoolEntry] = {}
        self._writes: dict[str, asyncio.Future[Any]] = {}
        self._raws: dict[str, asyncio.Future[bytes]] = {}
        self.outage = OutagePolicy(config, self.clients)
        self._bg: set[asyncio.Task[Any]] = set()
        self.stats = {"delivered": 0, "deferred": 0, "failed": 0}
        self._claim_error: str | None = None
        for name, client in self.clients.items():
            client.breaker.subscribe(self._breaker_listener(name))

    # -- wiring -----------------------------------------------------------------------------------------

    def set_directory(self, directory: Directory) -> None:
        """A new snapshot (DirectorySync subscriber): route with it from the next message on."""
        self._directory = directory
        self._router = self._router.with_directory(directory)  # the loop guard and unchanged indexes carry over

    @property
    def router(self) -> Router:
        """The router over the current snapshot (the daemon's RCPT precheck asks the same one)."""
        return self._router

    def kick(self) -> None:
        """Look for due mail now instead of at the next poll."""
        self._kick.set()

    def intake_hold(self, mail_from: str, rcpts: Sequence[str]) -> IntakeHold | None:
        """For mail arriving now: spool it deferred if this worker would only defer it (outage.py)."""
        return self.outage.intake_hold(mail_from, rcpts)

    def _breaker_listener(self, instance: str) -> Callable[[str], None]:
        return lambda state: self._on_breaker(instance, state)

    def _on_breaker(self, instance: str, state: str) -> None:
        if state == "closed":
            self._wake_later(instance, self.outage.on_closed(instance))
            self.kick()

    def _wake_later(self, instance: str, ids: list[str]) -> None:
        if ids:
            self._spawn(self._wake(instance, ids))

    async def _wake(self, instance: str, ids: list[str]) -> None:
        woken = await self.spool.wake(ids)
        log.info("delivery.resumed", instance=instance, woken=woken)
        self.kick()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # -- main loop --------------------------------------------------------------------------------------

    @property
    def max_claimed(self) -> int:
        # Claims are fsync'd commits: take enough at once that they cost little per message.
        return max(64, self.delivery.concurrency * 4)

    async def run(self) -> None:
        self._running = asyncio.current_task()
        log.info("delivery.started", worker=self.worker_id, concurrency=self.delivery.concurrency,
                 instances=sorted(self.clients))
        await self._adopt_deferred()
        while not self._stopping:
            self._kick.clear()
            capacity = self.max_claimed - len(self._claimed)
            got: list[SpoolEntry] = []
            # Claim when the backlog runs low, not after every delivery: each claim is a commit (fsync).
            if len(self._claimed) <= self.max_claimed // 2:
                try:
                    got = await self.spool.claim(Direction.INBOUND, self.worker_id, limit=capacity)
                except Exception as exc:  # a spool hiccup must not kill the worker; logged once per change
                    if str(exc) != self._claim_error:
                        log.error("delivery.claim_failed", error=str(exc))
                    self._claim_error = str(exc)
                else:
                    self._claim_error = None
                for entry in got:
                    self._enqueue(entry)
            if got and len(got) == capacity:
                await asyncio.sleep(0)  # more may be due: claim again once the loop had a turn
                if len(self._claimed) < self.max_claimed:
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.delivery.poll_interval)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop claiming, let in-flight deliveries finish (up to `timeout`), release everything else."""
        timeout = self.config.drain_timeout if timeout is None else timeout
        self._stopping = True
        self._kick.set()
        pending: list[SpoolEntry] = []
        for q in self._queues.values():
            pending.extend(q)
            q.clear()
        tasks = list(self._sender_tasks.values())
        if tasks:
            _done, still = await asyncio.wait(tasks, timeout=timeout)
            for task in still:
                task.cancel()
            for task in still:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), max(1.0, timeout))
        for side in [*self._bg, *self._raws.values()]:
            side.cancel()
        self._raws.clear()
        leftovers = {e.queue_id for e in pending} | set(self._claimed)
        for queue_id in leftovers:
            with contextlib.suppress(Exception):
                await self.spool.release(queue_id)
        self._claimed.clear()
        if self._running is not None and self._running is not asyncio.current_task():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._running), 1.0)
        log.info("delivery.stopped", released=len(leftovers))

    async def _adopt_deferred(self) -> None:
        """What an earlier run deferred waits for its instance here too (a restart in an outage loses nothing
        but the wait), and each instance starts with a first batch, as after its breaker closed."""
        try:
            entries = await self.spool.list(state=State.DEFERRED, direction=Direction.INBOUND, limit=_ADOPT_LIMIT)
        except Exception as exc:
            log.error("delivery.adopt_failed", error=str(exc))
            return
        for instance, ids in self.outage.adopt(entries):
            self._wake_later(instance, ids)

    @staticmethod
    def _sender_key(entry: SpoolEntry) -> str:
        return sender_lane(entry.envelope.mail_from, entry.queue_id)

    def _enqueue(self, entry: SpoolEntry) -> None:
        self._claimed[entry.queue_id] = entry
        key = self._sender_key(entry)
        hold = self.outage.holds.get(key)
        if entry.size <= _PREFETCH_BYTES and (hold is None or hold.until <= time.time()):
            # Read small messages ahead: the read's thread hop overlaps the delivery before it. Not for a sender
            # held back by an outage: those entries are only deferred again and their bytes are never used.
            self._raws[entry.queue_id] = asyncio.ensure_future(self.spool.raw(entry.queue_id))
        self._queues.setdefault(key, deque()).append(entry)
        if key not in self._sender_tasks:
            self._sender_tasks[key] = asyncio.get_running_loop().create_task(self._drain_sender(key))

    async def _drain_sender(self, key: str) -> None:
        try:
            queue = self._queues[key]
            while queue and not self._stopping:
                entry = queue.popleft()
                hold = self.outage.holds.get(key)
                if hold is not None and hold.applies_to(entry):
                    # Everything of this sender queued behind it waits too: one spool write for all of them.
                    held = [entry]
                    while queue and hold.applies_to(queue[0]):
                        held.append(queue.popleft())
                    await self._hold_back(held, hold)
                    continue
                async with self._slots:
                    try:
                        await self.process(entry)
                    except asyncio.CancelledError:
                        raise  # stays in _claimed: stop() releases it
                    except Exception as exc:  # a bug must not wedge the lane; the entry is retried later
                        log.exception("delivery.crashed", queue_id=entry.queue_id, message_id=entry.message_id)
                        await self._retry_later(entry, f"internal error: {exc!r}")
                    if entry.queue_id not in self._writes:
                        self._claimed.pop(entry.queue_id, None)
                for instance, ids in self.outage.finished(entry.queue_id):
                    self._wake_later(instance, ids)
                self._backlog_changed()
        finally:
            self._sender_tasks.pop(key, None)
            if not self._queues.get(key):
                self._queues.pop(key, None)

    async def _hold_back(self, entries: Sequence[SpoolEntry], hold: SenderHold) -> None:
        """Keep per-sender order through an outage: wait behind the sender's older deferred message."""
        try:
            moved = await self.spool.defer_many([e.queue_id for e in entries], next_attempt_at=hold.next_attempt_at,
                                                error=hold.reason)
            for queue_id in moved:
                self.outage.note_waiting(queue_id, [hold.instance])
        except Exception as exc:  # the spool could not write: let them go as they are (retried when due)
            log.error("delivery.hold_failed", error=str(exc), queue_ids=[e.queue_id for e in entries])
            for entry in entries:
                with contextlib.suppress(Exception):
                    await self.spool.release(entry.queue_id)
        finally:
            for entry in entries:
                self._claimed.pop(entry.queue_id, None)
                ahead = self._raws.pop(entry.queue_id, None)
                if ahead is not None:
                    ahead.cancel()

    def _written(self, queue_id: str, task: asyncio.Future[Any]) -> None:
        self._writes.pop(queue_id, None)
        self._claimed.pop(queue_id, None)
        if not task.cancelled() and task.exception() is not None:
            # Still claimed in the spool: released at stop, recovered at the next start, redelivered (dedup).
            log.error("delivery.transition_failed", queue_id=queue_id, error=str(task.exception()))
        self._backlog_changed()

    def _backlog_changed(self) -> None:
        # Wake the claim loop only when it would claim (it also polls): not once per delivery.
        if len(self._claimed) <= self.max_claimed // 2:
            self._kick.set()

    async def flush(self) -> None:
        """Wait until every write-behind transition is committed."""
        while self._writes:
            await asyncio.wait(list(self._writes.values()))

    async def _retry_later(self, entry: SpoolEntry, error: str) -> None:
        """For what process() does not handle itself (a bug, an unreadable entry, a check that could not be
        made): retried with backoff like a transient failure and, like one, failed with its reason (and a DSN)
        once delivery.lifetime is over. Nothing is retried forever."""
        error = error[:500]
        self.outage.release_sender(self._sender_key(entry), entry.queue_id)
        age = time.time() - entry.envelope.received_at
        try:
            if age < self.delivery.lifetime:
                await self.spool.transition(entry.queue_id, State.DEFERRED, error=error, count_attempt=True,
                                            next_attempt_at=time.time() + self._backoff(entry.attempts + 1))
                self.stats["deferred"] += 1
                return
            error = f"expired after {age / 86400:.1f} days: {error}"
            await self.spool.transition(entry.queue_id, State.FAILED, error=error, count_attempt=True)
            self.stats["failed"] += 1
            log.warning("delivery.failed", queue_id=entry.queue_id, message_id=entry.message_id, error=error)
        except Exception as write_error:
            log.error("delivery.transition_failed", queue_id=entry.queue_id, error=str(write_error))
            with contextlib.suppress(Exception):
                await self.spool.release(entry.queue_id)
            return
        with contextlib.suppress(Exception):  # the sender learns it was not delivered, if it can be told
            failed = [FailedRecipient(r, "4.4.7", "delivery time expired: the gateway could not process it")
                      for r in entry.envelope.rcpt_tos
                      if (entry.rcpt_status or {}).get(r, {}).get("state") not in FINAL]
            await send_dsn(self.spool, entry, await self.spool.raw(entry.queue_id), failed, hostname=self.hostname)

    # -- one message ------------------------------------------------------------------------------------

    async def process(self, entry: SpoolEntry) -> SpoolEntry | None:
        """Route and deliver one claimed entry; returns it after its transition (None: being written)."""
        ahead = self._raws.pop(entry.queue_id, None)
        raw = await ahead if ahead is not None else await self.spool.raw(entry.queue_id)
        status: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (entry.rcpt_status or {}).items()}
        pending = [r for r in dict.fromkeys(entry.envelope.rcpt_tos)
                   if status.get(r, {}).get("state") not in FINAL]
        own_mid = get_header(raw, "Message-Id")
        mid = own_mid or self._stable_id(entry)
        add_mid = None if own_mid else mid  # prepended only when the message has none
        log_id = entry.message_id or mid
        view = MessageView.from_bytes(raw)
        temp: list[tuple[str, TempFailure]] = []  # (instance, error) of transient failures
        failed: list[FailedRecipient] = []
        route: list[dict[str, Any]] = []
        now = time.time()

        try:
            decisions = await self._route(view, pending)
        except TempFailure as exc:
            instance = getattr(exc, "instance", "")
            for rcpt in pending:
                status[rcpt] = {"state": "deferred", "detail": str(exc), "at": now}
            temp.append((instance, exc))
            decisions = []
        route = [d.to_dict() for d in decisions]
        if decisions:
            held = await self.auth_gate.check(entry, raw, view, decisions)
            if held is not None and held.action == "hold":
                return await self.auth_gate.hold(self.spool, entry, held, route, status)
            if held is not None:  # a temporary error of a check made here: check again later
                await self._retry_later(entry, f"sender authentication: {held.reason}")
                return None

        deliver, bounces = split_decisions(decisions, status, failed, temp, now)
        if bounces and self.bounce_handler is not None:
            await handle_bounces(self.bounce_handler, entry, raw, bounces, status, temp, now)
            bounces = []

        deliver = await resolve_lookups(self.clients, deliver, status, failed, temp, now)
        plans = delivery_plans(deliver, bounces)
        results: list[Any]
        if len(plans) == 1:  # the common case, without gather's tasks
            try:
                results = [await self._deliver(entry, raw, view, plans[0], add_mid)]
            except (TempFailure, PermFailure) as exc:
                results = [exc]
        else:
            results = await asyncio.gather(*(self._deliver(entry, raw, view, plan, add_mid) for plan in plans),
                                           return_exceptions=True)
        delivered_any = False
        for plan, res in zip(plans, results, strict=True):
            if isinstance(res, asyncio.CancelledError):
                raise res
            self._apply(entry, plan, res, status, failed, temp, now, log_id)
            delivered_any = delivered_any or isinstance(res, ProcessResult)
        if delivered_any:
            self._record_loop(entry, view, [d for p, r in zip(plans, results, strict=True)
                                            if isinstance(r, ProcessResult) for d in p.decisions])
        return await self._finish(entry, raw, status, failed, temp, route, log_id)

    @staticmethod
    def _stable_id(entry: SpoolEntry) -> str:
        """For a message without Message-Id: the intake's generated one, else one derived from the queue id."""
        if entry.message_id and entry.message_id_generated:
            return entry.message_id
        rcpt = entry.envelope.rcpt_tos[0] if entry.envelope.rcpt_tos else ""
        return stable_message_id(entry.queue_id, rcpt.rpartition("@")[2])

    async def _route(self, view: MessageView, recipients: list[str]) -> list[RouteDecision]:
        if not recipients:
            return []
        router = self._router
        return list(router.route(view, recipients, await self.known_replies(view, recipients)))

    async def known_replies(self, view: MessageView, recipients: Sequence[str]) -> dict[str, Any]:
        """The message's References that Odoo (or the outbound spool) knows: what makes it a reply. Raises
        TempFailure (with `.instance`) when an owning instance cannot be asked."""
        return await known_replies(self._router, lambda domain: self._directory.owner_of(domain), self.clients,
                                   self.spool, view, recipients)

    async def _deliver(self, entry: SpoolEntry, raw: bytes, view: MessageView, plan: DeliveryPlan,
                       add_mid: str | None) -> ProcessResult:
        client = self.clients.get(plan.instance)
        if client is None:
            raise ConfigProblem(f"odoo instance {plan.instance!r} is not configured")
        env = entry.envelope
        # Delivered-To only for recipients the headers do not already show: Odoo reads Delivered-To as To, so
        # a Cc'd alias written there would turn Odoo's reply into a forward (docs/odoo.md §10.2; routing test
        # cases 50 and 73b).
        block = delivery_headers(
            mail_from=env.mail_from, recipients=plan.recipients, queue_id=entry.queue_id,
            received_at=env.received_at, intake=env.intake, helo=env.helo, peer=env.peer, hostname=self.hostname,
            message_id=add_mid, eol=line_ending(raw),
            delivered_to=plan.delivered_to(view.odoo_recipients), client=env.client)
        return await client.message_process(block + self.auth_gate.prepare(entry, raw), model=plan.model,
                                             thread_id=plan.thread_id)

    def _apply(self, entry: SpoolEntry, plan: DeliveryPlan, res: Any, status: dict[str, dict[str, Any]],
               failed: list[FailedRecipient], temp: list[tuple[str, TempFailure]], now: float, log_id: str) -> None:
        if isinstance(res, ProcessResult | NoRouteError | OdooRefusedError):  # Odoo answered: it is back
            self._wake_later(plan.instance, self.outage.reached(plan.instance, entry.queue_id))
        record_result(entry, plan, res, status, failed, temp, now, log_id)

    def _record_loop(self, entry: SpoolEntry, view: Any, decisions: list[RouteDecision]) -> None:
        if not decisions:
            return
        with contextlib.suppress(Exception):
            self._router.record(entry.envelope.mail_from, decisions, msg=view)

    async def _finish(self, entry: SpoolEntry, raw: bytes, status: dict[str, dict[str, Any]],
                      failed: list[FailedRecipient], temp: list[tuple[str, TempFailure]],
                      route: list[dict[str, Any]], log_id: str) -> SpoolEntry | None:
        now = time.time()
        ctx = {"queue_id": entry.queue_id, "message_id": log_id}
        deferred = [r for r, s in status.items() if s.get("state") == "deferred"]
        if deferred:
            config_only = all(isinstance(e, ConfigProblem) for _i, e in temp) and bool(temp)
            age = now - entry.envelope.received_at
            if age < self.delivery.lifetime or config_only:
                return await self._defer(entry, status, temp, route, ctx)
            # Lifetime over: the transient failures become permanent (a config problem never does).
            for r in deferred:
                status[r] = {**status[r], "state": "failed",
                             "detail": f"expired after {age / 86400:.1f} days: {status[r].get('detail', '')}"}
                failed.append(FailedRecipient(r, "4.4.7", f"delivery time expired: {status[r].get('detail', '')}"))
        self.outage.release_sender(self._sender_key(entry), entry.queue_id)
        if failed:
            await send_dsn(self.spool, entry, raw, failed, hostname=self.hostname)
        states = {s.get("state") for s in status.values()}
        if "failed" in states:
            error = "; ".join(sorted({str(s.get("detail", "")) for s in status.values()
                                      if s.get("state") == "failed"}))[:1000]
            new = await self.spool.transition(entry.queue_id, State.FAILED, error=error, route=route,
                                              rcpt_status=status, count_attempt=True)
            self.stats["failed"] += 1
            log.warning("delivery.failed", error=error, **ctx)
            return new
        # Write-behind: the next delivery does not wait for this commit's fsync. Losing it in a crash only
        # means one redelivery, which Odoo drops by Message-Id (every message has one by now).
        write = asyncio.ensure_future(self.spool.transition(entry.queue_id, State.DELIVERED, route=route,
                                                            rcpt_status=status, count_attempt=True))
        self._writes[entry.queue_id] = write
        write.add_done_callback(functools.partial(self._written, entry.queue_id))
        self.stats["delivered"] += 1
        return None

    async def _defer(self, entry: SpoolEntry, status: dict[str, dict[str, Any]],
                     temp: list[tuple[str, TempFailure]], route: list[dict[str, Any]],
                     ctx: dict[str, Any]) -> SpoolEntry:
        breaker_only = bool(temp) and all(isinstance(e, BreakerOpenError) for _i, e in temp)
        attempts = entry.attempts + (0 if breaker_only else 1)
        now = time.time()
        next_at = now + self._backoff(max(1, attempts))
        wide = [(i, e) for i, e in temp if instance_wide(e)]
        for instance, exc in wide:
            client = self.clients.get(instance)
            if client is None:
                continue
            if client.breaker.state != "closed":
                # Parked until the instance is back (outage.py), not until its next probe.
                next_at = max(next_at, self.outage.parked_until(entry.envelope.received_at, client.breaker.retry_at))
            elif isinstance(exc, BreakerOpenError):
                next_at = now  # it closed while we were busy: go again now, in order
        self.outage.note_waiting(entry.queue_id, (i for i, _e in temp))
        key = self._sender_key(entry)
        if wide:
            self.outage.hold_sender(key, entry, next_at, wide[0][0])
        else:
            self.outage.release_sender(key, entry.queue_id)
        error = "; ".join(dict.fromkeys(str(e) for _i, e in temp))[:1000] or "deferred"
        new = await self.spool.transition(entry.queue_id, State.DEFERRED, error=error, next_attempt_at=next_at,
                                          route=route or None, rcpt_status=status, count_attempt=not breaker_only)
        self.stats["deferred"] += 1
        log.info("delivery.deferred", error=error, attempts=new.attempts,
                 next_attempt_in=round(next_at - time.time(), 3), **ctx)
        return new

    def _backoff(self, attempts: int) -> float:
        return backoff_delay(attempts, self.delivery.retry_initial, self.delivery.retry_max, self._rng)
