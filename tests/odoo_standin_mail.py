"""The part of Odoo 19's mail model the stand-in needs for delivery status: partners with a bounce counter,
messages, their `mail.notification` rows with Odoo's access rules, and what a bounce does to them.

Faithful to Odoo 19 (addons/mail):
- `mail.thread._message_parse_extract_bounce`: the original part is the first ``message/rfc822`` or
  ``text/rfc822-headers`` part (else the report itself); the bounced address is the ``Final-Recipient`` of the
  *second* block of the ``message/delivery-status`` part, normalized; the original message is the newest
  `mail.message` whose message_id is the original part's Message-Id (or X-Microsoft-Original-Message-ID); a
  found message with no partner for the address but exactly one notified partner takes that partner.
- `mail.thread._routing_handle_bounce`, only when a bounced address was found: `message_bounce += 1` on every
  partner with that normalized address (and on the message's record), and the message's notifications of those
  partners or of that address become ``bounce`` / ``mail_bounce`` with the plain text of the bounce as reason.
- Constraints of `mail.notification` (19.0): a unique index on (message, partner), and an email notification
  needs a partner, an address or a failure type.
- Access (security/ir.model.access.csv, mail_security.xml): an internal user may create notifications and read
  them; the rule "mail.notifications: group_user: write its own entries" limits *write* to rows whose partner is
  the user's own, administrators included (no admin override rule) — AccessError, fault 4 / HTTP 403; an
  administrator (group_system, the gateway's user) may unlink them.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils
import re
from typing import Any

NOTIFICATION_FIELDS = {"id", "mail_message_id", "res_partner_id", "author_id", "notification_type",
                       "notification_status", "failure_type", "failure_reason", "mail_email_address", "is_read",
                       "mail_mail_id"}
# mail.notification.failure_type in 19.0 (mail.mail has mail_spam too; the notification has not)
FAILURE_TYPES = {"unknown", "mail_bounce", "mail_email_invalid", "mail_email_missing", "mail_from_invalid",
                 "mail_from_missing", "mail_smtp", "mail_bl", "mail_optout", "mail_dup"}
STATUSES = {"ready", "process", "pending", "sent", "bounce", "exception", "canceled"}
_MSGID = re.compile(r"<[^<>]+>")


def email_normalize(address: str) -> str:
    """tools.email_normalize: the address part; domain lower-cased, local part too when ASCII."""
    addr = email.utils.parseaddr(address)[1] or address.strip()
    local, at, domain = addr.rpartition("@")
    if not at:
        return ""
    return f"{local.lower() if local.isascii() else local}@{domain.lower()}"


class AccessDenied(Exception):
    """Raised here, turned into the stand-in's AccessError (fault 4 / 403) by the caller."""


class UniqueViolation(Exception):
    """A database constraint: Odoo answers with a ValidationError (fault 2 / 422) "The operation cannot be
    completed: …"."""


