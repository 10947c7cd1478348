"""Delivery status notifications for inbound mail that failed after it was accepted.

The DSN is spooled as outbound mail from the null sender (RFC 5321 §4.5.5, so it can never bounce back),
to the envelope sender — never to ``<>``, never in answer to an ``Auto-Submitted`` message or to a bounce
(RFC 3834 §2, RFC 3464 §2: no loops). Built with `bounce.dsn.build_dsn`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any

from bounce.dsn import build_dsn
from gateway.headers import get_header, header_section
from gateway.logs import get_logger
from gateway.spool import Direction, Envelope, Spool, SpoolEntry

log = get_logger("mailgw.dsn")


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    address: str
    status: str  # enhanced status code, e.g. 5.1.1
    diagnostic: str  # one line for the sender


def dsn_suppressed(entry: SpoolEntry, raw: bytes) -> str | None:
    """Why no DSN may be sent for this message (None: send one)."""
    sender = entry.envelope.mail_from.strip()
    if not sender or sender == "<>":
        return "null sender"
    local = sender.rpartition("@")[0].lower() if "@" in sender else sender.lower()
    if local in ("mailer-daemon", "postmaster"):
        return "sender is a mailer daemon"
    auto = (get_header(raw, "Auto-Submitted") or "").strip().lower()
    if auto and not auto.startswith("no"):
        return f"Auto-Submitted: {auto}"
    ctype = (get_header(raw, "Content-Type") or "").lower()
    if ctype.startswith("multipart/report") or "report-type=delivery-status" in ctype:
        return "the message is a delivery report"
    frm = (get_header(raw, "From") or "").lower()
    if "mailer-daemon@" in frm:
        return "From is a mailer daemon"
    return None


async def send_dsn(spool: Spool, entry: SpoolEntry, raw: bytes, failed: Sequence[FailedRecipient], *,
                   hostname: str, reason: str = "") -> str | None:
    """Spool a DSN for `failed` recipients to the envelope sender. Returns its queue id, or None if suppressed."""
    if not failed:
        return None
    why_not = dsn_suppressed(entry, raw)
    if why_not is not None:
        log.info("dsn.suppressed", queue_id=entry.queue_id, message_id=entry.message_id, reason=why_not)
        return None
    sender = entry.envelope.mail_from.strip().strip("<>")
    rcpts = sorted(f.address for f in failed)
    seed = f"{entry.queue_id}|{entry.attempts}|{','.join(rcpts)}"
    tag = hashlib.sha256(seed.encode()).hexdigest()[:16]
    message_id = f"<mailgw.dsn.{tag}@{hostname}>"
    lines = [
        f"This is the mail gateway at {hostname}.",
        "",
        f"Your message (mailgw queue id {entry.queue_id}) could not be delivered to the following recipients:",
        "",
    ]
    lines += [f"  <{f.address}>: {f.diagnostic}" for f in failed]
    if reason:
        lines += ["", reason]
    received = format_datetime_safe(entry.envelope.received_at)
    lines += ["", f"The message was received on {received}; its headers are attached."]
    dsn = build_dsn(
        reporting_mta=hostname, from_addr=f"MAILER-DAEMON@{hostname}", to_addr=sender,
        original_headers=header_section(raw),
        recipients=[(f.address, "failed", f.status, f.diagnostic) for f in failed],
        message_id=message_id, human_text="\n".join(lines),
    )
    env = Envelope(mail_from="", rcpt_tos=(sender,), intake="internal",
                   source={"dsn_for": entry.queue_id})
    queue_id, created = await spool.put(env, dsn, direction=Direction.OUTBOUND, message_id=message_id,
                                        dedup_key=f"dsn:{seed}")
    if created:
        log.info("dsn.queued", queue_id=entry.queue_id, message_id=entry.message_id, dsn_queue_id=queue_id,
                 to=sender, recipients=rcpts)
    return queue_id


def format_datetime_safe(ts: Any) -> str:
    import datetime

    try:
        return format_datetime(datetime.datetime.fromtimestamp(float(ts), datetime.UTC))
    except (TypeError, ValueError, OverflowError):
        return "an unknown date"
