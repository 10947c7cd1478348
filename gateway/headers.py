"""Reading a raw message's header section without parsing the message: what every part of the gateway that
looks at headers shares (intake, delivery to Odoo, outbound, DSNs). Bytes in, never raises, line endings kept.
Light on imports on purpose: `mailgw pipe` runs once per message under an MTA.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses, parseaddr

_UNFOLD = re.compile(rb"\r?\n(?=[ \t])")
_WHITESPACE = re.compile(rb"\s+")


def line_ending(raw: bytes) -> bytes:
    """The message's own line ending, so added lines match it."""
    nl = raw.find(b"\n")
    return b"\r\n" if nl > 0 and raw[nl - 1:nl] == b"\r" else b"\n"


def _header_bounds(raw: bytes) -> tuple[int, int]:
    """(end of the header block incl. its last line ending, start of the body). No empty line: (len, len)."""
    if raw.startswith(b"\r\n"):
        return 0, 2
    if raw.startswith(b"\n"):
        return 0, 1
    # The first "\n\r\n" or "\n\n" (what `\r?\n\r?\n` finds, at memchr speed instead of a regex's); "\n\n" is
    # only looked for before the first "\n\r\n", so a CRLF message is not scanned to its end for it.
    crlf = raw.find(b"\n\r\n")
    lf = raw.find(b"\n\n", 0, crlf + 1) if crlf >= 0 else raw.find(b"\n\n")
    if lf >= 0:
        return lf + 1, lf + 2
    if crlf >= 0:
        return crlf + 1, crlf + 3
    return len(raw), len(raw)


def split_message(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block incl. its last line ending, the empty line, body). No empty line: all header."""
    end, body = _header_bounds(raw)
    return raw[:end], raw[end:body], raw[body:]


def header_section(raw: bytes) -> bytes:
    """`split_message(raw)[0]` without copying the body."""
    return raw[:_header_bounds(raw)[0]]


def header_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """Raw header fields in order: (name as written, full field bytes incl. continuations and line ending)."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            name, data = fields[-1]
            fields[-1] = (name, data + line)
        else:
            fields.append((line.split(b":", 1)[0].strip(), line))
    return fields


def get_header(raw: bytes, name: str) -> str | None:
    """First value of header `name` (unfolded, stripped, decoded leniently), or None."""
    head = header_section(raw)
    m = _field_pattern(name).search(head)
    if m is None:
        return None
    value = _UNFOLD.sub(b"", m.group(1))
    return value.strip().decode("utf-8", "replace")


_FIELD_PATTERNS: dict[str, re.Pattern[bytes]] = {}


def _field_pattern(name: str) -> re.Pattern[bytes]:
    pat = _FIELD_PATTERNS.get(name)
    if pat is None:
        # The field at a line start, its value with any continuation lines.
        pat = re.compile(rb"(?im)^" + re.escape(name.encode("ascii")) + rb"[ \t]*:(.*(?:\r?\n[ \t].*)*)")
        _FIELD_PATTERNS[name] = pat
    return pat


_INTAKE_PROTOCOL = {
    "smtp": "ESMTP", "lmtp": "LMTP", "submission": "ESMTPA", "pipe": "local", "imap": "IMAP",
    "pop3": "POP3", "internal": "local",
}


def _intake_protocol(intake: str, tls: bool = False) -> str:
    """The ``with`` word of a Received field for mail that came in by `intake` (RFC 3848)."""
    proto = _INTAKE_PROTOCOL.get(intake, intake.upper() or "local")
    return proto.replace("ESMTP", "ESMTPS") if tls and proto.startswith("ESMTP") else proto


def clean_value(value: str) -> str:
    """An envelope value for a header field: envelope values come from SMTP and cannot hold CR/LF; strip them
    anyway, so that no value can inject a field."""
    return value.replace("\r", "").replace("\n", "").strip()


def received_field(*, hostname: str, queue_id: str, intake: str, received_at: float, tls: bool = False,
                   helo: str | None = None, peer: str | None = None, recipients: Sequence[str] = (),
                   client: Mapping[str, str] | None = None) -> str:
    """A ``Received:`` trace field (RFC 5321 §4.4), folded, without its final line ending, for mail that came in by
    `intake` at `received_at`; ``for <recipient>`` only when the hop has exactly one. `client` is the original
    client a trusted relay named (XFORWARD, spool Envelope.client): the line then names it and its protocol, as
    Postfix's own after a content filter does, instead of the relay on the loopback."""
    protocol = _intake_protocol(intake, tls)
    frm = ""
    if client:
        name, addr = client.get("name"), client.get("addr")
        where = f"{clean_value(name or 'unknown')} [{clean_value(addr)}]" if addr else clean_value(name or "unknown")
        frm = f"from {clean_value(client.get('helo') or name or 'unknown')} ({where})\r\n\t"
        protocol = clean_value(client.get("proto") or protocol)
    elif helo or peer:
        frm = "from " + clean_value(helo or "unknown") + (f" ({clean_value(peer)})" if peer else "") + "\r\n\t"
    for_clause = f" for <{clean_value(recipients[0])}>" if len(recipients) == 1 else ""
    when = format_datetime(datetime.fromtimestamp(received_at, UTC))
    return (f"Received: {frm}by {clean_value(hostname)} (mailgw) with {protocol}\r\n\tid {queue_id}{for_clause};"
            f"\r\n\t{when}")


