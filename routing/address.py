"""Addresses as Odoo's mail gateway reads them, plus the envelope-side helpers the gateway needs.

Odoo (`odoo/tools/mail.py`) splits header values with `email.utils.getaddresses` and a few fallbacks
(`email_split_tuples`), lower-cases whole addresses for alias matching, and normalises (`email_normalize`:
lower-case domain, lower-case local part only when ASCII) for bounce/catchall comparisons. This module
reproduces those rules so the gateway's predictions compare exactly what Odoo compares.

Envelope recipients are the gateway's own business: they are canonicalised (brackets and source routes
dropped, case folded, IDN domains to A-labels) so that the relay check and the Delivered-To header the
gateway writes agree with Odoo's ASCII alias domains.

Nothing here raises on bad input.
"""

from __future__ import annotations

import re
import unicodedata
from email.header import decode_header, make_header
from email.utils import getaddresses
from functools import lru_cache
from typing import NamedTuple

# Odoo's email_re: used only for its "@gmail.com" corner case.
_EMAIL_RE = re.compile(r"([a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,63})")
_SOURCE_ROUTE = re.compile(r"^(?:@[^,:]*,)*@[^,:]*:")
_ALIAS_CHARS = re.compile(r"[^\w!#$%&'*+\-/=?^_`{|}~.]+")
_DOTS = re.compile(r"^\.+|\.+$|\.+(?=\.)")
_ENCODED_WORD = "=?"
MAX_HEADER_CHARS = 16384  # longer address headers are cut: Odoo would parse them, but nothing sane is that long


def _parse_based_on_spaces(name: str, email: str) -> tuple[str, str]:
    """Odoo's fallback for ``name email@domain`` without brackets (getaddresses gives one odd address)."""
    if not name and email and " " in email:
        inside = getaddresses([email.replace(" ", ",")])
        name_parts: list[str] = []
        found = ""
        for _n, addr in inside:
            if addr and "@" not in addr:
                name_parts.append(addr)
            if addr and "@" in addr:
                found = addr
        if found:
            return " ".join(name_parts), found
    return name, email


_ADDR = r'[^<>\s@",;:()\\\[\]]+@[^<>\s@",;:()\\\[\]]+'
_BARE_ADDR = re.compile(_ADDR)
# One list item: ``"quoted name" <addr>``, ``plain name <addr>``, ``<addr>``, ``addr`` or nothing, then , or end.
_ITEM = re.compile(
    r'[ \t]*(?:"(?P<q>[^"\\\r\n]*)"[ \t]*<(?P<qa>' + _ADDR + r')>'
    r'|(?P<n>[^<>@",;:()\\\[\]\r\n]*?)[ \t]*<(?P<na>' + _ADDR + r')>'
    r'|(?P<b>' + _ADDR + r'))?[ \t]*(?:,|\Z)')


def _split_fast(text: str) -> tuple[tuple[str, str], ...] | None:
    """The common header shapes (``a@b``, ``Name <a@b>``, ``"Name" <a@b>``, lists) without getaddresses.

    None when the value has anything that needs the full parser (comments, groups, routes, literals,
    escapes, odd spacing): the result must be exactly what getaddresses gives; a property test checks it.
    """
    out: list[tuple[str, str]] = []
    pos, end = 0, len(text)
    while pos < end:
        m = _ITEM.match(text, pos)
        if m is None or m.end() == pos:
            return None
        if m.group("qa"):
            out.append((m.group("q"), m.group("qa")))
        elif m.group("na"):
            out.append((" ".join(m.group("n").split()), m.group("na")))
        elif m.group("b"):
            out.append(("", m.group("b")))
        pos = m.end()
    return tuple(out)


@lru_cache(maxsize=8192)
def _split_cached(text: str) -> tuple[tuple[str, str], ...]:
    fast = _split_fast(text)
    if fast is not None:
        return fast
    try:
        pairs = [(n, a) for n, a in getaddresses([text]) if a and "@" in a]
    except Exception:  # getaddresses is not documented to raise, but this runs on hostile input
        return ()
    if any(a.startswith("@") for _n, a in pairs):
        found = [e for e in _EMAIL_RE.findall(text) if e and not e.startswith("@")]
        if found:
            pairs = [("", e) for e in found]
    try:
        return tuple(_parse_based_on_spaces(n, a) for n, a in pairs)
    except Exception:
        return tuple(pairs)


def email_split_tuples(text: str | None) -> list[tuple[str, str]]:
    """(name, address) pairs found in a header value, as Odoo's ``email_split_tuples`` finds them."""
    if not text:
        return []
    return list(_split_cached(text[:MAX_HEADER_CHARS]))


