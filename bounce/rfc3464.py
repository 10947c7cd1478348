"""RFC 3464 delivery reports: the message/delivery-status fields, per message and per recipient.

`read_delivery_status(mail)` returns one `Finding` per recipient block (Final-Recipient, Action,
Status, Diagnostic-Code, Remote-MTA) and the Reporting-MTA. It reads the fields where MTAs put them:
a message/delivery-status part (or message/global-delivery-status, RFC 6533, or the broken
message/xdelivery-status some filters write), else the same fields written in a text part.
"""

from __future__ import annotations

import re

from bounce.mail import ADDR_RE, Finding, Mail, unique

_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status", "message/xdelivery-status")
_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)$")
_PER_RECIPIENT = {"original-recipient", "final-recipient", "action", "status", "remote-mta",
                  "diagnostic-code", "last-attempt-date", "final-log-id", "will-retry-until",
                  "x-actual-recipient", "x-display-name"}


def _delivery_status_text(mail: Mail) -> str:
    for part in mail.parts:
        if part.ctype in _STATUS_TYPES:
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
            # Blocks are told apart by their Final-Recipient (below), not by blank lines: IIS writes a
            # blank line after every field.
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


def read_delivery_status(mail: Mail) -> tuple[list[Finding], str | None]:
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
