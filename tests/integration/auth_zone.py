"""DNS data and signers for the sender-authentication tests: one set of zones on a loopback DNS server, keys made
by dkimpy (RSA, Ed25519) and by OpenDKIM (opendkim-genkey + its milter, when installed), a forwarder that
ARC-seals. Clients play different hosts with loopback addresses: 127.0.0.5 is origin.test's own server,
127.0.0.6 a stranger, 127.0.0.20 the forwarder fwd.test.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field

import dkim
import nacl.signing

from tests.dkim_keys import rsa_key
from tests.integration.dnsserver import mail_zone

ORIGIN_IP, STRANGER_IP, FORWARDER_IP = "127.0.0.5", "127.0.0.6", "127.0.0.20"
SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"in-reply-to", b"references"]


@dataclass
class Keys:
    """Private keys by (domain, selector) and the TXT records that publish them."""

    rsa: dict[tuple[str, str], bytes] = field(default_factory=dict)
    ed25519: dict[tuple[str, str], bytes] = field(default_factory=dict)
    records: dict[tuple[str, str], str] = field(default_factory=dict)

    def add_rsa(self, domain: str, selector: str) -> None:
        pem, pub = rsa_key()
        self.rsa[(domain, selector)] = pem
        self.records[(domain, selector)] = f"v=DKIM1; k=rsa; p={pub}"

    def add_ed25519(self, domain: str, selector: str) -> None:
        sk = nacl.signing.SigningKey.generate()
        self.ed25519[(domain, selector)] = base64.b64encode(bytes(sk))
        self.records[(domain, selector)] = f"v=DKIM1; k=ed25519; p={base64.b64encode(bytes(sk.verify_key)).decode()}"

    def selectors(self, domain: str) -> dict[str, str]:
        return {s: r for (d, s), r in self.records.items() if d == domain}

    def sign(self, msg: bytes, domain: str, selector: str, *, headers: Sequence[bytes] = SIGNED_HEADERS) -> bytes:
        """`msg` with a dkimpy DKIM-Signature of `domain` on top."""
        if (domain, selector) in self.ed25519:
            sig = dkim.sign(msg, selector.encode(), domain.encode(), self.ed25519[(domain, selector)],
                            signature_algorithm=b"ed25519-sha256", include_headers=list(headers))
        else:
            sig = dkim.sign(msg, selector.encode(), domain.encode(), self.rsa[(domain, selector)],
                            include_headers=list(headers))
        return sig + msg

    def arc_seal(self, msg: bytes, domain: str, selector: str, authserv_id: str) -> bytes:
        """What a forwarder does: seal the message (its Authentication-Results with `authserv_id` become the
        ARC-Authentication-Results of the new set)."""
        headers = dkim.arc_sign(msg, selector.encode(), domain.encode(), self.rsa[(domain, selector)],
                                authserv_id.encode(), include_headers=[b"from", b"to", b"subject", b"date"])
        return b"".join(headers) + msg


def zones(keys: Keys, extra_dkim: dict[str, dict[str, str]] | None = None) -> list[str]:
    """Every zone the tests use; `extra_dkim` adds selectors (e.g. OpenDKIM's) per domain."""
    extra = extra_dkim or {}

    def sel(domain: str) -> dict[str, str]:
        return {**keys.selectors(domain), **extra.get(domain, {})}

    return [
        mail_zone("origin.test", mx=["10 mx.origin.test."],
                  spf=f"v=spf1 ip4:{ORIGIN_IP} a:out.origin.test mx include:_spf.relay.test -all",
                  dmarc="v=DMARC1; p=reject; rua=mailto:d@origin.test",
                  dkim={**sel("origin.test"), "broken": "v=DKIM1; k=rsa; p=AAAAnotakey", "slow": "v=DKIM1; p=x"},
                  extra=["mx A 127.0.0.7", "out A 127.0.0.8", 'bounce TXT "v=spf1 ip4:127.0.0.5 -all"']),
        mail_zone("relay.test", extra=['_spf TXT "v=spf1 ip4:127.0.0.9 -all"']),
        mail_zone("exists.test", spf="v=spf1 exists:%{i}.allow.exists.test -all",
                  extra=["127.0.0.11.allow A 127.0.0.2"]),
        mail_zone("soft.test", spf=f"v=spf1 ip4:{ORIGIN_IP} ~all"),
        mail_zone("neutral.test", spf="v=spf1 ?all"),
        mail_zone("nospf.test"),
        mail_zone("slowspf.test", spf="v=spf1 -all"),
        mail_zone("brokenspf.test", spf="v=spf1 ip4:127.0.0.300 -all"),
        mail_zone("twospf.test", spf=["v=spf1 -all", "v=spf1 +all"]),
        mail_zone("quarantine.test", spf=f"v=spf1 ip4:{ORIGIN_IP} -all", dmarc="v=DMARC1; p=quarantine"),
        mail_zone("pct.test", spf=f"v=spf1 ip4:{ORIGIN_IP} -all", dmarc="v=DMARC1; p=reject; pct=0"),
        mail_zone("nodmarc.test", spf=f"v=spf1 ip4:{ORIGIN_IP} -all"),
        mail_zone("brokendmarc.test", spf=f"v=spf1 ip4:{ORIGIN_IP} -all", dmarc="v=DMARC1; p=bogus"),
        mail_zone("slowdmarc.test", spf=f"v=spf1 ip4:{ORIGIN_IP} -all", dmarc="v=DMARC1; p=reject"),
        mail_zone("strict.test", dmarc="v=DMARC1; p=reject; aspf=s",
                  extra=[f'bounce TXT "v=spf1 ip4:{ORIGIN_IP} -all"']),
        mail_zone("org.test", dmarc="v=DMARC1; p=none; sp=reject",
                  extra=[f'sub TXT "v=spf1 ip4:{ORIGIN_IP} -all"']),
        mail_zone("fwd.test", spf=f"v=spf1 ip4:{FORWARDER_IP} -all", dkim=sel("fwd.test")),
        mail_zone("hop2.test", spf="v=spf1 ip4:127.0.0.21 -all", dkim=sel("hop2.test")),
        mail_zone("example.com", spf=f"v=spf1 ip4:{ORIGIN_IP} -all", dmarc="v=DMARC1; p=none",
                  dkim=sel("example.com")),
    ]


# Names the test server never answers: a client sees a timeout, i.e. a temporary error.
DROP = [("slowspf.test", "TXT"), ("_dmarc.slowdmarc.test", "TXT"), ("slow._domainkey.origin.test", "TXT")]


def message(frm: str = "Alice <alice@origin.test>", *, to: str = "support@example.com", subject: str = "Hello",
            body: str = "Hello there.\r\n", extra: str = "", mid: str = "<m1@origin.test>") -> bytes:
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
            f"Message-Id: {mid}\r\n{extra}\r\n{body}").encode()


def make_keys() -> Keys:
    keys = Keys()
    keys.add_rsa("origin.test", "r1")
    keys.add_ed25519("origin.test", "e1")
    keys.add_rsa("origin.test", "old")  # published; signatures with rsa-sha1 are refused by policy
    keys.add_rsa("fwd.test", "arc1")
    keys.add_rsa("hop2.test", "arc2")
    keys.add_rsa("example.com", "corp")
    return keys
