"""What routing decides, per recipient, and how decisions become deliveries to Odoo.

One `message_process` call per Odoo instance and message: Odoo deduplicates on Message-Id, so a second
call for the same message would be dropped as a duplicate. That call carries every envelope recipient of
the instance as Delivered-To and lets Odoo's own chain do what the gateway predicted; `model`/`thread_id`
are passed only where the gateway adds something Odoo lacks (catchall+subaddress, configured fallback).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

RouteKind = Literal["bounce", "reply", "alias", "subaddress", "fallback", "refuse"]
# Routes that put mail into Odoo as a message_process call.
DELIVERING: frozenset[str] = frozenset({"reply", "alias", "subaddress", "fallback"})


@dataclass(frozen=True, slots=True)
class RouteDecision:
    recipient: str
    route: RouteKind
    instance: str | None = None
    model: str | None = None
    thread_id: int | None = None
    alias: str | None = None
    rule: str = ""  # which rule fired, e.g. "alias.full_address", "reply.references"
    reason: str = ""  # one line for a human
    # For reference patterns (catchall+SO-00042@): find `model` record whose `field` == value; the gateway
    # resolves it with one Odoo lookup and fills thread_id. None when nothing is left to resolve.
    lookup: tuple[str, str, str] | None = None
    # SMTP answer for refusals: (code, enhanced status, text)
    reply: tuple[int, str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        # Explicit rather than asdict(): this runs for every recipient of every message.
        return {"recipient": self.recipient, "route": self.route, "instance": self.instance, "model": self.model,
                "thread_id": self.thread_id, "alias": self.alias, "rule": self.rule, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class DeliveryPlan:
    """One message_process call: instance, fallback model/thread (or None), and the recipients it covers."""

    instance: str
    model: str | None
    thread_id: int | None
    recipients: tuple[str, ...]
    decisions: tuple[RouteDecision, ...] = field(default=())

    def delivered_to(self, visible: Iterable[str]) -> tuple[str, ...]:
        """The recipients to write as Delivered-To: those absent from the message's own Delivered-To, To, Cc,
        Resent-To and Resent-Cc (`visible`, e.g. ``MessageView.odoo_recipients``).

        Odoo counts Delivered-To as To: writing a recipient that is only in Cc there would change its
        decision (a Cc'd alias of another model turns a reply into a forward; a Cc'd catchall makes mail
        a catchall write). Recipients the headers do not show must be written, or Odoo finds no route.
        The router predicts exactly this.
        """
        seen = {a.lower() for a in visible}
        return tuple(r for r in self.recipients if r.lower() not in seen)


def plan_deliveries(decisions: Sequence[RouteDecision]) -> list[DeliveryPlan]:
    """Group delivering decisions per instance (order of first appearance).

    The model/thread passed to Odoo is the first subaddress, relayed-reply or fallback decision of that
    instance: Odoo uses it only when neither a reply reference nor an alias matched, which is exactly when the
    gateway needed it (a reply to mail the gateway relayed but whose Message-Id Odoo no longer knows still
    lands on its record).
    """
    by_instance: dict[str, list[RouteDecision]] = {}
    for d in decisions:
        if d.route in DELIVERING and d.instance:
            by_instance.setdefault(d.instance, []).append(d)
    plans = []
    for instance, ds in by_instance.items():
        target = next((d for d in ds if d.model and (d.route in ("subaddress", "fallback")
                                                     or d.rule == "reply.relayed")), None)
        plans.append(DeliveryPlan(
            instance=instance,
            model=target.model if target else None,
            thread_id=target.thread_id if target else None,
            recipients=tuple(dict.fromkeys(d.recipient for d in ds)),
            decisions=tuple(ds),
        ))
    return plans


def is_discard(d: RouteDecision) -> bool:
    """A refusal whose answer is 2xx: accepted and dropped without DSN (Auto-Submitted discard, loop notices)."""
    return d.route == "refuse" and d.reply is not None and d.reply[0] < 300


def is_deferral(d: RouteDecision) -> bool:
    """A refusal with a 4xx answer (directory not loaded yet, loop guard): retry later, never a DSN."""
    return d.route == "refuse" and d.reply is not None and 400 <= d.reply[0] < 500

