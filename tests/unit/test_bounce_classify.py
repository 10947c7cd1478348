"""bounce.classify on its own: SMTP replies the outbound worker sees, and the kind of each reason."""

from __future__ import annotations

import pytest

from bounce import classify as cls
from bounce import phrases


@pytest.mark.parametrize(("status", "reply", "text", "command", "reason", "kind"), [
    ("5.1.1", "550", "550 5.1.1 <a@b.example>: Recipient address rejected: User unknown in local recipient "
     "table", "RCPT", "userunknown", "hard"),
    ("5.2.2", "552", "552 5.2.2 Mailbox full", "", "mailboxfull", "soft"),
    ("5.1.1", "550", "550 5.1.1 <a@b>: mailbox is full", "RCPT", "mailboxfull", "soft"),
    ("5.7.26", "550", "550-5.7.26 Unauthenticated email from example.jp is not accepted due to domain's "
     "DMARC policy", "DATA", "authfailure", "policy"),
    ("5.7.1", "550", "550 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.spamhaus.org",
     "RCPT", "blocked", "policy"),
    ("5.7.1", "554", "554 5.7.1 This message has been scored as spam", "DATA", "spamdetected", "policy"),
    ("5.1.2", "550", "Host or domain name not found. Name service error for name=x.example type=A",
     "", "hostunknown", "hard"),
    ("4.4.1", "", "connect to mx.example.org[192.0.2.9]:25: Connection timed out", "", "expired", "soft"),
    ("4.2.2", "452", "452 4.2.2 Over quota", "RCPT", "mailboxfull", "soft"),
    ("5.1.6", "550", "550 5.1.6 Recipient address has moved", "RCPT", "hasmoved", "hard"),
    ("", "550", "550 Relaying denied", "RCPT", "norelaying", "policy"),
    ("5.7.25", "550", "550 5.7.25 Reverse DNS validation failed", "MAIL", "requireptr", "policy"),
    ("5.3.4", "552", "552 5.3.4 Message size exceeds fixed limit", "DATA", "mesgtoobig", "policy"),
    ("5.2.1", "550", "550 5.2.1 The email account that you tried to reach is disabled", "RCPT", "suspend",
     "soft"),
    ("", "", "", "", "undefined", "soft"),
    ("5.0.0", "", "", "", "onhold", "soft"),
    ("2.0.0", "250", "250 2.0.0 OK", "", "delivered", "none"),
    # Replies of the big providers, as they write them.
    ("5.1.10", "550", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     "", "userunknown", "hard"),
    ("5.4.1", "550", "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", "", "userunknown",
     "hard"),
    ("5.7.515", "550", "550 5.7.515 Access denied, sending domain example.com doesn't meet the required "
     "authentication level.", "", "authfailure", "policy"),
    ("5.7.606", "550", "550 5.7.606 Access denied, banned sending IP [192.0.2.1]", "", "blocked", "policy"),
    ("5.7.1", "550", "550-5.7.1 [192.0.2.1] Our system has detected that this message is likely unsolicited "
     "mail.", "", "spamdetected", "policy"),
    ("4.2.2", "452", "452-4.2.2 The email account that you tried to reach is over quota.", "", "mailboxfull",
     "soft"),
    ("5.7.9", "554", "554 5.7.9 Message not accepted for policy reasons.", "", "policyviolation", "policy"),
])
def test_reasons(status: str, reply: str, text: str, command: str, reason: str, kind: str) -> None:
    assert cls.classify(status, reply, text, command=command) == (reason, kind)


def test_user_unknown_after_data_is_a_content_filter() -> None:
    # Some providers answer "User unknown" to mail their filters refuse, after DATA.
    assert cls.classify("", "550", "550 User unknown", command="DATA")[0] == "filtered"
    assert cls.classify("", "550", "550 User unknown", command="RCPT")[0] == "userunknown"


def test_a_temporary_failure_never_kills_an_address() -> None:
    reason, kind = cls.classify("4.1.1", "450", "450 4.1.1 user unknown (try later)", command="RCPT")
    assert kind != "hard"
    assert not cls.is_hard("userunknown", "4.1.1")
    assert cls.is_hard("userunknown", "5.1.1") and cls.is_hard("notaccept", "5.0.932")
    for reason in ("authfailure", "blocked", "spamdetected", "mailboxfull", "filtered"):
        assert not cls.is_hard(reason, "5.7.1")


def test_provider_rules_need_their_host() -> None:
    text = "550 Unknown user kijitora@example.jp"
    assert cls.classify("5.0.0", "550", text, host="mfsmax.docomo.ne.jp")[0] == "rejected"
    assert cls.classify("5.0.0", "550", text, host="mx.example.org")[0] != "rejected"


def test_addresses_and_links_in_the_text_are_not_read_as_words() -> None:
    text = "550 5.7.25 <blocked@example.net>: Reverse DNS validation failed, see https://x.example/#spam"
    assert cls.classify("5.7.25", "550", text, command="RCPT")[0] == "requireptr"


def test_preset_reasons_from_format_parsers_win() -> None:
    assert cls.classify("", "", "Your post was refused", preset="rejected") == ("rejected", "policy")


@pytest.mark.parametrize(("text", "expected"), [
    ("550 5.1.1 <a@b>... User unknown", "5.1.1"),
    ("550-5.7.1 [192.0.2.1 5.2.2] more 550 5.7.1 text", "5.7.1"),
    ("host 192.0.2.22 said 554", ""),
    ("smtp; 550 5.0.0 x then 5.2.2", "5.2.2"),
    ("version 5.1.1 of the agent v5.1.1", "5.1.1"),
    ("Remote host said: 421 4.4.7 then 4.2.0", "4.2.0"),
])
def test_find_status(text: str, expected: str) -> None:
    assert cls.find_status(text) == expected


