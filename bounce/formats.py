"""Reading bounces that are not (or not only) RFC 3464 reports.

Half the MTAs on the internet write bounces for humans: qmail, Exim, Gmail, Yahoo, Exchange 2003,
mobile carriers … Each says "these recipients failed, and here is why" in its own words. This module
finds, in the human-readable text, which recipients failed and the text that explains each failure,
plus the SMTP command the remote host refused (RCPT, MAIL, DATA …), which often decides the reason.

One generic reader covers most formats: it cuts off the returned copy of the original message, finds
the lines that name a recipient, and takes the lines under each as its diagnostic. A few formats that
do not fit (JSON notifications, Google Groups, transcripts) have their own small readers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from bounce.message import Part, decode_words, parse

# local@domain. Bounded and unambiguous (labels cannot contain dots), so that searching a long line of
# junk costs linear time, not quadratic.
ADDR = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){1,8}"
ADDR_RE = re.compile(ADDR)


@dataclass(slots=True)
class Finding:
    """What a reader learned about one recipient; dsn.parse() turns it into a BouncedRecipient."""

    address: str
    original_recipient: str = ""
    action: str = ""
    status: str = ""
    reply_code: str = ""
    diagnostic: str = ""
    diagnostic_type: str = ""
    remote_mta: str = ""
    command: str = ""
    reason: str = ""
    feedback_type: str = ""


@dataclass(slots=True)
class Mail:
    """The bounce as read: top headers, parts, the notification text and the returned original."""

    root: Part
    parts: list[Part]
    from_addr: str
    from_local: str
    subject: str
    text: str  # the notification for humans, with the returned original cut off
    full_text: str  # the whole first text part (or body), original included
    original: Part | None  # the returned original (headers at least), when there is one
    failed: list[str] = field(default_factory=list)  # X-Failed-Recipients

    def header(self, name: str) -> str:
        return self.root.get(name)


# --- building the Mail view ----------------------------------------------------------------------
# Lines that start the returned copy of the original message (compared lower-cased, without the
# dashes and spaces around them). The first set only counts on a line that starts with dashes.
_DASHED_SEPARATORS = (
    "this is a copy of the message", "original message", "returned message", "undelivered message",
    "unsent message", "original mail", "returned mail", "the original message", "the returned message",
    "original headers", "returned headers", "message header", "below this line is a copy",
    "enclosed is a copy", "the header of the original message", "message headers follow",
    "message text follows", "forwarded message", "message header follows",
)
_PLAIN_SEPARATORS = (
    "message headers follow", "original message follows", "original message headers:",
    "original message header:", "content-type: message/rfc822", "content-type: text/rfc822-header",
    "undelivered message headers", "received: from", "return-path: <", "below this line is a copy",
    "below is a copy of the original message", "--- below this line",
)


def _cut_original(text: str) -> int:
    """Offset where the returned original starts in a notification text, or -1."""
    pos = 0
    for line in text.split("\n"):
        stripped = line.lstrip(" \t")
        if stripped:
            key = stripped.strip(" \t-=*").lower()
            if (stripped[0] in "-=*" and key.startswith(_DASHED_SEPARATORS)) or key.startswith(
                    _PLAIN_SEPARATORS):
                return pos
        pos += len(line) + 1
    return -1


def build_mail(root: Part) -> Mail:
    parts = root.walk()
    from_value = decode_words(root.get("from")[:2000])
    m = ADDR_RE.search(from_value)
    from_addr = m.group(0).lower() if m else ""
    if not from_addr:
        # MAILER-DAEMON <> or a bare local part.
        word = re.search(r"[A-Za-z0-9._-]+", from_value)
        from_addr = word.group(0).lower() if word else ""
    subject = decode_words(root.get("subject")[:2000])
    original = _find_original(parts)
    full = _notification_text(root, parts)
    cut = _cut_original(full)
    text = full[:cut] if cut >= 0 else full
    if original is None and cut >= 0:
        original = _inline_original(full[cut:])
    failed: list[str] = []
    for value in root.get_all("x-failed-recipients"):
        failed.extend(a.lower() for a in ADDR_RE.findall(value))
    return Mail(root, parts, from_addr, from_addr.split("@", 1)[0], subject, text, full, original, failed)


def _find_original(parts: list[Part]) -> Part | None:
    for part in parts:
        if part.ctype in ("message/rfc822", "message/global") and part.parts:
            return part.parts[0]
        if part.ctype in ("text/rfc822-headers", "text/rfc822-header", "message/rfc822-headers",
                          "message/global-headers", "message/partial"):
            return parse(part.text().lstrip("\n") + "\n\n", shallow=True)
        if part.ctype in ("message/rfc822", "message/global"):
            return parse(part.text().lstrip("\n"), shallow=True)
    return None


def _inline_original(chunk: str) -> Part | None:
    """The header block of an original quoted inline after a separator line."""
    lines = chunk.split("\n")
    start = 0
    # Skip the separator line(s) and blank lines up to the first header-looking line.
    while start < len(lines) and start < 6 and not _HEADERISH.match(lines[start]):
        start += 1
    if start >= len(lines):
        return None
    part = parse("\n".join(lines[start:]), shallow=True)
    return part if part.headers else None


_HEADERISH = re.compile(r"^[A-Za-z][A-Za-z0-9-]*:[ \t]")


def _notification_text(root: Part, parts: list[Part]) -> str:
    """The human-readable notification: the first text part outside any returned original."""
    if not root.parts:
        return root.text() if root.ctype.startswith("text/") or root.ctype == "message/delivery-status" \
            or not root.ctype.startswith(("image/", "audio/", "video/", "application/")) else ""
    best_html = ""
    for part in _outside_original(root):
        if part.ctype == "text/plain" and part.body.strip():
            return part.text()
        if part.ctype == "text/html" and not best_html:
            best_html = _strip_html(part.text())
    return best_html


def _outside_original(root: Part) -> list[Part]:
    out: list[Part] = []
    stack = [root]
    while stack and len(out) < 200:
        part = stack.pop()
        if part.ctype in ("message/rfc822", "message/global"):
            continue
        out.append(part)
        stack.extend(reversed(part.parts))
    return out


_TAG = re.compile(r"<[^<>]{0,2000}>")
_BR = re.compile(r"<(?:br|p|div|tr|li)\b[^<>]{0,2000}>", re.I)
_SCRIPT = re.compile(r"(?is)<(script|style)\b.{0,50000}?</\1>")
_ENTITIES = {"&nbsp;": " ", "&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"', "&#39;": "'"}


def _strip_html(html: str) -> str:
    html = _SCRIPT.sub(" ", html)
    text = _TAG.sub("", _BR.sub("\n", html))
    for entity, char in _ENTITIES.items():
        text = text.replace(entity, char)
    return text


# --- helpers shared by the readers ----------------------------------------------------------------
# Where a diagnostic says which SMTP command the remote host refused. Every pattern starts with a
# literal (fast to search for); the leftmost mention wins.
_COMMAND_WORDS = {
    "rcpt": "RCPT", "rcpt_to": "RCPT", "mail": "MAIL", "mail_from": "MAIL", "end of data": "DATA",
    "data": "DATA", "message body": "DATA", "final dot": "DATA", "ehlo": "EHLO", "helo": "EHLO",
    "lhlo": "EHLO", "initial connection": "CONN", "initial greeting": "CONN", "starttls": "STARTTLS",
}
_COMMAND_PATTERNS = tuple(re.compile(p) for p in (
    r"in reply to (?:the )?(rcpt|mail|end of data|data|message body|final dot|ehlo|helo|lhlo|"
    r"initial greeting|starttls)\b",
    r"after (?:the )?(rcpt|mail|end of data|data|message body|final dot|ehlo|helo|lhlo|initial connection|"
    r"starttls)\b",
    r">>> (rcpt|mail|data|ehlo|helo|lhlo)\b",
    r"\[(rcpt_to|mail_from|data)\]",
    r"(?m)rcpt to:\s*<[^>\n]*>\s*(?:$|:)()",
))
_COMMAND_PHRASES = (
    ("like our rcpt", "RCPT"), ("rcpt to response", "RCPT"), ("smtp:rcpt", "RCPT"),
    ("does not like recipient", "RCPT"), ("at rcpt", "RCPT"), ("during rcpt", "RCPT"),
    ("sender was rejected", "MAIL"), ("failed after i sent the message", "DATA"),
    ("did not like our final data", "DATA"), ("end of data", "DATA"), ("my name was rejected", "EHLO"),
    ("while connected to", "CONN"), ("during connection", "CONN"), ("at connection", "CONN"),
)


def find_command(text: str) -> str:
    """The SMTP command a diagnostic says was refused, if it says."""
    if not text:
        return ""
    low = text.lower()
    best, best_pos = "", len(low) + 1
    for pattern in _COMMAND_PATTERNS:
        m = pattern.search(low, 0, best_pos)
        if m and m.start() < best_pos:
            best, best_pos = _COMMAND_WORDS.get(m.group(1), "RCPT"), m.start()
    for phrase, command in _COMMAND_PHRASES:
        pos = low.find(phrase, 0, best_pos)
        if 0 <= pos < best_pos:
            best, best_pos = command, pos
    return best


_BOILERPLATE = re.compile(
    r"^(?:giving up on .*|i'm not going to try again.*|no action is required.*|"
    r"delivery attempts will continue.*(?:\n.*)?|"
    r"this is a permanent error.*|(?:the )?following address(?:es)? failed:?|"
    r"рекомендуем.*|\*{3,}|={3,}|-{3,}.*|please (?:do not|don'?t) reply.*|"
    r"if you (?:have|need).*|for (?:further|more) (?:assistance|information).*|"
    r"learn more at .*)$",
    re.I,
)


def clean_lines(lines: list[str]) -> str:
    out = []
    for line in lines:
        stripped = line.strip()
        if not stripped or _BOILERPLATE.match(stripped):
            continue
        out.append(stripped)
    return " ".join(out)


def unique(findings: list[Finding]) -> list[Finding]:
    """One finding per address (the first, merged with any later diagnostic)."""
    seen: dict[str, Finding] = {}
    out: list[Finding] = []
    for f in findings:
        key = f.address.lower()
        if key in seen:
            first = seen[key]
            if not first.diagnostic and f.diagnostic:
                first.diagnostic = f.diagnostic
            continue
        seen[key] = f
        out.append(f)
    return out


# --- the generic reader ---------------------------------------------------------------------------
_LEAD_INS = (
    r"(?:original |final |failed |invalid |bad )?recipient(?:\(s\))?(?: address)?|"
    r"unknown user|invalid final delivery userid|delivery failed \d+ attempts|address|"
    r"to address|destination|rcpt|user|mailbox|e-?mail|addressee|failed address|"
    r"undeliverable address|mail to|message to|rcpt to"
)
_RCPT_LINE = re.compile(
    r"^[ \t]*(?:[-*#>]+[ \t]*)?"
    r"(?:(?:" + _LEAD_INS + r")(?:[ \t]*:[ \t]*|[ \t]+))?"
    r"[<\"(\[]?(?:mailto:)?(" + ADDR + r")[>\")\]]?([.:;,]?)"
    r"(?:[ \t]+(.*))?$",
    re.I,
)
# sendmail: "550 5.1.1 <a@b>... User unknown"
_SENDMAIL_LINE = re.compile(r"^[ \t]*(?:<<< )?[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3} )?<?(" + ADDR
                            + r")>?(\.\.\.)[ \t]*(.*)$")
# A recipient named inside a sentence: "There was an error delivering your mail to <a@b>."
_RCPT_SENTENCE = re.compile(
    r"(?:deliver(?:ing|ed|y)? (?:of )?(?:your |the )?(?:mail|message|e-?mail) to|could not be delivered to|"
    r"couldn'?t be delivered to|undeliverable to|unable to deliver (?:message |mail )?to|"
    r"following recipients? (?:returned|failed|had)[^:\n]{0,200}:|generated by|delivery to|"
    r"(?:was ?n[o']t|not) (?:be )?delivered to|failed to deliver to|error (?:sending|delivering) to)"
    r"[ \t]*:?[ \t]*[<\"]?(" + ADDR + r")[>\"]?[.:;,]?[ \t]*(.*)$",
    re.I,
)
_TRAILING_OK = re.compile(
    r"^(?:on |\(|\[|<|:|-|host |reason|error|failed|the |has |was |is |because|delivery|said|"
    r"user |mailbox |unknown|recipient|address|no |not |does |smtp|\d{3}\b|#|invalid|"
    r"mailbox|sorry|rejected|refused|permanent|temporary|account)",
    re.I,
)
_NOT_RCPT_PREFIX = re.compile(r"^[ \t]*(?:from|reply-to|return-path|sender|cc|bcc|to|x-[\w-]+|"
                              r"message-id|in-reply-to|references|received|envelope-to)[ \t]*:", re.I)


def read_generic(mail: Mail, text: str | None = None) -> list[Finding]:
    """Recipient lines and the lines under each, from the notification text."""
    text = mail.text if text is None else text
    if not text:
        return []
    lines = text.split("\n")
    marks: list[tuple[int, str, str, str]] = []  # line index, address, rest of line, style
    for i, line in enumerate(lines):
        if "@" not in line or _NOT_RCPT_PREFIX.match(line):
            continue
        m = _RCPT_LINE.match(line)
        style = "line"
        if not m:
            m = _SENDMAIL_LINE.match(line)
            style = "sendmail"
        if m:
            addr, colon, rest = m.group(1), m.group(2), (m.group(3) or "").strip()
            if rest and not colon and not _TRAILING_OK.match(rest) and not _lead_in_used(line):
                m = None
        if not m:
            m = _RCPT_SENTENCE.search(line)
            if not m:
                continue
            addr, rest, style = m.group(1), m.group(2).strip(), "line"
        addr = addr.strip(".").lower()
        if marks and marks[-1][1] == addr:
            continue  # the same recipient again ("550 5.1.1 <a@b>... User unknown"): same block
        lead = line[: line.lower().find(addr)].strip(" \t<\"([:-*#>")
        if lead and not _PLAIN_LEAD.fullmatch(lead):
            rest = (lead + ": " + rest).strip()
        marks.append((i, addr, rest, style))
    skip = _skip_addresses(mail) if marks else set()
    if any(mark[1] not in skip for mark in marks):
        marks = [mark for mark in marks if mark[1] not in skip]
    findings: list[Finding] = []
    for n, (i, addr, rest, style) in enumerate(marks):
        # Most formats explain a failure under the recipient line; a sendmail transcript explains it
        # above ("While talking to …", ">>> MAIL", "<<< 501 …", then "554 <a@b>... error").
        before: list[str] = []
        if style == "sendmail":
            start = marks[n - 1][0] + 1 if n else _paragraph_start(lines, i)
            before = lines[start:i]
        following = n + 1 < len(marks) and marks[n + 1][3] == "sendmail"
        end = i + 1 if following else marks[n + 1][0] if n + 1 < len(marks) else len(lines)
        diag = clean_lines([*before, rest, *lines[i + 1 : end]])
        findings.append(Finding(addr, diagnostic=diag, command=find_command(lines[i] + "\n" + diag),
                                reason=_lead_reason(lines[i] + "\n" + diag)))
    if findings and marks:
        # An error stated above the recipient list ("Error message below: 550 ...") applies to all;
        # with nothing under the recipients, the text above them is all there is.
        above = lines[: marks[0][0]]
        preamble = [ln for ln in above if _PREAMBLE_ERROR.search(ln)]
        extra = clean_lines(preamble)
        for f in findings:
            if preamble and not _HAS_CODE.search(f.diagnostic):
                f.diagnostic = (extra + " " + f.diagnostic).strip()
            elif not f.diagnostic:
                f.diagnostic = clean_lines([ln for ln in above if ln.strip()][-3:])
            f.command = f.command or find_command(f.diagnostic)
    if not findings and mail.failed:
        diag = clean_lines(text.split("\n"))
        findings = [Finding(a, diagnostic=diag, command=find_command(diag)) for a in mail.failed]
    return unique(findings)


# Lead-ins that say the reason themselves (IMail and the like: "Unknown user: a@b").
_LEAD_REASONS = (
    (re.compile(r"^\s*(?:unknown user|invalid final delivery userid)\s*:", re.I), "userunknown"),
    (re.compile(r"^\s*delivery failed \d+ attempts\s*:", re.I), "expired"),
    (re.compile(r"\(000C05A6\) Unknown Recipient", re.I), "userunknown"),
)


def _lead_reason(text: str) -> str:
    for pattern, reason in _LEAD_REASONS:
        if pattern.search(text):
            return reason
    return ""


_PLAIN_LEAD = re.compile(r"(?:original |final |failed )?(?:recipient(?:\(s\))?|address|to|rcpt to|rcpt|"
                         r"e-?mail|user|mailbox|destination|addressee)[ \t]*:?", re.I)
_PREAMBLE_ERROR = re.compile(r"^\s*(?:[45]\d\d[ -]|[45]\.\d{1,3}\.\d{1,3}\b|error:|reason:)", re.I)
_HAS_CODE = re.compile(r"\b[45]\d\d\b|\b[45]\.\d{1,3}\.\d{1,3}\b")


def _paragraph_start(lines: list[str], i: int) -> int:
    while i > 0 and lines[i - 1].strip():
        i -= 1
    return i


def _lead_in_used(line: str) -> bool:
    return bool(re.match(r"^[ \t]*(?:[-*#>]+[ \t]*)?(?:" + _LEAD_INS + r")[ \t]*:", line, re.I))


def _skip_addresses(mail: Mail) -> set[str]:
    """Addresses that are not failed recipients: the bounce's own sender and receiver."""
    skip: set[str] = set()
    for name in ("to", "from", "return-path", "reply-to", "delivered-to"):
        for value in mail.root.get_all(name):
            skip.update(a.lower() for a in ADDR_RE.findall(value))
    if mail.original is not None:
        for name in ("from", "return-path", "sender", "reply-to"):
            skip.update(a.lower() for a in ADDR_RE.findall(mail.original.get(name)))
    skip.difference_update(mail.failed)
    return skip