def email_split(text: str | None) -> list[str]:
    """The addresses found in a header value (Odoo's ``email_split``)."""
    if not text:
        return []
    return [a for _n, a in _split_cached(text[:MAX_HEADER_CHARS])]


def email_normalize(text: str | None, *, strict: bool = True) -> str | None:
    """Odoo's ``email_normalize``: one address, domain lower-cased, local part lower-cased when ASCII.

    None when no address is found (or, when strict, more than one).
    """
    emails = email_split(text)
    if not emails or (strict and len(emails) != 1):
        return None
    local, at, domain = emails[0].rpartition("@")
    if local.isascii():
        local = local.lower()
    return local + at + domain.lower()


def normalize_address(address: str) -> str:
    """``email_normalize(address) or address`` for one address email_split already produced (cheap path)."""
    if _BARE_ADDR.fullmatch(address):
        local, _at, domain = address.rpartition("@")
        return (local.lower() if local.isascii() else local) + "@" + domain.lower()
    return email_normalize(address) or address


def normalize_domain(domain: str) -> str:
    """Canonical form of a mail domain for the gateway's own lookups: lower case, no trailing dot, A-labels."""
    domain = domain.strip().rstrip(".").lower()
    if domain.startswith("[") or domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):
        return domain


class Recipient(NamedTuple):
    """An envelope recipient, canonicalised. `raw_local` keeps the case the sender used (reference patterns)."""

    address: str  # local@domain, lower case, A-label domain
    local: str
    domain: str
    raw_local: str
    original: str  # as given (decisions name the recipient this way, so callers can match them)


def parse_recipient(rcpt: str) -> Recipient | None:
    """Parse an envelope address (``<a@b>``, ``a@b``, source routes); None when it is not ``local@domain``."""
    if not isinstance(rcpt, str):
        return None
    return _parse_recipient(rcpt)


@lru_cache(maxsize=16384)
def _parse_recipient(rcpt: str) -> Recipient | None:
    text = rcpt.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    text = _SOURCE_ROUTE.sub("", text)
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or any(c in text for c in " \t\r\n<>,"):
        return None
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = local[1:-1]
        if not local:
            return None
    domain = normalize_domain(domain)
    if not domain:
        return None
    low = local.lower()
    return Recipient(f"{low}@{domain}", low, domain, local, rcpt)


def canonical_recipient(rcpt: str) -> str:
    """The form the gateway writes into Delivered-To (Odoo compares lower-cased ASCII strings)."""
    parsed = parse_recipient(rcpt)
    return parsed.address if parsed else rcpt.strip().strip("<>").lower()


def split_plus(local: str, separator: str = "+") -> tuple[str, str | None]:
    """``name+tag`` -> (``name``, ``tag``); (``name``, None) without separator. Odoo itself never does this."""
    base, sep, tag = local.partition(separator)
    return (base, tag) if sep else (local, None)


def _charset(name: str | None) -> str:
    # iso-8859-8-i / -e (Hebrew logical/explicit ordering) are labels Python does not know, same bytes.
    cs = (name or "ascii").lower()
    return cs[:-2] if cs.startswith("iso-8859-") and cs.endswith(("-i", "-e")) else cs


def decode_name(name: str) -> str:
    """RFC 2047 header text (display names, Subject) to text; unchanged when it does not decode."""
    if _ENCODED_WORD not in name:
        return name
    try:
        return str(make_header(decode_header(name)))
    except LookupError:  # an unknown charset label: decode part by part with known aliases
        pass
    except Exception:  # broken encodings in display names are common and never worth failing for
        return name
    try:
        out = []
        for chunk, cs in decode_header(name):
            out.append(chunk.decode(_charset(cs), errors="replace") if isinstance(chunk, bytes) else chunk)
        return "".join(out)
    except Exception:
        return name


def remove_accents(text: str) -> str:
    """Odoo's ``remove_accents``: decompose and drop combining marks."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if unicodedata.category(c) != "Mn")


def sanitize_alias_name(name: str | None) -> str | None:
    """Odoo's ``mail.alias._sanitize_alias_name`` (19.0): what an alias name becomes when it is saved."""
    text = name.strip() if name else ""
    if text:
        text = remove_accents(text).lower().split("@")[0]
        text = _DOTS.sub("", text)
        text = _ALIAS_CHARS.sub("-", text)
        text = text.encode("ascii", errors="replace").decode()
    return text if text.strip() else None


def is_mailer_daemon(from_value: str | None) -> bool:
    """Odoo's From test for bounces: the local part of the first From address is ``mailer-daemon``."""
    if not from_value or "mailer-daemon" not in from_value.lower():
        return False  # the local part is a substring of the value: no need to parse it
    emails = email_split(from_value)
    return bool(emails) and emails[0].split("@", 1)[0].lower() == "mailer-daemon"
