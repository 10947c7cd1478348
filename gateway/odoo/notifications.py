"""A delivery failure shown on the Odoo notification it belongs to, without counting a bounce.

When Odoo sends a mail itself and the SMTP server refuses a recipient, `mail.mail._postprocess_sent_message`
sets that recipient's `mail.notification` to ``notification_status = exception`` with a `failure_type` and the
server's answer as `failure_reason`: the message shows the red envelope, the author sees it among their
failures, and the "Resend" wizard offers to send again. The partner's bounce counter does not move. Once Odoo
hands its mail to mailgw, Odoo has marked it sent; a failure that comes later must be written back.

Odoo 19 offers no public method for that, and the two obvious routes do not do it:
- a DSN through `message_process` always goes through `_routing_handle_bounce`, which increments
  `message_bounce` on every record with that address and marks the notification ``bounce`` — right for a
  dead address (gateway/bounces.py still sends those), wrong for a policy refusal or an expired message;
- writing the notification is refused (AccessError, fault 4 / HTTP 403) even to an administrator: the record
  rule "mail.notifications: group_user: write its own entries" lets a user write only notifications whose
  partner is the user's own.
Odoo's access rules do let an administrator (the gateway's user, docs/odoo.md §1) delete notifications and
create them. So the gateway replaces the recipient's notification: it deletes the row that says ``sent`` and
creates the failed one with the fields Odoo's own send failure writes. In that order: Odoo 19 has a unique index
on (message, partner). Should the second call not happen (Odoo gone in between), the report is retried, finds
the partner without a notification on that message, and creates it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.logs import get_logger
from gateway.odoo.client import OdooClient
from routing.address import normalize_address

log = get_logger("mailgw.odoo")

NOTIFICATION_FIELDS = ["id", "res_partner_id", "author_id", "notification_type", "notification_status",
                       "failure_type", "failure_reason", "is_read"]


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    message_id: str  # the original Message-Id, as Odoo stored it in mail.message.message_id
    recipient: str
    reason: str  # what Odoo shows: the remote server's answer and the gateway's queue id
    failure_type: str  # a mail.notification failure_type value


def failure_type_for(status: str, reason: str) -> str:
    """The `failure_type` Odoo itself would have used for this failure, from the enhanced status code and the
    classifier's reason (bounce/classify.py)."""
    status = status or ""
    if status[1:] in (".1.3", ".6.7") or reason == "syntaxerror":
        return "mail_email_invalid"  # "Invalid email address": the address cannot be used as written
    if (status[1:4] == ".4." and status[1:] != ".4.7") or reason == "networkerror":
        return "mail_smtp"  # "Connection failed (outgoing mail server problem)"
    return "unknown"  # "Unknown error", with the server's answer as the reason, as for any other SMTP refusal


def _id(value: Any) -> Any:
    """A many2one value as Odoo returns it over RPC ([id, name] or False) -> id or False."""
    return value[0] if isinstance(value, list) and value else value


async def report_delivery_failure(client: OdooClient, failure: DeliveryFailure) -> str:
    """Mark the recipient's notification of the message failed. Returns what happened: ``marked``,
    ``already`` (done before), ``bounced`` (Odoo already counts it as a bounce: left alone), ``no_message``
    or ``no_notification`` (nothing in Odoo to mark, e.g. a mass mailing). Odoo errors are raised as by
    `OdooClient.call` (temporary ones make the caller retry)."""
    if client.major_version is None:  # the version decides which fields exist
        await client.version()
    messages = await client.search_read("mail.message", [["message_id", "=", failure.message_id]],
                                        ["id", "author_id"], order="id desc", limit=1)
    if not messages:
        return "no_message"
    message_id = int(messages[0]["id"])
    author = _id(messages[0].get("author_id")) or False
    email = normalize_address(failure.recipient)  # as Odoo computes res.partner.email_normalized
    partners = [int(p["id"]) for p in await client.search_read("res.partner", [["email_normalized", "=", email]],
                                                                 ["id"])]
    domain: list[Any] = [["mail_message_id", "=", message_id]]
    fields = list(NOTIFICATION_FIELDS)
    if (client.major_version or 0) >= 19:  # notifications of plain addresses, without a partner (19.0)
        fields.append("mail_email_address")
        domain += (["|", ["res_partner_id", "in", partners], ["mail_email_address", "=", email]] if partners
                   else [["mail_email_address", "=", email]])
    elif partners:
        domain.append(["res_partner_id", "in", partners])
    else:
        return "no_notification"
    rows = await client.search_read("mail.notification", domain, fields)
    groups: dict[Any, list[dict[str, Any]]] = {pid: [] for pid in partners}  # a partner without a row gets one
    for row in rows:
        groups.setdefault(_id(row.get("res_partner_id")) or row.get("mail_email_address"), []).append(row)
    if not groups:
        return "no_notification"
    create: list[dict[str, Any]] = []
    delete: list[int] = []
    outcome = "already"
    for key, rows_of in groups.items():
        group = [r for r in rows_of if r.get("notification_type") == "email"]
        if rows_of and not group:
            continue  # notified in Odoo only (inbox): no mail went to this partner
        if any(r.get("notification_status") == "bounce" for r in group):
            outcome = "bounced" if outcome == "already" else outcome
            continue
        if any(r.get("notification_status") == "exception" and r.get("failure_reason") == failure.reason
               for r in group):
            continue
        first = group[0] if group else {}
        values: dict[str, Any] = {
            "mail_message_id": message_id, "notification_type": "email", "notification_status": "exception",
            "failure_type": failure.failure_type, "failure_reason": failure.reason,
            "author_id": _id(first.get("author_id")) or author, "is_read": bool(first.get("is_read", True))}
        if isinstance(key, int):
            values["res_partner_id"] = key
        else:
            values["mail_email_address"] = key
        create.append(values)
        delete += [int(r["id"]) for r in group]
    if delete:
        await client.call("mail.notification", "unlink", [delete], names=("ids",))
    if create:
        await client.call("mail.notification", "create", [create], names=("vals_list",))
        outcome = "marked"
    log.info("odoo.delivery_failure", instance=client.name, message_id=failure.message_id,
             recipient=failure.recipient, failure_type=failure.failure_type, outcome=outcome)
    return outcome
