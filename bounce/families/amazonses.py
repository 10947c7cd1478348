"""Amazon SES notifications delivered through SNS: JSON in the body, not a mail report.

The document's `notificationType` says Bounce, Complaint or Delivery; each names its recipients with
the status and diagnostic SES got from the remote host.
"""

from __future__ import annotations

import json
import re

from bounce.mail import Finding, Mail


def read_ses_json(mail: Mail) -> list[Finding] | None:
    """Amazon SES notifications delivered through SNS (JSON in the body)."""
    if "notificationType" not in mail.full_text and "notificationType" not in mail.root.body:
        return None
    data = _dict(_ses_document(mail.full_text or mail.root.body))
    kind = data.get("notificationType")
    out: list[Finding] = []
    if kind == "Bounce":
        bounce = _dict(data.get("bounce"))
        for r in map(_dict, _list(bounce.get("bouncedRecipients"))):
            out.append(Finding(str(r.get("emailAddress", "")).lower(), action=str(r.get("action", "failed")),
                               status=str(r.get("status", "")), diagnostic=str(r.get("diagnosticCode", "")),
                               remote_mta=str(bounce.get("remoteMtaIp", ""))))
    elif kind == "Complaint":
        complaint = _dict(data.get("complaint"))
        ftype = str(complaint.get("complaintFeedbackType") or "abuse")
        for r in map(_dict, _list(complaint.get("complainedRecipients"))):
            out.append(Finding(str(r.get("emailAddress", "")).lower(), reason="feedback", feedback_type=ftype))
    elif kind == "Delivery":
        delivery = _dict(data.get("delivery"))
        for addr in _list(delivery.get("recipients")):
            out.append(Finding(str(addr).lower(), action="delivered",
                               diagnostic=str(delivery.get("smtpResponse", "")),
                               remote_mta=str(delivery.get("reportingMTA", ""))))
    return [f for f in out if "@" in f.address] or None


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _ses_document(text: str) -> object:
    start = text.find("{")
    if start < 0:
        return None
    end = text.rfind("}")
    doc = text[start : end + 1]
    data = _loads(doc)
    if data is None:
        data = _loads(re.sub(r"\n ", "", doc))  # a JSON line folded like a header
    if isinstance(data, dict) and isinstance(data.get("Message"), str):
        return _loads(data["Message"])
    return data


def _loads(doc: str) -> object:
    try:
        return json.loads(doc, strict=False)
    except (ValueError, RecursionError):
        return None
