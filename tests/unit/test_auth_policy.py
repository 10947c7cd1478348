"""The per-instance decision on a verdict (gateway/auth/policy.py): pure, no DNS."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth.policy import Identity, after_acceptance, decide, identities
from gateway.config import SenderPolicyConfig
from routing.decision import RouteDecision
from routing.directory import Alias, Directory, InstanceDirectory

DEFAULT = SenderPolicyConfig()


def verdict(**kw: Any) -> dict[str, Any]:
    base = {"authenticated": False, "temporary": False, "dmarc": "none", "disposition": "none",
            "from_domain": "origin.test"}
    return {**base, **kw}


INTERNAL = Identity(internal_user="boss@example.com")
PARTNERS = Identity(alias="support@example.com", alias_policy="partners")
THREAD = Identity(thread="helpdesk.ticket/7")


@pytest.mark.parametrize("v, ident, action, rule", [
    (verdict(authenticated=True, dmarc="pass"), INTERNAL, "accept", "pass"),
    (verdict(dmarc="fail", disposition="reject"), Identity(), "refuse", "dmarc.reject"),
    (verdict(dmarc="fail", disposition="quarantine"), Identity(), "hold", "dmarc.quarantine"),
    (verdict(dmarc="fail", disposition="none"), Identity(), "tag", "unauthenticated"),
    (verdict(), INTERNAL, "hold", "protect.internal_user"),  # default: hold internal-user impersonation
    (verdict(), PARTNERS, "tag", "protect.partners"),  # ... tag the rest
    (verdict(), THREAD, "tag", "protect.replies"),
    (verdict(dmarc="fail", disposition="reject"), INTERNAL, "refuse", "dmarc.reject"),  # the strictest wins
    (verdict(dmarc="temperror", temporary=True), Identity(), "tempfail", "temperror"),
])
def test_default_decisions(v: dict[str, Any], ident: Identity, action: str, rule: str) -> None:
    d = decide(v, ident, DEFAULT)
    assert (d.action, d.rule) == (action, rule), d.reason


def test_configured_actions_and_readable_refusals() -> None:
    strict = SenderPolicyConfig(internal_users="refuse", partners="hold", replies="refuse", dmarc_reject="tag")
    d = decide(verdict(), INTERNAL, strict)
    assert d.smtp_reply() == ("550 5.7.1 From boss@example.com is a user of this organisation, but the From "
                              "domain origin.test did not authenticate this message (DMARC none)")
    assert decide(verdict(), PARTNERS, strict).action == "hold"
    assert decide(verdict(), THREAD, strict).action == "refuse"
    assert decide(verdict(dmarc="fail", disposition="reject"), Identity(), strict).action == "tag"


def test_a_temporary_error_never_refuses() -> None:
    strict = SenderPolicyConfig(internal_users="refuse")
    d = decide(verdict(dmarc="temperror", temporary=True), INTERNAL, strict)
    assert d.action == "tempfail" and d.smtp_reply() is not None and d.smtp_reply().startswith("451 4.7.0")
    # temperror: tag delivers, but a protection rule still holds (a sender cannot dodge it by timing out).
    tagging = SenderPolicyConfig(internal_users="refuse", temperror="tag")
    assert decide(verdict(dmarc="temperror", temporary=True), INTERNAL, tagging).action == "hold"
    assert decide(verdict(dmarc="temperror", temporary=True), Identity(), tagging).action == "tag"


def test_after_acceptance_a_refusal_becomes_a_hold() -> None:
    assert after_acceptance(decide(verdict(dmarc="fail", disposition="reject"), Identity(), DEFAULT)).action == "hold"
    assert after_acceptance(decide(verdict(), PARTNERS, DEFAULT)).action == "tag"


def test_identities_from_routing_decisions() -> None:
    inst = InstanceDirectory(
        instance="main", internal_users=("boss@example.com",),
        aliases=(Alias(1, "support", "example.com", "helpdesk.ticket", contact="partners"),
                 Alias(2, "sales", "example.com", "crm.lead"),
                 Alias(3, "project", "example.com", "project.task", force_thread_id=4, contact="followers")))
    directory = Directory.build([inst], {"example.com": "main"})
    ds = [RouteDecision("support@example.com", "alias", "main", "helpdesk.ticket", alias="support@example.com"),
          RouteDecision("sales@example.com", "alias", "main", "crm.lead", alias="sales@example.com"),
          RouteDecision("project@example.com", "alias", "main", "project.task", 4, alias="project@example.com"),
          RouteDecision("catchall@example.com", "reply", "main", "crm.lead", 12)]
    out = identities("Boss <BOSS@example.com>", ds, directory)
    assert out["support@example.com"] == Identity("boss@example.com", "support@example.com", "partners")
    assert out["sales@example.com"] == Identity("boss@example.com")
    assert out["project@example.com"].thread == "project.task/4" and out["project@example.com"].alias_policy
    assert out["catchall@example.com"].thread == "crm.lead/12"
    stranger = identities("x@elsewhere.test", ds, directory)
    assert not stranger["sales@example.com"].protected