class MailModel:
    """Operates on the stand-in's tables (`db`), under its lock."""

    def __init__(self, db: dict[str, list[dict[str, Any]]], user_partner_id: int, next_id: Any):
        self.db = db
        self.user_partner_id = user_partner_id
        self.next_id = next_id
        db.setdefault("mail.notification", [])

    # -- seeding -----------------------------------------------------------------------------------------------

    def add_partner(self, name: str, address: str) -> int:
        pid = next(self.next_id)
        self.db["res.partner"].append({"id": pid, "name": name, "email": address,
                                       "email_normalized": email_normalize(address), "message_bounce": 0,
                                       "active": True})
        return pid

    def add_notification(self, message_db_id: int, partner_id: int | None, *, status: str = "sent",
                         address: str | None = None, author_id: int | None = None) -> int:
        nid = next(self.next_id)
        partner = self.partner(partner_id) if partner_id else None
        self.db["mail.notification"].append({
            "id": nid, "mail_message_id": [message_db_id, "message"],
            "res_partner_id": [partner_id, partner["name"]] if partner else False,
            "author_id": [author_id, "author"] if author_id else False, "notification_type": "email",
            "notification_status": status, "failure_type": False, "failure_reason": False,
            "mail_email_address": address or False, "is_read": True, "mail_mail_id": False})
        return nid

    def partner(self, pid: int) -> dict[str, Any]:
        return next(p for p in self.db["res.partner"] if p["id"] == pid)

    def notifications(self, message_db_id: int) -> list[dict[str, Any]]:
        return [n for n in self.db["mail.notification"] if _m2o(n["mail_message_id"]) == message_db_id]

    # -- ORM methods over RPC ----------------------------------------------------------------------------------

    def create(self, vals_list: Any) -> Any:
        single = isinstance(vals_list, dict)
        ids = []
        for vals in [vals_list] if single else list(vals_list):
            message_id = vals.get("mail_message_id")
            if not any(m["id"] == message_id for m in self.db["mail.message"]):
                raise KeyError(f"Record does not exist or has been deleted. (Record: mail.message({message_id},))")
            if vals.get("notification_status", "ready") not in STATUSES:
                raise ValueError(f"Wrong value for mail.notification.notification_status: "
                                 f"{vals['notification_status']!r}")
            if vals.get("failure_type") and vals["failure_type"] not in FAILURE_TYPES:
                raise ValueError(f"Wrong value for mail.notification.failure_type: {vals['failure_type']!r}")
            unknown = set(vals) - NOTIFICATION_FIELDS
            if unknown:
                raise ValueError(f"Invalid field {sorted(unknown)[0]!r} on model 'mail.notification'")
            partner_id = vals.get("res_partner_id")
            if partner_id and any(_m2o(n["mail_message_id"]) == message_id and _m2o(n["res_partner_id"]) == partner_id
                                  for n in self.db["mail.notification"]):
                raise UniqueViolation('duplicate key value violates unique constraint '
                                      '"mail_notification__unique_mail_message_id_res_partner_id_"')
            if vals.get("notification_type") == "email" and not (partner_id or vals.get("failure_type")
                                                                 or vals.get("mail_email_address")):
                raise UniqueViolation('new row violates check constraint '
                                      '"mail_notification__notification_partner_or_email_required"')
            nid = next(self.next_id)
            row = {"id": nid, "notification_type": "inbox", "notification_status": "ready", "failure_type": False,
                   "failure_reason": False, "mail_email_address": False, "is_read": False, "mail_mail_id": False,
                   "author_id": False, **vals}
            row["mail_message_id"] = [message_id, "message"]
            row["res_partner_id"] = [partner_id, self.partner(partner_id)["name"]] if partner_id else False
            if vals.get("author_id"):
                row["author_id"] = [vals["author_id"], "author"]
            self.db["mail.notification"].append(row)
            ids.append(nid)
        return ids[0] if single else ids

    def write(self, ids: list[int], vals: dict[str, Any]) -> bool:
        rows = [n for n in self.db["mail.notification"] if n["id"] in ids]
        if any(_m2o(n["res_partner_id"]) != self.user_partner_id for n in rows):
            raise AccessDenied("Uh-oh! Looks like you have stumbled upon some top-secret records.\n\nSorry, Mail "
                               "Gateway (id=7) doesn't have 'write' access to:\n- Notification "
                               "(mail.notification)\n\nBlame the following rules:\n- mail.notifications: "
                               "group_user: write its own entries")
        for row in rows:
            row.update(vals)
        return True

    def unlink(self, ids: list[int]) -> bool:
        self.db["mail.notification"] = [n for n in self.db["mail.notification"] if n["id"] not in ids]
        return True

    # -- a bounce through message_process ----------------------------------------------------------------------

    def handle_bounce(self, msg: email.message.EmailMessage, records: dict[str, dict[int, dict[str, Any]]]) -> None:
        """_message_parse_extract_bounce + _routing_handle_bounce (see the module docstring)."""
        parts = list(msg.walk())
        original = next((p for p in parts if p.get_content_type() in ("message/rfc822", "text/rfc822-headers")),
                        None)
        if original is None:
            original = next((p for p in parts if p.get_content_type() == "multipart/report"), None)
        dsn = next((p for p in parts if p.get_content_type() == "message/delivery-status"), None)
        bounced_email = ""
        if dsn is not None:
            blocks = dsn.get_payload()
            if isinstance(blocks, list) and len(blocks) > 1:
                final = str(blocks[1].get("Final-Recipient") or "")
                if ";" in final:
                    bounced_email = email_normalize(final.split(";", 1)[1].strip())
        partners = [p for p in self.db["res.partner"] if bounced_email and p["email_normalized"] == bounced_email]
        message = self._bounced_message(original)
        if message is not None and not partners:
            notified = {_m2o(n["res_partner_id"]) for n in self.notifications(message["id"])} - {False}
            if len(notified) == 1:
                partners = [self.partner(notified.pop())]
                bounced_email = bounced_email or partners[0]["email_normalized"]
        if not bounced_email:
            return
        for partner in partners:
            partner["message_bounce"] += 1
        if message is not None:
            record = records.get(message["model"], {}).get(message["res_id"])
            if record is not None:
                record["message_bounce"] = record.get("message_bounce", 0) + 1
            pids = {p["id"] for p in partners}
            body = _first_text(msg)
            for n in self.notifications(message["id"]):
                if _m2o(n["res_partner_id"]) in pids or n.get("mail_email_address") == bounced_email:
                    n.update(notification_status="bounce", failure_type="mail_bounce", failure_reason=body)

    def _bounced_message(self, original: email.message.Message | None) -> dict[str, Any] | None:
        if original is None:
            return None
        if original.get_content_type() == "text/rfc822-headers":
            payload = original.get_payload(decode=True) or b""
            inner: email.message.Message = email.message_from_bytes(bytes(payload), policy=email.policy.compat32)
        elif original.get_content_type() == "message/rfc822":
            inner = original.get_payload()[0]
        else:
            inner = original
        ids = _MSGID.findall(str(inner.get("Message-Id") or "") + str(inner.get("X-Microsoft-Original-Message-ID")
                                                                       or ""))
        found = [m for m in self.db["mail.message"] if m["message_id"] in ids]
        return max(found, key=lambda m: m["id"]) if found else None


def _m2o(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def _first_text(msg: email.message.EmailMessage) -> str:
    """Odoo keeps only the first body part of a bounce, and stores html2plaintext of it as the reason."""
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True) or b""
            return bytes(payload).decode(part.get_content_charset() or "utf-8", "replace").strip()
    return ""
