"""Delivery reports in, delivery reports out.

`parse(raw)` reads any mail and says whether it is a bounce, an auto-reply (RFC 3834) or a feedback
report (ARF, RFC 5965), which recipients failed and why, and which outbound message it was about. It
reads RFC 3464 reports field by field and falls back on `bounce.formats` for the many MTAs that write
bounces for humans. It never raises: a mail it cannot read is "not a bounce".

`build_dsn(...)` writes a well-formed RFC 3464 report, shaped so that Odoo 17+ recognises it (its
second delivery-status block carries the Final-Recipient) and so that it can also go back to a sender
for mail the gateway could not deliver.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import format_datetime
from typing import Any

from bounce import classify as cls
from bounce import verp
from bounce.formats import (
    ADDR_RE,
    SPECIFIC_READERS,
    Finding,
    Mail,
    build_mail,
    find_command,
    read_generic,
    unique,
)
from bounce.message import Part, decode_words, parse_headers, parse_message, to_bytes

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


def parse(raw: bytes, *, verp_secret: bytes | None = None) -> BounceReport:
    """Read one mail; never raises. `verp_secret` checks the MAC of a VERP address it was sent to."""
    try:
        return _parse(raw, verp_secret)
    except Exception:  # the contract is "never raises": a mail we cannot read is not a bounce
        return NOT_A_BOUNCE


def _parse(raw: bytes, verp_secret: bytes | None, _depth: int = 0) -> BounceReport:
    root = parse_message(raw)
    mail = build_mail(root)
    original = _original_headers(mail)
    message_id = _original_message_id(original)
    token = _verp_token(root, verp_secret)
    reporting_mta: str | None = None

    feedback = _read_feedback(mail)
    if feedback is not None:
        ftype, complaints = feedback
        recipients = tuple(_finish(f) for f in complaints)
        return BounceReport(False, False, True, ftype, message_id, original, recipients, None, token)

    findings: list[Finding] = []
    for reader in SPECIFIC_READERS:
        got = reader(mail)
        if got:
            findings = got
            break
    if not findings:
        findings, reporting_mta = _read_delivery_status(mail)
    if not findings and _looks_like_bounce(mail):
        findings = read_generic(mail) or _original_recipient(mail)
    elif findings:
        _enrich_from_text(findings, mail)

    if not findings and _depth < 2:
        forwarded = _forwarded_report(mail)
        if forwarded is not None:
            return _parse(to_bytes(forwarded), verp_secret, _depth + 1)
    if not findings:
        if _is_auto_reply(mail):
            addr = mail.from_addr if "@" in mail.from_addr else ""
            recipients = (_finish(Finding(addr, reason="vacation")),) if addr else ()
            return BounceReport(False, True, False, "", message_id, original, recipients, None, token)
        return BounceReport(False, False, False, "", message_id, original, (), None, token)

    recipients = tuple(_finish(f) for f in findings[:MAX_RECIPIENTS] if f.address)
    if recipients and all(r.reason == "feedback" for r in recipients):
        ftype = findings[0].feedback_type or "abuse"
        return BounceReport(False, False, True, ftype, message_id, original, recipients, None, token)
    is_bounce = any(r.kind != "none" for r in recipients)
    return BounceReport(is_bounce, False, False, "", message_id, original, recipients, reporting_mta, token)


def _forwarded_report(mail: Mail) -> str | None:
    """A delivery report forwarded as an attachment (message/rfc822 holding a multipart/report)."""
    for part in mail.parts:
        if part.parts and part.parts[0].ctype == "multipart/report":
            return part.embedded_text()
    return None


# --- RFC 3464 --------------------------------------------------------------------------------------
_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)$")
_PER_RECIPIENT = {"original-recipient", "final-recipient", "action", "status", "remote-mta",
                  "diagnostic-code", "last-attempt-date", "final-log-id", "will-retry-until",
                  "x-actual-recipient", "x-display-name"}


def _delivery_status_text(mail: Mail) -> str:
    for part in mail.parts:
        if part.ctype in ("message/delivery-status", "message/global-delivery-status"):
            text = part.text()
            if "recipient" in text.lower():
                return text
    # Some MTAs put the fields in a text part ("Technical report:"), or send them without MIME.
    text = mail.full_text
    if _FINAL_RECIPIENT.search(text) and _ACTION_OR_STATUS.search(text):
        return text
    return ""


_FINAL_RECIPIENT = re.compile(r"^Final-Recipient:", re.I | re.M)
_ACTION_OR_STATUS = re.compile(r"^(?:Status|Action):", re.I | re.M)
_STATUS_FIELD = re.compile(r"([245]\.\d{1,3}\.\d{1,3})")


def parse_delivery_status(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The per-message fields and one dict of fields per recipient, from a delivery-status body."""
    per_message: dict[str, str] = {}
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last_key = ""
    for line in text.split("\n"):
        if not line.strip():
            if current.get("final-recipient") or current.get("original-recipient"):
                blocks.append(current)
                current = {}
            last_key = ""
            continue
        if line[:1] in " \t":
            if last_key:
                target = current if last_key in _PER_RECIPIENT else per_message
                target[last_key] = (target.get(last_key, "") + " " + line.strip()).strip()
            continue
        m = _FIELD.match(line)
        if not m:
            last_key = ""
            continue
        key, value = m.group(1).lower(), m.group(2).strip()
        if key in _PER_RECIPIENT:
            # Original-Recipient usually precedes Final-Recipient (RFC 3464) but Postfix writes it after.
            starts_new = (key == "final-recipient" and "final-recipient" in current) or (
                key == "original-recipient" and ("original-recipient" in current or (
                    "final-recipient" in current and ("status" in current or "action" in current))))
            if starts_new:
                blocks.append(current)
                current = {}
            current.setdefault(key, value)
        else:
            per_message.setdefault(key, value)
        last_key = key
    if current.get("final-recipient") or current.get("original-recipient"):
        blocks.append(current)
    return per_message, blocks


