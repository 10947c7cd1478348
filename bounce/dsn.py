"""Delivery reports in, delivery reports out.

`parse(raw)` reads any mail and says whether it is a bounce, an auto-reply (RFC 3834) or a feedback
report (ARF, RFC 5965), which recipients failed and why, and which outbound message it was about. It
reads, in this order: feedback reports (`bounce.notices`), RFC 3464 reports field by field
(`bounce.rfc3464`), then the families of bounces written for humans, each known by its structure
(`bounce.families`), and last the general address-then-reason reader. Every recipient's reason and kind
come from `bounce.classify`. It never raises: a mail it cannot read is "not a bounce".

`build_dsn(...)` writes a well-formed RFC 3464 report, shaped so that Odoo 17+ recognises it (its
second delivery-status block carries the Final-Recipient) and so that it can also go back to a sender
for mail the gateway could not deliver.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import format_datetime
from typing import Any

from bounce import classify as cls
from bounce import families, notices, verp
from bounce.families.generic import read_generic
from bounce.mail import ADDR_RE, Finding, Mail, build_mail, find_command, unquote
from bounce.message import Part, decode_words, parse_message, to_bytes
from bounce.phrases import MAX_TEXT
from bounce.rfc3464 import read_delivery_status

MAX_RECIPIENTS = 1000  # a report naming more is not a real bounce; do not spend time on it
ORIGINAL_HEADERS = ("message-id", "x-odoo-message-id", "x-microsoft-original-message-id", "from", "to",
                    "subject", "return-path", "x-odoo-objects")
_HEADER_TITLES = {"message-id": "Message-Id", "x-odoo-message-id": "X-Odoo-Message-Id",
                  "x-microsoft-original-message-id": "X-Microsoft-Original-Message-ID",
                  "return-path": "Return-Path", "x-odoo-objects": "X-Odoo-Objects"}


@dataclass(frozen=True, slots=True)
class BouncedRecipient:
    address: str
    original_recipient: str
    action: str
    status: str
    reply_code: str
    diagnostic: str
    remote_mta: str
    reason: str
    hard: bool
    kind: str  # "hard" | "soft" | "policy" | "none"

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "action": self.action, "status": self.status,
                "reply_code": self.reply_code, "reason": self.reason, "hard": self.hard}


@dataclass(frozen=True, slots=True)
class BounceReport:
    is_bounce: bool = False
    is_auto_reply: bool = False
    is_feedback: bool = False
    feedback_type: str = ""
    original_message_id: str | None = None
    original_headers: dict[str, str] | None = None
    recipients: tuple[BouncedRecipient, ...] = ()
    reporting_mta: str | None = None
    verp: verp.VerpToken | None = field(default=None, compare=False)
    family: str = ""  # which reader understood it: rfc3464, a family detector, generic, arf, rfc3834

    def to_dict(self) -> dict[str, Any]:
        token = None
        if self.verp is not None:
            token = {"queue_id": self.verp.queue_id, "rcpt_index": self.verp.rcpt_index,
                     "valid": self.verp.valid}
        return {
            "is_bounce": self.is_bounce,
            "is_auto_reply": self.is_auto_reply,
            "is_feedback": self.is_feedback,
            "original_message_id": self.original_message_id,
            "verp": token,
            "recipients": [r.to_dict() for r in self.recipients],
        }


NOT_A_BOUNCE = BounceReport()


def parse(raw: bytes, *, verp_secret: bytes | None = None, disabled: Collection[str] = ()) -> BounceReport:
    """Read one mail; never raises. `verp_secret` checks the MAC of a VERP address it was sent to.
    `disabled` names families whose own detectors and provider rules are not used (for scoring how the
    general rules alone read a family: see bounce.scorecard)."""
    try:
        return _parse(raw, verp_secret, disabled=frozenset(disabled))
    except Exception:  # the contract is "never raises": a mail we cannot read is not a bounce
        return NOT_A_BOUNCE


def _parse(raw: bytes, verp_secret: bytes | None, _depth: int = 0, *,
           disabled: frozenset[str] = frozenset()) -> BounceReport:
    root = parse_message(raw)
    mail = build_mail(root)
    original = _original_headers(mail)
    message_id = _original_message_id(original)
    token = _verp_token(root, verp_secret)

    feedback = notices.read_feedback(mail)
    if feedback is not None:
        ftype, complaints = feedback
        recipients = tuple(_finish(f, disabled) for f in complaints)
        return BounceReport(False, False, True, ftype, message_id, original, recipients, None, token,
                            family="arf")

    findings, reporting_mta = read_delivery_status(mail)
    family = "rfc3464"
    if findings:
        _enrich_from_text(findings, mail)
    else:
        signs = notices.bounce_signs(mail)
        if signs == notices.STRUCTURE_NEEDED:  # a forwarded bounce: read what was forwarded
            mail.text, mail.full_text = unquote(mail.text), unquote(mail.full_text)
            findings, reporting_mta = read_delivery_status(mail)
        if findings:
            _enrich_from_text(findings, mail)
        else:
            family, findings = families.detect(mail, disabled, signs)
        if not findings and _depth < 2:
            forwarded = _forwarded_report(mail)
            if forwarded is not None:
                return _parse(to_bytes(forwarded), verp_secret, _depth + 1, disabled=disabled)
        if not findings and signs == notices.BOUNCE_LIKE:
            findings = _original_recipient(mail)

    if not findings:
        if notices.is_auto_reply(mail):
            addr = mail.from_addr if "@" in mail.from_addr else ""
            recipients = (_finish(Finding(addr, reason="vacation"), disabled),) if addr else ()
            return BounceReport(False, True, False, "", message_id, original, recipients, None, token,
                                family="rfc3834")
        return BounceReport(False, False, False, "", message_id, original, (), None, token)

    undecided = [f for f in findings if not f.action or (f.action == "failed" and not f.status.startswith("5"))]
    if undecided and notices.is_delay_notice(mail):
        for f in undecided:
            f.action = "delayed"
    recipients = tuple(_finish(f, disabled, reporting_mta or "") for f in findings[:MAX_RECIPIENTS] if f.address)
    if recipients and all(r.reason == "feedback" for r in recipients):
        ftype = findings[0].feedback_type or "abuse"
        return BounceReport(False, False, True, ftype, message_id, original, recipients, None, token,
                            family=family)
    is_bounce = any(r.kind != "none" for r in recipients)
    return BounceReport(is_bounce, False, False, "", message_id, original, recipients, reporting_mta, token,
                        family=family)


def _forwarded_report(mail: Mail) -> str | None:
    """A delivery report forwarded as an attachment (message/rfc822 holding a multipart/report)."""
    for part in mail.parts:
        if part.parts and part.parts[0].ctype == "multipart/report":
            return part.embedded_text()
    return None


_SMTP_ERROR_LINE = re.compile(r"^[ \t]*(?:<<< )?[45]\d\d[ -]", re.M)


def _original_recipient(mail: Mail) -> list[Finding]:
    """Last resort for a bounce that names no recipient: the returned original's only To, with the SMTP
    errors the notice quotes, or else the notice's first lines, as the diagnostic."""
    if mail.original is None:
        return []
    addrs = ADDR_RE.findall(mail.original.get("to"))
    if len(addrs) != 1:
        return []
    lines = mail.text.split("\n")
    diag = " ".join(line.strip() for line in lines if _SMTP_ERROR_LINE.match(line))
    if not diag:
        diag = " ".join(line.strip() for line in lines if line.strip())[:1000]
    return [Finding(addrs[0].lower(), diagnostic=diag, command=find_command(mail.text))]


