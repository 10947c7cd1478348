"""Reply codes and phrasings of particular providers, from the providers' published error pages.

Some providers write their own codes into the reply text (Orange's `LPN007_416`, Facebook's `RCP-P1`,
Cox's `AUP#CDRBL`, GoDaddy's `IB607`, Spectrum's `AUP#1300`, i.ua's `/err/2/`) or publish what each of
their replies means (Google's and Microsoft's SMTP error references, Yahoo's, Apple's, Mimecast's and
Symantec MessageLabs' error-code pages). Some use a phrase that means something else coming from them
(NTT docomo answers "Unknown user" to senders its users block). Each rule names the family it belongs to
(the provider, as bounce corpora name it) so that a scorer can switch one provider's rules off; a rule
with a host pattern applies only when the remote MTA or the recipient's domain is that provider's, and
a rule with a status pattern only when the reply carries that enhanced status code (Microsoft's NDR
codes such as 5.7.509 or Google's 5.7.26 are the provider's own, documented per code).

Wording that means the same whoever writes it (Gmail's "The email account that you tried to reach does
not exist", Microsoft's "RESOLVER.ADR.RecipientNotFound") belongs to `bounce.phrases`, not here.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from itertools import groupby

from bounce.phrases import anchor


@dataclass(frozen=True, slots=True)
class Rule:
    family: str
    host: re.Pattern[str] | None
    anchors: tuple[str, ...]  # the rule runs only when the reply contains one of these (none: always)
    pattern: re.Pattern[str]
    reason: str  # "" for a code table: the name of the group that matched is the reason
    status: re.Pattern[str] | None = None
    raw: bool = False  # matched against the reply as written (links kept), not the normalized text


def _rule(family: str, host: str, pattern: str, reason: str, status: str = "") -> Rule:
    literal = anchor(pattern)
    return Rule(family, re.compile(host) if host else None, (literal,) if literal else (), re.compile(pattern),
                reason, re.compile(status) if status else None)


def _table(family: str, host: str, rows: Iterable[tuple[str, str, str]]) -> tuple[Rule, ...]:
    """(status pattern, reply pattern, reason) rows of one provider's published reference. A row whose
    status is the provider's own (a detail number the IANA registry does not have, such as Microsoft's
    5.7.509) needs no host: no other system writes that code."""
    rules = [_rule(family, host if _registered(status) else "", phrase, reason, status)
             for status, phrase, reason in rows]
    # The provider's own codes first, then the rows that need its host: each part is one run (see _RUNS).
    return tuple(sorted(rules, key=lambda r: r.host is not None))


def _registered(status: str) -> bool:
    """Whether the status pattern matches a code of the IANA registry (details up to x.7.30)."""
    pattern = re.compile(status)
    return any(pattern.fullmatch(f"{klass}.{subject}.{detail}")
               for klass in "245" for subject in range(8) for detail in range(31))


def _codes(family: str, anchors: tuple[str, ...], template: str, codes: Iterable[tuple[str, str]],
           raw: bool = False) -> Rule:
    """A provider's own error codes as one regex: `template` with {} where the codes go, one named group
    per reason (run once per reply, and only when it contains one of `anchors`)."""
    by_reason: dict[str, list[str]] = {}
    for code, reason in codes:
        by_reason.setdefault(reason, []).append(code)
    groups = "|".join(f"(?P<{reason}>{'|'.join(found)})" for reason, found in by_reason.items())
    return Rule(family, None, anchors, re.compile(template.format(f"(?:{groups})")), "", None, raw)


# Hosts of the providers (remote MTA or recipient domain), as their MX and domain names are published.
_GOOGLE = r"(?:aspmx|gmail-smtp-in)\.l\.google\.com|(?:^|\s)(?:l\.)?google\.com(?:\s|$)"
_MICROSOFT = r"\.(?:prod|protection)\.outlook\.com|\.onmicrosoft\.com|\.exchangelabs\.com"
_YAHOO = r"\.yahoodns\.net"
_APPLE = r"(?:^|[\s.])(?:mail\.icloud|icloud|apple|me|mac)\.com(?:\s|$)"

# Google's SMTP error reference (support.google.com/a/answer/3726730): the reply text with its status.
GOOGLE: tuple[Rule, ...] = _table("google", _GOOGLE, (
    (r"[45]\.7\.24", "the spf record of the sending domain", "authfailure"),
    (r"[45]\.7\.26", "senders to authenticate with either spf or dkim", "authfailure"),
    (r"5\.7\.26", "fails to pass spf checks for an spf record with a hard fail", "authfailure"),
    (r"5\.7\.26", "has an spf record with a hard fail policy", "authfailure"),
    (r"[45]\.7\.26", "is not accepted due to domain's dmarc policy", "authfailure"),
    (r"5\.7\.(?:1|26)", "fails to pass authentication checks", "authfailure"),
    (r"[45]\.7\.27", "senders to authenticate", "authfailure"),
    (r"[45]\.7\.30", "senders to authenticate", "authfailure"),
    (r"[45]\.7\.32", "aligned with either the authenticated spf or dkim", "authfailure"),
    (r"4\.7\.40", "to add a dmarc record to", "authfailure"),
    (r"[45]\.7\.[01]", "very low reputation of the sending", "badreputation"),
    (r"4\.7\.0", "ip not in whitelist for rcpt domain", "blocked"),
    (r"4\.7\.0", "try again later, closing connection", "blocked"),
    (r"5\.5\.4", "helo/ehlo argument", "blocked"),
    (r"[45]\.7\.(?:0|1|28)", "an unusual rate of unsolicited mail", "blocked"),
    (r"4\.7\.28", "an unusual rate of mail", "blocked"),
    (r"5\.2\.3", "exceeded google's message size limits", "exceedlimit"),
    (r"5\.3\.4", "exceeds google's limit of", "exceedlimit"),
    (r"5\.3\.4", "header size limit", "exceedlimit"),
    (r"5\.3\.4", "bytes per individual header size", "exceedlimit"),
    (r"5\.3\.4", "exceeded google's message size limits", "mesgtoobig"),
    (r"5\.3\.4", "exceeds google's message size limit of", "mesgtoobig"),
    (r"4\.7\.0", "connection expired", "expired"),
    (r"4\.4\.2", "timeout - closing connection", "expired"),
    (r"5\.7\.0", "must issue a starttls command first", "failedstarttls"),
    (r"[45]\.5\.1", "starttls may not be repeated", "failedstarttls"),
    (r"4\.7\.0", "tls required for rcpt domain", "failedstarttls"),
    (r"[45]\.7\.29", "senders to use tls/ssl for smtp", "failedstarttls"),
    (r"[45]\.2\.2", "inbox is out of storage space", "mailboxfull"),
    (r"[45]\.2\.2", "is over quota", "mailboxfull"),
    (r"5\.7\.1", "email quota exceeded", "mailboxfull"),
    (r"5\.[46]\.[06]", "message exceeded 50 hops", "networkerror"),
    (r"5\.7\.0", "mail relay denied", "norelaying"),
    (r"5\.7\.1", "invalid credentials for relay", "norelaying"),
    (r"5\.7\.1", "is not authorized to send email directly to our servers", "norelaying"),
    (r"5\.7\.1", "missing a valid address in the from: header", "notcompliantrfc"),
    (r"5\.7\.1", "multiple addresses in from: header are not accepted", "notcompliantrfc"),
    (r"5\.7\.1", "is not rfc 5322 compliant", "notcompliantrfc"),
    (r"5\.7\.1", "missing a valid message-id: header", "notcompliantrfc"),
    (r"5\.7\.1", "contains a unicode character in a disallowed header", "notcompliantrfc"),
    (r"5\.7\.1", "encoded-word syntax is not permitted", "notcompliantrfc"),
    (r"5\.1\.7", "is not a valid rfc 5321 address", "notcompliantrfc"),
    (r"5\.6\.0", "mail message is malformed", "notcompliantrfc"),
    (r"5\.7\.0", "illegal attachment on your message", "policyviolation"),
    (r"5\.7\.0", "blocked because its content presents a potential security issue", "policyviolation"),
    (r"5\.7\.1", "has a policy that prohibited the mail that you sent", "policyviolation"),
    (r"4\.7\.28", "sending messages with the same message-id", "policyviolation"),
    (r"5\.7\.0", "mail sending denied", "rejected"),
    (r"5\.7\.1", "unauthenticated email is not accepted", "rejected"),
    (r"[45]\.7\.(?:0|23|25)", "does not have a ptr record", "requireptr"),
    (r"4\.7\.23", "have a ptr record, or the ptr record", "requireptr"),
    (r"5\.7\.1", "does not meet ipv6 sending guidelines regarding ptr records", "requireptr"),
    (r"5\.7\.25", "does not match the ip address of the hostname", "requireptr"),
    (r"4\.7\.0", "too many login attempts", "securityerror"),
    (r"5\.7\.0", "no identity changes permitted", "securityerror"),
    (r"5\.[57]\.[01]", "authentication required", "securityerror"),
    (r"5\.7\.[19]", "application-specific password required", "securityerror"),
    (r"5\.7\.(?:1|9|14)", "please log in ", "securityerror"),
    (r"5\.7\.[18]", "username and password not accepted", "securityerror"),
    (r"4\.7\.0", "due to the nature of the content or the links within", "spamdetected"),
    (r"5\.7\.1", "likely unsolicited mail", "spamdetected"),
    (r"[45]\.2\.1", "is receiving mail too quickly", "speeding"),
    (r"4\.2\.1", "peak smtp relay limit exceeded", "speeding"),
    (r"[45]\.2\.1", "rate that prevents additional messages from being delivered", "speeding"),
    (r"5\.4\.5", "daily sending quota exceeded", "speeding"),
    (r"5\.4\.5", "daily user sending limit exceeded", "speeding"),
    (r"5\.(?:4\.5|7\.1)", "daily smtp relay", "speeding"),
    (r"5\.7\.1", "this mail has been rate limited", "speeding"),
    (r"5\.2\.1", "account that you tried to reach is disabled", "suspend"),
    (r"5\.2\.1", "account that you tried to reach is inactive", "suspend"),
    (r"[45]\.(?:5\.0|7\.10)", "smtp protocol violation", "syntaxerror"),
    (r"5\.(?:5\.2|7\.11)", "syntax error", "syntaxerror"),
    (r"5\.5\.1", "unrecognized command", "syntaxerror"),
    (r"5\.5\.1", "unimplemented command", "syntaxerror"),
    (r"5\.5\.1", "bad sequence of commands", "syntaxerror"),
    (r"5\.5\.1", "no data after bdat", "syntaxerror"),
    (r"5\.7\.4", "unrecognized authentication type", "syntaxerror"),
    (r"5\.7\.0", "too many unauthenticated commands", "syntaxerror"),
    (r"4\.(?:3\.0|7\.0)", "temporary system problem", "systemerror"),
    (r"4\.4\.5", "server busy", "systemerror"),
    (r"4\.3\.0", "multiple destination domains per transaction is unsupported", "systemerror"),
    (r"4\.3\.0", "temporarily rejected", "systemerror"),
    (r"4\.5\.3", "domain policy size per transaction exceeded", "systemerror"),
    (r"4\.5\.3", "your message has too many recipients", "toomanyconn"),
    (r"5\.5\.3", "too many recipients for this sender", "toomanyconn"),
    (r"5\.1\.2", "we weren't able to find the recipient domain", "hostunknown"),
    (r"5\.1\.3", "is not a valid rfc 5321 address", "userunknown"),
))

# Microsoft's NDR reference for Exchange Online and Exchange Server ("Email non-delivery reports and SMTP
# errors"): most of these status codes are Microsoft's own (5.7.5xx – 5.7.7xx, 5.4.3xx …).
MICROSOFT: tuple[Rule, ...] = _table("microsoft", _MICROSOFT, (
    (r"4\.7\.26", "must pass either spf or dkim validation", "authfailure"),
    (r"5\.7\.23", "sender policy framework violation", "authfailure"),
    (r"5\.7\.509", "does not pass dmarc verification", "authfailure"),
    (r"5\.7\.515", "doesn't meet the required authentication level", "authfailure"),
    (r"4\.7\.650", "rate limited due to ip reputation", "badreputation"),
    (r"4\.7\.(?:5\d\d|6\d\d|8[5-9]\d)", "access denied, please try again later", "blocked"),
    (r"5\.7\.25", "must have a reverse dns record", "blocked"),
    (r"5\.7\.506", "access denied, bad helo", "blocked"),
    (r"5\.7\.507", "access denied, rejected by recipient", "blocked"),
    (r"5\.7\.510", "does not accept email over ipv6", "blocked"),
    (r"5\.7\.511", "access denied, banned sender", "blocked"),
    (r"5\.7\.513", "using customer block list", "blocked"),
    (r"5\.7\.(?:60[6-9]|6[1-4]\d)", "access denied, banned sending ip", "blocked"),
    (r"5\.3\.0", "too many related errors", "contenterror"),
    (r"5\.6\.11", "invalid characters", "contenterror"),
    (r"5\.2\.3", "message too large for this recipient", "exceedlimit"),
    (r"5\.3\.4", "message size exceeds fixed maximum message size", "mesgtoobig"),
    (r"4\.4\.1", "connection timed out", "expired"),
    (r"4\.4\.7", "message delayed", "expired"),
    (r"4\.4\.7", "message expired", "expired"),
    (r"5\.4\.(?:300|316)", "message expired", "expired"),
    (r"[45]\.4\.8", "failed mta-sts validation", "failedstarttls"),
    (r"[45]\.4\.317", "starttls is required to send mail", "failedstarttls"),
    (r"[45]\.7\.(?:32[1-5]|51)", "starttls|certificate|tlsa|dnssec|restrictdomains", "failedstarttls"),
    (r"5\.2\.2", "mailbox full", "mailboxfull"),
    (r"5\.4\.4", "nonexistent domain", "hostunknown"),
    (r"[45]\.4\.312", "dns query failed", "networkerror"),
    (r"[45]\.4\.316", "connection refused", "networkerror"),
    (r"5\.4\.(?:6|14)", "loop", "networkerror"),
    (r"5\.7\.520", "does not allow external forwarding", "policyviolation"),
    (r"5\.7\.1", "unable to relay", "norelaying"),
    (r"5\.4\.1", "relay access denied", "norelaying"),
    (r"5\.7\.64", "relay access denied", "norelaying"),
    (r"4\.3\.2", "system not accepting network messages", "notaccept"),
    (r"4\.4\.4", "hosted tenant which has no mail-enabled subscriptions", "notaccept"),
    (r"5\.0\.350", "policy violation", "policyviolation"),
    (r"5\.0\.350", "x-dg-ref header is too long", "policyviolation"),
    (r"5\.7\.9\d\d", "delivery not authorized, message refused", "policyviolation"),
    (r"5\.1\.7", "unknown sender address", "rejected"),
    (r"5\.1\.0", "sender denied", "rejected"),
    (r"5\.1\.8", "access denied, bad outbound sender", "rejected"),
    (r"5\.7\.1", "delivery not authorized", "rejected"),
    (r"5\.7\.12", "sender was not authenticated by organization", "rejected"),
    (r"5\.7\.1(?:24|29|3[3-6])", "sender|restrictedtorecipientspermission", "rejected"),
    (r"5\.7\.50[1-3]", "access denied, ", "rejected"),
    (r"5\.7\.512", "message must be rfc 5322 section 3.6.2 compliant", "rejected"),
    (r"5\.7\.750", "client blocked from sending from unregistered domains", "rejected"),
    (r"5\.7\.3", "cannot achieve exchange server authentication", "securityerror"),
    (r"5\.7\.(?:1|57)", "client was not authenticated", "securityerror"),
    (r"5\.2\.1", "content filter agent quarantined this message", "spamdetected"),
    (r"[45]\.5\.3", "too many recipients", "speeding"),
    (r"4\.3\.2", "recipient thread limit exceeded", "speeding"),
    (r"4\.7\.652", "has exceeded the maximum number of connections", "speeding"),
    (r"5\.1\.90", "reached your daily limit for message recipients", "speeding"),
    (r"5\.2\.2", "submission quota exceeded", "speeding"),
    (r"5\.2\.12[12]", "message receive limit", "speeding"),
    (r"5\.2\.122", "the recipient has exceeded their limit", "speeding"),
    (r"5\.7\.508", "has exceeded permitted limits within", "speeding"),
    (r"5\.7\.7[0-4]\d", "tenant has exceeded threshold", "speeding"),
    (r"5\.7\.7[0-4]\d", "traffic not accepted from this ip", "speeding"),
    (r"5\.7\.504", "recipient address rejected: access denied", "suspend"),
    (r"5\.7\.505", "access denied, banned recipient", "suspend"),
    (r"5\.2\.1", "mailbox cannot be accessed", "suspend"),
    (r"5\.3\.3", "unrecognized command", "syntaxerror"),
    (r"5\.5\.2", "send hello first", "syntaxerror"),
    (r"4\.3\.2", "service not (?:available|active)", "systemerror"),
    (r"5\.3\.5", "system incorrectly configured", "systemerror"),
    (r"5\.3\.190", "journaling archive is disabled", "systemerror"),
    (r"5\.2\.14", "misconfigured forwarding address", "systemerror"),
    (r"4\.4\.2[2-8]", "message failed to be replicated", "systemerror"),
    (r"[45]\.4\.318", "suspiciousremoteservererror", "systemerror"),
    (r"4\.7\.500", "server busy. please try again later", "systemerror"),
    (r"4\.7\.700", "pfa agent busy", "systemerror"),
    (r"4\.3\.1", "insufficient system resources", "systemfull"),
    (r"5\.1\.1", "resolver.adr.exrecipnotfound", "userunknown"),
    (r"5\.1\.3", "invalid recipient address", "userunknown"),
    (r"5\.1\.[45]", "recipient address reserved by rfc 2606", "userunknown"),
    (r"5\.1\.6", "recipient addresses in single label domains not accepted", "userunknown"),
    (r"5\.1\.10", "recipient not found", "userunknown"),
    (r"5\.4\.1", "recipient address rejected: access denied", "userunknown"),
    (r"5\.5\.0", "requested action not taken: mailbox unavailable", "userunknown"),
    (r"5\.1\.351", "unknown recipient or mailbox unavailable", "userunknown"),
))

# Outlook.com's postmaster codes (421 RP-00x rate limits, 550 SC-00x / DY-00x / OU-00x policy refusals).
_OUTLOOK_CODES = (("rp-00[123]", "badreputation"), ("sc-001", "badreputation"), ("sc-002", "policyviolation"),
                  ("sc-00[34]", "blocked"), ("dy-001", "blocked"), ("dy-002", "virusdetected"),
                  ("ou-001", "blocked"), ("ou-002", "badreputation"))
# Orange / La Poste (France): the last three digits of their LPN / OFR / OUK codes, from their published
# lists of SMTP errors.
_ORANGE_CODES = (("10[123]", "blocked"), ("104", "toomanyconn"), ("305", "securityerror"), ("401", "authfailure"),
                 ("402", "securityerror"), ("40[35]|415|421", "rejected"), ("416", "userunknown"),
                 ("417", "mailboxfull"), ("42[06]", "suspend"), ("505", "systemerror"), ("506", "spamdetected"),
                 ("510", "blocked"), ("514", "mesgtoobig"), ("517", "authfailure"), ("630", "policyviolation"),
                 ("999", "blocked"))
# GoDaddy's IBnnn codes (its bounce-error reference).
_GODADDY_CODES = (("401", "securityerror"), ("50[12]", "notcompliantrfc"), ("506", "rejected"), ("508", "authfailure"),
                  ("108", "requireptr"), ("212", "spamdetected"), ("705", "virusdetected"), ("605|007", "toomanyconn"),
                  ("101|504|510|607", "speeding"), ("11[0-3]|10[456]", "blocked"), ("103", "badreputation"))
# Cox: AUP# codes of its postmaster page.
_COX_CODES = (("cxbl|cdrbl|ipbl\\d+", "blocked"), ("cxdns", "requireptr"), ("cxsndr", "authfailure"),
              ("cxsmtp", "rejected"), ("cxcnct|cxmxrt", "toomanyconn"), ("cxthrt|cxmj", "securityerror"),
              ("urlbl\\d+", "spamdetected"))
# Spectrum / Charter: AUP#I or AUP#O and four digits (its "understanding email error codes" page).
_SPECTRUM_CODES = (("1000|12[0-4]\\d|1250", "blocked"), ("10[1-7]\\d|1080|15[02]0", "rejected"),
                   ("1090", "systemerror"), ("11[0-4]\\d|1150", "requireptr"),
                   ("11[6-8]\\d|1190|1560", "policyviolation"), ("1260", "networkerror"),
                   ("13[0-3]\\d|1340", "toomanyconn"),
                   ("13[5-9]\\d|14\\d\\d|15[458]0", "speeding"), ("1530", "mesgtoobig"))
# Facebook's response codes (postmaster.facebook.com/response_codes).
_FACEBOOK_CODES = (("pol-p7", "authfailure"), ("pol-p[1-4]|pol-t[1-3]", "blocked"), ("msg-p2", "contenterror"),
                   ("rcp-p[23]", "filtered"), ("msg-p1|int-p2", "mesgtoobig"), ("msg-p3", "notcompliantrfc"),
                   ("dns-[pt]1|dns-p2", "rejected"), ("dns-p3|dns-t2", "requireptr"), ("pol-p6", "spamdetected"),
                   ("rcp-t4", "suspend"), ("rcp-t1", "systemerror"), ("con-t[1-4]|msg-t1", "toomanyconn"),
                   ("rcp-p1|int-p[134]", "userunknown"), ("pol-p5", "virusdetected"))
# i.ua: the error page linked from every reply, mail.i.ua/err/N/.
_IUA_CODES = (("1|6", "norelaying"), ("2", "userunknown"), ("3", "suspend"), ("4", "mailboxfull"),
              ("5", "toomanyconn"), ("7|9", "blocked"), ("8", "rejected"), ("10", "filtered"))

RULES: tuple[Rule, ...] = (
    _codes("outlook", ("rp-", "sc-", "dy-", "ou-"), r"\b{}\b", _OUTLOOK_CODES),
    _codes("franceptt", ("lpn", "ofr", "ouk"), r"\b(?:lpn|ofr|ouk)\w*?{}\b", _ORANGE_CODES),
    _rule("franceptt", "", r"spf/dns de votre nom de domaine", "authfailure"),
    _codes("godaddy", ("ib",), r"\bib{}\b", _GODADDY_CODES),
    _codes("cox", ("aup#",), r"aup#{}\b", _COX_CODES),
    _codes("spectrum", ("aup#",), r"aup#[a-z]*-?{}\b", _SPECTRUM_CODES),
    _codes("facebook", ("-p", "-t"), r"\b{}\b", _FACEBOOK_CODES),
    _codes("iua", (".i.ua/err/",), r"\.i\.ua/err/{}/", _IUA_CODES, raw=True),
    *GOOGLE,
    *MICROSOFT,
    # Yahoo (senders.yahooinc.com/smtp-error-codes).
    # Yahoo answers RCPT for a mailbox that does not exist with "This user doesn't have a … account".
    _rule("yahooinc", r"yahoo", r"user doesn'?t have an? \S+ account", "userunknown"),
    _rule("yahooinc", _YAHOO, r"requires all senders to authenticate with either spf or dkim", "authfailure"),
    _rule("yahooinc", _YAHOO, r"because the ip is in spamhaus'?s list|not accepted from ip addresses on spamhaus",
          "blocked"),
    _rule("yahooinc", _YAHOO, r"relaying denied for ", "norelaying"),
    _rule("yahooinc", _YAHOO, r"headers are not rfc compliant", "notcompliantrfc"),
    _rule("yahooinc", _YAHOO, r"not accepted for policy reasons", "policyviolation"),
    _rule("yahooinc", _YAHOO, r"temporarily deferred due to unexpected volume or user complaints", "rejected"),
    _rule("yahooinc", _YAHOO, r"unresolvable rfc\.?5321 (?:from )?domain| will be permanently deferred", "rejected"),
    _rule("yahooinc", _YAHOO, r"user is receiving mail too quickly", "speeding"),
    _rule("yahooinc", _YAHOO, r" is no longer valid\.|this mailbox is disabled", "suspend"),
    _rule("yahooinc", _YAHOO, r"max message per connection reached", "toomanyconn"),
    _rule("yahooinc", _YAHOO, r"mailbox not found", "userunknown"),
    # Apple iCloud Mail (support.apple.com/102322).
    _rule("apple", _APPLE, r"s dmarc policy|failing both spf and dkim", "authfailure"),
    _rule("apple", _APPLE, r"domain present in the spamhaus|listing in spamhaus|not accepting connections", "blocked"),
    _rule("apple", _APPLE, r"recipient no longer on server", "hasmoved"),
    _rule("apple", _APPLE, r"user is over quota", "mailboxfull"),
    _rule("apple", _APPLE, r"due to local policy", "policyviolation"),
    _rule("apple", _APPLE, r"due to excessive volume", "speeding"),
    _rule("apple", _APPLE, r"inactive email address|unknown or illegal alias", "userunknown"),
    # Mimecast (its published SMTP error codes).
    _rule("mimecast", "", r"(?:spf|dkim|dmarc) sender invalid - envelope rejected", "authfailure"),
    _rule("mimecast", "", r"local ct ip reputation", "badreputation"),
    _rule("mimecast", "", r"ip temporarily blacklisted", "blocked"),
    _rule("mimecast", "", r"host network,? not allowed|anti-spoofing policy|content examination policy",
          "policyviolation"),
    _rule("mimecast", "", r"envelope blocked - user (?:domain )?entry|block policy for (?:header|envelope) from",
          "rejected"),
    _rule("mimecast", "", r"exceeding outbound thread limit", "toomanyconn"),
    _rule("mimecast", "", r"mcspamsignature|email rejected due to security policies", "virusdetected"),
    # Symantec / Broadcom MessageLabs (Email Security.cloud error and bounce codes).
    _rule("messagelabs", r"messagelabs", r"domain authentication fail", "authfailure"),
    _rule("messagelabs", r"messagelabs", r"connection rejected by policy", "badreputation"),
    _rule("messagelabs", r"messagelabs", r"your ip is in the pbl|your ip address (?:\(\S+\) )?has been", "blocked"),
    _rule("messagelabs", r"messagelabs", r"stray linefeeds in message", "contenterror"),
    _rule("messagelabs", r"messagelabs", r"tls/sslv3 connection required", "failedstarttls"),
    _rule("messagelabs", r"messagelabs", r" as a relay, ", "norelaying"),
    _rule("messagelabs", r"messagelabs", r"requested action aborted \[4\]|this message is not rfc 5322",
          "notcompliantrfc"),
    _rule("messagelabs", r"messagelabs", r"sender envelope domain not allowed|your (?:domain|email address) has been "
          r"(?:blocked|blacklisted)|badmailfrom list", "rejected"),
    _rule("messagelabs", r"messagelabs", r"message filtered|filtered by outbound scanning", "spamdetected"),
    _rule("messagelabs", r"messagelabs", r"too many recipients received this hour|too many messages", "toomanyconn"),
    _rule("messagelabs", r"messagelabs", r"no such user|invalid recipient|mailbox is not allowed", "userunknown"),
    # Tencent (QQ mail: service.mail.qq.com/detail/122).
    _rule("tencent", r"\bqq\.com", r"(?:spf|dmarc) check failed", "authfailure"),
    _rule("tencent", r"\bqq\.com", r"suspected bounce attacks|suspected spam ip|connection denied", "blocked"),
    _rule("tencent", r"\bqq\.com", r"message too large", "mesgtoobig"),
    _rule("tencent", r"\bqq\.com", r"mail is rejected by recipients", "rejected"),
    _rule("tencent", r"\bqq\.com", r"spam is embedded in the email|mail content denied", "spamdetected"),
    _rule("tencent", r"\bqq\.com", r"frequency of receiving messages is limited|access denined", "speeding"),
    _rule("tencent", "", r"(?:ip|domain|sender|connection) frequency limited", "toomanyconn"),
    _rule("tencent", "", r"frequency limited", "toomanyconn"),
    # Cox and Spectrum without a code: "sender rejected" is their refusal of the sending IP or domain.
    _rule("cox", r"cox\.net", r"too many invalid recipients|too many bad commands", "blocked"),
    _rule("cox", r"cox\.net", r"dns check failure|rejected - no rdns", "requireptr"),
    _rule("cox", r"cox\.net", r"too many sessions from|message threshold exceeded", "toomanyconn"),
    # AOL.
    _rule("aol", r"\.(?:mail|mx)\.aol\.com", r"type=mx: malformed or unexpected name server reply", "notaccept"),
    # au (KDDI) says "550 <a@b>: User unknown" at RCPT; without the address it is its content filter.
    _rule("kddi", r"ezweb\.ne\.jp|\bau\.com", r"x@x>?: user unknown", "userunknown"),
    # NTT docomo answers "Unknown user" to senders its users have blocked.
    _rule("nttdocomo", r"docomo", r"unknown user", "rejected"),
    # Outlook.com answers an unknown mailbox with RFC 5321's bare "mailbox unavailable" text.
    _rule("outlook", r"outlook|hotmail|live\.com|msn\.com", r"requested action not taken: mailbox unavailable",
          "userunknown"),
    _rule("outlook", r"outlook|hotmail|live\.com|msn\.com", r"the domain is not reachable", "hostunknown"),
    # Google Workspace's own wording for an address it cannot find or a domain with a null MX.
    _rule("gsuite", r"googlemail\.com", r"because the address couldn'?t be found", "userunknown"),
    _rule("gsuite", r"googlemail\.com", r"null mx", "notaccept"),
)
FAMILIES = frozenset(r.family for r in RULES)


# Rules in runs of one family and host, so that a host that does not match skips the whole run.
# A run of a provider's own status codes (Microsoft's 5.7.509 …) is skipped for any registered code.
_RUNS: tuple[tuple[str, re.Pattern[str] | None, bool, tuple[Rule, ...]], ...] = tuple(
    (family, host, own, tuple(run)) for (family, host, own), run in groupby(
        RULES, key=lambda r: (r.family, r.host, r.status is not None and r.host is None)))
_DETAIL = re.compile(r"[245]\.\d\.(\d{1,3})")


def _own_code(status: str) -> bool:
    """A status whose detail number the IANA registry does not have (a provider's own code)."""
    m = _DETAIL.fullmatch(status)
    return m is not None and int(m.group(1)) > 30


def provider_reason(text: str, host: str, disabled: Collection[str] = (), status: str = "", raw: str = "") -> str:
    """The reason a provider's own code or published reply gives, or "". `text` is the normalized reply,
    `raw` the reply as written (lower case), `status` its enhanced status code."""
    own = _own_code(status)
    for family, pattern, own_codes, run in _RUNS:
        if family in disabled or (own_codes and not own) or (pattern is not None and pattern.search(host) is None):
            continue
        for rule in run:
            where = raw if rule.raw else text
            anchors = rule.anchors
            if anchors and anchors[0] not in where and not any(a in where for a in anchors[1:]):
                continue
            if rule.status is not None and not rule.status.fullmatch(status):
                continue
            m = rule.pattern.search(where)
            if m:
                return rule.reason or m.lastgroup or ""
    return ""
