"""What SMTP allows in a command: reverse and forward paths (RFC 5321 §4.1.2), UTF-8 only with SMTPUTF8 (RFC
6531), ESMTP parameters (RFC 5321 §4.1.2 Mail-parameters), and the enhanced status code of a reply (RFC 2034).

Pure functions. The session (smtp_session.py) answers 501 for what does not parse here and 553 5.6.7 (RFC 6533)
for an address that needs SMTPUTF8 when the client did not ask for it — at the command, never later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 5321 §4.1.2 Dot-string / Quoted-string; with SMTPUTF8, UTF8-non-ascii is an atext and a qtext too (RFC
# 6531 §3.3). Domains: letters, digits, hyphens (and underscores, which real hosts use although RFC 5321 does
# not list them); U-labels with SMTPUTF8; address literals.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_UTF8 = "\u0080-\U0010ffff"
_ULABEL = rf"[A-Za-z0-9_{_UTF8}](?:[A-Za-z0-9_{_UTF8}-]*[A-Za-z0-9_{_UTF8}])?"
_LITERAL = r"\[(?:IPv6:[0-9A-Fa-f:.]+|[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+)\]"


# One grammar for both cases: for ASCII input it is exactly RFC 5321's; the caller refuses a non-ASCII result
# unless the client declared SMTPUTF8 (so that case gets 553 5.6.7, not 501).
_ATOM = f"[{_ATEXT}{_UTF8}]+"
_QTEXT = rf"[\x20\x21\x23-\x5b\x5d-\x7e{_UTF8}]|\\[\x20-\x7e]"
_DOMAIN_RE = rf"{_ULABEL}(?:\.{_ULABEL})*"
_MAILBOX = re.compile(rf'(?P<local>{_ATOM}(?:\.{_ATOM})*|"(?:{_QTEXT})*")@(?P<domain>{_DOMAIN_RE}|{_LITERAL})')
_DOMAIN = re.compile(_DOMAIN_RE)
_DOT_STRING = re.compile(f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*")
_PARAM_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_PARAM_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")  # esmtp-value: any CHAR but "=", SP and controls

# RFC 5321 §4.5.3.1.3: a path is at most 256 octets, angle brackets included.
MAX_PATH = 256


class PathError(ValueError):
    """The argument is not a path (answer 501)."""


@dataclass(frozen=True, slots=True)
class PathArg:
    """A MAIL FROM / RCPT TO argument: the mailbox ("" for the null path <>) and the parameter text after it."""

    address: str
    params: str

    @property
    def needs_smtputf8(self) -> bool:
        return not self.address.isascii()


def split_path(arg: str, *, null_ok: bool) -> PathArg:
    """``<local@domain> PARAMS`` (or, leniently as Postfix does, ``local@domain PARAMS``) -> PathArg.

    A source route (``<@relay:local@domain>``) is accepted and dropped (RFC 5321 §4.1.1.3: SHOULD ignore). A
    quoted local part that needs no quotes is unquoted (§4.1.2: the minimum quoting)."""
    arg = arg.lstrip(" ")
    if arg.startswith("<"):
        end = _closing_bracket(arg)
        path, rest = arg[1:end], arg[end + 1:]
        if rest and not rest.startswith(" "):
            raise PathError("text after the closing '>'")
        if path.startswith("@"):
            route, colon, path = path.partition(":")
            if not colon or not all(d.startswith("@") and _DOMAIN.fullmatch(d[1:]) for d in route.split(",")):
                raise PathError("bad source route")
    else:
        path, _, rest = arg.partition(" ")
    if not path:
        if null_ok and arg.startswith("<"):
            return PathArg("", rest.strip(" "))
        raise PathError("empty path")
    if len(path.encode()) + 2 > MAX_PATH:
        raise PathError(f"path longer than {MAX_PATH} octets")
    return PathArg(_mailbox(path), rest.strip(" "))


def _closing_bracket(arg: str) -> int:
    quoted = escaped = False
    for i, ch in enumerate(arg[1:], 1):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return i
        elif ch == "<" and not quoted:
            break
    raise PathError("no closing '>'")


def _mailbox(path: str) -> str:
    m = _MAILBOX.fullmatch(path)
    if m is None:
        raise PathError("not a mailbox (local-part@domain)")
    local = m.group("local")
    if local.startswith('"'):
        inner = re.sub(r"\\(.)", r"\1", local[1:-1])
        if _DOT_STRING.fullmatch(inner):
            return f"{inner}@{m.group('domain')}"
    return path


def parse_params(text: str) -> dict[str, str | bool] | None:
    """``SIZE=100 BODY=8BITMIME SMTPUTF8`` -> {"SIZE": "100", "BODY": "8BITMIME", "SMTPUTF8": True}; keywords
    upper-cased, values kept as sent (ENVID, ORCPT are case-sensitive). None when a parameter is malformed."""
    out: dict[str, str | bool] = {}
    for word in text.split(" "):
        if not word:
            continue
        key, eq, value = word.partition("=")
        if not _PARAM_KEYWORD.fullmatch(key) or (eq and not _PARAM_VALUE.fullmatch(value)):
            return None
        out[key.upper()] = value if eq else True
    return out


def is_local_name(text: str) -> bool:
    """A VRFY argument that is a user name rather than a mailbox ("postmaster", "jürgen" with SMTPUTF8)."""
    return bool(re.fullmatch(_ATOM + r"(?:\." + _ATOM + ")*", text))


def is_valid_helo(name: str) -> bool:
    """A HELO/EHLO argument: one word of printable ASCII. (Its form is not checked further: clients send
    "localhost", bare names and address literals, and nothing trusts it.)"""
    return bool(name) and name.isascii() and name.isprintable() and " " not in name


# We advertise ENHANCEDSTATUSCODES (RFC 2034), so aiosmtpd's own bare replies get one too.
_ENHANCED_RE = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3}")
_BARE_REPLY_RE = re.compile(r"^(\d{3}) ")
_ENHANCED_FOR = {"500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4", "552": "5.3.4",
                 "555": "5.5.4", "530": "5.7.0", "535": "5.7.8", "538": "5.7.11", "554": "5.0.0"}


def with_enhanced_code(line: str) -> str:
    """'503 Error: need MAIL command' -> '503 5.5.1 Error: need MAIL command' (greeting, 354 and 334 excepted)."""
    if line[5:6] == "." and line[4:5] in ("2", "4", "5"):  # our own replies already carry one
        return line
    m = _BARE_REPLY_RE.match(line)
    if not m or _ENHANCED_RE.match(line) or "\r\n" in line:
        return line
    code = m.group(1)
    if code in ("220", "354", "334") or line == "250 HELP":  # greeting, continuations, EHLO keyword
        return line
    enhanced = _ENHANCED_FOR.get(code) or {"2": "2.0.0", "4": "4.0.0", "5": "5.0.0"}.get(code[0])
    return f"{code} {enhanced} {line[4:]}" if enhanced else line
