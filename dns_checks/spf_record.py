"""SPF record syntax (RFC 7208 §4.5, §5, §6, §7, §12): parsing and macro expansion. Pure, no DNS."""

from __future__ import annotations

import functools
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
# Mechanisms that cost one of the 10 DNS lookups (§4.6.4); the modifier `redirect` costs one too.
LOOKUP_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})
_MECHANISMS = frozenset({"all", "ip4", "ip6", *LOOKUP_MECHANISMS})
_MACRO_LETTERS = frozenset("slodiphv")
_EXP_ONLY_LETTERS = frozenset("crt")  # only inside exp= explanations (§7.2)

_MODIFIER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]*\Z")
_MACRO = re.compile(r"%(?:\{(?P<letter>[A-Za-z])(?P<digits>\d*)(?P<rev>[rR]?)(?P<delims>[.\-+,/_=]*)\}"
                    r"|(?P<esc>[%_-]))")
_DUAL_CIDR = re.compile(r"(?P<spec>.*?)(?:/(?P<v4>\d+))?(?://(?P<v6>\d+))?\Z", re.S)
_TOPLABEL = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")


class SpfSyntaxError(ValueError):
    """The record is not valid SPF: receivers evaluate it as permerror."""


@dataclass(frozen=True, slots=True)
class Mechanism:
    qualifier: str  # + - ~ ?
    name: str  # all include a mx ptr ip4 ip6 exists
    domain_spec: str | None = None
    cidr4: int | None = None
    cidr6: int | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    text: str = ""

    @property
    def result(self) -> str:
        return QUALIFIERS[self.qualifier]

    @property
    def costs_lookup(self) -> bool:
        return self.name in LOOKUP_MECHANISMS

    @property
    def has_macros(self) -> bool:
        return bool(self.domain_spec and "%" in self.domain_spec)


@dataclass(frozen=True, slots=True)
class SpfRecord:
    text: str
    mechanisms: tuple[Mechanism, ...]
    redirect: str | None = None
    exp: str | None = None

    @property
    def all_mechanism(self) -> Mechanism | None:
        return next((m for m in self.mechanisms if m.name == "all"), None)

    @property
    def effective_redirect(self) -> str | None:
        """`redirect=` only matters when no `all` is present (an `all` always matches first, §6.1)."""
        return None if self.all_mechanism else self.redirect


def is_spf_record(text: str) -> bool:
    """A TXT string is an SPF record when it is exactly ``v=spf1`` or starts with ``v=spf1 `` (§4.5)."""
    low = text.lower()
    return low == "v=spf1" or low.startswith("v=spf1 ")


@functools.lru_cache(maxsize=4096)  # pure; the daemon parses the same few records for every message
def parse_spf(text: str) -> SpfRecord:
    if not is_spf_record(text):
        raise SpfSyntaxError("not an SPF record (must start with 'v=spf1')")
    mechanisms: list[Mechanism] = []
    redirect = exp = None
    for term in text[6:].split(" "):
        if not term:
            continue  # RFC wants single spaces; every receiver tolerates more
        if "=" in term and not re.match(r"[+\-~?]?(?:include|exists|a|mx|ptr|ip4|ip6|all)[:/]", term, re.I):
            name, _, value = term.partition("=")
            if not _MODIFIER_NAME.match(name):
                raise SpfSyntaxError(f"invalid term {term!r}")
            lname = name.lower()
            if lname in ("redirect", "exp"):
                if (redirect if lname == "redirect" else exp) is not None:
                    raise SpfSyntaxError(f"'{lname}=' appears more than once")
                check_domain_spec(value)
                if lname == "redirect":
                    redirect = value
                else:
                    exp = value
            else:
                check_macro_string(value)  # unknown modifiers are ignored, but must be well-formed
            continue
        mechanisms.append(_parse_mechanism(term))
    return SpfRecord(text, tuple(mechanisms), redirect, exp)


def _parse_mechanism(term: str) -> Mechanism:
    qualifier = "+"
    body = term
    if body[0] in QUALIFIERS:
        qualifier, body = body[0], body[1:]
    m = re.match(r"[A-Za-z0-9]+", body)
    name = m.group(0).lower() if m else ""
    rest = body[len(name):]
    if name not in _MECHANISMS:
        raise SpfSyntaxError(f"unknown mechanism {term!r}")
    if name == "all":
        if rest:
            raise SpfSyntaxError(f"invalid term {term!r}")
        return Mechanism(qualifier, name, text=term)
    if name in ("ip4", "ip6"):
        if not rest.startswith(":"):
            raise SpfSyntaxError(f"{name} needs an address: {term!r}")
        addr, slash, length = rest[1:].partition("/")
        return Mechanism(qualifier, name, network=_network(name, addr, length if slash else None, term),
                         text=term)
    if name in ("include", "exists"):
        if not rest.startswith(":") or len(rest) < 2:
            raise SpfSyntaxError(f"{name} needs a domain: {term!r}")
        check_domain_spec(rest[1:])
        return Mechanism(qualifier, name, domain_spec=rest[1:], text=term)
    # a, mx, ptr: [":" domain-spec] and, for a/mx, a dual CIDR length
    spec: str | None = None
    cidr4 = cidr6 = None
    if name in ("a", "mx"):
        dm = _DUAL_CIDR.match(rest)
        assert dm is not None  # the pattern matches any string
        rest = dm.group("spec")
        cidr4 = _cidr(dm.group("v4"), 32, term)
        cidr6 = _cidr(dm.group("v6"), 128, term)
    if rest:
        if not rest.startswith(":") or len(rest) < 2:
            raise SpfSyntaxError(f"invalid term {term!r}")
        spec = rest[1:]
        check_domain_spec(spec)
    return Mechanism(qualifier, name, domain_spec=spec, cidr4=cidr4, cidr6=cidr6, text=term)


