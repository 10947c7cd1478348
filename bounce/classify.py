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
from collections.abc import Iterable

REASONS = (
    "userunknown", "hostunknown", "mailboxfull", "filtered", "rejected", "blocked", "policyviolation",
    "authfailure", "spamdetected", "virusdetected", "securityerror", "expired", "networkerror",
    "systemerror", "systemfull", "suspend", "hasmoved", "mesgtoobig", "exceedlimit", "norelaying",
    "notaccept", "onhold", "requireptr", "badreputation", "contenterror", "toomanyconn", "speeding",
    "syntaxerror", "notcompliantrfc", "mailererror", "failedstarttls", "vacation", "feedback",
    "delivered", "undefined",
)
MAX_TEXT = 4000
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

# --- enhanced status codes -------------------------------------------------------------------------
# RFC 3463 / IANA registry subjects mapped to the reason they most often mean.
_STATUS_REASON = {
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


# --- text patterns ---------------------------------------------------------------------------------
# What remote hosts say, per reason, as regular expressions on lower-cased text in which addresses are
# "x@x" and links are reduced to their host name. Written from the wording of real MTAs and providers.
_PHRASES: dict[str, tuple[str, ...]] = {
    "mailboxfull": (
        r"mail ?box (?:is )?(?:full|over ?quota|exceeded|size limit exceeded)", r"quota (?:exceeded|full)",
        r"over ?quota", r"exceeded (?:the |his |her |their )?(?:storage|quota|mailbox)", r"disk quota",
        r"(?:mailbox|mail box|inbox|mailfolder|account|user) (?:is )?(?:full|over)", r"box (?:is )?full",
        r"full mail ?box", r"exceed(?:s|ed)? (?:the )?(?:mailbox |storage )?quota",
        r"would exceed (?:the |their )?(?:mailbox )?quota", r"too much mail data",
        r"user has exhausted allowed storage space", r"maildir (?:has )?over", r"quota violation",
        r"space (?:is )?not enough", r"mailbox (?:has )?exceeded", r"holding more than",
    ),
    "mesgtoobig": (
        r"message (?:is )?too (?:big|large)", r"message size exceeds",
        r"exceeds? (?:the )?(?:maximum |max )?(?:message |mail )?size",
        r"size (?:of (?:the )?message )?(?:is )?(?:too large|exceeds)",
        r"message (?:length|size) (?:is )?(?:too|exceeds|over)", r"mail too large",
        r"maximum (?:allowed )?message size", r"message file too big", r"larger than (?:the )?(?:maximum|max)",
        r"too big for (?:the )?system",
    ),
    "exceedlimit": (
        r"message length exceeds administrative limit",
        r"exceeds? (?:the )?(?:recipient'?s? )?(?:administrative|per-mailbox) limit",
        r"message too large for this recipient",
    ),
    "suspend": (
        r"(?:account|mailbox|address|user|recipient)(?: account)? (?:has been |is |was )?(?:temporarily )?"
        r"(?:disabled|suspended|deactivated|locked|frozen|on hold|expired|discontinued)",
        r"(?:disabled|suspended|inactive|deactivated|locked) (?:account|mailbox|user)",
        r"boite du destinataire (?:archivee|fermee)", r"account (?:is )?(?:not active|inactive)",
        r"this (?:account|mailbox) (?:has been|is) (?:disabled|blocked|suspended)", r"recipient suspended",
        r"is a deactivated mailbox", r"user (?:account )?is unavailable", r"not an active (?:account|address)",
        r"the email account that you tried to reach is disabled", r"tried to reach is (?:inactive|disabled)",
        r"delivery to this mailbox has been (?:suspended|disabled)", r"account is locked",
        r"(?:user|account|mailbox) (?:\S+ )?(?:is )?temporar(?:y|ily) (?:locked|disabled|suspended)",
    ),
    "hasmoved": (
        r"(?:user|mailbox|address|recipient) has moved", r"has been moved",
        r"no longer (?:at|with|available at) this", r"address has changed", r"moved (?:to|permanently)",
    ),
    "norelaying": (
        r"relay(?:ing)? (?:access )?(?:denied|prohibited|not (?:allowed|permitted|authori[sz]ed))",
        r"not (?:allowed|permitted|authori[sz]ed) to relay", r"unable to relay", r"we do not relay",
        r"no relaying", r"relay not permitted", r"relaying (?:mail )?(?:to .{0,80} )?(?:is )?(?:denied|refused)",
        r"not a gateway", r"cannot relay", r"can'?t relay", r"relay access", r"open relay",
        r"(?:domain|host) isn'?t in my list of allowed rcpthosts", r"not configured to relay",
        r"email address is not verified",
    ),
    "authfailure": (
        r"spf (?:check |validation |verification )?(?:failed|failure|fail|softfail|error)",
        r"(?:bad|invalid|failed|broken) spf", r"spf[:=] ?(?:fail|softfail|permerror)",
        r"sender policy framework", r"\bdkim\b.{0,40}(?:fail|invalid|bad|missing|required)",
        r"(?:fail|invalid|bad|missing|no)\w* \bdkim\b", r"\bdmarc\b", r"domainkeys",
        r"does not designate .{0,80} as permitted sender", r"unauthenticated (?:e-?mail|message)",
        r"authentication (?:check|checks|results?) (?:failed|fail)", r"sender (?:is )?not authenticated",
        r"\bbatv\b", r"fails? to pass authentication", r"does not have authentication information",
        r"required authentication level",
    ),
    "userunknown": (
        r"(?:user|recipient|mailbox|account|addressee|local part)s? (?:is )?"
        r"(?:unknown|not (?:found|known|exist|valid|listed|recognized|recognised|local|present)"
        r"|does ?n[o']t exist|doesn'?t exist|non-?existent|invalid|unavailable|not found)",
        r"unknown (?:user|recipient|mailbox|local[- ]?part|address|e-?mail address|account|alias)",
        r"no such (?:user|recipient|mailbox|address|account|person|local user|addressee)",
        r"(?:invalid|bad|illegal) (?:recipient|mailbox|user|destination address)",
        r"(?:user|mailbox|recipient|account|address) (?:\S+ )?(?:does ?n[o']t|doesn'?t) exist",
        r"not a valid (?:user|mailbox|recipient)", r"is not (?:a )?(?:valid|known) (?:user|mailbox|recipient)",
        r"no mailbox (?:here|found|by that name)",
        r"recipient (?:address )?rejected: (?:user unknown|unknown|invalid (?:user|recipient)|undeliverable)",
        r"unknown or illegal (?:user|alias)", r"user (?:does|did) not exist", r"no such address",
        r"mailbox unavailable", r"mailbox not (?:found|available)", r"not (?:our|a) customer",
        r"invalid final delivery userid", r"account (?:does not exist|not found|unavailable)",
        r"address (?:does not exist|unknown|not found|invalid)", r"no account by that name",
        r"is not an active address", r"there is no one at this address", r"no longer (?:valid|exists?)",
        r"not (?:listed|found) in (?:the )?(?:address book|directory|domino directory|name directory)",
        r"email account that you tried to reach does not exist", r"(?:user|mailbox) lookup failed",
        r"badrcptto", r"recipient not (?:found|ok|exist)", r"unknown local user", r"user missing",
        r"(?:this )?user doesn'?t have an? \S+ account", r"undeliverable address",
        r"recipient (?:address )?(?:not found|unknown|does not exist|invalid)", r"utilisateur inconnu",
        r"destinataire inconnu", r"no existe", r"unbekannte?r? (?:empf|benutzer)", r"nessun utente",
        r"adresse (?:d au moins un destinataire )?invalide", r"mailbox (?:name )?(?:not allowed|invalid)",
        r"address (?:could ?n[o']t|cannot) be found", r"not (?:a )?(?:known|valid) (?:e-?mail )?address",
        r"recipient address rejected: access denied", r"resolver\.adr\.recipient ?not ?found",
        r"recipient not found by smtp address lookup",
    ),
    "filtered": (
        r"message filtered", r"rejected due to user rules", r"user refuses to receive",
        r"refused due to recipient preferences", r"blocked by the recipient",
        r"recipient is only accepting mail from", r"is not accepting any mail", r"user reject",
        r"user not found", r"account is protected", r"bounced address", r"has restricted sms",
        r"refuse to receive", r"not authorized to (?:send|receive|post)",
    ),
    "requireptr": (
        r"\bptr\b", r"reverse ?(?:dns|lookup|name|address|resolution)", r"\brdns\b",
        r"(?:cannot|can'?t|could not|unable to) (?:find|resolve|verify) (?:your |the )?"
        r"(?:hostname|host name|ip address|address|client)",
        r"unresolvable (?:ip|address|hostname|host)", r"no (?:dns )?(?:ptr|reverse)",
        r"hostname (?:does not|doesn'?t) match", r"dns reverse (?:failed|failure)",
        r"mismatch(?:es)? (?:the )?client ip", r"unverif[yi]?able sending ip",
        r"ip name (?:lookup|possibly forged)", r"(?:client|host) (?:name|ip) (?:does not|doesn'?t) resolve",
    ),
    "notcompliantrfc": (
        r"rfc ?(?:2822|5322|822|5321|1123)", r"not (?:rfc|standard)[- ]compliant", r"non[- ]compliant",
        r"multiple (?:from|to|subject|date|message-id|sender) (?:headers|fields)", r"duplicate header",
        r"multiple addresses in (?:the )?from", r"message (?:is )?not (?:rfc|in compliance)",
        r"header (?:is )?(?:missing|malformed|invalid)", r"missing (?:date|from|message-id|subject) header",
        r"bare lf",
    ),
    "badreputation": (
        r"reputation", r"unexpected volume or user complaints", r"sender score",
        r"ip (?:is )?not (?:trusted|allowed to send)",
    ),
    "contenterror": (
        r"content-type (?:is )?(?:invalid|not|unsupported|missing)", r"improper use of 8-bit",
        r"illegal (?:character|attachment)", r"message header (?:size|is|not)",
        r"invalid (?:mime|header|charset|encoding)", r"mime (?:error|type)", r"line too long",
    ),
    "rejected": (
        r"sender (?:e-?mail )?(?:address )?(?:rejected|denied|blocked|blacklisted|refused|is invalid"
        r"|invalid|verify failed|not allowed|unknown|not pre-approved|domain (?:is )?(?:empty|invalid"
        r"|must exist|not found))",
        r"(?:invalid|bad|bogus|unroutable) (?:sender|mail from|envelope sender|return path)",
        r"domain of sender address .{0,80} does not (?:exist|resolve)",
        r"sender domain .{0,80} (?:does not exist|not found|unresolvable|unknown)",
        r"null sender", r"empty envelope sender", r"blacklisted sender",
        r"sender is (?:in|on) (?:my|our|the) (?:black|block) ?list", r"to/from an address that has been blacklisted",
        r"(?:mail from|sender|envelope from)[: ].{0,80}(?:rejected|refused|not (?:allowed|accepted|owned))",
        r"returned mail not accepted", r"administrative prohibition", r"address rejected",
        r"not allowed to post", r"does not accept mail from", r"recipient addresses rejected ?: access denied",
        r"sending domain .{0,80} does not exist", r"(?:emetteur|expediteur) invalide",
        r"no such domain .{0,80} (?:sender|from)", r"your (?:e-?mail )?address has been blacklisted",
        r"sender was rejected", r"mail from not owned", r"sender not pre-approved",
        r"fully qualified (?:e-?mail )?address required",
    ),
    "hostunknown": (
        r"host (?:or domain )?(?:name )?(?:not found|unknown|does not exist|lookup failed)",
        r"unknown (?:host|domain)",
        r"(?:recipient |destination )?domain (?:name )?(?:does not exist|not found|unknown|is invalid|"
        r"not exist|does not resolve)",
        r"no such (?:domain|host)", r"unrouteable (?:address|mail domain)", r"unroutable address",
        r"couldn'?t find any host", r"name service error", r"nxdomain",
        r"dns lookup failure: host .{0,80} not found", r"domain (?:could not be|cannot be) (?:found|resolved)",
        r"host not found", r"no route to domain",
        r"(?:recipient|destination) (?:host|domain|system) (?:is )?(?:invalid|unknown|not found)",
        r"unable to resolve (?:the )?(?:host|domain|mx)", r"domain must exist", r"domain may not exist",
        r"illegal host/domain name", r"domain isn'?t in (?:my|our) list", r"domain is not reachable",
        r"(?:^|\b\d{3} )(?:[a-z0-9-]+\.)+[a-z]{2,} does not exist",
    ),
    "spamdetected": (
        r"spam(?!haus|cop|trap|-?rl)", r"junk ?mail", r"\bube\b", r"message content rejected", r"unsolicited",
        r"bulk ?mail", r"blacklisted url", r"uribl", r"surbl", r"message (?:content )?(?:looks|appears) like",
        r"classified as (?:bulk|junk)", r"considered (?:as )?(?:spam|junk|bulk)",
        r"content (?:filter|scan) (?:rejected|rejection)", r"dangerous content",
        r"rejected by (?:the )?content filter",
    ),
    "speeding": (
        r"(?<!connection )rate limit", r"ratelimit", r"too fast", r"sending rate", r"throttl",
        r"too many (?:messages|mails|emails) (?:in|per|sent)", r"message rate",
        r"exceeded (?:the )?(?:sending |message )?rate",
    ),
    "toomanyconn": (
        r"too many (?:connections|concurrent|simultaneous|sessions|recipients|hops? from)",
        r"connection (?:limit|rate limit|rate)", r"(?:maximum|max|concurrency) (?:number of )?connections",
        r"exceeded (?:the )?(?:maximum )?(?:number of )?connections", r"too many errors", r"frequency limited",
        r"too much (?:load|traffic)",
    ),
    "blocked": (
        r"block(?:ed|ing|list)", r"black ?list", r"\bdnsbl\b", r"\brbl\b", r"spamhaus", r"spamcop",
        r"barracuda", r"sorbs", r"listed (?:at|on|in|by)", r"banned", r"client host .{0,80}rejected",
        r"(?:your|the sending|sender|sending|client) (?:ip|host|server|network|mail server)(?: address)? "
        r"(?:has been |is |was )?(?:rejected|blocked|not allowed|denied|refused|listed)",
        r"messages from .{0,80} (?:weren'?t|were not) sent", r"please use the smtp server of your isp",
        r"dial-?up", r"dynamic(?:ally)? (?:ip|assigned|address|pool)", r"residential",
        r"invalid ip for sending", r"connection (?:refused|rejected|denied)", r"not allowed to (?:send|connect)",
        r"refused by (?:local )?policy", r"(?:ip|host) (?:address )?(?:is )?not (?:allowed|permitted)",
        r"greylist", r"refused to talk to me", r"poor email", r"rejected (?:due to|because of) (?:your )?ip",
        r"mail server (?:at .{0,80} )?(?:is )?(?:rejected|blocked)", r"rejecting (?:connection|mail) from",
        r"too many invalid recipients", r"your (?:message|mail) has been rejected",
    ),
    # Reasons looked for in the text only, after the ones above.
    "policyviolation": (
        r"policy (?:violation|reasons|rejection|restriction)", r"violat\w* (?:\w+ )?polic",
        r"against (?:our |the )?polic", r"prohibited (?:attachment|content|file|by policy)",
        r"rejected by (?:\w+ )?policy", r"content policy",
        r"attachment (?:type )?(?:is )?(?:not allowed|prohibited|blocked)", r"local policy",
        r"organization'?s? (?:policy|security)", r"message (?:was )?not accepted for policy",
        r"protocol violation", r"denied by policy", r"content presents a potential", r"for policy reasons",
    ),
    "virusdetected": (r"virus", r"malware", r"infected", r"trojan", r"\bworm\b", r"malicious"),
    "systemerror": (
        r"system error", r"internal (?:server |system )?error", r"local error in processing", r"server error",
        r"mail (?:system|server) (?:problem|error)", r"configuration error",
        r"temporar(?:y|ily) (?:local )?(?:problem|error)", r"out of memory",
        r"unable to (?:process|deliver).{0,80} (?:now|later)", r"i/o error", r"queue file write error",
        r"unknown mailer error", r"timeout waiting for", r"transaction failed$", r"^\d{3} transaction failed",
        r"service (?:currently |temporarily )?(?:unavailable|not available)", r"could not load",
    ),
    "networkerror": (
        r"network error", r"connection (?:reset|lost|dropped)", r"no route to host",
        r"dns (?:lookup )?(?:error|problem|timeout)", r"name ?server (?:timeout|failure|error)",
        r"bad connection", r"host (?:is )?unreachable", r"lost connection", r"(?:routing|mail) loop",
        r"too many hops", r"hop count exceeded", r"loop detected", r"name service error .{0,80} try again",
        r"host name lookup failure",
    ),
    "systemfull": (
        r"system (?:storage|disk) (?:is )?full", r"insufficient (?:system storage|disk space)",
        r"disk (?:is )?full", r"mail system (?:is )?full", r"file system full", r"out of (?:disk )?space",
    ),
    "notaccept": (
        r"does not accept (?:e-?)?mail", r"no smtp service", r"null mx",
        r"not accepting (?:network )?(?:mail|messages)", r"indicated no smtp service",
        r"couldn'?t find a mail exchanger", r"no mx (?:record|host)", r"does not receive (?:e-?)?mail",
        r"accepts no mail", r"no mx found",
    ),
    "expired": (
        r"retry time(?:out)? (?:exceeded|not reached)", r"(?:delivery|message) (?:time )?(?:has )?expired",
        r"giving up", r"(?:too long|been) in (?:the )?queue", r"message expired", r"expired:",
        r"(?:could not|couldn'?t|was not|not) (?:be )?delivered (?:within|for|after|in)",
        r"has not (?:yet )?been delivered", r"all hosts have been failing", r"unable to deliver in",
        r"could not deliver for the last", r"delivery attempts will continue", r"retry limit",
        r"did not accept our requests to connect", r"remote host is not responding", r"time to live",
        r"failed \d+ attempts", r"delivery failed \d+ attempts", r"maximum (?:time|retry)",
        r"queue (?:life ?time|timeout)", r"delivery (?:period|timeout) expired", r"timed out",
        r"will be retried", r"socket error", r"host not reachable",
    ),
    "failedstarttls": (
        r"starttls", r"\btls\b.{0,80}(?:required|failed|negotiat)", r"encryption required",
        r"(?:does not|doesn'?t) support (?:tls|ssl|starttls)", r"must issue a starttls",
    ),
    "securityerror": (
        r"authentication (?:required|failed|credentials)", r"unauthenticated senders?", r"smtp authentication",
        r"security (?:policy|error)", r"\bcertificate\b", r"not authori[sz]ed", r"sender address forgery",
    ),
    "mailererror": (
        r"x-unix", r"mailer error", r"procmail", r"command (?:failed|died|output)", r"exit (?:code|status)",
        r"pipe to \|", r"program (?:exited|failed)", r"unknown mailer", r"permission denied",
        r"mail delivery to .{0,80}program",
    ),
    "syntaxerror": (
        r"syntax error", r"command (?:unrecognized|not recognized|not implemented)",
        r"bad sequence of commands", r"parameter not implemented", r"malformed (?:address|command)",
        r"unrecognized command", r"invalid command",
    ),
}

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


class _Phrases:
    """The phrases of one reason. Those with an "anchor" (a literal every match contains) only run
    when a _Doc has seen their anchor in the text; the others run together as one regex."""

    __slots__ = ("always", "anchored", "name")

    def __init__(self, name: str, parts: Iterable[str]) -> None:
        self.name = name
        loose: list[str] = []
        self.anchored: list[tuple[str, re.Pattern[str]]] = []
        for part in parts:
            anchor = _anchor(part)
            if anchor is None:
                loose.append(part)
            else:
                self.anchored.append((anchor, re.compile(part)))
        self.always = re.compile("|".join(f"(?:{p})" for p in loose)) if loose else None

    def search(self, doc: _Doc) -> bool:
        for pattern in doc.hits.get(self.name, ()):
            if pattern.search(doc.text):
                return True
        return bool(self.always and self.always.search(doc.text))


class _Doc:
    """A normalized diagnostic and, found in one pass, which anchors of which reasons occur in it."""

    __slots__ = ("hits", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        hits: dict[str, list[re.Pattern[str]]] = {}
        index = _ANCHOR_INDEX
        for i in range(len(text) - 2):
            entries = index.get(text[i : i + 3])
            if entries:
                for anchor, reason, pattern in entries:
                    if text.startswith(anchor, i):
                        found = hits.setdefault(reason, [])
                        if pattern not in found:
                            found.append(pattern)
        self.hits = hits


def _anchor(pattern: str) -> str | None:
    """The longest literal run at the top level of `pattern` that every match contains (≥ 3 chars)."""
    runs: list[str] = []
    cur = ""
    depth = 0
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            nxt = pattern[i + 1 : i + 2]
            if depth == 0 and nxt and nxt in ".-/'\"#()[]?*+|{}^$ ":
                cur += nxt
            elif depth == 0:
                runs.append(cur)
                cur = ""
            i += 2
            continue
        if ch == "[":
            end = pattern.find("]", i + 2)
            if depth == 0:
                runs.append(cur)
                cur = ""
            i = end + 1 if end > 0 else len(pattern)
            continue
        if ch == "(":
            if depth == 0:
                runs.append(cur)
                cur = ""
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            return None
        elif depth == 0:
            if ch in "?*{":
                runs.append(cur[:-1])  # the character before is optional
                cur = ""
                if ch == "{":
                    end = pattern.find("}", i)
                    i = end + 1 if end > 0 else len(pattern)
                    continue
            elif ch in ".^$":
                runs.append(cur)
                cur = ""
            elif ch != "+":
                cur += ch
        i += 1
    runs.append(cur)
    best = max(runs, key=len)
    return best if len(best.strip()) >= 3 else None


_TEXT: dict[str, _Phrases] = {reason: _Phrases(reason, parts) for reason, parts in _PHRASES.items()}
# Anchors by their first three characters, so that one pass over a text finds all that occur.
_ANCHOR_INDEX: dict[str, list[tuple[str, str, re.Pattern[str]]]] = {}
for _phrases in _TEXT.values():
    for _anchor_text, _pattern in _phrases.anchored:
        _ANCHOR_INDEX.setdefault(_anchor_text[:3], []).append((_anchor_text, _phrases.name, _pattern))
del _phrases, _anchor_text, _pattern

# Replies only ever given to RCPT TO.
_AT_RCPT = re.compile(r"recipient address rejected|address (?:could ?n[o']t|cannot) be found|resolver\.adr\.|"
                      r"recipient not found by smtp address lookup")
# Codes and phrasings some providers use, and what they mean (from the providers' own documentation
# pages: Orange/Wanadoo, GoDaddy, Cox/Charter, Facebook, Mimecast, Tencent, Yahoo, KDDI, NTT docomo,
# Microsoft). A rule with a host pattern applies only when the remote MTA or the recipient's domain
# matches it.
_PROVIDER_RULES = tuple((re.compile(h) if h else None, _anchor(p) or "", re.compile(p), r) for h, p, r in (
    ("", r"\blpn007_416\b", "userunknown"), ("", r"\blpn007_426\b", "suspend"),
    ("", r"\bofr_506\b", "spamdetected"), ("", r"\bofr006_102\b", "blocked"), ("", r"\bofr_999\b", "blocked"),
    ("", r"\blpn000_630\b", "policyviolation"), ("", r"\bofr005_505\b", "systemerror"),
    ("", r"\bib607\b", "speeding"), ("", r"aup#cdrbl", "blocked"), ("", r"aup#in-1310", "toomanyconn"),
    ("", r"\brcp-p2\b", "filtered"), ("", r"\brcp-p1\b", "userunknown"), ("", r"\[tss04\]", "rejected"),
    ("", r"host network not allowed", "policyviolation"), ("", r"mcspamsignature", "virusdetected"),
    ("", r"frequency limited", "toomanyconn"),
    # Yahoo answers RCPT for a mailbox that does not exist with "This user doesn't have a … account".
    (r"yahoo", r"user doesn'?t have an? \S+ account", "userunknown"),
    # au (KDDI) says "550 <a@b>: User unknown" at RCPT; without the address it is its content filter.
    (r"ezweb\.ne\.jp|\bau\.com", r"x@x>?: user unknown", "userunknown"),
    # NTT docomo answers "Unknown user" to senders its users have blocked.
    (r"docomo", r"unknown user", "rejected"),
    (r"outlook|hotmail|live\.com|msn\.com", r"requested action not taken: mailbox unavailable", "userunknown"),
))
# Commands sent before DATA: a content filter cannot have refused the message there.
_BEFORE_DATA = frozenset({"CONN", "EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT"})
# Addresses and links say nothing about the failure ("blocked@example.net", ".../reason/#spam").
_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+")
_URL = re.compile(r"(?:https?://|\b(?=www\.))([^/\s?#]+)\S*")


def _normalize(diagnostic: str) -> str:
    # Long texts are quoted messages or footers, not the reply: the reason is in the first lines.
    text = diagnostic[:MAX_TEXT].lower()
    if "@" in text:
        text = _EMAIL.sub("x@x", text)
    if "://" in text or "www." in text:
        text = _URL.sub(r"\1", text)
    return " ".join(text.split())


def _rejected_text(doc: _Doc) -> bool:
    return _TEXT["rejected"].search(doc) and "recipient address rejected" not in doc.text and not \
        _TEXT["policyviolation"].search(doc)


def _specific(reason: str, mapped: str, doc: _Doc, command: str, temporary: bool) -> bool:
    """Does `reason` apply, from the status code's meaning (`mapped`) or from the text?"""
    says = _TEXT[reason].search
    if temporary and reason in HARD_REASONS and mapped != reason:
        return False  # an address does not "temporarily not exist"
    if reason == "userunknown":
        if mapped == "userunknown":
            # 5.1.1 with a text saying the mailbox is full, or that the sender is blocked, is not unknown.
            return not (any(_TEXT[r].search(doc) for r in ("mailboxfull", "suspend", "hasmoved", "blocked"))
                        or _rejected_text(doc))
        # "User unknown" after DATA (or at no known command) is a content filter talking.
        return command == "RCPT" and says(doc)
    if reason == "filtered":
        if mapped == "filtered":
            return True
        return command not in _BEFORE_DATA and (says(doc) or _TEXT["userunknown"].search(doc))
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
    if reason == "blocked" and _TEXT["policyviolation"].search(doc):
        return False
    if reason == "contenterror":
        return says(doc)
    if reason == "hostunknown":
        if "not found, try again" in doc.text or _TEXT["notaccept"].search(doc):
            return False
        if mapped == "hostunknown":
            return not _TEXT["userunknown"].search(doc) or "domain" in doc.text or "host" in doc.text
    return mapped == reason or says(doc)


def classify(status: str, reply_code: str, diagnostic: str, *, command: str = "", action: str = "",
             preset: str = "", host: str = "") -> tuple[str, str]:
    """(reason, kind) for one failed recipient; kind is hard, soft, policy or none.

    `command` is the SMTP command the remote host refused, `action` the DSN Action, `preset` a reason
    a format parser is sure of, `host` the remote MTA and/or recipient domain (for provider rules).
    """
    status = status or ""
    reason = _reason(status, reply_code or "", diagnostic or "", command.upper(), action.lower(), preset,
                     host.lower())
    return reason, kind_of(reason, status or reply_code or "")


def _reason(status: str, reply_code: str, diagnostic: str, command: str, action: str, preset: str,
            host: str) -> str:
    if preset and preset not in _TENTATIVE:
        return preset
    if status.startswith("2.") or action in ("delivered", "relayed", "expanded"):
        return "delivered"
    text = _normalize(diagnostic)
    doc = _Doc(text)
    mapped = _STATUS_REASON.get(status, "")
    if text or mapped:
        for host_rule, anchor, rule, reason in _PROVIDER_RULES:
            if anchor in text and (host_rule is None or host_rule.search(host)) and rule.search(text):
                return reason
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
            if _TEXT[reason].search(doc):
                return reason
    return _fallback(mapped or preset, status, doc, command, action, reply_code)


# What a bare SMTP reply code says when nothing else does (RFC 5321, 4954, 7504).
_REPLY_REASON = {"452": "systemfull", "500": "syntaxerror", "501": "syntaxerror",
                 "502": "syntaxerror", "503": "syntaxerror", "504": "syntaxerror", "521": "notaccept",
                 "556": "notaccept", "422": "securityerror", "432": "securityerror", "523": "securityerror",
                 "524": "securityerror", "525": "securityerror", "534": "securityerror",
                 "535": "securityerror", "538": "securityerror"}


def _fallback(mapped: str, status: str, doc: _Doc, command: str, action: str, reply_code: str) -> str:
    if mapped and mapped not in ("undefined", "onhold"):
        return mapped
    subject = status[:3]
    if subject in ("5.6", "4.6"):
        return "contenterror"
    if subject in ("5.7", "4.7"):
        return "securityerror"
    if action in ("delayed", "expired"):
        return "expired"
    if command in ("EHLO", "HELO"):
        return "blocked"
    if doc.text and _TEXT["syntaxerror"].search(doc):
        return "syntaxerror"
    if reply_code in _REPLY_REASON:
        return _REPLY_REASON[reply_code]
    if doc.text or status:
        return "onhold"
    return "undefined"


def is_hard(reason: str, status: str = "") -> bool:
    """A permanently dead address: user or host unknown, moved, or a domain that accepts no mail."""
    return reason in HARD_REASONS and not status.startswith("4")


def kind_of(reason: str, status: str = "") -> str:
    if reason in NOT_FAILURES:
        return "none"
    if is_hard(reason, status):
        return "hard"
    if reason in POLICY_REASONS:
        return "policy"
    return "soft"