# --- specific readers -----------------------------------------------------------------------------
def read_ses_json(mail: Mail) -> list[Finding] | None:
    """Amazon SES notifications delivered through SNS (JSON in the body)."""
    if "notificationType" not in mail.full_text and "notificationType" not in mail.root.body:
        return None
    data = _dict(_ses_document(mail.full_text or mail.root.body))
    kind = data.get("notificationType")
    out: list[Finding] = []
    if kind == "Bounce":
        bounce = _dict(data.get("bounce"))
        for r in map(_dict, _list(bounce.get("bouncedRecipients"))):
            out.append(Finding(str(r.get("emailAddress", "")).lower(), action=str(r.get("action", "failed")),
                               status=str(r.get("status", "")), diagnostic=str(r.get("diagnosticCode", "")),
                               remote_mta=str(bounce.get("remoteMtaIp", ""))))
    elif kind == "Complaint":
        complaint = _dict(data.get("complaint"))
        ftype = str(complaint.get("complaintFeedbackType") or "abuse")
        for r in map(_dict, _list(complaint.get("complainedRecipients"))):
            out.append(Finding(str(r.get("emailAddress", "")).lower(), reason="feedback", feedback_type=ftype))
    elif kind == "Delivery":
        delivery = _dict(data.get("delivery"))
        for addr in _list(delivery.get("recipients")):
            out.append(Finding(str(addr).lower(), action="delivered",
                               diagnostic=str(delivery.get("smtpResponse", "")),
                               remote_mta=str(delivery.get("reportingMTA", ""))))
    return [f for f in out if "@" in f.address] or None


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _ses_document(text: str) -> object:
    start = text.find("{")
    if start < 0:
        return None
    end = text.rfind("}")
    doc = text[start : end + 1]
    data = _loads(doc)
    if data is None:
        data = _loads(re.sub(r"\n ", "", doc))  # a JSON line folded like a header
    if isinstance(data, dict) and isinstance(data.get("Message"), str):
        return _loads(data["Message"])
    return data