def _address_of(value: str) -> str:
    """`rfc822; <a@b>` → a@b."""
    if ";" in value:
        value = value.split(";", 1)[1]
    m = ADDR_RE.search(value)
    if m:
        return m.group(0).lower()
    return value.strip().strip("<>").strip().lower()


def _read_delivery_status(mail: Mail) -> tuple[list[Finding], str | None]:
    text = _delivery_status_text(mail)
    if not text:
        return [], None
    per_message, blocks = parse_delivery_status(text)
    reporting = per_message.get("reporting-mta", "")
    reporting_mta = reporting.split(";", 1)[-1].strip() or None if reporting else None
    findings = []
    for block in blocks:
        final = _address_of(block.get("final-recipient", ""))
        if "@" not in final and "x-actual-recipient" in block:
            final = _address_of(block["x-actual-recipient"])
        orig = _address_of(block.get("original-recipient", ""))
        address = final if "@" in final else orig
        if "@" not in address:
            continue
        diag = block.get("diagnostic-code", "")
        dtype, _, diag = diag.partition(";") if ";" in diag[:12] else ("", "", diag)
        m = _STATUS_FIELD.match(block.get("status", "").strip())
        action = block.get("action", "").split()
        findings.append(Finding(address, original_recipient=orig if orig != address else "",
                                action=action[0].lower() if action else "", status=m.group(1) if m else "",
                                diagnostic=diag.strip(), diagnostic_type=dtype.strip().lower(),
                                remote_mta=block.get("remote-mta", "").split(";", 1)[-1].strip()))
    return unique(findings), reporting_mta


_SMTP_ERROR_LINE = re.compile(r"^[ \t]*(?:<<< )?[45]\d\d[ -]", re.M)


def _original_recipient(mail: Mail) -> list[Finding]:
    """Last resort for a bounce naming no recipient but quoting an SMTP error: the original's To."""
    if mail.original is None or not _SMTP_ERROR_LINE.search(mail.text):
        return []
    addrs = ADDR_RE.findall(mail.original.get("to"))
    if len(addrs) != 1:
        return []
    diag = " ".join(line.strip() for line in mail.text.split("\n") if _SMTP_ERROR_LINE.match(line))
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


# --- feedback reports and auto-replies -------------------------------------------------------------
def _read_feedback(mail: Mail) -> tuple[str, list[Finding]] | None:
    report = None
    for part in mail.parts:
        if part.ctype == "message/feedback-report":
            report = part
            break
    if report is None:
        if mail.header("x-apple-unsubscribe").lower() == "true" and "@" in mail.from_addr:
            return "opt-out", [Finding(mail.from_addr, reason="feedback", feedback_type="opt-out")]
        return None
    fields = parse_headers(report.text().strip("\n"))
    first = dict(reversed(fields))
    # Several Original-Rcpt-To fields: one per complaining recipient.
    rcpts = [a.lower() for k, v in fields if k == "original-rcpt-to" for a in ADDR_RE.findall(v)]
    if not rcpts:
        rcpts = [a.lower() for a in ADDR_RE.findall(first.get("removal-recipient", ""))]
    if not rcpts and mail.original is not None:
        rcpts = [a.lower() for a in ADDR_RE.findall(mail.original.get("to"))][:1]
    ftype = first.get("feedback-type", "").strip().lower() or "abuse"
    return ftype, [Finding(a, reason="feedback", feedback_type=ftype) for a in dict.fromkeys(rcpts)]


