"""Who the SMTP client really was, when an MTA the operator trusts (Postfix in front) handed the message on.

SPF judges the host that connected to the first server of the organisation, never that server itself: behind
Postfix every message would otherwise come from 127.0.0.1. The client is, in this order: what XFORWARD said
(Postfix's ADDR and HELO attributes, accepted only from the listener's own trusted_relays:
gateway/intake/xforward.py), and for a peer listed in `auth.trusted_relays` the Received header it added on
top of the message (``from HELO (rDNS [ADDR])``, Postfix's and Sendmail's form; Exim's ``helo=`` too). A
Received header is believed only from a trusted relay, and while the host it names is itself a trusted relay
the next one down is read.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.headers import header_fields, header_section, unfold

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_FROM = re.compile(r"^\s*from\s+(\S+)(.*?)(?:\sby\s|;|$)", re.I | re.S)
_IP = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]")
_EXIM_HELO = re.compile(r"\bhelo=([^\s)]+)", re.I)
_UNKNOWN = ("[UNAVAILABLE]", "[TEMPUNAVAIL]")
MAX_RECEIVED = 10  # relays in front are few; never walk a long (forged) trace


@dataclass(frozen=True, slots=True)
class Client:
    ip: str | None
    helo: str | None
    via: str  # peer | xforward | received | unknown

    def to_dict(self) -> dict[str, str | None]:
        return {"ip": self.ip, "helo": self.helo, "via": self.via}


def networks(items: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(i, strict=False) for i in items)


def is_in(ip: str | None, nets: Iterable[Network]) -> bool:
    try:
        addr = ipaddress.ip_address((ip or "").strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in nets)


def peer_ip(peer: object) -> str | None:
    """The address of an aiosmtpd peer (a (host, port, ...) tuple), None for a unix socket."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


def from_xforward(attrs: Mapping[str, str] | None) -> Client | None:
    """Postfix's XFORWARD attributes (ADDR, HELO, ...): "[UNAVAILABLE]" and "[TEMPUNAVAIL]" mean unknown."""
    if not attrs:
        return None
    values = {k.upper(): v for k, v in attrs.items() if v and v.upper() not in _UNKNOWN}
    addr = values.get("ADDR", "")
    if not addr:
        return None
    helo = values.get("HELO") or None
    return Client(addr.removeprefix("IPV6:").removeprefix("IPv6:"), helo, "xforward")


def from_received(raw_or_head: bytes, trusted: Iterable[Network]) -> Client | None:
    """The first host below the trusted relays, from the Received fields they added (top down)."""
    nets = tuple(trusted)
    seen = 0
    for name, data in header_fields(header_section(raw_or_head)):
        if name.lower() != b"received":
            continue
        seen += 1
        if seen > MAX_RECEIVED:
            return None
        text = unfold(data.split(b":", 1)[1] if b":" in data else b"").decode("utf-8", "replace")
        m = _FROM.match(text)
        if m is None:
            return None  # a relay we trust always says where it got the message from
        ip_m = _IP.search(m.group(2)) or _IP.search(m.group(1))
        helo_m = _EXIM_HELO.search(m.group(2))
        ip = ip_m.group(1) if ip_m else None
        if ip is not None and is_in(ip, nets):
            continue  # one trusted relay handed it to another: read the next field down
        return Client(ip, helo_m.group(1) if helo_m else m.group(1), "received")
    return None
