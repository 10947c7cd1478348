"""Why a message bounced: a reason from the Sisimai taxonomy and a kind (hard / soft / policy / none).

`classify(status, reply_code, diagnostic)` works on its own (for an SMTP reply seen by the gateway's own
outbound worker) and is what `bounce.dsn` uses for every recipient of a report. The decision order:

1. a reason a format parser already knows for sure (`preset`), or 2.x.x = delivered;
2. the "specific" reasons, in priority order: each matches when the enhanced status code maps to it
   or when the diagnostic text says so (mailbox full wins over user unknown, and so on);
3. the "generic" reasons by text only (policy, virus, network, system, expiry …);
4. the status code alone, then its class (x.6 content, x.7 security), then the SMTP command and the
   DSN action (a delayed report is an expiry); onhold when there was a text we could not read,
   undefined when there was nothing at all.

Hard means the address is dead (user or host unknown, moved, domain accepts no mail) and the failure
is permanent: the only bounces that should disable an address. DMARC/SPF failures, blocklists, spam
filters and full mailboxes are never hard.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from bounce.phrases import MAX_TEXT, TEXT, Doc, normalize
from bounce.providers import provider_reason
from bounce.status import (  # noqa: F401 - find_* and *_status are part of this module's interface
    REPLY_REASON,
    find_reply_code,
    find_status,
    prefer_status,
    pseudo_status,
    status_reason,
    subject_reason,
)

REASONS = (
    "userunknown", "hostunknown", "mailboxfull", "filtered", "rejected", "blocked", "policyviolation",
    "authfailure", "spamdetected", "virusdetected", "securityerror", "expired", "networkerror",
    "systemerror", "systemfull", "suspend", "hasmoved", "mesgtoobig", "exceedlimit", "norelaying",
    "notaccept", "onhold", "requireptr", "badreputation", "contenterror", "toomanyconn", "speeding",
    "syntaxerror", "notcompliantrfc", "mailererror", "failedstarttls", "vacation", "feedback",
    "delivered", "undefined",
)
HARD_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})
POLICY_REASONS = frozenset({
    "filtered", "rejected", "blocked", "policyviolation", "authfailure", "spamdetected", "virusdetected",
    "securityerror", "norelaying", "requireptr", "badreputation", "contenterror", "notcompliantrfc",
    "failedstarttls", "mesgtoobig", "speeding", "toomanyconn",
})
NOT_FAILURES = frozenset({"delivered", "vacation", "feedback"})
# Reasons a format parser may set from a rough reading; they are re-checked against the text.
_TENTATIVE = frozenset({"", "undefined", "onhold", "systemerror", "securityerror", "expired",
                        "networkerror"})

# First pass, in priority order: a reason applies when the status code means it or the text says it.
_SPECIFIC_ORDER = (
    "mailboxfull", "mesgtoobig", "exceedlimit", "suspend", "hasmoved", "norelaying", "authfailure",
    "userunknown", "filtered", "requireptr", "notcompliantrfc", "badreputation", "contenterror",
    "rejected", "hostunknown", "spamdetected", "speeding", "toomanyconn", "blocked",
)
# Second pass, by text only.
_GENERIC_ORDER = (
    "mailboxfull", "authfailure", "badreputation", "speeding", "spamdetected", "virusdetected",
    "policyviolation", "norelaying", "systemerror", "notaccept", "networkerror", "suspend", "contenterror",
    "systemfull", "expired", "failedstarttls", "securityerror", "mailererror",
)


_AT_RCPT = re.compile(r"recipient address rejected|address (?:could ?n[o']t|cannot) be found|resolver\.adr\.|"
                      r"recipient not found by smtp address lookup|not listed in (?:the )?(?:\w+ )?(?:directory|"
                      r"address book)|no mailbox here by that name|receiver not found")
# Commands sent before DATA: a content filter cannot have refused the message there.
_BEFORE_DATA = frozenset({"CONN", "EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT"})
def _rejected_text(doc: Doc) -> bool:
    return TEXT["rejected"].search(doc) and "recipient address rejected" not in doc.text and not \
        TEXT["policyviolation"].search(doc)


def _specific(reason: str, mapped: str, doc: Doc, command: str, temporary: bool) -> bool:
    """Does `reason` apply, from the status code's meaning (`mapped`) or from the text?"""
    says = TEXT[reason].search
    if temporary and reason in HARD_REASONS and mapped != reason:
        return False  # an address does not "temporarily not exist"
    if reason == "userunknown":
        if mapped == "userunknown":
            # 5.1.1 with a text saying the mailbox is full, or that the sender is blocked, is not unknown.
            return not (any(TEXT[r].search(doc) for r in ("mailboxfull", "suspend", "hasmoved", "blocked"))
                        or _rejected_text(doc))
        # "User unknown" after DATA (or at no known command) is a content filter talking.
        return command == "RCPT" and says(doc)
    if reason == "filtered":
        if mapped == "filtered":
            return True
        return command not in _BEFORE_DATA and (says(doc) or TEXT["userunknown"].search(doc))
    if reason == "rejected":
        if mapped == "rejected":
            return True
        if command == "MAIL" and "access denied" in doc.text:
            return True
        if command == "MAIL" or mapped in ("", "securityerror", "systemerror", "onhold"):
            return _rejected_text(doc)
        return command == "DATA" and mapped != "userunknown" and _rejected_text(doc)
    if reason == "mesgtoobig" and mapped == "exceedlimit":
        return False
    if reason == "authfailure" and "duplicate header" in doc.text:
        return False
    if reason == "blocked" and TEXT["policyviolation"].search(doc):
        return False
    if reason == "contenterror":
        return says(doc)
    if reason == "spamdetected" and mapped != reason and command in _BEFORE_DATA:
        return False  # a content filter has not seen the content before DATA
    if reason == "hostunknown":
        if "not found, try again" in doc.text or TEXT["notaccept"].search(doc):
            return False
        if mapped == "hostunknown":
            return not TEXT["userunknown"].search(doc) or "domain" in doc.text or "host" in doc.text
    return mapped == reason or says(doc)


