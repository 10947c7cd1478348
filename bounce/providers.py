"""Reply codes and phrasings of particular providers, from the providers' published error pages.

Some providers write their own codes into the reply text (Orange's `LPN007_416`, Facebook's `RCP-P1`,
Cox's `AUP#CDRBL`, GoDaddy's `IB607`) or use a phrase that means something else coming from them (NTT
docomo answers "Unknown user" to senders its users block). Each rule names the family it belongs to
(the provider, as bounce corpora name it) so that a scorer can switch one provider's rules off, and a
rule with a host pattern applies only when the remote MTA or the recipient's domain matches it.

Wording that means the same whoever writes it (Gmail's "The email account that you tried to reach does
not exist", Microsoft's "RESOLVER.ADR.RecipientNotFound") belongs to `bounce.phrases`, not here.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from bounce.phrases import anchor


@dataclass(frozen=True, slots=True)
class Rule:
    family: str
    host: re.Pattern[str] | None
    anchor: str
    pattern: re.Pattern[str]
    reason: str


def _rule(family: str, host: str, pattern: str, reason: str) -> Rule:
    return Rule(family, re.compile(host) if host else None, anchor(pattern) or "", re.compile(pattern), reason)


RULES: tuple[Rule, ...] = (
    # Orange / Wanadoo (France): codes of its published list of SMTP errors.
    _rule("franceptt", "", r"\blpn007_416\b", "userunknown"),
    _rule("franceptt", "", r"\blpn007_426\b", "suspend"),
    _rule("franceptt", "", r"\bofr_506\b", "spamdetected"),
    _rule("franceptt", "", r"\bofr006_102\b", "blocked"),
    _rule("franceptt", "", r"\bofr_999\b", "blocked"),
    _rule("franceptt", "", r"\blpn000_630\b", "policyviolation"),
    _rule("franceptt", "", r"\bofr005_505\b", "systemerror"),
    # GoDaddy: IB codes of its bounce reference.
    _rule("godaddy", "", r"\bib607\b", "speeding"),
    # Cox / Spectrum: AUP codes (acceptable use policy) of their error-code pages.
    _rule("cox", "", r"aup#cdrbl", "blocked"),
    _rule("cox", "", r"aup#in-1310", "toomanyconn"),
    # Facebook: RCP-P1 the address does not exist, RCP-P2 the recipient's preferences refuse it.
    _rule("facebook", "", r"\brcp-p1\b", "userunknown"),
    _rule("facebook", "", r"\brcp-p2\b", "filtered"),
    # Mimecast: its policy and signature refusals.
    _rule("mimecast", "", r"host network not allowed", "policyviolation"),
    _rule("mimecast", "", r"mcspamsignature", "virusdetected"),
    # Tencent (QQ mail): sending frequency limits.
    _rule("tencent", "", r"frequency limited", "toomanyconn"),
    # Yahoo answers RCPT for a mailbox that does not exist with "This user doesn't have a … account".
    _rule("yahooinc", r"yahoo", r"user doesn'?t have an? \S+ account", "userunknown"),
    # au (KDDI) says "550 <a@b>: User unknown" at RCPT; without the address it is its content filter.
    _rule("kddi", r"ezweb\.ne\.jp|\bau\.com", r"x@x>?: user unknown", "userunknown"),
    # NTT docomo answers "Unknown user" to senders its users have blocked.
    _rule("nttdocomo", r"docomo", r"unknown user", "rejected"),
    # Outlook.com answers an unknown mailbox with RFC 5321's bare "mailbox unavailable" text.
    _rule("outlook", r"outlook|hotmail|live\.com|msn\.com", r"requested action not taken: mailbox unavailable",
          "userunknown"),
)
FAMILIES = frozenset(r.family for r in RULES)


def provider_reason(text: str, host: str, disabled: Collection[str] = ()) -> str:
    """The reason a provider's own code or phrase gives, or ""."""
    for rule in RULES:
        if rule.anchor in text and (rule.host is None or rule.host.search(host)) and rule.pattern.search(text) \
                and rule.family not in disabled:
            return rule.reason
    return ""
