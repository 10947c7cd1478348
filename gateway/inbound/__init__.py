"""InboundWorker: claim spooled mail → route → deliver to Odoo → transition (design: Flow, State machines).

Per message:
1. Route the recipients still pending (a retry skips those already delivered): the Router (routing/) with
   the current directory snapshot, after looking up the message's References on the owning instances.
2. Plan one `message_process` call per instance (routing/decision.py says why), prepend Return-Path,
   Delivered-To, Received and, if missing, a stable Message-Id, and call Odoo.
3. Map each result (the issue's table): id / False / loop-None ⇒ delivered; no route ⇒ failed + DSN;
   credentials/database ⇒ deferred, never bounced, one loud log line per outage; anything transient ⇒
   deferred with exponential backoff and jitter until `delivery.lifetime`, then failed + DSN.

Ordering: entries are claimed in arrival order and two deliveries of one envelope sender never run at the
same time. When an instance's breaker closes again, its deferred entries are woken together so that they
are claimed — and delivered — in arrival order instead of by their scattered backoff times.
"""

from gateway.inbound.outage import IntakeHold
from gateway.inbound.outcomes import FINAL, BounceHandler
from gateway.inbound.service import InboundService, build_clients
from gateway.inbound.worker import InboundWorker

__all__ = ["FINAL", "BounceHandler", "InboundService", "InboundWorker", "IntakeHold", "build_clients"]