_AUTO_SUBJECT = re.compile(
    r"^(?:auto(?:matic)?[ -]?(?:reply|response|antwort|respuesta)|out of (?:the )?office|"
    r"autoreply|auto:|abwesenheit|r[ée]ponse automatique|absence|vacation|away from|"
    r"自動応答|自動返信|不在)",
    re.I,
)


def _is_auto_reply(mail: Mail) -> bool:
    if mail.from_local in ("mailer-daemon", "postmaster", "mail-daemon"):
        return False
    auto = mail.header("auto-submitted").lower()
    if auto.startswith("auto-replied"):
        return True
    if mail.header("x-autoreply") or mail.header("x-autorespond") or mail.header("x-autoresponder"):
        return True
    if mail.header("precedence").lower() == "auto_reply":
        return True
    if mail.header("x-apple-action").upper() == "VACATION":
        return True
    return bool(_AUTO_SUBJECT.match(mail.subject.strip()))


_BOUNCE_FROM = re.compile(r"^(?:mailer-daemon|post_?master|mail-daemon|mailer|mdaemon|bounce[s]?|"
                          r"returned|majordomo|mail\.?delivery|no-?reply|administrator|"
                          r"system ?administrator|root)$", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status|failure|failed|notification|problem|report)|"
    r"returned mail|mail delivery|failure notice|delivery has failed|could not be delivered|"
    r"non remis|unzustellbar|nicht zustellbar|mail system error|message not delivered|"
    r"rejected|bounce|warning: message|delayed mail|returned to sender|not delivered|"
    r"non recapitabile|no entregado|niet bezorgd|error|failure|failed",
    re.I,
)


_BOUNCE_TEXT = re.compile(
    r"could ?n[o']t be delivered|undeliverable|delivery (?:has )?failed|failed permanently|"
    r"(?:wasn'?t|was not|were not|unable|not) (?:able to )?deliver|permanent (?:fatal )?error|"
    r"returned to (?:the )?sender|transcript of session|following address(?:es)? failed|"
    r"delivery status notification|did not reach|not (?:be )?delivered|error (?:sending|delivering)|"
    r"delivery (?:to the following|problem|failure)|message (?:was )?(?:rejected|bounced)|"
    r"invalid (?:user|recipient) address|error message below",
    re.I,
)


def _looks_like_bounce(mail: Mail) -> bool:
    if mail.root.ctype == "multipart/report" or "report-type=delivery-status" in mail.header(
            "content-type").lower():
        return True
    if mail.failed:
        return True
    sender_like = bool(_BOUNCE_FROM.match(mail.from_local)) or mail.header("return-path").strip() in (
        "<>", "")
    subject_like = bool(_BOUNCE_SUBJECT.search(mail.subject))
    text_like = bool(_BOUNCE_TEXT.search(mail.text[:4000]))
    return (sender_like and (subject_like or text_like)) or (subject_like and text_like)


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
def _finish(f: Finding) -> BouncedRecipient:
    if f.reason in ("feedback", "vacation"):
        return BouncedRecipient(f.address, f.original_recipient, f.action or "", "", "", f.diagnostic,
                                f.remote_mta, f.reason, False, "none")
    diag = " ".join(f.diagnostic[: 4 * cls.MAX_TEXT].split())[: cls.MAX_TEXT]
    klass = f.status[:1] if f.status else ""
    in_text = cls.find_status(diag)
    reply = f.reply_code or cls.find_reply_code(diag, klass)
    status = cls.prefer_status(f.status, in_text, reply)
    if status and (not reply or reply[0] != status[0]):
        # The reply code of the status's class (a 250 for a 2.x.x, not the 550 quoted after it).
        reply = cls.find_reply_code(diag, status[0]) or ("" if status[0] == "2" else reply)
    diag = _unfold_reply(diag, reply, status)
    command = f.command or find_command(diag)
    host = f"{f.remote_mta} {f.address.rpartition('@')[2]}"
    reason, _ = cls.classify(status, reply, diag, command=command, action=f.action, preset=f.reason,
                             host=host)
    if reason in ("onhold", "undefined") and f.diagnostic_type.startswith("x-unix"):
        reason = "mailererror"
    if not status:
        low = diag.lower()
        temporary = reply[:1] == "4" or f.action == "delayed" or " temporar" in low or " persistent" in low
        status = cls.pseudo_status(reason, temporary)
    kind = cls.kind_of(reason, status)
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
        lines = [f"Final-Recipient: rfc822; {_one_line(address)}", f"Action: {_one_line(action)}",
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
