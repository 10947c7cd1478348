"""Pure parts of the mailbox intakes: envelope from headers, broken-message rules, FETCH/SEARCH parsing."""

from __future__ import annotations

from gateway.config import Config, parse_config
from gateway.intake.imap import parse_search, uid_set
from gateway.intake.imap_pipeline import ResponseReader, fetch_item
from gateway.intake.mailbox import broken_reason, build_envelope
from gateway.spool import State


def config(**box: object) -> Config:
    mailbox = {"name": "support", "host": "imap.example.com", "user": "support", "password_env": "X", **box}
    return parse_config({
        "odoo": [{"name": "main", "url": "http://odoo", "database": "db", "password_env": "P",
                  "domains": ["example.com"]},
                 {"name": "other", "url": "http://odoo2", "database": "db", "password_env": "P",
                  "domains": ["other.example"]}],
        "imap": [mailbox],
    })


def build(raw: bytes, **box: object):  # type: ignore[no-untyped-def]
    cfg = config(**box)
    return build_envelope(raw, cfg.imap[0], cfg, intake="imap", source={"uid": 1})


def test_recipients_of_ours_in_header_order_and_return_path() -> None:
    raw = (b"Return-Path: <bounce+x@sender.example>\r\nDelivered-To: Support@Example.COM\r\n"
           b'To: "Doe, Jane" <jane@elsewhere.example>, sales@example.com\r\n'
           b"Cc: =?utf-8?q?Team?= <team@other.example>,\r\n\tsales@example.com\r\n"
           b"Message-ID:\r\n <abc@sender.example>\r\n\r\nbody\r\n")
    p = build(raw)
    assert p.state == State.RECEIVED and p.reason is None
    assert p.envelope.mail_from == "bounce+x@sender.example"
    assert p.envelope.rcpt_tos == ("Support@example.com", "sales@example.com", "team@other.example")
    assert p.message_id == "<abc@sender.example>" and not p.message_id_generated
    assert p.envelope.source == {"uid": 1, "mailbox": "support", "rcpt_from": "headers"}


def test_null_and_missing_return_path_give_the_null_sender() -> None:
    assert build(b"Return-Path: <>\r\nTo: a@example.com\r\n\r\nx").envelope.mail_from == ""
    # No Return-Path: never the From header (no backscatter to a forged From).
    assert build(b"From: someone@sender.example\r\nTo: a@example.com\r\n\r\nx").envelope.mail_from == ""


def test_fallback_recipient_then_user_then_cannot_route() -> None:
    raw = b"To: someone@elsewhere.example\r\nSubject: bcc'd to us\r\n\r\nx"
    p = build(raw, recipient="catchall@example.com")
    assert p.envelope.rcpt_tos == ("catchall@example.com",) and p.envelope.source["rcpt_from"] == "recipient"
    p = build(raw, user="support@example.com")
    assert p.envelope.rcpt_tos == ("support@example.com",) and p.envelope.source["rcpt_from"] == "user"
    p = build(raw)  # user "support" is not an address, no recipient
    assert p.state == State.FAILED and p.reason and p.reason.startswith("cannot route")


def test_generated_message_id_is_stable_for_the_same_bytes() -> None:
    raw = b"To: a@example.com\r\nSubject: no id\r\n\r\nbody"
    a, b = build(raw), build(raw)
    assert a.message_id_generated and a.message_id == b.message_id and a.message_id.endswith("@imap.example.com>")
    assert build(raw + b"!").message_id != a.message_id


def test_broken_messages() -> None:
    assert broken_reason(b"") == "empty message"
    assert broken_reason(b"  \r\n") == "empty message"
    assert broken_reason(b"not a header\r\n\r\nbody") is not None
    assert broken_reason(b"Subject: x\r\nX-Bad: a\x00b\r\n\r\nbody") == "NUL byte in the header section"
    assert broken_reason(b"From sender@x Mon Jan  1 00:00:00 2024\r\nSubject: x\r\n\r\nbody") is None
    assert broken_reason(b"Subject: only headers, no body") is None
    p = build(b"garbage\r\n\r\n")
    assert p.state == State.FAILED and p.reason and "no header section" in p.reason


def test_fetch_responses_uid_anywhere_and_unsolicited_updates() -> None:
    stream = (b"* 1 FETCH (UID 10 RFC822.SIZE 5 BODY[] {5}\r\nabcde)\r\n"
              b"* 2 FETCH (FLAGS (\\Seen))\r\n"  # unsolicited flag update: no UID, ignored
              b"* 3 FETCH (BODY[] {3}\r\nxyz UID 12 RFC822.SIZE 3)\r\n"
              b"* 4 FETCH (UID 13 RFC822.SIZE 0 BODY[] {0}\r\n)\r\n"
              b"* 5 FETCH (UID 14 RFC822.SIZE 0 BODY[] \"\")\r\n"
              b"* 6 FETCH (UID 7 RFC822.SIZE 99)\r\n")
    items = [fetch_item(texts, literals) for texts, literals in ResponseReader(100).feed(stream)]
    assert items == [(10, 5, b"abcde"), None, (12, 3, b"xyz"), (13, 0, b""), (14, 0, b""), (7, 99, None)]


def test_parse_search_and_uid_set() -> None:
    assert parse_search([b"4 5 9", b"Search completed"]) == [4, 5, 9]
    assert parse_search([b"", b"Search completed"]) == []
    assert uid_set([3, 1, 2, 10]) == "1:3,10"
