"""bounce.dsn: reading reports (RFC 3464 and human-written), auto-replies, feedback reports, and writing
DSNs that Odoo 17+ recognises (docs/odoo.md §10.6)."""

from __future__ import annotations

import email
import json
from email import policy

import pytest

from bounce import dsn, verp
from bounce.dsn import build_dsn, parse
from bounce.rfc3464 import parse_delivery_status

ORIGINAL = {
    "Message-Id": "<123456789012345.1718000000.000000000000000-openerp-7-crm.lead@odoo.example.com>",
    "From": '"Sales" <sales@example.com>',
    "To": "customer@example.net",
    "Subject": "Your quotation",
    "X-Odoo-Objects": "crm.lead-7",
}


def _dsn(**kw: object) -> bytes:
    args: dict[str, object] = {
        "reporting_mta": "gw.example.com", "from_addr": "MAILER-DAEMON@gw.example.com",
        "to_addr": "bounce@example.com", "original_headers": ORIGINAL,
        "recipients": [("customer@example.net", "failed", "5.1.1",
                        "550 5.1.1 <customer@example.net>: Recipient address rejected: User unknown")],
        "message_id": "<dsn-1@gw.example.com>", "human_text": "Your message could not be delivered.",
    }
    args.update(kw)
    return build_dsn(**args)  # type: ignore[arg-type]


def test_build_dsn_is_what_odoo_reads() -> None:
    """Odoo's _message_parse_extract_bounce, done with the stdlib the way Odoo does it."""
    raw = _dsn()
    assert b"\r\n" in raw and b"\n\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw, policy=policy.SMTP)
    assert msg["To"] == "bounce@example.com"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    ds = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status")
    blocks = ds.get_payload()
    assert len(blocks) == 2, "per-message block, then the per-recipient block"
    second = blocks[1]
    assert second["Final-Recipient"].split(";", 1)[1].strip() == "customer@example.net"
    assert second["Action"] == "failed" and second["Status"] == "5.1.1"
    assert "User unknown" in second["Diagnostic-Code"]
    headers_part = next(p for p in msg.walk() if p.get_content_type() == "text/rfc822-headers")
    returned = email.message_from_string(headers_part.get_payload(), policy=policy.SMTP)
    assert returned["Message-Id"] == ORIGINAL["Message-Id"]


def test_build_dsn_reads_back() -> None:
    report = parse(_dsn())
    assert report.is_bounce
    assert report.original_message_id == ORIGINAL["Message-Id"]
    assert report.original_headers is not None and report.original_headers["X-Odoo-Objects"] == "crm.lead-7"
    assert report.reporting_mta == "gw.example.com"
    (r,) = report.recipients
    assert (r.address, r.status, r.reply_code, r.reason, r.hard, r.kind) == (
        "customer@example.net", "5.1.1", "550", "userunknown", True, "hard")


def test_build_dsn_with_several_recipients_and_raw_headers() -> None:
    raw = _dsn(original_headers=b"Message-Id: <m@x>\r\nSubject: hi\r\n\r\nbody\r\n",
               recipients=[("a@x.example", "failed", "5.2.2", "552 5.2.2 Mailbox full"),
                           ("b@x.example", "delayed", "4.4.1", "connection timed out")],
               to_addr="someone@elsewhere.example")
    report = parse(raw)
    assert report.original_message_id == "<m@x>"
    assert [(r.address, r.reason, r.action) for r in report.recipients] == [
        ("a@x.example", "mailboxfull", "failed"), ("b@x.example", "expired", "delayed")]
    assert b"body" not in raw  # headers only go back


def test_build_dsn_keeps_header_injection_out() -> None:
    raw = _dsn(recipients=[("a@x.example", "failed", "5.0.0", "evil\r\nBcc: victim@x.example")],
               to_addr="x@y.example\r\nBcc: victim@x.example")
    msg = email.message_from_bytes(raw)
    assert msg["Bcc"] is None
    assert b"\r\nBcc:" not in raw


def test_delivery_status_blocks() -> None:
    per_message, blocks = parse_delivery_status(
        "Reporting-MTA: dns; mx.example\nArrival-Date: now\n\n"
        "Final-Recipient: rfc822; a@x.example\nOriginal-Recipient: rfc822;A@x.example\nAction: failed\n"
        "Status: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 unknown\n  user\n"
        "Final-Recipient: rfc822; b@x.example\nAction: delayed\nStatus: 4.4.1\n")
    assert per_message["reporting-mta"] == "dns; mx.example"
    assert [b["final-recipient"] for b in blocks] == ["rfc822; a@x.example", "rfc822; b@x.example"]
    assert blocks[0]["diagnostic-code"] == "smtp; 550 5.1.1 unknown user"
    assert blocks[0]["original-recipient"] == "rfc822;A@x.example"


def test_human_written_bounce() -> None:
    raw = (b"From: MAILER-DAEMON@mx.example.org\r\nTo: sender@example.com\r\nSubject: failure notice\r\n\r\n"
           b"Hi. This is the qmail-send program at mx.example.org.\r\n"
           b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n\r\n"
           b"<nobody@example.net>:\r\n192.0.2.1 does not like recipient.\r\n"
           b"Remote host said: 550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown\r\n"
           b"Giving up on 192.0.2.1.\r\n\r\n--- Below this line is a copy of the message.\r\n\r\n"
           b"Message-ID: <orig@example.com>\r\nFrom: sender@example.com\r\nTo: nobody@example.net\r\n\r\nhi\r\n")
    report = parse(raw)
    assert report.is_bounce and report.original_message_id == "<orig@example.com>"
    (r,) = report.recipients
    assert (r.address, r.status, r.reply_code, r.reason, r.hard) == (
        "nobody@example.net", "5.1.1", "550", "userunknown", True)