def _enrich_from_text(findings: list[Finding], mail: Mail) -> None:
    """Add what the human-readable part says (the SMTP command, a missing diagnostic) to each finding."""
    generic: dict[str, Finding] | None = None
    for f in findings:
        if f.command and f.diagnostic:
            continue
        if f.diagnostic:
            f.command = find_command(f.diagnostic) or _command_near(mail.text, f.address)
            if f.command:
                continue
        if generic is None:
            generic = {g.address: g for g in read_generic(mail)}
        g = generic.get(f.address)
        if g is not None:
            f.diagnostic = f.diagnostic or g.diagnostic
            f.command = f.command or g.command or find_command(f.diagnostic)
        elif not f.command:
            f.command = find_command(f.diagnostic) or _command_near(mail.text, f.address)
    if len(findings) == 1 and not findings[0].diagnostic:
        # A lone recipient with no diagnostic: the SMTP errors quoted in the notice are about it.
        findings[0].diagnostic = " ".join(
            line.strip() for line in mail.text.split("\n") if _SMTP_ERROR_LINE.match(line))


def _command_near(text: str, address: str) -> str:
    i = text.lower().find(address)
    if i < 0:
        return ""
    return find_command(text[max(0, i - 300) : i + 600])


# --- the original message ---------------------------------------------------------------------------
def _original_headers(mail: Mail) -> dict[str, str] | None:
    if mail.original is None:
        return None
    out: dict[str, str] = {}
    found = mail.original.header_map()
    for name in ORIGINAL_HEADERS:
        value = found.get(name)
        if value:
            title = _HEADER_TITLES.get(name, name.title())
            out[title] = decode_words(value)
    return out or None


def _original_message_id(headers: dict[str, str] | None) -> str | None:
    if not headers:
        return None
    for name in ("Message-Id", "X-Odoo-Message-Id", "X-Microsoft-Original-Message-ID"):
        value = headers.get(name, "").strip()
        if value:
            m = re.search(r"<[^<>\s]+>", value)
            return m.group(0) if m else f"<{value.strip('<> ')}>"
    return None


def _verp_token(root: Part, secret: bytes | None) -> verp.VerpToken | None:
    for name in ("delivered-to", "x-original-to", "envelope-to", "to"):
        for value in root.get_all(name):
            for addr in ADDR_RE.findall(value):
                token = verp.decode(addr, secret)
                if token is not None:
                    return token
    return None


