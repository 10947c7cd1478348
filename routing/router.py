"""The Router: Odoo's routing chain over a directory snapshot, per recipient, explained. Pure, no I/O.

- `precheck(rcpt)` answers RCPT TO with the address-only rules (relay check, directory readiness, bounce,
  alias, catchall, catchall+subaddress, fallback, loop guard).
- `reference_ids(msg)` says which Message-Ids the worker must look up on Odoo.
- `route(msg, recipients, known)` decides per recipient, applying Odoo's message-level rules per instance.
- `check_message(msg, recipients)` is the end-of-DATA check (the optional Auto-Submitted refusal).

Snapshots are swapped with `with_directory`; the loop guard object is carried over.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from routing.address import Recipient, email_normalize, normalize_domain, parse_recipient
from routing.decision import RouteDecision
from routing.directory import Directory
from routing.index import InstanceIndex
from routing.loopguard import LoopGuard, target_key
from routing.message import MessageView
from routing.policy import InstancePolicy, RoutingPolicy
from routing.replies import KnownMessage
from routing.replies import reference_ids as _reference_ids
from routing.resolvers import (
    AUTO_REFUSED,
    BAD_ADDRESS,
    DIRECTORY_UNAVAILABLE,
    DISCARDED,
    RELAY_DENIED,
    TOO_MANY,
    RouteContext,
    by_address,
    refusal,
    resolve,
)

_ADDRESS_MEMO_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Precheck:
    """The answer to one RCPT TO."""

    accepted: bool
    code: int
    status: str
    text: str
    instance: str | None = None
    decision: RouteDecision | None = None
    rule: str = ""

    @property
    def smtp(self) -> str:
        return f"{self.code} {self.status} {self.text}"


def _accept(instance: str, decision: RouteDecision | None, rule: str, text: str) -> Precheck:
    return Precheck(True, 250, "2.1.5", text, instance, decision, rule)


def _refuse(decision: RouteDecision) -> Precheck:
    code, status, text = decision.reply or (550, "5.1.1", "No such recipient here")
    return Precheck(False, code, status, text, decision.instance, decision, decision.rule)


class Router:
    def __init__(self, directory: Directory, policy: RoutingPolicy, loop_guard: LoopGuard | None = None,
                 *, _indexes: Mapping[str, InstanceIndex] | None = None) -> None:
        self.directory = directory
        self.policy = policy
        self.loop_guard = loop_guard if loop_guard is not None else LoopGuard()
        owner = policy.domain_owner()
        owner.update({normalize_domain(d): inst for d, inst in directory.domain_owner.items()})
        self._owner = owner
        self._indexes: dict[str, InstanceIndex] = {}
        # RCPT answers from the address alone are a pure function of the recipient for this snapshot: remember
        # them (the same few aliases get most mail). A new snapshot is a new Router, so nothing goes stale.
        self._address_memo: dict[str, tuple[str | None, RouteDecision | None]] = {}
        for name, inst in directory.instances.items():
            old = (_indexes or {}).get(name)
            self._indexes[name] = old if old is not None and old.directory is inst else InstanceIndex.build(inst)

    def with_directory(self, directory: Directory) -> Router:
        """A router over a new snapshot; unchanged instances keep their indexes, the loop guard is shared."""
        return Router(directory, self.policy, self.loop_guard, _indexes=self._indexes)

    def with_policy(self, policy: RoutingPolicy) -> Router:
        return Router(self.directory, policy, self.loop_guard, _indexes=self._indexes)

    # -- lookups ----------------------------------------------------------------------------------------

    def owner_of(self, domain: str) -> str | None:
        owner = self._owner.get(domain)  # canonical already, most of the time
        return owner if owner is not None else self._owner.get(normalize_domain(domain))

    def index(self, instance: str) -> InstanceIndex | None:
        return self._indexes.get(instance)

    def _ipolicy(self, instance: str) -> InstancePolicy:
        return self.policy.instance(instance)

    def loop_limits(self, instance: str) -> tuple[int, int]:
        """(minutes, threshold): config overrides, else Odoo's ICPs from the snapshot, else Odoo's defaults."""
        ip = self._ipolicy(instance)
        inst = self.directory.instances.get(instance)
        minutes = ip.loop_minutes if ip.loop_minutes is not None else (inst.loop_minutes if inst else 120)
        threshold = ip.loop_threshold if ip.loop_threshold is not None else (inst.loop_threshold if inst else 20)
        return minutes, threshold

    def _loop_exempt(self, sender: str, instance: str) -> bool:
        inst = self.directory.instances.get(instance)
        who = email_normalize(sender)
        return not who or (inst is not None and who in inst.loop_allowed)

    # -- RCPT time --------------------------------------------------------------------------------------

    def precheck(self, rcpt: str, *, sender: str = "", now: float | None = None) -> Precheck:
        """Answer RCPT TO from the address alone. Never accepts blind: no snapshot means 451."""
        try:
            return self._precheck(rcpt, sender, now)
        except Exception:  # a bug here must not turn into a 5xx: the client retries a 451 later
            return Precheck(False, *DIRECTORY_UNAVAILABLE, rule="internal.error")

    def _gate(self, rcpt: str) -> tuple[Recipient, str, InstanceIndex] | RouteDecision:
        """The gateway's own checks before Odoo's rules: syntax, relay, snapshot readiness."""
        r = parse_recipient(rcpt)
        if r is None:
            return refusal(str(rcpt), None, "address.invalid", "not a local@domain address", BAD_ADDRESS)
        instance = self.owner_of(r.domain)
        if instance is None:
            return refusal(r.original, None, "relay.denied",
                           f"{r.domain} is not a domain of this gateway (it is not a relay)", RELAY_DENIED)
        index = self._indexes.get(instance)
        if index is None:
            return refusal(r.original, instance, "directory.unavailable", f"no directory snapshot of {instance} yet",
                           DIRECTORY_UNAVAILABLE)
        return r, instance, index

    def _by_address(self, rcpt: str) -> tuple[str | None, RouteDecision | None]:
        memo = self._address_memo.get(rcpt)
        if memo is not None:
            return memo
        gate = self._gate(rcpt)
        if isinstance(gate, RouteDecision):
            result: tuple[str | None, RouteDecision | None] = (gate.instance, gate)
        else:
            r, instance, index = gate
            result = instance, by_address(index, self._ipolicy(instance), r, self.policy.subaddress_separator)
        if len(self._address_memo) >= _ADDRESS_MEMO_SIZE:
            self._address_memo.clear()  # bounded: random recipients (a dictionary attack) cannot grow it
        self._address_memo[rcpt] = result
        return result

    def _precheck(self, rcpt: str, sender: str, now: float | None) -> Precheck:
        instance, decision = self._by_address(rcpt)
        if decision is None:
            assert instance is not None
            return _accept(instance, None, "catchall.address", "Recipient ok (catchall: Odoo decides)")
        if decision.route == "refuse":
            return _refuse(decision)
        assert instance is not None
        if decision.route != "bounce" and self._looping(sender, instance, decision, now):
            target = target_key(decision.model, decision.thread_id)
            return _refuse(refusal(decision.recipient, instance, "loop.sender",
                                   f"{sender} reached Odoo's loop threshold for {target}", TOO_MANY))
        return _accept(instance, decision, decision.rule, f"Recipient ok ({decision.route})")

    def _looping(self, sender: str, instance: str, decision: RouteDecision, now: float | None) -> bool:
        if not self.policy.loop_guard or self._loop_exempt(sender, instance):
            return False
        target = target_key(decision.model, decision.thread_id)
        if target is None:
            return False
        minutes, threshold = self.loop_limits(instance)
        return self.loop_guard.check(sender, instance, time.time() if now is None else now,
                                     minutes=minutes, threshold=threshold, target=target)

    def record(self, sender: str, decisions: Iterable[RouteDecision], now: float | None = None,
               *, msg: MessageView | None = None) -> None:
        """Count one delivered message in the loop guard, once per (instance, target).

        Odoo counts by the From address; the gateway checks by envelope sender at RCPT time. Counting only
        when both agree keeps the gateway's count at or below Odoo's, so it never refuses what Odoo takes.
        """
        if not self.policy.loop_guard:
            return
        if msg is not None and email_normalize(msg.email_from) != email_normalize(sender):
            return
        when = time.time() if now is None else now
        seen: set[tuple[str, str]] = set()
        for d in decisions:
            target = target_key(d.model, d.thread_id)
            if d.route in ("refuse", "bounce") or not d.instance or target is None:
                continue
            if (d.instance, target) not in seen:
                seen.add((d.instance, target))
                self.loop_guard.record(sender, d.instance, when, target)

    # -- after DATA -------------------------------------------------------------------------------------

    def reference_ids(self, msg: MessageView) -> list[str]:
        return _reference_ids(msg)

    def check_message(self, msg: MessageView, recipients: Sequence[str]) -> list[Precheck]:
        """End-of-DATA answers per recipient: only the configured Auto-Submitted refusal can say no here."""
        out: list[Precheck] = []
        refuse_auto = self.policy.auto_submitted == "refuse" and msg.is_auto_submitted
        for rcpt in recipients:
            instance, decision = self._by_address(rcpt) if refuse_auto else (None, None)
            if decision is not None and decision.route == "alias":
                out.append(_refuse(refusal(
                    decision.recipient, instance, "auto_submitted.refuse",
                    f"Auto-Submitted: {msg.auto_submitted} to alias {decision.alias} (routing.auto_submitted: refuse)",
                    AUTO_REFUSED)))
            else:
                out.append(Precheck(True, 250, "2.0.0", "Ok", instance))
        return out

    def route(self, msg: MessageView, recipients: Sequence[str], known: Mapping[str, KnownMessage], *,
              now: float | None = None) -> list[RouteDecision]:
        """One decision per recipient, in order. `now` is accepted for symmetry: route() never consults the
        loop guard (the door does), so a message accepted at RCPT is never deferred for it later."""
        refs = _reference_ids(msg)
        out: list[RouteDecision | None] = [None] * len(recipients)
        groups: dict[str, list[tuple[int, Recipient]]] = {}
        for i, rcpt in enumerate(recipients):
            gate = self._gate(rcpt)
            if isinstance(gate, RouteDecision):
                out[i] = gate
            else:
                groups.setdefault(gate[1], []).append((i, gate[0]))
        for instance, members in groups.items():
            envelope = list({r.address: r for _i, r in members}.values())
            ctx = RouteContext(self._indexes[instance], self._ipolicy(instance), msg, envelope, refs, known,
                               separator=self.policy.subaddress_separator)
            for i, r in members:
                out[i] = self._auto_submitted(msg, resolve(ctx, r))
        return [d for d in out if d is not None]

    def _auto_submitted(self, msg: MessageView, d: RouteDecision) -> RouteDecision:
        action = self.policy.auto_submitted
        if action == "accept" or d.route != "alias" or not msg.is_auto_submitted:
            return d
        if action == "refuse":
            return refusal(d.recipient, d.instance, "auto_submitted.refuse",
                           f"Auto-Submitted: {msg.auto_submitted} to alias {d.alias} (routing.auto_submitted: refuse)",
                           AUTO_REFUSED)
        return refusal(d.recipient, d.instance, "auto_submitted.discard",
                       f"Auto-Submitted: {msg.auto_submitted} to alias {d.alias} (routing.auto_submitted: discard)",
                       DISCARDED)


def explain(decisions: Iterable[RouteDecision]) -> str:
    """One block per recipient, for humans (what `mailgw route` prints)."""
    lines: list[str] = []
    for d in decisions:
        target = ""
        if d.lookup and not d.thread_id:
            target = f" {d.lookup[0]} where {d.lookup[1]} = {d.lookup[2]!r}"
        elif d.model:
            target = f" {d.model}" + (f"/{d.thread_id}" if d.thread_id else " (new record)")
        where = f" on {d.instance}" if d.instance else ""
        answer = f" [{d.reply[0]} {d.reply[1]}]" if d.reply else ""
        lines.append(f"{d.recipient}: {d.route}{where}{target}{answer}")
        if d.alias:
            lines.append(f"  alias:  {d.alias}")
        lines.append(f"  rule:   {d.rule}")
        lines.append(f"  reason: {d.reason}")
    return "\n".join(lines)


def header_recipients(msg: MessageView) -> list[str]:
    """Recipients read from Delivered-To, To and Cc (what `mailgw route` uses without --rcpt), de-duplicated
    case-insensitively, as written (reference patterns may care about case)."""
    seen: dict[str, str] = {}
    for a in msg.delivered_to + msg.to + msg.cc:
        seen.setdefault(a.lower(), a)
    return list(seen.values())
