"""What MTAs and providers write in their replies, and the reason each means.

The replies are the standard texts of the MTAs (Postfix, Exim, sendmail, qmail), RFC 5321's reply texts
and the providers' published SMTP error references (Google, Microsoft 365 / Exchange Online, Yahoo, Apple
iCloud Mail), with example addresses. The status is the one the reply carries (or, as in a bounce, the
one written in its text); `host` is the remote MTA when the meaning is the provider's own.
"""

from __future__ import annotations

import pytest

from bounce import classify as cls

REPLIES = [
    # Postfix standard texts.
    ("5.1.1", "550", "550 5.1.1 <a@b.example>: Recipient address rejected: User unknown in virtual mailbox "
     "table", "RCPT", "", "userunknown"),
    ("5.1.1", "550", "550 5.1.1 <a@b.example>: Recipient address rejected: User unknown in relay recipient "
     "table", "RCPT", "", "userunknown"),
    ("5.7.1", "554", "554 5.7.1 <a@b.example>: Relay access denied", "RCPT", "", "norelaying"),
    ("4.7.1", "450", "450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]",
     "RCPT", "", "requireptr"),
    ("5.7.1", "550", "550 5.7.1 Client host rejected: cannot find your reverse hostname, [192.0.2.1]",
     "RCPT", "", "requireptr"),
    ("5.5.2", "504", "504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname",
     "RCPT", "", "blocked"),
    ("4.1.8", "450", "450 4.1.8 <s@x.example>: Sender address rejected: Domain not found", "RCPT", "", "rejected"),
    ("5.1.2", "550", "550 5.1.2 <a@nowhere.example>: Recipient address rejected: Domain not found",
     "RCPT", "", "hostunknown"),
    ("5.7.1", "554", "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
     "RCPT", "", "blocked"),
    ("5.3.4", "552", "552 5.3.4 Message size exceeds fixed limit", "DATA", "", "mesgtoobig"),
    ("4.4.1", "", "connect to mx.example.org[192.0.2.1]:25: Connection refused", "", "", "expired"),
    ("5.4.4", "", "Host or domain name not found. Name service error for name=example.invalid type=MX: Host "
     "not found", "", "", "hostunknown"),
    ("4.4.2", "", "conversation with mx.example.org[192.0.2.1] timed out while receiving the initial server "
     "greeting", "", "", "expired"),
    ("4.4.2", "", "lost connection with mx.example.org[192.0.2.1] while receiving the initial server "
     "greeting", "", "", "networkerror"),
    ("5.4.6", "", "mail for example.org loops back to myself", "", "", "networkerror"),
    ("4.2.0", "450", "450 4.2.0 <a@b.example>: Recipient address rejected: Greylisted, see "
     "http://postgrey.schweikert.ch/", "RCPT", "", "blocked"),
    ("5.7.1", "554", "554 5.7.1 <a@b.example>: Recipient address rejected: Access denied", "RCPT", "", "userunknown"),
    ("4.3.5", "451", "451 4.3.5 Server configuration problem", "RCPT", "", "systemerror"),
    ("5.0.0", "550", "550 5.0.0 <a@b.example>: Recipient address rejected: undeliverable address: host "
     "mx.example.org[192.0.2.1] said: 550 5.1.1 User unknown", "RCPT", "", "userunknown"),
    # Exim.
    ("", "550", "Unrouteable address", "", "", "hostunknown"),
    ("", "", "all relevant MX records point to non-existent hosts", "", "", "hostunknown"),
    ("", "", "retry timeout exceeded", "", "", "expired"),
    ("", "550", "SMTP error from remote mail server after RCPT TO:<a@b.example>: 550 Sender verify failed",
     "RCPT", "", "rejected"),
    ("", "550", "SMTP error from remote mail server after end of data: 550 rejected: message contains a "
     "virus", "DATA", "", "virusdetected"),
    ("", "", "malformed address: a@b.example@ may not follow a@b.example", "", "", "syntaxerror"),
    ("", "", "Too many \"Received\" headers - suspected mail loop", "", "", "networkerror"),
    ("", "550", "SMTP error from remote mail server after RCPT TO:<a@b.example>: 550 5.2.2 Mailbox quota "
     "exceeded", "RCPT", "", "mailboxfull"),
    ("", "", "Unknown user", "RCPT", "", "userunknown"),
    # sendmail.
    ("5.1.2", "550", "550 5.1.2 a@nowhere.example... Host unknown (Name server: nowhere.example: host not "
     "found)", "RCPT", "", "hostunknown"),
    ("5.2.2", "552", "552 5.2.2 <a@b.example>... Mailbox full", "RCPT", "", "mailboxfull"),
    ("5.7.1", "550", "550 5.7.1 <a@b.example>... Relaying denied. Proper authentication required.",
     "RCPT", "", "norelaying"),
    ("4.4.7", "", "Cannot send message for 5 days", "", "", "expired"),
    ("4.4.3", "", "Name server timeout", "", "", "networkerror"),
    ("5.2.1", "550", "550 5.2.1 <a@b.example>... Mailbox disabled for this recipient", "RCPT", "", "suspend"),
    ("5.3.4", "552", "552 5.3.4 Message size exceeds maximum value", "MAIL", "", "mesgtoobig"),
    ("5.7.1", "550", "550 5.7.1 <s@x.example>... Access denied", "MAIL", "", "rejected"),
    ("4.0.0", "", "Deferred: Connection refused by mx.example.org.", "", "", "blocked"),
    # qmail.
    ("", "", "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)", "", "", "expired"),
    ("", "", "This message is looping: it already has my Delivered-To line. (#5.4.6)", "", "", "networkerror"),
    ("", "", "Sorry, that domain isn't in my list of allowed rcpthosts. (#5.7.1)", "RCPT", "", "norelaying"),
    ("", "", "The users mailfolder is over the allowed quota (size). (#5.2.2)", "", "", "mailboxfull"),
    # Microsoft 365 / Exchange.
    ("5.7.1", "550", "550 5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus. To "
     "request removal from this list see https://www.spamhaus.org/query/ip/192.0.2.1 (AS3130)",
     "RCPT", "", "blocked"),
    ("5.7.708", "550", "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.",
     "CONN", "", "speeding"),
    ("5.2.2", "554", "554 5.2.2 mailbox full; "
     "STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded",
     "DATA", "", "mailboxfull"),
    ("5.7.133", "550", "550 5.7.133 RESOLVER.RST.SenderNotAuthenticatedForGroup; authentication required; "
     "Delivery restriction check failed as sender not authenticated", "RCPT", "", "rejected"),
    ("5.7.129", "550", "550 5.7.129 RESOLVER.RST.RestrictedToRecipientsPermission; not authorized to send to "
     "recipient because the sender isn't on the list of allowed senders", "RCPT", "", "rejected"),
    ("5.4.316", "550", "550 5.4.316 Message expired, connection refused(Socket error code 10061)", "", "", "expired"),
    ("4.4.7", "", "4.4.7 Message delayed", "", "", "expired"),
    ("5.6.211", "550", "550 5.6.211 Invalid MIME Content: Single text value size (32781) exceeded allowed "
     "maximum (32768) for the 'X-Header' header", "DATA", "", "contenterror"),
    ("5.1.8", "550", "550 5.1.8 Access denied, bad outbound sender AS(42002)", "MAIL", "", "rejected"),
    ("5.2.3", "550", "550 5.2.3 RESOLVER.RST.RecipSizeLimit; message too large for this recipient",
     "", "", "exceedlimit"),
    ("5.7.520", "550", "550 5.7.520 Access denied, Your organization does not allow external forwarding.",
     "", "", "policyviolation"),
    ("5.7.57", "530", "530 5.7.57 Client not authenticated to send mail", "MAIL", "", "securityerror"),
    ("5.1.1", "550", "550 5.1.1 RESOLVER.ADR.ExRecipNotFound; not found", "RCPT", "", "userunknown"),
    ("5.2.1", "550", "550 5.2.1 The mailbox is disabled", "RCPT", "", "suspend"),
    ("4.7.650", "451", "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP "
     "reputation.", "MAIL", "", "badreputation"),
    ("5.7.750", "550", "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains.",
     "MAIL", "", "rejected"),
    ("5.4.1", "550", "550 5.4.1 Relay Access Denied", "RCPT", "", "norelaying"),
    # Gmail.
    ("5.1.1", "550", "550-5.1.1 The email account that you tried to reach does not exist. Please try "
     "double-checking the recipient's email address", "RCPT", "gmail-smtp-in.l.google.com", "userunknown"),
    ("5.2.2", "552", "552-5.2.2 The email account that you tried to reach is over quota",
     "RCPT", "gmail-smtp-in.l.google.com", "mailboxfull"),
    ("4.7.0", "421", "421-4.7.0 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail "
     "originating from your IP address.", "CONN", "gmail-smtp-in.l.google.com", "blocked"),
    ("5.3.4", "552", "552-5.3.4 Your message exceeded Google's message size limits.",
     "DATA", "gmail-smtp-in.l.google.com", "mesgtoobig"),
    ("5.7.25", "550", "550-5.7.25 The IP address sending this message does not have a PTR record setup",
     "RCPT", "gmail-smtp-in.l.google.com", "requireptr"),
    ("5.7.1", "550", "550-5.7.1 [192.0.2.1] The IP you're using to send mail is not authorized to send email "
     "directly to our servers. Please use the SMTP relay at your service provider instead.",
     "RCPT", "gmail-smtp-in.l.google.com", "norelaying"),
    ("4.7.28", "421", "421-4.7.28 Gmail has detected an unusual rate of mail originating from your DKIM domain",
     "DATA", "gmail-smtp-in.l.google.com", "blocked"),
    ("5.7.0", "552", "552-5.7.0 This message was blocked because its content presents a potential security "
     "issue.", "DATA", "gmail-smtp-in.l.google.com", "policyviolation"),
    # Yahoo.
    ("", "552", "552 1 Requested mail action aborted, mailbox not found",
     "DATA", "mta5.am0.yahoodns.net", "userunknown"),
    ("", "554", "554 30 Sorry, your message to a@aol.example cannot be delivered. This mailbox is "
     "disabled (554.30)", "RCPT", "mta5.am0.yahoodns.net", "suspend"),
    ("5.2.2", "552", "552 5.2.2 Mailbox full", "RCPT", "mta5.am0.yahoodns.net", "mailboxfull"),
    ("5.7.9", "550", "550 5.7.9 This mail has been blocked because the sender is unauthenticated. Yahoo "
     "requires all senders to authenticate with either SPF or DKIM.", "DATA", "mta5.am0.yahoodns.net", "authfailure"),
    # Apple.
    ("5.1.1", "550", "550 5.1.1 <a@icloud.example>: inactive email address (in reply to RCPT TO command)",
     "RCPT", "mx01.mail.icloud.com", "userunknown"),
    ("5.2.2", "552", "552 5.2.2 <a@icloud.example>: user is over quota (in reply to RCPT TO command)",
     "RCPT", "mx01.mail.icloud.com", "mailboxfull"),
    ("5.1.6", "550", "550 5.1.6 recipient no longer on server: a@icloud.example",
     "RCPT", "mx01.mail.icloud.com", "hasmoved"),
    ("4.7.1", "421", "421 4.7.1 Messages to a@icloud.example deferred due to excessive volume. Try again later",
     "RCPT", "mx01.mail.icloud.com", "speeding"),
    # RFC 5321 bare replies.
    ("", "550", "550 Requested action not taken: mailbox unavailable", "RCPT", "", "userunknown"),
    ("", "551", "551 User not local; please try <a@other.example>", "RCPT", "", "hasmoved"),
    ("", "553", "553 Requested action not taken: mailbox name not allowed", "RCPT", "", "userunknown"),
    ("", "552", "552 Requested mail action aborted: exceeded storage allocation", "RCPT", "", "mailboxfull"),
    ("", "452", "452 Requested action not taken: insufficient system storage", "RCPT", "", "systemfull"),
    ("", "421", "421 mx.example.org Service not available, closing transmission channel", "CONN", "", "blocked"),
    ("", "451", "451 Requested action aborted: local error in processing", "DATA", "", "systemerror"),
    ("", "554", "554 No SMTP service here", "CONN", "", "notaccept"),
    ("", "521", "521 example.org does not accept mail (see RFC 7504)", "CONN", "", "notaccept"),
    ("", "556", "556 5.1.10 Recipient address has null MX", "RCPT", "", "notaccept"),
    ("5.7.27", "550", "550 5.7.27 Sender address has null MX", "MAIL", "", "notaccept"),
    ("5.7.23", "550", "550 5.7.23 SPF validation failed", "MAIL", "", "authfailure"),
    ("4.7.0", "450", "450 4.7.0 Temporary authentication failure", "", "", "securityerror"),
    ("5.5.1", "503", "503 5.5.1 Bad sequence of commands", "DATA", "", "syntaxerror"),
    ("5.6.0", "554", "554 5.6.0 Message contains invalid header", "DATA", "", "contenterror"),
]


@pytest.mark.parametrize(("status", "reply", "text", "command", "host", "reason"), REPLIES)
def test_published_reply(status: str, reply: str, text: str, command: str, host: str, reason: str) -> None:
    status = status or cls.find_status(text)
    got, kind = cls.classify(status, reply, text, command=command, host=host)
    assert got == reason
    if status.startswith("4") or reply.startswith("4"):
        assert kind != "hard"
