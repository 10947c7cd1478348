"""What the gateway does with mail routed as a bounce (the inbound worker's `bounce_handler`).

Odoo 19 marks a bounce only when it receives a well-formed RFC 3464 report addressed exactly to an alias
domain's bounce address, naming the recipient (Final-Recipient of the second block) and carrying the original
Message-Id (docs/odoo.md §10.6). Real bounces rarely look like that, so the gateway parses them (bounce/), finds
the original through the VERP token of our own return path when there is one (its MAC proves it is ours), and
hands Odoo a report in the form it understands — for hard bounces only by default, since Odoo counts every
report as a dead address and would otherwise punish a full mailbox or a DMARC rejection. Every other permanent
failure (policy refusal, expiry, an address the next hop cannot take) is shown on the recipient's notification
as a delivery failure instead, as Odoo shows a refusal when it sends by itself, without counting a bounce
(gateway/odoo/notifications.py). The texts Odoo shows name the gateway queue id of the message that failed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bounce import verp
from bounce.dsn import BouncedRecipient, BounceReport, build_dsn, parse
from gateway.errors import PermFailure
from gateway.logs import get_logger
from gateway.odoo.client import OdooClient
from gateway.odoo.notifications import DeliveryFailure, failure_type_for, report_delivery_failure
from gateway.spool import Spool, SpoolEntry
from routing.decision import RouteDecision
from routing.directory import Directory

log = get_logger("mailgw.bounce")


@dataclass(frozen=True, slots=True)
class Origin:
    """What a valid VERP token told us: the outbound message and the recipient that bounced."""

    queue_id: str
    message_id: str | None
    recipient: str | None


class BounceForwarder:
    def __init__(self, *, spool: Spool, clients: Mapping[str, OdooClient], directory: Callable[[], Directory],
                 hostname: str, verp_secret: bytes | None, forward_soft: bool = False, report_failures: bool = True):
        self.spool = spool
        self.clients = clients
        self.directory = directory
        self.hostname = hostname
        self.verp_secret = verp_secret
        self.forward_soft = forward_soft
        self.report_failures = report_failures
        self.stats: Counter[str] = Counter()

    async def __call__(self, entry: SpoolEntry, raw: bytes, decisions: Sequence[RouteDecision]) -> None:
        report = parse(raw, verp_secret=self.verp_secret)
        ids = {"queue_id": entry.queue_id, "message_id": entry.message_id}
        if report.is_auto_reply or report.is_feedback:
            kind = "auto_reply" if report.is_auto_reply else f"feedback:{report.feedback_type or 'unknown'}"
            self.stats["not_a_bounce"] += 1
            log.info("bounce.not_a_bounce", kind=kind, **ids)
            return
        origin = await self._origin(decisions, ids)
        recipients = list(report.recipients)
        if not recipients and origin is not None and origin.recipient:
            # A bounce we cannot read, for a message we know we sent: the token names the recipient.
            recipients = [BouncedRecipient(address=origin.recipient, original_recipient="", action="failed",
                                           status="5.0.0", reply_code="", diagnostic="unparsed bounce", remote_mta="",
                                           reason="undefined", hard=False, kind="soft")]
        if not recipients:
            self.stats["unparseable"] += 1
            raise PermFailure("unparseable bounce: no bounced recipient found (kept for an operator)")
        original_mid = (origin.message_id if origin else None) or report.original_message_id
        failed_qid = (origin.queue_id if origin else None) or await self._dsn_origin(entry)
        final = [r for r in recipients if _is_permanent(r)]
        forward = [r for r in final if r.kind == "hard" or (self.forward_soft and r.kind in ("soft", "policy"))]
        notify = [r for r in final if r not in forward and self.report_failures and r.kind != "none"]
        for r in recipients:
            self.stats[r.kind] += 1
            log.info("bounce.parsed", recipient=r.address, status=r.status, reason=r.reason, kind=r.kind,
                     original_message_id=original_mid, forwarded=r in forward, failed_queue_id=failed_qid,
                     action=r.action, **ids)
        if not forward and not notify:
            return
        instance = next((d.instance for d in decisions if d.instance), None)
        client = self.clients.get(instance or "")
        if client is None:
            raise PermFailure(f"bounce for unknown instance {instance!r}")
        if forward:
            to_addr = self._bounce_address(instance or "", decisions)
            dsn = self._report_for_odoo(entry, report, forward, original_mid, to_addr, failed_qid)
            result = await client.message_process(dsn)
            self.stats["forwarded"] += len(forward)
            log.info("bounce.forwarded", instance=instance, to=to_addr, recipients=[r.address for r in forward],
                     original_message_id=original_mid, odoo=result.outcome, **ids)
        for r in notify:
            if not original_mid:
                self.stats["failure_unmatched"] += 1
                log.info("bounce.failure_unmatched", recipient=r.address, reason="no original Message-Id", **ids)
                continue
            qid = failed_qid or entry.queue_id
            text = r.diagnostic or f"{r.status} {r.reason}".strip()
            failure = DeliveryFailure(original_mid, r.address, f"{text} (mailgw queue id {qid})",
                                      failure_type_for(r.status, r.reason))
            outcome = await report_delivery_failure(client, failure)
            self.stats[f"failure_{outcome}"] += 1

    async def _dsn_origin(self, entry: SpoolEntry) -> str | None:
        """The queue id of the outbound message a DSN of our own is about. Our DSNs reach the bounce address by
        local delivery: inbound entry (source.outbound) -> the DSN's outbound entry (source.dsn_for) -> the
        message that failed. Only the gateway writes these `internal` envelopes: nobody outside can forge them."""
        if entry.envelope.intake != "internal":
            return None
        dsn_qid = (entry.envelope.source or {}).get("outbound")
        dsn = await self.spool.get(str(dsn_qid)) if dsn_qid else None
        failed = (dsn.envelope.source or {}).get("dsn_for") if dsn is not None else None
        return str(failed) if failed else None

    async def _origin(self, decisions: Sequence[RouteDecision], ids: Mapping[str, str | None]) -> Origin | None:
        for d in decisions:
            token = verp.decode(d.recipient, self.verp_secret)
            if token is None:
                continue
            if not token.valid:
                self.stats["forged"] += 1
                log.warning("bounce.forged_verp", recipient=d.recipient, **ids)
                raise PermFailure(f"VERP token of {d.recipient} does not verify: not a bounce of ours, ignored")
            sent = await self.spool.get(token.queue_id)
            if sent is None:
                return Origin(token.queue_id, None, None)
            rcpts = sent.envelope.rcpt_tos
            rcpt = rcpts[token.rcpt_index] if 0 <= token.rcpt_index < len(rcpts) else None
            return Origin(token.queue_id, sent.message_id, rcpt)
        return None

    def _bounce_address(self, instance: str, decisions: Sequence[RouteDecision]) -> str:
        """The exact bounce address of the alias domain the bounce came to (Odoo compares it literally)."""
        inst = self.directory().instances.get(instance)
        domains = {d.recipient.rpartition("@")[2].lower() for d in decisions}
        if inst is not None:
            for dom in inst.domains:
                if dom.name.lower() in domains and dom.bounce_email:
                    return dom.bounce_email
            if inst.domains and inst.domains[0].bounce_email:
                return inst.domains[0].bounce_email
        return f"bounce@{sorted(domains)[0]}" if domains else f"bounce@{self.hostname}"

    def _report_for_odoo(self, entry: SpoolEntry, report: BounceReport, recipients: Sequence[BouncedRecipient],
                         original_mid: str | None, to_addr: str, failed_qid: str | None = None) -> bytes:
        seed = f"{entry.queue_id}|{','.join(r.address for r in recipients)}"
        message_id = f"<mailgw.bounce.{hashlib.sha256(seed.encode()).hexdigest()[:16]}@{self.hostname}>"
        headers = dict(report.original_headers or {})
        if original_mid:
            headers["Message-Id"] = original_mid
        headers.setdefault("Message-Id", f"<unknown.{entry.queue_id}@{self.hostname}>")
        about = (f"mailgw queue id {failed_qid}" if failed_qid
                 else f"report received as mailgw queue id {entry.queue_id}")
        lines = [f"The mail gateway at {self.hostname} received a delivery failure report ({about}):", ""]
        lines += [f"  <{r.address}>: {r.status} {r.reason} — {r.diagnostic or 'no diagnostic'}" for r in recipients]
        return build_dsn(
            reporting_mta=report.reporting_mta or self.hostname, from_addr=f"MAILER-DAEMON@{self.hostname}",
            to_addr=to_addr, original_headers={k: v for k, v in headers.items() if v},
            recipients=[(r.address, "failed", r.status or "5.0.0", r.diagnostic or r.reason) for r in recipients],
            message_id=message_id, human_text="\n".join(lines))


def _is_permanent(r: BouncedRecipient) -> bool:
    """A final failure of this recipient; a "delayed" warning or a 4xx report is not (the message may still go)."""
    action = r.action.lower()
    if action in ("delayed", "delivered", "relayed", "expanded"):
        return False
    return action == "failed" or not r.status.startswith("4")