def _loads(doc: str) -> object:
    try:
        return json.loads(doc, strict=False)
    except (ValueError, RecursionError):
        return None


def read_google_groups(mail: Mail) -> list[Finding] | None:
    """Google Groups refusals: the group address is the recipient; the reason is always 'rejected'."""
    if "groups.google.com" not in mail.full_text:
        return None
    m = ADDR_RE.search(mail.header("x-failed-recipients"))
    group = m.group(0).lower() if m else ""
    if not group and mail.original is not None:
        m = ADDR_RE.search(mail.original.get("to"))
        group = m.group(0).lower() if m else ""
    if not group:
        return None
    return [Finding(group, reason="rejected", diagnostic=" ".join(mail.text.split())[:2000])]


_TRANSCRIPT_RCPT = re.compile(r"^[ \t]*(?:In:|>>>)[ \t]*RCPT TO:\s*<?(" + ADDR + r")>?", re.I | re.M)
_TRANSCRIPT_LINE = re.compile(r"^\s*(In|Out):\s*(.*)$")
_FAILURE_REPLY = re.compile(r"[45]\d\d[ -]")


def read_smtp_transcript(mail: Mail) -> list[Finding] | None:
    """Postfix's "errors from" notices: an In:/Out: transcript of the session that failed."""
    if "Transcript of session follows" not in mail.text or " Out: " not in mail.text:
        return None
    rcpts = [a.lower() for a in _TRANSCRIPT_RCPT.findall(mail.text)]
    if not rcpts:
        return None
    command = ""
    error = ""
    error_command = ""
    for line in mail.text.split("\n"):
        m = _TRANSCRIPT_LINE.match(line)
        if not m:
            continue
        if m.group(1) == "In":
            words = m.group(2).replace(":", " ").split()
            command = words[0].upper() if words else ""
        elif _FAILURE_REPLY.match(m.group(2)):
            error, error_command = m.group(2), command or "DATA"
    if not error:
        return None
    return [Finding(a, diagnostic=error, command=error_command) for a in dict.fromkeys(rcpts)]


def read_list_refusal(mail: Mail) -> list[Finding] | None:
    """A mailing-list manager refusing a post from a non-member: the list is the failed recipient."""
    if not (mail.header("x-mlserver") or mail.header("x-ml-name")):
        return None
    if not re.search(r"not (?:a )?member|are not member|only members|members only", mail.text + mail.subject,
                     re.I):
        return None
    m = ADDR_RE.search(mail.text)
    addr = m.group(0).lower() if m else ""
    if not addr:
        return None
    return [Finding(addr, reason="rejected", diagnostic=clean_lines(mail.text.split("\n")))]


Reader = Callable[[Mail], "list[Finding] | None"]
SPECIFIC_READERS: tuple[Reader, ...] = (read_ses_json, read_google_groups, read_smtp_transcript,
                                         read_list_refusal)
