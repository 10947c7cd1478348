"""The verdict applied to a message's recipients: per recipient, the action its Odoo instance configured.

Shared by the SMTP/LMTP intake (end of DATA), the inbound worker (after routing) and `mailgw auth check`, so
the three say the same thing. Routing decisions say whom Odoo would attribute the message to (policy.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.auth.policy import AuthDecision, Identity, decide, identities
from gateway.config import Config, SenderPolicyConfig
from routing.decision import RouteDecision
from routing.directory import Directory
from routing.message import MessageView

DEFAULT_POLICY = SenderPolicyConfig()


def policy_for(config: Config, rcpt: str) -> SenderPolicyConfig:
    inst = config.instance_for_domain(rcpt.rpartition("@")[2])
    return inst.auth if inst is not None else DEFAULT_POLICY


def recipient_decisions(config: Config, verdict: Mapping[str, Any], view: MessageView, recipients: Sequence[str],
                        decisions: Sequence[RouteDecision], directory: Directory) -> dict[str, AuthDecision]:
    """Recipient -> decision. `verdict` is `AuthVerdict.summary()`; `decisions` the router's for `recipients`."""
    ids = identities(view.from_address, decisions, directory)
    return {r: decide(verdict, ids.get(r, Identity()), policy_for(config, r)) for r in recipients}
