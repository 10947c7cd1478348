"""Authentication-Results (RFC 8601): writing ours, reading others', removing forged ones.

Written here rather than with the `authres` package: that one is unmaintained since 2019, and the parts the
gateway needs are small — a header built from known values, and the authserv-id and ``method=result``
pairs of a received field (comments and quoted strings skipped the way RFC 5322's CFWS says).
Everything that comes from the message (domains, selectors, reasons) is sanitised before it is written, so
a hostile message cannot inject a line break or a second result into our header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.headers import header_fields, line_ending, split_message, unfold

HEADER = "Authentication-Results"
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~]+")  # RFC 2045 token characters
_PVALUE_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]*@[A-Za-z0-9.\-]+")  # [local-part] "@" domain
_DOMAIN = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9])?")
_MAX_COMMENT = 200


@dataclass(frozen=True, slots=True)
class ResInfo:
    """One ``method=result (reason) ptype.property=value ...`` of an Authentication-Results header."""

    method: str
    result: str
    reason: str = ""
    props: tuple[tuple[str, str], ...] = ()

    def prop(self, name: str) -> str | None:
        return next((v for k, v in self.props if k == name), None)


@dataclass(frozen=True, slots=True)
class ParsedResults:
    authserv_id: str
    results: tuple[ResInfo, ...] = field(default=())

    def find(self, method: str) -> list[ResInfo]:
        return [r for r in self.results if r.method == method]


def comment(text: str) -> str:
    """A comment with what RFC 5322 does not allow in one removed: printable ASCII, parentheses escaped."""
    clean = "".join(c if 32 <= ord(c) < 127 else " " for c in text)
    clean = " ".join(clean.split())[:_MAX_COMMENT]
    return "(" + clean.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def pvalue(value: str) -> str | None:
    """A property value: a domain, ``local@domain`` or token as is; anything else quoted; None when empty."""
    value = value.strip()
    if not value:
        return None
    if _DOMAIN.fullmatch(value) or _PVALUE_ADDRESS.fullmatch(value) or _TOKEN.fullmatch(value):
        return value
    clean = "".join(c for c in value if 32 <= ord(c) < 127)[:_MAX_COMMENT]
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def resinfo(method: str, result: str, reason: str = "", props: Iterable[tuple[str, str | None]] = ()) -> str:
    """``dkim=pass (reason) header.d=example.com``; properties without a value are left out."""
    parts = [f"{method}={result}"]
    if reason:
        parts.append(comment(reason))
    for name, value in props:
        v = pvalue(value) if value is not None else None
        if v is not None:
            parts.append(f"{name}={v}")
    return " ".join(parts)


def build_value(authserv_id: str, results: Sequence[str]) -> str:
    """The header value: authserv-id, then each result on its own folded line (``none`` when there is none)."""
    return ";\r\n\t".join([authserv_id, *(results or ["none"])])


def header_line(value: str, eol: bytes = b"\r\n") -> bytes:
    """The whole field, ready to prepend, with the message's own line ending."""
    return f"{HEADER}: {value}".replace("\r\n", eol.decode()).encode("ascii", "replace") + eol


# -- reading ------------------------------------------------------------------------------------------------

def _skip_cfws(text: str, i: int) -> int:
    """Index after whitespace and (nested, escaped) comments starting at `i`."""
    n = len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth = 0
            while i < n:
                c = text[i]
                if c == "\\":
                    i += 2
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    return i


def _strip_comments(text: str) -> str:
    """The text with comments replaced by a space (quoted strings kept as they are)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif c == "(":
            i = _skip_cfws(text, i)
            out.append(" ")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def authserv_id_of(value: str) -> str:
    """The authserv-id a received Authentication-Results value starts with (lower-case; "" if unreadable)."""
    i = _skip_cfws(value, 0)
    if i < len(value) and value[i] == '"':
        j = i + 1
        chars: list[str] = []
        while j < len(value) and value[j] != '"':
            if value[j] == "\\" and j + 1 < len(value):
                j += 1
            chars.append(value[j])
            j += 1
        return "".join(chars).strip().lower()
    m = re.compile(r"[^\s;()\"]+").match(value, i)
    return m.group(0).lower() if m else ""


def parse_results(value: str) -> ParsedResults:
    """authserv-id and the results of an Authentication-Results (or ARC-Authentication-Results) value.

    Lenient: a part that is not ``method=result`` is skipped. ``i=N`` before the authserv-id (ARC) is skipped.
    """
    text = _strip_comments(unfold(value.encode("utf-8", "replace")).decode("utf-8", "replace"))
    parts = [p.strip() for p in text.split(";")]
    if parts and re.fullmatch(r"i\s*=\s*\d+", parts[0]):
        parts = parts[1:]
    if not parts:
        return ParsedResults("")
    head = parts[0].split()
    authserv = head[0].strip('"').lower() if head else ""
    out: list[ResInfo] = []
    for part in parts[1:]:
        words = part.split()
        if not words or "=" not in words[0]:
            continue
        method, _, result = words[0].partition("=")
        props = []
        for w in words[1:]:
            k, eq, v = w.partition("=")
            if eq and "." in k:
                props.append((k.lower(), v.strip('"')))
        out.append(ResInfo(method.split("/")[0].lower(), result.lower(), "", tuple(props)))
    return ParsedResults(authserv, tuple(out))


def strip_ours(raw: bytes, authserv_id: str) -> bytes:
    """The message without Authentication-Results fields that claim `authserv_id` (RFC 8601 §5: a border MTA
    removes them, they can only be forged). Returns `raw` itself when there is none."""
    head, sep, body = split_message(raw)
    if b"authentication-results" not in head.lower():
        return raw
    ours = authserv_id.lower()
    kept: list[bytes] = []
    removed = False
    for name, data in header_fields(head):
        if name.lower() == b"authentication-results":
            value = data.split(b":", 1)[1] if b":" in data else b""
            if authserv_id_of(unfold(value).decode("utf-8", "replace")) == ours:
                removed = True
                continue
        kept.append(data)
    return b"".join(kept) + sep + body if removed else raw


def with_results(raw: bytes, authserv_id: str, value: str | None) -> bytes:
    """Forged fields removed and, when `value` is given, ours prepended (what Odoo receives)."""
    clean = strip_ours(raw, authserv_id)
    return header_line(value, line_ending(raw)) + clean if value else clean