def classify(status: str, reply_code: str, diagnostic: str, *, command: str = "", action: str = "",
             preset: str = "", host: str = "", disabled: Collection[str] = ()) -> tuple[str, str]:
    """(reason, kind) for one failed recipient; kind is hard, soft, policy or none.

    `command` is the SMTP command the remote host refused, `action` the DSN Action, `preset` a reason
    a format parser is sure of, `host` the remote MTA and/or recipient domain (for provider rules),
    `disabled` provider families whose rules are not to be used.
    """
    status = status or ""
    reason = _reason(status, reply_code or "", diagnostic or "", command.upper(), action.lower(), preset,
                     host.lower(), disabled)
    return reason, kind_of(reason, status or reply_code or "", action, reply_code or "")


def _reason(status: str, reply_code: str, diagnostic: str, command: str, action: str, preset: str,
            host: str, disabled: Collection[str]) -> str:
    if preset and preset not in _TENTATIVE:
        return preset
    if status.startswith("2.") or action in ("delivered", "relayed", "expanded"):
        return "delivered"
    text = normalize(diagnostic)
    doc = Doc(text)
    mapped = status_reason(status)
    if text or mapped:
        by_provider = provider_reason(text, host, disabled, status, " ".join(diagnostic[:MAX_TEXT].lower().split()))
        if by_provider:
            return by_provider
        if not command and _AT_RCPT.search(text):
            command = "RCPT"
        temporary = status.startswith("4") or (not status and reply_code.startswith("4"))
        for reason in _SPECIFIC_ORDER:
            if _specific(reason, mapped, doc, command, temporary):
                return reason
    if preset and preset not in ("undefined", "onhold"):
        return preset
    if text:
        for reason in _GENERIC_ORDER:
            if TEXT[reason].search(doc):
                return reason
    return _fallback(mapped or preset, status, doc, command, action, reply_code)


def _fallback(mapped: str, status: str, doc: Doc, command: str, action: str, reply_code: str) -> str:
    if mapped and mapped not in ("undefined", "onhold"):
        return mapped
    by_subject = subject_reason(status)
    if by_subject:
        return by_subject
    if action in ("delayed", "expired"):
        return "expired"
    if command in ("EHLO", "HELO"):
        return "blocked"
    if doc.text and TEXT["syntaxerror"].search(doc):
        return "syntaxerror"
    if reply_code in REPLY_REASON:
        return REPLY_REASON[reply_code]
    if doc.text or status:
        return "onhold"
    return "undefined"


def is_hard(reason: str, status: str = "", action: str = "", reply_code: str = "") -> bool:
    """A permanently dead address: user or host unknown, moved, or a domain that accepts no mail, and
    nothing says the failure is temporary (a 4.X.X status or 4yz reply, a delay notice)."""
    return (reason in HARD_REASONS and not status.startswith("4") and not reply_code.startswith("4")
            and action.lower() not in ("delayed", "relayed", "delivered", "expanded"))


def kind_of(reason: str, status: str = "", action: str = "", reply_code: str = "") -> str:
    if reason in NOT_FAILURES:
        return "none"
    if is_hard(reason, status, action, reply_code):
        return "hard"
    if reason in POLICY_REASONS:
        return "policy"
    return "soft"