def unfold(value: bytes) -> bytes:
    """A header value with its folding line breaks removed (RFC 5322 §2.2.3)."""
    return _UNFOLD.sub(b"", value)


def extract_message_id(raw: bytes) -> str | None:
    """Message-Id, unfolded and without inner whitespace, or None."""
    value = get_header(raw, "Message-Id")
    if value is None:
        return None
    value = _WHITESPACE.sub(b"", value.encode("utf-8", "surrogateescape")).decode("utf-8", "replace")
    return value or None


# -- the envelope a message names in its headers (pipe without --rcpt, mailbox intakes) ----------------------

# Where recipients are named, in the order they are taken. X-Original-To is what Postfix records.
RCPT_HEADERS = ("Delivered-To", "X-Original-To", "To", "Cc", "Resent-To", "Resent-Cc")
# The fields the envelope is built from, found without a full RFC 5322 parse (that costs more than everything
# else per message): name, then the value with its continuation lines.
_ENVELOPE_FIELDS = re.compile(
    rb"^(Message-ID|Return-Path|Delivered-To|X-Original-To|To|Cc|Resent-To|Resent-Cc)[ \t]*:(.*(?:\r?\n[ \t].*)*)",
    re.IGNORECASE | re.MULTILINE)
# One plain address, "addr" or "Name <addr>" (no quotes, comments or groups): the common case, parsed directly.
_SIMPLE_ADDRESS = re.compile(r"\s*(?:[^<>\"(),;:]*<([^<>\s\"(),;:]+)>|([^<>\s\"(),;:]+))\s*")


def address_domain(addr: str) -> str | None:
    local, at, domain = addr.rpartition("@")
    return domain.strip().lower().rstrip(".") if at and local and domain else None


_FIELD_KEYS = {name.encode(): name.lower() for name in ("Message-ID", "Return-Path", *RCPT_HEADERS)}


def envelope_fields(head: bytes) -> dict[str, list[str]]:
    """Lower-cased name -> values (unfolded, in order) of RCPT_HEADERS, Message-ID and Return-Path."""
    out: dict[str, list[str]] = {}
    for name, value in _ENVELOPE_FIELDS.findall(head):
        if b"\n" in value:
            value = unfold(value)
        key = _FIELD_KEYS.get(name) or name.decode().lower()
        out.setdefault(key, []).append(value.strip().decode("utf-8", errors="replace"))
    return out


def addresses(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        m = _SIMPLE_ADDRESS.fullmatch(value)
        if m:
            out.append(m.group(1) or m.group(2))
        else:
            out.extend(addr for _name, addr in getaddresses([value]) if addr)
    return out


def envelope_from_headers(raw: bytes, is_ours: Callable[[str], bool]) -> tuple[str, list[str], str]:
    """(sender from Return-Path or "", recipients in RCPT_HEADERS whose domain `is_ours`, Message-Id or "")."""
    return envelope_from_head(header_section(raw), is_ours)


def envelope_from_head(head: bytes, is_ours: Callable[[str], bool]) -> tuple[str, list[str], str]:
    """`envelope_from_headers` for a header section already split off."""
    fields = envelope_fields(head)
    message_id = " ".join(fields.get("message-id", [""])[0].split())
    mail_from = ""
    if "return-path" in fields:
        rp = fields["return-path"][0]
        m = _SIMPLE_ADDRESS.fullmatch(rp)
        mail_from = (m.group(1) or m.group(2)) if m else parseaddr(rp)[1]  # "<>" -> ""
    rcpts: list[str] = []
    seen: set[str] = set()
    for name in RCPT_HEADERS:
        for addr in addresses(fields.get(name.lower(), [])):
            domain = address_domain(addr.strip())
            if domain is None or not is_ours(domain):
                continue
            norm = f"{addr.strip().rpartition('@')[0]}@{domain}"
            if norm.lower() not in seen:
                seen.add(norm.lower())
                rcpts.append(norm)
    return mail_from, rcpts, message_id
