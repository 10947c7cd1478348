"""The verdict applied to a message's recipients: per recipient, the action its Odoo instance configured.

Shared by the SMTP/LMTP intake (end of DATA), the inbound worker (after routing) and `mailgw auth check`, so
the three say the same thing. Routing decisions say whom Odoo would attribute the message to (policy.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.auth.client import Client, from_received, networks
from gateway.auth.policy import AuthDecision, Identity, after_acceptance, decide, identities, strictest
from gateway.auth.results import with_results
from gateway.auth.verifier import Verifier
from gateway.config import Config, SenderPolicyConfig
from gateway.logs import get_logger
from gateway.spool.base import AUTH_STATUS_KEY, Spool, SpoolEntry, State
from routing.decision import DELIVERING, RouteDecision
from routing.directory import Directory
from routing.message import MessageView

log = get_logger("mailgw.auth")

DEFAULT_POLICY = SenderPolicyConfig()
_KEEP_VERIFIED = 1024


def policy_for(config: Config, rcpt: str) -> SenderPolicyConfig:
    inst = config.instance_for_domain(rcpt.rpartition("@")[2])
    return inst.auth if inst is not None else DEFAULT_POLICY


def recipient_decisions(config: Config, verdict: Mapping[str, Any], view: MessageView, recipients: Sequence[str],
                        decisions: Sequence[RouteDecision], directory: Directory) -> dict[str, AuthDecision]:
    """Recipient -> decision. `verdict` is `AuthVerdict.summary()`; `decisions` the router's for `recipients`."""
    ids = identities(view.from_address, decisions, directory)
    return {r: decide(verdict, ids.get(r, Identity()), policy_for(config, r)) for r in recipients}


class AuthGate:
    """The inbound worker's side, between routing and delivery.

    - Mail the intake could not verify (pipe, and the mailbox intakes when `auth.intakes` lists them) is verified
      here with what is known: the whole message, the envelope sender, and for `pipe` the client named in the
      topmost Received header (written by the MTA that runs `mailgw pipe`). Mailbox intakes have no client
      address: their SPF is "none", DKIM and ARC still count.
    - With routing known, the instance's actions apply again (a reply into a thread Odoo knows); a refusal is
      held instead, since the mail is already accepted. A temporary error of a check made here defers the
      message, which is checked again at its next attempt.
    - `prepare()` gives the bytes Odoo receives: our Authentication-Results on top, forged ones removed.
    """

    def __init__(self, config: Config, directory: Callable[[], Directory], *, hostname: str,
                 verifier: Verifier | None = None):
        self.config = config
        self.directory = directory
        self.verifier = verifier
        self.authserv_id = config.auth.authserv_id or hostname
        self._relays = networks(config.auth.trusted_relays)
        self._verified: dict[str, dict[str, Any]] = {}  # queue_id -> summary of a check made here

    def _needs_check(self, entry: SpoolEntry) -> bool:
        auth = self.config.auth
        return (self.verifier is not None and auth.enabled and entry.envelope.intake in auth.intakes
                and entry.envelope.intake not in ("smtp", "lmtp") and not _stored(entry))

    async def check(self, entry: SpoolEntry, raw: bytes, view: MessageView,
                    decisions: Sequence[RouteDecision]) -> AuthDecision | None:
        """None: deliver. Otherwise the decision to hold (action "hold") or to defer (action "tempfail")."""
        status = entry.rcpt_status or {}
        if (status.get(AUTH_STATUS_KEY) or {}).get("state") == "released":
            return None
        summary = _stored(entry)
        fresh = False
        if summary is None and self._needs_check(entry):
            assert self.verifier is not None
            client = from_received(raw, self._relays) if entry.envelope.intake == "pipe" else None
            verdict = await self.verifier.check(raw, ip=client.ip if client else None,
                                                helo=client.helo if client else None,
                                                mail_from=entry.envelope.mail_from)
            summary = {**verdict.summary(), "client": (client or Client(None, None, "unknown")).to_dict()}
            self._verified[entry.queue_id] = summary
            while len(self._verified) > _KEEP_VERIFIED:  # kept for prepare(); a retry checks again anyway
                del self._verified[next(iter(self._verified))]
            fresh = True
        if summary is None or summary.get("authenticated"):
            return None
        delivering = [d for d in decisions if d.route in DELIVERING]
        rcpts = [d.recipient for d in delivering]
        actions = recipient_decisions(self.config, summary, view, rcpts, delivering, self.directory())
        decision = strictest([after_acceptance(d) for d in actions.values()])
        if decision.action == "tempfail":
            young = time.time() - entry.envelope.received_at < self.config.delivery.lifetime
            return decision if fresh and young else None  # a stored verdict cannot change: deliver tagged
        return decision if decision.action == "hold" else None

    async def hold(self, spool: Spool, entry: SpoolEntry, decision: AuthDecision, route: Any,
                   status: Mapping[str, Any]) -> SpoolEntry:
        """Park the entry as held, with why, for an operator (`mailgw queue show/release/delete`)."""
        marked = {**status, AUTH_STATUS_KEY: {"state": "held", "rule": decision.rule, "detail": decision.reason,
                                              "at": time.time()}}
        self._verified.pop(entry.queue_id, None)
        new = await spool.transition(entry.queue_id, State.HELD, route=route, rcpt_status=marked,
                                     error=f"held by sender authentication ({decision.rule}): {decision.reason}")
        log.warning("auth.held", queue_id=entry.queue_id, message_id=entry.message_id, rule=decision.rule,
                    reason=decision.reason, sender=entry.envelope.mail_from)
        return new

    def prepare(self, entry: SpoolEntry, raw: bytes) -> bytes:
        """What Odoo receives: Authentication-Results claiming our authserv-id removed, ours prepended."""
        summary = self._verified.get(entry.queue_id) or _stored(entry)
        return with_results(raw, self.authserv_id, summary.get("ar") if summary else None)


def _stored(entry: SpoolEntry) -> dict[str, Any] | None:
    source = entry.envelope.source or {}
    value = source.get("auth")
    return dict(value) if isinstance(value, Mapping) else None
