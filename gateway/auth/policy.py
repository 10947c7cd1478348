"""What an Odoo instance does with a message, given its authentication verdict and whom Odoo would take it
to come from. Pure: no I/O; the intake and the inbound worker ask the same questions here.

Odoo attributes a message by its From header alone: to a known partner (aliases whose contact policy is
`partners` or `followers`), to whoever posts in an existing thread (a reply, an update alias, a
``catchall+model-id`` address), or — worst — to an internal user, as whom it then creates records. When the
From domain did not authenticate the message (no aligned SPF or DKIM pass, no trusted ARC hop saying so),
each of those cases has its own configured action, and so do DMARC `p=reject`/`p=quarantine` failures and
temporary errors. The strictest action wins; a temporary error never refuses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.config import SenderPolicyConfig
from routing.address import normalize_address
from routing.decision import RouteDecision
from routing.directory import Directory
from routing.index import odoo_full_name

Action = Literal["accept", "tag", "hold", "tempfail", "refuse"]
SEVERITY: Mapping[str, int] = {"accept": 0, "tag": 1, "hold": 2, "tempfail": 3, "refuse": 4}


@dataclass(frozen=True, slots=True)
class Identity:
    """For one recipient: whom Odoo would attribute the message to (all empty: nobody in particular)."""

    internal_user: str = ""  # the From address, when it is an internal user's
    alias: str = ""  # the alias (full name) whose contact policy is partners/followers
    alias_policy: str = ""
    thread: str = ""  # "model/id" of the existing record the message is posted on

    @property
    def protected(self) -> bool:
        return bool(self.internal_user or self.alias_policy or self.thread)


@dataclass(frozen=True, slots=True)
class AuthDecision:
    action: Action
    rule: str = "pass"  # dmarc.reject | dmarc.quarantine | temperror | protect.internal_user | ...
    reason: str = ""

    def smtp_reply(self) -> str | None:
        """The SMTP answer at the end of DATA (None: accept)."""
        if self.action == "refuse":
            return f"550 5.7.1 {self.reason}"
        if self.action == "tempfail":
            return f"451 4.7.0 {self.reason}; try again later"
        return None

    def to_dict(self) -> dict[str, str]:
        return {"action": self.action, "rule": self.rule, "reason": self.reason}


ACCEPT = AuthDecision("accept", "pass", "sender authenticated")


def decide(verdict: Mapping[str, Any], identity: Identity, policy: SenderPolicyConfig) -> AuthDecision:
    """`verdict` is `AuthVerdict.summary()` (what the spool keeps)."""
    if verdict.get("authenticated"):
        return ACCEPT
    domain = verdict.get("from_domain") or "(no usable From)"
    not_auth = f"the From domain {domain} did not authenticate this message (DMARC {verdict.get('dmarc')})"
    options: list[AuthDecision] = []
    if verdict.get("dmarc") == "fail" and verdict.get("disposition") == "reject":
        options.append(AuthDecision(policy.dmarc_reject, "dmarc.reject",
                                    f"{domain} fails DMARC and its owner asks to reject such mail (p=reject)"))
    if verdict.get("dmarc") == "fail" and verdict.get("disposition") == "quarantine":
        options.append(AuthDecision(policy.dmarc_quarantine, "dmarc.quarantine",
                                    f"{domain} fails DMARC and its owner asks to quarantine such mail"))
    if identity.internal_user:
        options.append(AuthDecision(policy.internal_users, "protect.internal_user",
                                    f"From {identity.internal_user} is a user of this organisation, but {not_auth}"))
    if identity.alias_policy:
        options.append(AuthDecision(policy.partners, "protect.partners",
                                    f"{identity.alias} accepts mail only from known {identity.alias_policy}, but "
                                    f"{not_auth}"))
    if identity.thread:
        options.append(AuthDecision(policy.replies, "protect.replies",
                                    f"it would be posted on an existing record ({identity.thread}), but {not_auth}"))
    if verdict.get("temporary"):
        # Never refuse on a temporary error: refusals wait (451) or are held; the temperror action is added.
        soft: Action = "tempfail" if policy.temperror == "tempfail" else "hold"
        options = [AuthDecision(soft, o.rule, o.reason) if o.action == "refuse" else o for o in options]
        options.append(AuthDecision("tempfail" if policy.temperror == "tempfail" else "tag", "temperror",
                                    f"sender authentication of {domain} had a temporary error"))
    if not options:
        return AuthDecision("tag", "unauthenticated", not_auth)
    return max(options, key=lambda o: SEVERITY[o.action])


def after_acceptance(decision: AuthDecision) -> AuthDecision:
    """The same decision for mail already accepted (pipe, mailbox, or found only once routed): a refusal now
    would be a bounce to a probably forged sender, so it is held instead; a temporary error waits (deferred)."""
    if decision.action == "refuse":
        return AuthDecision("hold", decision.rule, decision.reason)
    return decision


def identities(from_address: str, decisions: Sequence[RouteDecision], directory: Directory) -> dict[str, Identity]:
    """Recipient -> Identity, from the routing decisions (what Odoo will do) and the directory."""
    sender = normalize_address(from_address) if from_address else ""
    out: dict[str, Identity] = {}
    for d in decisions:
        inst = directory.instances.get(d.instance or "")
        if inst is None:
            out[d.recipient] = Identity()
            continue
        internal = sender if sender and sender in inst.internal_users else ""
        alias = next((a for a in inst.aliases if d.alias and odoo_full_name(a) == d.alias), None)
        policy = alias.contact if alias is not None and alias.contact in ("partners", "followers") else ""
        # A reply, an update alias (force_thread_id) or catchall+model-id: posted on an existing record.
        thread = f"{d.model}/{d.thread_id}" if d.route in ("reply", "alias", "subaddress") and d.model \
            and d.thread_id else ""
        out[d.recipient] = Identity(internal, (d.alias or "") if policy else "", policy, thread)
    return out


def strictest(decisions: Sequence[AuthDecision]) -> AuthDecision:
    return max(decisions, key=lambda o: SEVERITY[o.action], default=ACCEPT)