def test_find_reply_code_prefers_the_class_of_the_status() -> None:
    assert cls.find_reply_code("421 then 550", "5") == "550"
    assert cls.find_reply_code("id 12550 at 192.0.2.250", "") == ""
    assert cls.find_reply_code("said: 553 5.1.1 unknown", "") == "553"


def test_prefer_status() -> None:
    assert cls.prefer_status("5.0.0", "5.1.1", "550") == "5.1.1"
    assert cls.prefer_status("5.1.1", "5.0.0", "550") == "5.1.1"
    assert cls.prefer_status("4.4.7", "4.2.2", "") == "4.2.2"
    assert cls.prefer_status("5.2.2", "4.2.2", "552") == "5.2.2"
    assert cls.prefer_status("", "5.7.1", "") == "5.7.1"


def test_pseudo_status_codes() -> None:
    assert cls.pseudo_status("userunknown", False) == "5.0.911"
    assert cls.pseudo_status("userunknown", True) == "5.0.911"
    assert cls.pseudo_status("expired", True) == "4.0.947"
    assert cls.pseudo_status("filtered", True) == "4.0.924"
    assert cls.pseudo_status("vacation", False) == ""


def test_every_reason_has_a_kind() -> None:
    for reason in cls.REASONS:
        assert cls.kind_of(reason, "5.0.0") in ("hard", "soft", "policy", "none")
    assert {r for r in cls.REASONS if cls.kind_of(r, "5.0.0") == "hard"} == set(cls.HARD_REASONS)


def test_anchor_extraction() -> None:
    assert phrases.anchor(r"over ?quota") == "quota"
    assert phrases.anchor(r"quota (?:exceeded|full)") == "quota "
    assert phrases.anchor(r"(?:a|b) c") is None
    assert phrases.anchor(r"x|y") is None
    assert phrases.anchor(r"5\.7\.1") == "5.7.1"
    assert phrases.anchor(r"spam(?!haus)") == "spam"
    assert phrases.anchor(r"\bdkim\b.{0,40}fail") == "dkim"
    assert phrases.anchor(r"too many hops?") == "too many hop"


def test_anchored_phrases_still_match_what_they_matched() -> None:
    # The anchor is only a shortcut: every phrase finds the same texts with and without it.
    samples = ["550 5.2.2 mailbox is full", "over quota", "user unknown", "no such user here",
               "relay access denied", "spf check failed", "message too large", "host not found",
               "connection timed out", "blocked using spamhaus", "reverse dns failed", "too many hops"]
    for table in phrases.TEXT.values():
        for anchor, pattern in table.anchored:
            for text in samples:
                if pattern.search(text):
                    assert anchor in text, (anchor, pattern.pattern, text)


def test_a_block_of_one_sender_is_not_a_domain_that_takes_no_mail() -> None:
    assert cls.classify("", "550", "550 they are not accepting mail from x@example.com", command="RCPT")[1] != "hard"
    assert cls.classify("", "550", "550 this domain does not accept mail", command="RCPT") == ("notaccept", "hard")


def test_delayed_and_temporary_never_hard() -> None:
    assert cls.classify("5.1.1", "550", "550 5.1.1 user unknown", command="RCPT", action="delayed")[1] != "hard"
    assert cls.classify("", "450", "450 user unknown", command="RCPT")[1] != "hard"
    assert not cls.is_hard("userunknown", "5.0.911", "", "450")


@pytest.mark.parametrize(("status", "reply", "text", "command", "reason"), [
    # Gmail's SMTP error reference.
    ("5.2.2", "552", "552-5.2.2 The recipient's inbox is out of storage space.", "RCPT", "mailboxfull"),
    ("4.2.1", "450", "450-4.2.1 The user you are trying to contact is receiving mail too quickly.", "RCPT",
     "speeding"),
    ("5.7.26", "550", "550-5.7.26 This mail has been blocked because the sender is unauthenticated.", "DATA",
     "authfailure"),
    ("5.7.1", "550", "550-5.7.1 The user or domain that you are sending to (or from) has a policy that "
     "prohibited the mail that you sent.", "DATA", "policyviolation"),
    ("5.7.1", "550", "550-5.7.1 Messages missing a valid Message-ID header are not accepted.", "DATA",
     "notcompliantrfc"),
    # Microsoft 365's non-delivery report codes.
    ("5.7.1", "550", "550 5.7.1 Delivery not authorized, message refused", "RCPT", "rejected"),
    ("5.7.509", "550", "550 5.7.509 Access denied, sending domain example.com does not pass DMARC verification",
     "DATA", "authfailure"),
    ("5.4.14", "554", "554 5.4.14 Hop count exceeded - possible mail loop", "", "networkerror"),
    # Yahoo's and Apple's published replies.
    ("4.7.0", "421", "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or "
     "user complaints", "CONN", "badreputation"),
    ("5.7.1", "553", "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in "
     "Spamhaus's list", "", "blocked"),
    ("5.7.1", "554", "554 5.7.1 [HM08] Message rejected due to local policy", "DATA", "policyviolation"),
])
def test_providers_published_replies(status: str, reply: str, text: str, command: str, reason: str) -> None:
    assert cls.classify(status, reply, text, command=command)[0] == reason
