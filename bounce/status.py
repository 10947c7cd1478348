"""What the codes themselves say: RFC 3463 enhanced status codes and RFC 5321 reply codes.

The class decides permanence (RFC 3463 §3.1): 2.X.X success, 4.X.X persistent transient failure (may
succeed later), 5.X.X permanent failure. The subject says where the failure lies (X.1 addressing, X.2
mailbox, X.3 mail system, X.4 network and routing, X.5 protocol, X.6 content, X.7 security or policy),
and each registered detail code has a defined meaning, mapped here to the reason that names it.
`find_status` / `find_reply_code` pick the telling code out of a reply text; `prefer_status` chooses
between a DSN's Status field and the code written in its diagnostic; `pseudo_status` gives a status to a
bounce that carries none (Sisimai's x.0.9yy convention, one number per reason).
"""

from __future__ import annotations

import re

# The detail codes of RFC 3463 and the IANA registry of enhanced status codes (RFC 3886, 4468, 4865,
# 4954, 5248, 6710, 7293, 7372, 7504, 7505, 8098 …), each mapped to the reason its definition names.
STATUS_REASON = {
    "2.1.5": "delivered", "2.6.0": "delivered",
    "4.1.6": "hasmoved", "4.1.7": "rejected", "4.1.8": "rejected", "4.1.9": "systemerror",
    "4.2.1": "blocked", "4.2.2": "mailboxfull", "4.2.3": "exceedlimit", "4.2.4": "filtered",
    "4.3.1": "systemfull", "4.3.2": "notaccept", "4.3.3": "systemerror", "4.3.5": "systemerror",
    "4.4.1": "expired", "4.4.2": "networkerror", "4.4.3": "systemerror", "4.4.4": "networkerror",
    "4.4.5": "systemfull", "4.4.6": "networkerror", "4.4.7": "expired", "4.4.8": "networkerror",
    "4.5.3": "systemerror", "4.5.5": "systemerror", "4.6.0": "contenterror", "4.6.2": "contenterror",
    "4.6.5": "contenterror", "4.7.1": "blocked", "4.7.2": "blocked", "4.7.5": "securityerror",
    "4.7.6": "securityerror", "4.7.7": "securityerror", "4.7.12": "securityerror",
    "4.7.15": "securityerror", "4.7.16": "mesgtoobig", "4.7.24": "authfailure", "4.7.25": "requireptr",
    "4.7.26": "authfailure",
    "5.1.0": "userunknown", "5.1.1": "userunknown", "5.1.2": "hostunknown", "5.1.3": "userunknown",
    "5.1.4": "filtered", "5.1.6": "hasmoved", "5.1.7": "rejected", "5.1.8": "rejected",
    "5.1.9": "systemerror", "5.1.10": "notaccept", "5.2.0": "filtered", "5.2.1": "filtered",
    "5.2.2": "mailboxfull", "5.2.3": "exceedlimit", "5.2.4": "filtered", "5.3.0": "systemerror",
    "5.3.1": "systemfull", "5.3.2": "notaccept", "5.3.3": "systemerror", "5.3.4": "mesgtoobig",
    "5.3.5": "systemerror", "5.4.0": "networkerror", "5.4.3": "systemerror", "5.4.4": "hostunknown",
    "5.5.2": "syntaxerror", "5.5.3": "toomanyconn", "5.5.4": "systemerror", "5.5.5": "systemerror",
    "5.5.6": "syntaxerror", "5.6.0": "contenterror", "5.6.1": "contenterror", "5.6.2": "contenterror",
    "5.6.3": "contenterror", "5.6.5": "contenterror", "5.6.6": "contenterror", "5.6.7": "contenterror",
    "5.6.8": "contenterror", "5.6.9": "contenterror", "5.7.0": "securityerror",
    "5.7.1": "securityerror", "5.7.2": "securityerror", "5.7.3": "securityerror",
    "5.7.4": "securityerror", "5.7.5": "securityerror", "5.7.6": "securityerror",
    "5.7.7": "securityerror", "5.7.8": "securityerror", "5.7.9": "securityerror",
    "5.7.10": "securityerror", "5.7.11": "securityerror", "5.7.13": "suspend",
    "5.7.14": "securityerror", "5.7.15": "securityerror", "5.7.16": "mesgtoobig",
    "5.7.17": "hasmoved", "5.7.18": "hasmoved", "5.7.19": "securityerror", "5.7.20": "authfailure",
    "5.7.21": "authfailure", "5.7.22": "authfailure", "5.7.23": "authfailure", "5.7.24": "authfailure",
    "5.7.25": "requireptr", "5.7.26": "authfailure", "5.7.27": "notaccept", "5.7.28": "spamdetected",
    "5.7.29": "authfailure", "5.7.30": "failedstarttls",
}
# Reason-only pseudo codes (x.0.9yy), the convention Sisimai uses when a bounce carries no status.
_PSEUDO = {
    "onhold": 901, "syntaxerror": 902, "norelaying": 909, "filtered": 910, "userunknown": 911,
    "hostunknown": 912, "hasmoved": 916, "rejected": 918, "suspend": 921, "mailboxfull": 922,
    "exceedlimit": 923, "authfailure": 926, "systemerror": 930, "systemfull": 931, "notaccept": 932,
    "mesgtoobig": 934, "mailererror": 939, "networkerror": 944, "toomanyconn": 945, "speeding": 946,
    "expired": 947, "contenterror": 960, "securityerror": 970, "blocked": 971,
    "policyviolation": 972, "requireptr": 973, "notcompliantrfc": 974, "badreputation": 975,
    "failedstarttls": 976, "spamdetected": 980, "virusdetected": 981, "undefined": 900,
}
# No temporary flavour of these: an address does not "temporarily not exist".
_NO_TEMPORARY_PSEUDO = frozenset({"hostunknown", "userunknown", "hasmoved"})
_TEMP_FILTERED = 924

