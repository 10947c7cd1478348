"""The bounce as read: the notification for humans, the returned original, and what every reader shares.

`build_mail(root)` makes the `Mail` view every detector works on: the top headers, the parts, the
notification text with the returned copy of the original message cut off, and the original's headers.
A `Finding` is what a detector learned about one failed recipient; `bounce.dsn` finishes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bounce.message import Part, decode_words, parse

# local@domain. Bounded and unambiguous (labels cannot contain dots), so that searching a long line of
# junk costs linear time, not quadratic. Non-ASCII letters too: internationalized addresses (RFC 6531/6533).
ADDR = (r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-\u0080-\U0010ffff]{1,64}"
        r"@[A-Za-z0-9\-\u0080-\U0010ffff]{1,63}(?:\.[A-Za-z0-9\-\u0080-\U0010ffff]{1,63}){1,8}")
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
    cache: dict[str, object] = field(default_factory=dict)  # what detectors computed once per mail

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
    ("sent: rcpt to", "RCPT"), ("while connected to", "CONN"), ("during connection", "CONN"), ("at connection", "CONN"),
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
    r"learn more at .*|please reply to .*|if you feel this message .*)$",
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


_QUOTE = re.compile(r"^[ \t]?>[ \t]?", re.M)


def unquote(text: str) -> str:
    """A bounce forwarded inline as a quote ("> " before every line), with one level of quoting removed.
    Text that is not mostly quoted is returned as it is."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    quoted = sum(1 for ln in lines if ln.lstrip(" \t").startswith(">"))
    if not lines or quoted * 2 < len(lines):
        return text
    return _QUOTE.sub("", text)
