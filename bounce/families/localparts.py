"""Notices that name the failed recipient by its local part only, the domain being the notifier's own.

    The message that you sent was undeliverable to the following:     (Novell GroupWise)
        jdoe (user not found)
    Message not delivered to the following:                           (the same, university MTAs)
        jdoe    Mailbox unknown
    Receiver not found: jdoe                                          (CompuServe)
    Your mail to the following recipients could not be delivered because they are not accepting
    mail from sender@example.com:                                     (AOL, a recipient's sender block)
        jdoe

The address is completed from the original's To (same local part) or else the notifier's domain.
"""

from __future__ import annotations

import re

from bounce.mail import ADDR_RE, Finding, Mail

_GROUPWISE = re.compile(r"(?:undeliverable|not delivered) to the following(?: recipients?| addresses| users?)?:?"
                        r"[ \t]*\n", re.I)
# "jdoe (user not found)" or "jdoe    Mailbox unknown" (the reason after two spaces or more).
_GW_LINE = re.compile(r"^[ \t]+([^\s()<>@,;:]+(?:@[^\s()<>,;:]+)?)(?:[ \t]+\(([^)\n]{1,200})\)|[ \t]{2,}"
                      r"([A-Za-z][^\n]{0,200}?))[ \t]*$")
_REPLY = re.compile(r"\b[45]\d\d[ -](?:[45]\.\d{1,3}\.\d{1,3}\b)?")
_RECEIVER = re.compile(r"^[ \t]*receiver not found:[ \t]*([^\s@]+)[ \t]*$", re.I | re.M)
_NOT_ACCEPTING = re.compile(r"could not be delivered because they are not accepting mail from\b[^\n]*\n", re.I)
_BARE_NAME = re.compile(r"^[ \t]*([^\s()<>@,;:]+)[ \t]*$")


def _qualify(name: str, mail: Mail) -> str:
    """`name` → `name@domain`: the original's recipient of that local part, else the notifier's domain."""
    if "@" in name:
        return name.lower()
    if mail.original is not None:
        for addr in ADDR_RE.findall(mail.original.get("to") + " " + mail.original.get("cc")):
            if addr.split("@", 1)[0].lower() == name.lower():
                return addr.lower()
    domain = mail.from_addr.rpartition("@")[2]
    return f"{name}@{domain}".lower() if domain else ""


def read_groupwise(mail: Mail) -> list[Finding] | None:
    m = _GROUPWISE.search(mail.text)
    if m is None:
        return None
    out: list[Finding] = []
    lines = mail.text[m.end():].split("\n")
    for n, line in enumerate(lines):
        if not line.strip():
            if out:
                break
            continue
        got = _GW_LINE.match(line)
        if got is None:
            break
        addr = _qualify(got.group(1), mail)
        if addr:
            name = got.group(1).split("@", 1)[0].lower()
            # The SMTP reply quoted further down ("Error detail: 550 5.1.1 jdoe… User unknown").
            reply = next((ln.strip() for ln in lines[n + 1 : n + 40]
                          if name in ln.lower() and _REPLY.search(ln)), "")
            out.append(Finding(addr, diagnostic=f"{reply} {(got.group(2) or got.group(3)).strip()}".strip(),
                               command="RCPT"))
    return out or None


def read_receiver_not_found(mail: Mail) -> list[Finding] | None:
    names = _RECEIVER.findall(mail.text)
    out = [Finding(a, diagnostic="Receiver not found", command="RCPT", reason="userunknown")
           for a in (_qualify(n, mail) for n in names) if a]
    return out or None


def read_not_accepting(mail: Mail) -> list[Finding] | None:
    """The recipients refuse mail from this sender: their filter, not a dead address."""
    m = _NOT_ACCEPTING.search(mail.text)
    if m is None:
        return None
    out: list[Finding] = []
    diag = " ".join(m.group(0).split())
    for line in mail.text[m.end():].split("\n"):
        if not line.strip():
            if out:
                break
            continue
        got = _BARE_NAME.match(line) or ADDR_RE.fullmatch(line.strip())
        if got is None:
            break
        addr = _qualify(got.group(1) if got.re is _BARE_NAME else got.group(0), mail)
        if addr:
            out.append(Finding(addr, diagnostic=diag, reason="filtered"))
    return out or None