_STATUS_RE = re.compile(r"(?<![\d.vV])([245])\.([0-7])\.(\d{1,3})(?![\d])")
_IPV4_RE = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
_REPLY_RE = re.compile(r"(?<![\d.\-])([245][0-5]\d)(?![\d.])")
_VALID_REPLY = frozenset({
    "211", "214", "220", "221", "235", "250", "251", "252", "253", "421", "422", "430", "432", "450", "451",
    "452", "453", "454", "455", "458", "459", "500", "501", "502", "503", "504", "521", "523", "524", "525",
    "530", "533", "534", "535", "538", "550", "551", "552", "553", "554", "555", "556",
})


def find_status(text: str, klass: str = "") -> str:
    """The most telling enhanced status code in `text` (x.0.0 and 4.4.7 only when nothing better)."""
    if not text or "." not in text:
        return ""
    masked = _IPV4_RE.sub("#", text) if text.count(".") >= 3 else text
    found = ""
    vague = ""
    for m in _STATUS_RE.finditer(masked):
        if klass and m.group(1) != klass:
            continue
        code = m.group(0)
        if (m.group(2) == "0" and m.group(3) == "0") or code == "4.4.7":
            vague = vague or code
            continue
        found = prefer_status(found, code, "") if found else code
    return found or vague


def find_reply_code(text: str, klass: str = "") -> str:
    """The first SMTP reply code in `text`: of the class given (2, 4 or 5), else a failure (4xx, 5xx)."""
    if not text:
        return ""
    for m in _REPLY_RE.finditer(text):
        code = m.group(1)
        if code in _VALID_REPLY and (code[0] == klass if klass else code[0] != "2"):
            return code
    return ""


def prefer_status(field: str, in_text: str, reply_code: str) -> str:
    """Choose between the DSN Status field and the code written in the diagnostic text."""
    if not field:
        return in_text
    if not in_text or field == in_text:
        return field
    if reply_code and field[0] != in_text[0]:
        if reply_code[0] == field[0]:
            return field
        if reply_code[0] == in_text[0]:
            return in_text
    generic_field = field.endswith(".0.0")
    if generic_field:
        return field if in_text.endswith(".0.0") else in_text
    if (".0" in field[1:]) and ".0" not in in_text[1:]:
        return in_text
    if in_text.endswith(".0.0"):
        return field
    if field in ("4.4.7", "4.7.0") or field.startswith("5.3.") or field[1:4] in (".5.1", ".5.2", ".5.4",
                                                                                     ".5.5"):
        return in_text
    if field == "5.1.1":
        return field if (".0" in in_text[1:] or in_text.startswith("5.5.")) else in_text
    if field == "5.1.3" and in_text.startswith("5.7."):
        return in_text
    return field


def pseudo_status(reason: str, temporary: bool) -> str:
    """A reason-only status code (x.0.9yy) for a bounce that carries no status of its own."""
    num = _PSEUDO.get(reason)
    if num is None:
        return ""
    if temporary and reason not in _NO_TEMPORARY_PSEUDO:
        return f"4.0.{_TEMP_FILTERED if reason == 'filtered' else num}"
    return f"5.0.{num}"


# What a bare SMTP reply code says when nothing else does (RFC 5321 §4.2.3, RFC 4954, RFC 7504).
REPLY_REASON = {"452": "systemfull", "500": "syntaxerror", "501": "syntaxerror",
                "502": "syntaxerror", "503": "syntaxerror", "504": "syntaxerror", "521": "notaccept",
                "556": "notaccept", "422": "securityerror", "432": "securityerror", "523": "securityerror",
                "524": "securityerror", "525": "securityerror", "534": "securityerror",
                "535": "securityerror", "538": "securityerror"}
# What a subject says when its detail code is unregistered or vague (RFC 3463 §3.2 – 3.8).
SUBJECT_REASON = {"6": "contenterror", "7": "securityerror"}


def status_reason(status: str) -> str:
    """The reason a status code's registered meaning names ("" for unknown or vague codes)."""
    return STATUS_REASON.get(status, "")


def subject_reason(status: str) -> str:
    """The reason the subject alone says (content for X.6, security and policy for X.7)."""
    return SUBJECT_REASON.get(status[2:3], "") if status[1:2] == "." and status[3:4] == "." else ""


def is_permanent(status: str, reply_code: str = "") -> bool:
    """5.X.X, or with no status a 5yz reply: the failure will not go away by retrying (RFC 3463 §3.1)."""
    if status:
        return status.startswith("5")
    return reply_code.startswith("5")
