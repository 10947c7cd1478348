"""One message's recipients between routing and the spool: the delivery plans, and the status each routing
decision or Odoo answer gives a recipient (rcpt_status; the failed list a DSN reports; the transient failures
whose kind decides the deferral). The worker (worker.py) collects them and makes one transition of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway.dsn_sender import FailedRecipient
from gateway.errors import ConfigProblem, PermFailure, TempFailure
from gateway.logs import get_logger
from gateway.odoo.breaker import BreakerOpenError
from gateway.odoo.client import NoRouteError, OdooClient, OdooRefusedError, OdooTempError, ProcessResult
from gateway.odoo.transport import TransportError
from gateway.spool import SpoolEntry
from routing.decision import DELIVERING, DeliveryPlan, RouteDecision, is_deferral, is_discard, plan_deliveries

log = get_logger("mailgw.inbound")

# Recipient states kept in rcpt_status. Final ones are never delivered again on a retry.
FINAL = frozenset({"delivered", "discarded", "bounce_handled"})
BounceHandler = Callable[[SpoolEntry, bytes, Sequence[RouteDecision]], Awaitable[None]]


def instance_wide(exc: BaseException) -> bool:
    """Failures that hit every message of the instance alike (as opposed to one message's trouble)."""
    return isinstance(exc, TransportError | BreakerOpenError | ConfigProblem) or (
        isinstance(exc, OdooTempError) and exc.kind == "http")


def refused(d: RouteDecision, status: dict[str, dict[str, Any]], failed: list[FailedRecipient],
            temp: list[tuple[str, TempFailure]], now: float) -> None:
    """A recipient routing refused (or discarded, or deferred) before Odoo is asked."""
    code, enhanced, text = d.reply or (550, "5.1.1", d.reason or "No such recipient here")
    if is_discard(d):
        status[d.recipient] = {"state": "discarded", "instance": d.instance, "detail": d.reason, "at": now}
    elif is_deferral(d):
        err = TempFailure(f"{code} {enhanced} {text}")
        temp.append((d.instance or "", err))
        status[d.recipient] = {"state": "deferred", "instance": d.instance, "detail": str(err), "at": now}
    else:
        status[d.recipient] = {"state": "failed", "instance": d.instance, "detail": f"{code} {enhanced} {text}",
                               "at": now}
        failed.append(FailedRecipient(d.recipient, enhanced, f"{text} ({d.reason})" if d.reason else text))


def split_decisions(decisions: Sequence[RouteDecision], status: dict[str, dict[str, Any]],
                    failed: list[FailedRecipient], temp: list[tuple[str, TempFailure]], now: float
                    ) -> tuple[list[RouteDecision], list[RouteDecision]]:
    """(to deliver, bounces); the refused recipients get their status here."""
    deliver: list[RouteDecision] = []
    bounces: list[RouteDecision] = []
    for d in decisions:
        if d.route == "refuse":
            refused(d, status, failed, temp, now)
        elif d.route == "bounce":
            bounces.append(d)
        elif d.route in DELIVERING:
            deliver.append(d)
    return deliver, bounces


async def handle_bounces(handler: BounceHandler, entry: SpoolEntry, raw: bytes, bounces: list[RouteDecision],
                         status: dict[str, dict[str, Any]], temp: list[tuple[str, TempFailure]], now: float) -> None:
    """Hand the recipients routed as a bounce to the bounce handler (gateway/bounces.py)."""
    try:
        await handler(entry, raw, bounces)
    except TempFailure as exc:
        temp.append((bounces[0].instance or "", exc))
        for d in bounces:
            status[d.recipient] = {"state": "deferred", "detail": str(exc), "at": now}
    except PermFailure as exc:  # unreadable or forged: a dead letter for an operator, no DSN to a bounce
        for d in bounces:
            status[d.recipient] = {"state": "failed", "instance": d.instance, "detail": str(exc), "at": now}
    else:
        for d in bounces:
            status[d.recipient] = {"state": "bounce_handled", "instance": d.instance, "at": now}


async def resolve_lookups(clients: dict[str, OdooClient], deliver: list[RouteDecision],
                          status: dict[str, dict[str, Any]], failed: list[FailedRecipient],
                          temp: list[tuple[str, TempFailure]], now: float) -> list[RouteDecision]:
    """Reference patterns (catchall+SO042@): find the record the routing decision names."""
    out = []
    for d in deliver:
        if d.lookup is None or d.thread_id or d.instance not in clients:
            out.append(d)
            continue
        model, field, value = d.lookup
        try:
            rid = await clients[d.instance].find_record(model, field, value)
        except TempFailure as exc:
            temp.append((d.instance, exc))
            status[d.recipient] = {"state": "deferred", "instance": d.instance, "detail": str(exc), "at": now}
            continue
        except PermFailure as exc:
            rid, why = None, str(exc)
        else:
            why = f"no {model} record with {field} = {value!r}"
        if rid is None:
            status[d.recipient] = {"state": "failed", "instance": d.instance, "detail": why, "at": now}
            failed.append(FailedRecipient(d.recipient, "5.1.1", why))
            continue
        out.append(dataclasses.replace(d, thread_id=rid))
    return out


def delivery_plans(deliver: list[RouteDecision], bounces: list[RouteDecision]) -> list[DeliveryPlan]:
    """One `message_process` call per instance (routing/decision.py says why)."""
    plans = {p.instance: p for p in plan_deliveries(deliver)}
    # Without a bounce handler a bounce goes to its instance as Odoo would get it (Delivered-To: bounce@).
    for d in bounces:
        if not d.instance:
            continue
        p = plans.get(d.instance)
        if p is None:
            plans[d.instance] = DeliveryPlan(d.instance, None, None, (d.recipient,), (d,))
        elif d.recipient not in p.recipients:
            plans[d.instance] = dataclasses.replace(p, recipients=(*p.recipients, d.recipient),
                                                    decisions=(*p.decisions, d))
    return list(plans.values())


def record_result(entry: SpoolEntry, plan: DeliveryPlan, res: Any, status: dict[str, dict[str, Any]],
                  failed: list[FailedRecipient], temp: list[tuple[str, TempFailure]], now: float, log_id: str
                  ) -> None:
    """What Odoo's answer (or the error of the call) means for each recipient of the plan; anything else is raised."""
    base = {"instance": plan.instance, "at": now}
    ctx = {"queue_id": entry.queue_id, "message_id": log_id, "instance": plan.instance,
           "recipients": list(plan.recipients)}
    if isinstance(res, ProcessResult):
        for r in plan.recipients:
            status[r] = {**base, "state": "delivered", "result": res.outcome, "record_id": res.record_id,
                         "detail": res.reason}
        if res.outcome == "posted":
            log.info("delivery.delivered", record_id=res.record_id, **ctx)
        elif res.outcome == "false":
            log.info("delivery.delivered", outcome="false", reason=res.reason, **ctx)
        else:
            log.warning("delivery.dropped", reason=res.reason, **ctx)
    elif isinstance(res, NoRouteError | OdooRefusedError):
        notified = isinstance(res, OdooRefusedError) and res.sender_notified
        for r in plan.recipients:
            status[r] = {**base, "state": "failed", "detail": str(res)}
            if not notified:
                failed.append(FailedRecipient(r, "5.1.1" if isinstance(res, NoRouteError) else "5.7.1",
                                              diagnostic(res)))
        level = log.error if isinstance(res, OdooRefusedError) else log.warning
        level("delivery.refused", error=str(res), sender_notified=notified, **ctx)
    elif isinstance(res, PermFailure):
        for r in plan.recipients:
            status[r] = {**base, "state": "failed", "detail": str(res)}
            failed.append(FailedRecipient(r, "5.0.0", diagnostic(res)))
        log.warning("delivery.refused", error=str(res), **ctx)
    elif isinstance(res, TempFailure):
        temp.append((plan.instance, res))
        for r in plan.recipients:
            status[r] = {**base, "state": "deferred", "detail": str(res)}
    else:
        raise res


def diagnostic(exc: BaseException) -> str:
    text = str(exc)
    # "odoo main: mail.thread.message_process: No possible route …" -> the part a sender can read.
    return text.split(": ", 2)[-1] if text.count(": ") >= 2 else text
