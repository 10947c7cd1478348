"""XFORWARD: a relay in front of the gateway (Postfix) names the original client of a message.

Postfix's LMTP and SMTP clients send, when the server announced the extension in its EHLO/LHLO reply
(``lmtp_send_xforward_command = yes``), before MAIL::

    XFORWARD NAME=mail.example.org ADDR=192.0.2.7 PORT=50123 PROTO=ESMTP HELO=mail.example.org
    XFORWARD IDENT=4Xy1Z2abcd SOURCE=REMOTE

so that logs, Received lines and sender authentication see the client that spoke to Postfix, not Postfix on the
loopback. Believing it from anyone would let any client forge those, so it is announced and accepted only for
peers in the listener's ``trusted_relays``. Values are xtext (RFC 3461); ``[UNAVAILABLE]`` and ``[TEMPUNAVAIL]``
mean "not known". The attributes hold for one mail transaction, like Postfix's own smtpd: they live on
aiosmtpd's envelope, which is replaced after DATA, on RSET and on a new EHLO/LHLO. Replies follow Postfix's smtpd
(Postfix's XFORWARD_README describes the command).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.spool.base import CLIENT_KEYS

KEYWORD = "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"
_ATTRIBUTES = {key.upper(): key for key in CLIENT_KEYS}
_NOT_KNOWN = ("[UNAVAILABLE]", "[TEMPUNAVAIL]")
_MAX_VALUE = 255  # octets per value, as Postfix
_XTEXT = re.compile(r"\+([0-9A-F]{2})")
_PROTO = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PRINTABLE = re.compile(r"[^\x21-\x7e]")  # no space, no control characters: these values go into headers

NOT_TRUSTED = "550 5.7.0 Error: insufficient authorization"
IN_TRANSACTION = "503 5.5.1 Error: MAIL transaction in progress"
SYNTAX = "501 5.5.4 Syntax: XFORWARD attribute=value..."


class TrustedRelays:
    """A listener's `trusted_relays`: networks, and "unix" for every client of a unix socket."""

    def __init__(self, entries: Iterable[str]):
        entries = list(entries)
        self.unix = "unix" in entries
        self.networks = tuple(ipaddress.ip_network(e, strict=False) for e in entries if e != "unix")

    def __bool__(self) -> bool:
        return self.unix or bool(self.networks)

    def trusts(self, peer: Any) -> bool:
        """`peer` as aiosmtpd's session has it: (host, port, ...) for TCP, "" or None on a unix socket."""
        if isinstance(peer, tuple) and peer:
            try:
                ip = ipaddress.ip_address(str(peer[0]).partition("%")[0])
            except ValueError:
                return False
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            return any(ip in net for net in self.networks)
        return self.unix and not peer


def _xtext(value: str) -> str | None:
    """RFC 3461 xtext decoded (``+2B`` -> ``+``); None when it is not valid xtext."""
    if "+" in _XTEXT.sub("", value):
        return None
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), value)


def _check(key: str, value: str) -> str | None:
    """The value to keep (normalised), or None when it is malformed for its attribute."""
    if key == "addr":
        text = value[5:] if value[:5].upper() == "IPV6:" else value
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            return None
    if key == "port":
        return value if value.isdigit() and int(value) < 65536 else None
    if key == "proto":
        return value if _PROTO.fullmatch(value) else None
    if key == "source":
        return value.upper() if value.upper() in ("LOCAL", "REMOTE") else None
    return _PRINTABLE.sub("?", value)  # name, helo, ident: shown as given, made harmless (as Postfix's neuter)


def parse(arg: str) -> dict[str, str | None] | str:
    """The attributes of one XFORWARD command (None: "not known", forget an earlier value), or the 501 reply."""
    tokens = arg.split()
    if not tokens:
        return SYNTAX
    out: dict[str, str | None] = {}
    for token in tokens:
        name, eq, raw = token.partition("=")
        key = _ATTRIBUTES.get(name.upper())
        if key is None:
            return f"501 5.5.4 Bad XFORWARD attribute name: {_PRINTABLE.sub('?', name[:32])}"
        if not eq or not raw:
            return "501 5.5.4 Error: attribute=value expected"
        value = _xtext(raw)
        if value is None or len(value) > _MAX_VALUE:
            return f"501 5.5.4 Bad {name.upper()} syntax"
        if value in _NOT_KNOWN:
            out[key] = None
            continue
        checked = _check(key, value)
        if checked is None:
            return f"501 5.5.4 Bad {name.upper()} syntax"
        out[key] = checked
    return out


def command(relays: TrustedRelays | None, peer: Any, envelope: Any, arg: str) -> str:
    """Handle `XFORWARD arg` for a session whose socket peer is `peer`; the reply line. Accepted attributes are
    merged into `envelope.xforward` (aiosmtpd's envelope of the coming transaction)."""
    if relays is None or not relays.trusts(peer):
        return NOT_TRUSTED
    if envelope.mail_from:  # "<>" for the null sender: any MAIL so far
        return IN_TRANSACTION
    attributes = parse(arg)
    if isinstance(attributes, str):
        return attributes
    merged = dict(client_of(envelope) or {})
    for key, value in attributes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    envelope.xforward = merged
    return "250 2.0.0 Ok"


def client_of(envelope: Any) -> Mapping[str, str] | None:
    """What XFORWARD said about the original client of this transaction (spool Envelope.client), or None."""
    return getattr(envelope, "xforward", None) or None