def test_microsoft_original_message_id() -> None:
    raw = _dsn(original_headers={"X-Microsoft-Original-Message-ID": "<ms@x>", "Subject": "s"})
    assert parse(raw).original_message_id == "<ms@x>"


def test_auto_reply_is_not_a_bounce() -> None:
    raw = (b"From: Kijitora <kijitora@example.org>\nTo: sales@example.com\nSubject: Automatic reply: offer\n"
           b"Auto-Submitted: auto-replied\nMessage-ID: <ar@x>\n\nI am out of the office until Monday.\n")
    report = parse(raw)
    assert report.is_auto_reply and not report.is_bounce
    assert [(r.address, r.reason, r.hard, r.kind) for r in report.recipients] == [
        ("kijitora@example.org", "vacation", False, "none")]


def test_feedback_report_is_not_a_bounce() -> None:
    raw = (b"From: fbl@isp.example\nTo: abuse@example.com\nSubject: complaint\nMIME-Version: 1.0\n"
           b"Content-Type: multipart/report; report-type=feedback-report; boundary=b\n\n"
           b"--b\nContent-Type: text/plain\n\nA complaint.\n"
           b"--b\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\nUser-Agent: x/1\nVersion: 1\n"
           b"Original-Rcpt-To: angry@isp.example\n"
           b"--b\nContent-Type: message/rfc822\n\nMessage-Id: <news@example.com>\nFrom: news@example.com\n\nhi\n"
           b"--b--\n")
    report = parse(raw)
    assert report.is_feedback and not report.is_bounce and report.feedback_type == "abuse"
    assert report.original_message_id == "<news@example.com>"
    assert [(r.address, r.reason, r.hard) for r in report.recipients] == [("angry@isp.example", "feedback",
                                                                           False)]


def test_ordinary_mail_is_nothing() -> None:
    raw = (b"From: friend@example.org\nTo: me@example.com\nSubject: lunch?\nMessage-ID: <l@x>\n\n"
           b"Are you free? Write to lunch@example.org.\n")
    report = parse(raw)
    assert not (report.is_bounce or report.is_auto_reply or report.is_feedback)
    assert report.recipients == ()


def test_successful_delivery_report_is_not_a_bounce() -> None:
    report = parse(_dsn(recipients=[("ok@x.example", "delivered", "2.0.0", "250 2.0.0 OK")]))
    assert not report.is_bounce
    assert [(r.reason, r.kind) for r in report.recipients] == [("delivered", "none")]


def test_verp_token_of_the_address_the_bounce_came_back_to() -> None:
    secret = b"k"
    address = verp.encode("bounce", "example.com", "01HZX3K9V7Q2M8R4T6W0Y5B1CD", 2, secret)
    raw = b"Delivered-To: " + address.lower().encode() + b"\r\n" + _dsn()
    report = parse(raw, verp_secret=secret)
    assert report.verp == verp.VerpToken("01HZX3K9V7Q2M8R4T6W0Y5B1CD", 2, True)
    assert report.to_dict()["verp"] == {"queue_id": "01HZX3K9V7Q2M8R4T6W0Y5B1CD", "rcpt_index": 2,
                                        "valid": True}
    assert parse(raw).verp == verp.VerpToken("01HZX3K9V7Q2M8R4T6W0Y5B1CD", 2, False)


def test_to_dict_shape() -> None:
    out = parse(_dsn()).to_dict()
    json.dumps(out)
    assert list(out) == ["is_bounce", "is_auto_reply", "is_feedback", "original_message_id", "verp",
                         "recipients"]
    assert list(out["recipients"][0]) == ["address", "action", "status", "reply_code", "reason", "hard"]


def test_never_raises_even_if_the_implementation_does(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(raw: bytes, secret: bytes | None) -> dsn.BounceReport:
        raise ZeroDivisionError

    monkeypatch.setattr(dsn, "_parse", broken)
    assert parse(b"x") == dsn.NOT_A_BOUNCE


def test_delivery_status_with_a_blank_line_after_every_field() -> None:
    """IIS's SMTP service separates every field with a blank line: the blocks are still per recipient."""
    _, blocks = parse_delivery_status(
        "Reporting-MTA: dns;mail.example.net\n\nArrival-Date: now\n\n\n"
        "Final-Recipient: rfc822;a@x.example\n\nAction: failed\n\nStatus: 5.1.1\n\n\n"
        "Final-Recipient: rfc822;b@x.example\n\nAction: failed\n\nStatus: 5.2.2\n")
    assert [(b["final-recipient"], b["action"], b["status"]) for b in blocks] == [
        ("rfc822;a@x.example", "failed", "5.1.1"), ("rfc822;b@x.example", "failed", "5.2.2")]


def test_broken_xdelivery_status_type_is_read_as_delivery_status() -> None:
    raw = _dsn().replace(b"Content-Type: message/delivery-status", b"Content-Type: message/xdelivery-status")
    (r,) = parse(raw).recipients
    assert (r.address, r.status, r.reason) == ("customer@example.net", "5.1.1", "userunknown")
