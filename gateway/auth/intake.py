"""Sender authentication inside the SMTP/LMTP session, concurrently with it.

The listener calls three hooks, each cheap (the work runs as tasks on the loop):
- `on_mail` (MAIL FROM): the client is known, so SPF starts while the client sends RCPT and DATA;
- `on_headers` (the header section has arrived): DMARC policy and DKIM/ARC key lookups start, and behind a
  trusted relay without XFORWARD the client is read from the relay's Received header (SPF starts then);
- `on_data` (end of DATA): the verdict, then per recipient its instance's action. A refusal is a `550 5.7.1`
  (a temporary error a `451 4.7.0`) for that recipient; a hold spools the message `held`; otherwise the
  verdict is stored with the message and the inbound worker, once it has routed the message, may still
  hold it (a reply into a thread Odoo knows) and prepends the Authentication-Results header.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.client import Client, from_received, from_xforward, is_in, networks, peer_ip
from gateway.auth.gate import policy_for, recipient_decisions
from gateway.auth.policy import AuthDecision, strictest
from gateway.auth.verifier import AuthSession, Verifier
from gateway.config import Config
from gateway.intake import xforward
from gateway.logs import get_logger
from routing.directory import Directory
from routing.message import MessageView
from routing.replies import KnownMessage
from routing.router import Router

log = get_logger("mailgw.auth")

# (message, recipients) -> the Message-Ids Odoo knows among its References (the worker's reply lookup).
ReplyLookup = Callable[[MessageView, Sequence[str]], Awaitable[Mapping[str, KnownMessage]]]
_ATTR = "mailgw_auth"  # attribute of aiosmtpd's per-transaction Envelope holding our state


@dataclass
class _Transaction:
    session: AuthSession
    client: Client
    mail_from: str


@dataclass
class IntakeVerdict:
    """What the listener does: refuse some recipients (reply lines), hold the message, store `summary`."""

    refusals: dict[str, str] = field(default_factory=dict)
    hold: AuthDecision | None = None
    summary: dict[str, Any] = field(default_factory=dict)


class IntakeAuth:
    def __init__(self, config: Callable[[], Config], verifier: Verifier, router: Callable[[], Router],
                 directory: Callable[[], Directory], reply_lookup: ReplyLookup | None = None):
        self.config = config
        self.verifier = verifier
        self.router = router
        self.directory = directory
        self.reply_lookup = reply_lookup
        self._relays = networks(config().auth.trusted_relays)

    # -- hooks ----------------------------------------------------------------------------------------------

    def on_mail(self, session: Any, envelope: Any, mail_from: str) -> None:
        client = self._client(session, envelope)
        tx = _Transaction(self.verifier.session(), client, mail_from)
        setattr(envelope, _ATTR, tx)
        if client.via != "unknown":
            tx.session.start_spf(client.ip, client.helo, mail_from)

    def on_headers(self, envelope: Any, header: bytes) -> None:
        """Only starts lookups early: a failure here costs time at the end of DATA, never the session."""
        tx: _Transaction | None = getattr(envelope, _ATTR, None)
        if tx is None:
            return
        try:
            tx.session.prefetch(header)
            self._client_from_header(tx, header)
        except Exception as exc:
            log.error("auth.prefetch_failed", error=repr(exc))

    async def on_data(self, session: Any, envelope: Any, raw: bytes, rcpts: Sequence[str]) -> IntakeVerdict:
        tx: _Transaction | None = getattr(envelope, _ATTR, None)
        if tx is None:  # no MAIL hook ran (cannot happen with aiosmtpd; keep it safe)
            self.on_mail(session, envelope, str(envelope.mail_from or "").strip("<>"))
            tx = getattr(envelope, _ATTR)
        self._client_from_header(tx, raw)
        if tx.client.via == "unknown":
            tx.session.start_spf(None, None, tx.mail_from)  # SPF none: the client is not known
        verdict = await tx.session.verdict(raw)
        summary = {**verdict.summary(), "client": tx.client.to_dict()}
        if verdict.authenticated:
            return IntakeVerdict(summary=summary)
        cfg = self.config()
        view = MessageView.from_bytes(raw)
        router = self.router()
        known: Mapping[str, KnownMessage] = {}
        # Only a refusal has to know now whether the message replies to a known thread; a hold or a tag is
        # decided again by the worker once it has routed the message.
        if (self.reply_lookup is not None and router.reference_ids(view)
                and any(policy_for(cfg, r).replies == "refuse" for r in rcpts)):
            try:
                known = await asyncio.wait_for(self.reply_lookup(view, rcpts), self.verifier.timeout)
            except Exception as exc:  # Odoo unreachable: the worker holds it instead of refusing
                log.info("auth.reply_lookup_failed", error=str(exc) or type(exc).__name__)
        decisions = router.route(view, rcpts, known)
        actions = recipient_decisions(cfg, summary, view, rcpts, decisions, self.directory())
        refusals = {r: line for r, d in actions.items() if (line := d.smtp_reply()) is not None}
        holds = [d for r, d in actions.items() if r not in refusals and d.action == "hold"]
        return IntakeVerdict(refusals, strictest(holds) if holds else None, summary)

    # -- the client ----------------------------------------------------------------------------------------

    def _client(self, session: Any, envelope: Any) -> Client:
        # XFORWARD is accepted only from the listener's trusted_relays (gateway/intake/xforward.py), before MAIL.
        xf = from_xforward(xforward.client_of(envelope))
        if xf is not None:
            return xf
        ip = peer_ip(session.peer)
        if ip is None or is_in(ip, self._relays):
            return Client(None, None, "unknown")  # a trusted relay (or a local socket): the Received header it adds
        return Client(ip, session.host_name, "peer")

    def _client_from_header(self, tx: _Transaction, header: bytes) -> None:
        if tx.client.via != "unknown":
            return
        found = from_received(header, self._relays)
        if found is not None:
            tx.client = found
            tx.session.start_spf(found.ip, found.helo, tx.mail_from)