# --- one recipient, finished ------------------------------------------------------------------------
def _finish(f: Finding, disabled: frozenset[str] = frozenset(), reporting_mta: str = "") -> BouncedRecipient:
    if f.reason in ("feedback", "vacation"):
        return BouncedRecipient(f.address, f.original_recipient, f.action or "", "", "", f.diagnostic,
                                f.remote_mta, f.reason, False, "none")
    diag = " ".join(f.diagnostic[: 4 * MAX_TEXT].split())[: MAX_TEXT]
    klass = f.status[:1] if f.status else ""
    in_text = cls.find_status(diag)
    reply = f.reply_code or cls.find_reply_code(diag, klass)
    status = cls.prefer_status(f.status, in_text, reply)
    if status and (not reply or reply[0] != status[0]):
        # The reply code of the status's class (a 250 for a 2.x.x, not the 550 quoted after it).
        reply = cls.find_reply_code(diag, status[0]) or ("" if status[0] == "2" else reply)
    diag = _unfold_reply(diag, reply, status)
    command = f.command or find_command(diag)
    # Whose rules apply: the remote MTA, the recipient's domain, or a provider's gateway that wrote the report.
    host = f"{f.remote_mta} {f.address.rpartition('@')[2]} {reporting_mta}"
    reason, _ = cls.classify(status, reply, diag, command=command, action=f.action, preset=f.reason,
                             host=host, disabled=disabled)
    if reason in ("onhold", "undefined") and f.diagnostic_type.startswith("x-unix"):
        reason = "mailererror"
    if not status:
        low = diag.lower()
        temporary = reply[:1] == "4" or f.action == "delayed" or " temporar" in low or " persistent" in low
        status = cls.pseudo_status(reason, temporary)
    if f.action == "delayed" and status.startswith("5"):
        status = "4" + status[1:]  # still being tried: whatever was said, it is not final yet
    kind = cls.kind_of(reason, status, f.action, reply)
    action = f.action or ("delivered" if reason == "delivered" else
                          "delayed" if status.startswith("4") else "failed")
    return BouncedRecipient(f.address, f.original_recipient, action, status, reply, diag, f.remote_mta,
                            reason, kind == "hard", kind)


def _unfold_reply(diag: str, reply: str, status: str) -> str:
    """`550-5.7.1 a 550-5.7.1 b 550 5.7.1 c` → `550 5.7.1 a b c` (multi-line SMTP replies, joined)."""
    if not reply or f"{reply}-" not in diag:
        return diag
    for sep in ("-", " "):
        if status:
            diag = diag.replace(f"{reply}{sep}{status} ", "")
        diag = diag.replace(f"{reply}{sep}", "")
    return " ".join(f"{reply} {status} {diag}".split())


# --- writing a DSN ---------------------------------------------------------------------------------
def build_dsn(*, reporting_mta: str, from_addr: str, to_addr: str,
              original_headers: Mapping[str, str] | bytes,
              recipients: Sequence[tuple[str, str, str, str]], message_id: str,
              human_text: str, subject: str = "Undelivered Mail Returned to Sender",
              date: datetime.datetime | None = None) -> bytes:
    """A multipart/report; report-type=delivery-status message (RFC 3464) as bytes with CRLF ends.

    `recipients` are (address, action, status, diagnostic) tuples. The original goes back as
    text/rfc822-headers. Odoo reads the Final-Recipient of the *second* delivery-status block (the
    first is the per-message block) and the Message-Id of the returned headers.
    """
    when = date or datetime.datetime.now(datetime.UTC)
    if isinstance(original_headers, bytes | bytearray):
        head = bytes(original_headers).replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
        headers_text = head.decode("utf-8", "replace").rstrip("\n")
    else:
        headers_text = "\n".join(f"{k}: {_one_line(v)}" for k, v in original_headers.items())
    seed = f"{message_id}|{reporting_mta}|{to_addr}".encode()
    boundary = "=_mailgw_" + hashlib.sha256(seed).hexdigest()[:24]
    mta = _one_line(reporting_mta)
    blocks = [f"Reporting-MTA: dns; {mta}", f"Arrival-Date: {format_datetime(when)}"]
    per_recipient = []
    for address, action, status, diagnostic in recipients:
        kind = "rfc822" if address.isascii() else "utf-8"  # RFC 6533 §3 for an internationalized address
        lines = [f"Final-Recipient: {kind}; {_one_line(address)}", f"Action: {_one_line(action)}",
                 f"Status: {_one_line(status)}"]
        if diagnostic:
            lines.append(f"Diagnostic-Code: smtp; {_one_line(diagnostic)}")
        per_recipient.append("\n".join(lines))
    status_body = "\n".join(blocks) + "\n\n" + "\n\n".join(per_recipient) + "\n"
    human = human_text.rstrip("\n") + "\n"
    msg = "\n".join([
        f"From: {_one_line(from_addr)}",
        f"To: {_one_line(to_addr)}",
        f"Subject: {_one_line(subject)}",
        f"Date: {format_datetime(when)}",
        f"Message-Id: {_one_line(message_id)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        human,
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        status_body,
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers",
        "",
        headers_text,
        "",
        f"--{boundary}--",
        "",
    ])
    return msg.replace("\n", "\r\n").encode("utf-8")


def _one_line(value: str) -> str:
    return " ".join(str(value).split())