def _cidr(value: str | None, maximum: int, term: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or (len(value) > 1 and value[0] == "0") or int(value) > maximum:
        raise SpfSyntaxError(f"invalid prefix length in {term!r}")
    return int(value)


def _network(name: str, addr: str, length: str | None, term: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        ip = ipaddress.IPv4Address(addr) if name == "ip4" else ipaddress.IPv6Address(addr)
    except ValueError:
        raise SpfSyntaxError(f"invalid address in {term!r}") from None
    bits = _cidr(length, 32 if name == "ip4" else 128, term) if length is not None else ip.max_prefixlen
    # strict=False: ip4:192.0.2.1/24 is valid SPF and means the /24.
    return ipaddress.ip_network(f"{ip}/{bits}", strict=False)


def check_macro_string(text: str, *, exp: bool = False) -> None:
    """Raise SpfSyntaxError unless every ``%`` starts a valid macro (§7.1)."""
    pos = 0
    while (i := text.find("%", pos)) != -1:
        m = _MACRO.match(text, i)
        if not m:
            raise SpfSyntaxError(f"invalid macro in {text!r}")
        letter = (m.group("letter") or "").lower()
        if letter and letter not in _MACRO_LETTERS and not (exp and letter in _EXP_ONLY_LETTERS):
            raise SpfSyntaxError(f"invalid macro letter %{{{m.group('letter')}}} in {text!r}")
        if m.group("digits") and int(m.group("digits")) == 0:
            raise SpfSyntaxError(f"macro with zero labels in {text!r}")
        pos = m.end()
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in text):
        raise SpfSyntaxError(f"invalid character in {text!r}")


def check_domain_spec(spec: str) -> None:
    """domain-spec = macro-string domain-end; the end is a macro or ``.toplabel`` (§7.1)."""
    check_macro_string(spec)
    if not spec:
        raise SpfSyntaxError("empty domain")
    if spec.endswith(("}", "%_", "%-", "%%")):
        return  # ends in a macro-expand (check_macro_string made sure it is one)
    labels = (spec[:-1] if spec.endswith(".") else spec).split(".")
    if len(labels) < 2 or not _TOPLABEL.match(labels[-1]):
        raise SpfSyntaxError(f"invalid domain {spec!r}")


@dataclass(frozen=True, slots=True)
class MacroContext:
    sender: str  # MAIL FROM (or postmaster@HELO), as ``local@domain``
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    domain: str  # the domain being evaluated (changes with include/redirect)
    helo: str = "unknown"
    validated: str = "unknown"  # %{p}: we do not validate PTR names for macros (RFC says SHOULD NOT use)


def expand(spec: str, ctx: MacroContext, *, exp: bool = False) -> str:
    """Expand macros (§7.3–7.4); a domain longer than 253 octets loses labels on the left."""
    local, _, sender_domain = ctx.sender.rpartition("@")
    ip = ctx.ip
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        ip_text, version = str(ip), "in-addr"
    else:
        ip_text, version = ".".join(ip.exploded.replace(":", "")), "ip6"
    values = {"s": ctx.sender, "l": local or "postmaster", "o": sender_domain, "d": ctx.domain,
              "i": ip_text, "p": ctx.validated, "v": version, "h": ctx.helo,
              "c": str(ip), "r": "unknown", "t": "0"}

    def one(m: re.Match[str]) -> str:
        if m.group("esc"):
            return {"%": "%", "_": " ", "-": "%20"}[m.group("esc")]
        letter = m.group("letter")
        value = values[letter.lower()]
        parts = re.split("[" + re.escape(m.group("delims") or ".") + "]", value)
        if m.group("rev"):
            parts.reverse()
        if m.group("digits"):
            parts = parts[-int(m.group("digits")):]
        out = ".".join(parts)
        return urllib.parse.quote(out, safe="-._~") if letter.isupper() else out

    check_macro_string(spec, exp=exp)
    out = _MACRO.sub(one, spec)
    if not exp:
        out = out.rstrip(".")
        while len(out) > 253 and "." in out:
            out = out.split(".", 1)[1]
    return out
