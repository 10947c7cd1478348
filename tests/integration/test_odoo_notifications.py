"""Writing a delivery failure on Odoo's notification (gateway/odoo/notifications.py) against the stand-in, which
keeps Odoo 19's notification rules: no write on others' rows, one row per message and partner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.odoo.client import OdooClient
from gateway.odoo.notifications import DeliveryFailure, report_delivery_failure
from tests.odoo_standin import OdooStandin, odoo_instance_config

MID = "<1.2-openerp-5-crm.lead@odoo>"


@pytest.fixture(params=["xmlrpc", "json2"])
async def client(odoo_standin: OdooStandin, tmp_path: Path, request: pytest.FixtureRequest
                 ) -> AsyncIterator[OdooClient]:
    cfg = parse_config({"odoo": [odoo_instance_config(odoo_standin, tmp_path, api=request.param)]})
    c = OdooClient(cfg.odoo[0])
    await c.start()
    yield c
    await c.close()


def failure(recipient: str, reason: str = "550 5.7.1 DMARC (mailgw queue id Q1)") -> DeliveryFailure:
    return DeliveryFailure(MID, recipient, reason, "unknown")


async def test_the_sent_notification_is_replaced_by_a_failed_one(client: OdooClient,
                                                                 odoo_standin: OdooStandin) -> None:
    msg = odoo_standin.add_message(MID, "crm.lead", 5)
    ann = odoo_standin.add_partner("Ann", "Ann@Example.org")
    bob = odoo_standin.add_partner("Bob", "bob@example.org")
    odoo_standin.add_notification(msg, ann, author_id=3)
    bob_note = odoo_standin.add_notification(msg, bob)
    assert await report_delivery_failure(client, failure("ann@example.org")) == "marked"
    notes = {n["res_partner_id"][0]: n for n in odoo_standin.notifications(msg)}
    assert notes[ann]["notification_status"] == "exception" and notes[ann]["failure_type"] == "unknown"
    assert notes[ann]["failure_reason"] == "550 5.7.1 DMARC (mailgw queue id Q1)"
    assert notes[ann]["author_id"][0] == 3 and notes[ann]["notification_type"] == "email"
    assert notes[bob]["id"] == bob_note and notes[bob]["notification_status"] == "sent"  # only the recipient's
    assert odoo_standin.partner_bounces(ann) == 0
    # idempotent: the same report again changes nothing
    assert await report_delivery_failure(client, failure("ann@example.org")) == "already"
    assert len(odoo_standin.notifications(msg)) == 2


async def test_odoo_refuses_the_direct_write_and_a_second_row(client: OdooClient, odoo_standin: OdooStandin) -> None:
    """Why the gateway deletes and creates: the stand-in answers as Odoo 19 does."""
    from gateway.errors import GatewayError

    msg = odoo_standin.add_message(MID, "crm.lead", 5)
    ann = odoo_standin.add_partner("Ann", "ann@example.org")
    note = odoo_standin.add_notification(msg, ann)
    with pytest.raises(GatewayError, match="write"):
        await client.call("mail.notification", "write", [[note], {"notification_status": "exception"}],
                          names=("ids", "vals"))
    with pytest.raises(GatewayError, match="unique"):
        await client.call("mail.notification", "create", [[{"mail_message_id": msg, "res_partner_id": ann,
                                                            "notification_type": "email"}]], names=("vals_list",))


async def test_a_report_interrupted_after_the_delete_is_completed_on_retry(client: OdooClient,
                                                                           odoo_standin: OdooStandin) -> None:
    msg = odoo_standin.add_message(MID, "crm.lead", 5)
    ann = odoo_standin.add_partner("Ann", "ann@example.org")
    note = odoo_standin.add_notification(msg, ann)
    await client.call("mail.notification", "unlink", [[note]], names=("ids",))  # the first call went through
    assert await report_delivery_failure(client, failure("ann@example.org")) == "marked"
    [row] = odoo_standin.notifications(msg)
    assert row["res_partner_id"][0] == ann and row["notification_status"] == "exception"


async def test_bounced_inbox_only_and_unknown_are_left_alone(client: OdooClient, odoo_standin: OdooStandin) -> None:
    msg = odoo_standin.add_message(MID, "crm.lead", 5)
    ann = odoo_standin.add_partner("Ann", "ann@example.org")
    odoo_standin.add_notification(msg, ann, status="bounce")
    user = odoo_standin.add_partner("Internal User", "user@example.com")
    with odoo_standin.lock:
        inbox = odoo_standin.mail.add_notification(msg, user)
        next(n for n in odoo_standin.db["mail.notification"] if n["id"] == inbox)["notification_type"] = "inbox"
    assert await report_delivery_failure(client, failure("ann@example.org")) == "bounced"
    assert await report_delivery_failure(client, failure("user@example.com")) == "already"
    assert [n["notification_status"] for n in odoo_standin.notifications(msg)] == ["bounce", "sent"]
    assert await report_delivery_failure(client, DeliveryFailure("<nope@x>", "ann@example.org", "x", "unknown")
                                         ) == "no_message"
    assert await report_delivery_failure(client, failure("stranger@example.net")) == "no_notification"


async def test_an_address_without_partner(client: OdooClient, odoo_standin: OdooStandin) -> None:
    """Odoo 19 keeps notifications of bare addresses (mail_email_address, no partner)."""
    msg = odoo_standin.add_message(MID, "crm.lead", 5)
    odoo_standin.add_notification(msg, None, address="lead@example.net")
    assert await report_delivery_failure(client, failure("Lead@Example.NET")) == "marked"
    [row] = odoo_standin.notifications(msg)
    assert (row["mail_email_address"], row["notification_status"]) == ("lead@example.net", "exception")
