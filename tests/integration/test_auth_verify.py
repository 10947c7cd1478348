"""Sender authentication against a real DNS server on loopback (tests/integration/dnsserver.py): each result
of SPF, DKIM, DMARC and ARC, signatures by dkimpy and by OpenDKIM, an ARC chain sealed by a forwarder."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from gateway.auth import AuthVerdict, Verifier
from gateway.auth.resolver import build_resolver
from tests.integration import opendkim
from tests.integration.auth_zone import (
    DROP,
    FORWARDER_IP,
    ORIGIN_IP,
    STRANGER_IP,
    Keys,
    message,
    zones,
)
from tests.integration.conftest import ZoneData
from tests.integration.dnsserver import DnsTestServer

AUTHSERV = "mx.example.com"


@pytest.fixture(scope="module")
def dns_server(keys: Keys, opendkim_key: tuple[opendkim.OpenDkimSigner | None, ZoneData]
               ) -> Iterator[DnsTestServer]:
    extra = opendkim_key[1]
    with DnsTestServer(*zones(keys, extra), drop=DROP) as srv:
        yield srv


@pytest.fixture
def verifier(dns_server: DnsTestServer) -> Verifier:
    # A short per-query lifetime: the "server that does not answer" cases wait this long.
    return Verifier(build_resolver([dns_server.nameserver], timeout=0.6), authserv_id=AUTHSERV,
                    trusted_sealers=["fwd.test"], timeout=10, rng=random.Random(7))


async def check(v: Verifier, raw: bytes, ip: str, mail_from: str, helo: str | None = "client.test") -> AuthVerdict:
    return await v.check(raw, ip=ip, helo=helo, mail_from=mail_from)


# -- SPF ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ip, mail_from, result", [
    (ORIGIN_IP, "alice@origin.test", "pass"),  # ip4
    ("127.0.0.8", "alice@origin.test", "pass"),  # a:out.origin.test
    ("127.0.0.7", "alice@origin.test", "pass"),  # mx
    ("127.0.0.9", "alice@origin.test", "pass"),  # include:_spf.relay.test
    ("127.0.0.11", "x@exists.test", "pass"),  # exists with a macro
    ("127.0.0.12", "x@exists.test", "fail"),
    (STRANGER_IP, "alice@origin.test", "fail"),
    (STRANGER_IP, "x@soft.test", "softfail"),
    (STRANGER_IP, "x@neutral.test", "neutral"),
    (STRANGER_IP, "x@nospf.test", "none"),
    (STRANGER_IP, "x@nowhere.test", "none"),  # NXDOMAIN
    (STRANGER_IP, "x@slowspf.test", "temperror"),  # the server never answers
    (STRANGER_IP, "x@brokenspf.test", "permerror"),  # ip4:127.0.0.300
    (STRANGER_IP, "x@twospf.test", "permerror"),  # two SPF records
])
async def test_spf_results(verifier: Verifier, ip: str, mail_from: str, result: str) -> None:
    v = await check(verifier, message(), ip, mail_from)
    assert v.spf.result == result, v.spf.reason
    assert f"spf={result}" in v.header_value()


async def test_spf_null_sender_uses_the_helo_identity(verifier: Verifier) -> None:
    v = await check(verifier, message(), ORIGIN_IP, "", helo="origin.test")
    assert (v.spf.result, v.spf.mail_from, v.spf.helo_result) == ("pass", "postmaster@origin.test", "pass")
    v = await check(verifier, message(), STRANGER_IP, "", helo="[127.0.0.6]")
    assert v.spf.result == "none" and "HELO" in v.spf.reason


async def test_spf_helo_identity_is_reported_beside_mail_from(verifier: Verifier) -> None:
    v = await check(verifier, message(), STRANGER_IP, "alice@origin.test", helo="soft.test")
    assert (v.spf.result, v.spf.helo_result) == ("fail", "softfail")
    assert "smtp.helo=soft.test" in v.header_value()


# -- DKIM --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("selector", ["r1", "e1"])
async def test_dkim_pass_rsa_and_ed25519_by_dkimpy(verifier: Verifier, keys: Keys, selector: str) -> None:
    v = await check(verifier, keys.sign(message(), "origin.test", selector), STRANGER_IP, "x@nospf.test")
    [d] = v.dkim
    assert (d.result, d.domain, d.selector) == ("pass", "origin.test", selector)
    assert d.algorithm == ("ed25519-sha256" if selector == "e1" else "rsa-sha256")
    assert v.dmarc.result == "pass" and v.dmarc.aligned_by == "dkim"


async def test_dkim_pass_signed_by_opendkim(verifier: Verifier, signer: opendkim.OpenDkimSigner | None) -> None:
    if signer is None:
        pytest.skip(opendkim.missing() or "")
    raw = signer.sign([("From", "Alice <alice@origin.test>"), ("To", "support@example.com"), ("Subject", "Hi"),
                       ("Message-Id", "<odk1@origin.test>")], b"Hello from OpenDKIM.\r\n\r\n-- \r\nAlice\r\n")
    v = await check(verifier, raw, STRANGER_IP, "x@nospf.test")
    [d] = v.dkim
    assert (d.result, d.selector, d.algorithm) == ("pass", "odk", "rsa-sha256"), d.reason
    assert v.dmarc.result == "pass"
    tampered = await check(verifier, raw.replace(b"Hello", b"Jello"), STRANGER_IP, "x@nospf.test")
    assert tampered.dkim[0].result == "fail" and tampered.dmarc.result == "fail"


async def test_every_signature_is_verified(verifier: Verifier, keys: Keys) -> None:
    raw = keys.sign(keys.sign(message(), "origin.test", "r1"), "fwd.test", "arc1")
    v = await check(verifier, raw, STRANGER_IP, "x@nospf.test")
    assert [(d.domain, d.result) for d in v.dkim] == [("fwd.test", "pass"), ("origin.test", "pass")]
    assert v.header_value().count("dkim=pass") == 2


def _resign_with(raw: bytes, old: bytes, new: bytes) -> bytes:
    """The signature header edited (a selector or algorithm swapped), the rest untouched."""
    return raw.replace(old, new, 1)


async def test_dkim_fail_none_temperror_permerror_policy(verifier: Verifier, keys: Keys) -> None:
    signed = keys.sign(message(), "origin.test", "r1")
    cases = {
        "fail": signed.replace(b"Hello there.", b"Hello world."),  # body changed after signing
        "temperror": _resign_with(signed, b"s=r1;", b"s=slow;"),  # the key's server does not answer
        "permerror": _resign_with(signed, b"s=r1;", b"s=nokey;"),  # no key at the selector
    }
    for result, raw in cases.items():
        v = await check(verifier, raw, STRANGER_IP, "x@nospf.test")
        assert v.dkim[0].result == result, (result, v.dkim[0].reason)
    broken = await check(verifier, _resign_with(signed, b"s=r1;", b"s=broken;"), STRANGER_IP, "x@nospf.test")
    assert broken.dkim[0].result == "permerror" and "key" in broken.dkim[0].reason
    unsigned = await check(verifier, message(), STRANGER_IP, "x@nospf.test")
    assert unsigned.dkim == () and "dkim=none" in unsigned.header_value()
    sha1 = dkim.sign(message(), b"old", b"origin.test", keys.rsa[("origin.test", "old")],
                     signature_algorithm=b"rsa-sha1", include_headers=[b"from"]) + message()
    v = await check(verifier, sha1, STRANGER_IP, "x@nospf.test")
    assert v.dkim[0].result == "policy" and v.dmarc.result == "fail"


# -- DMARC -------------------------------------------------------------------------------------------------

async def test_dmarc_pass_by_spf_and_fail_with_reject(verifier: Verifier) -> None:
    ok = await check(verifier, message(), ORIGIN_IP, "bounce@origin.test")
    assert (ok.dmarc.result, ok.dmarc.policy, ok.dmarc.aligned_by) == ("pass", "reject", "spf")
    assert ok.authenticated and "dmarc=pass" in ok.header_value()
    bad = await check(verifier, message(), STRANGER_IP, "alice@origin.test")
    assert (bad.dmarc.result, bad.dmarc.disposition) == ("fail", "reject")
    assert not bad.authenticated and not bad.temporary
    # SPF passes for another domain: not aligned with From.
    other = await check(verifier, message(), ORIGIN_IP, "x@soft.test")
    assert other.spf.result == "pass" and other.dmarc.result == "fail"


@pytest.mark.parametrize("frm, mail_from, result, disposition", [
    ("a@quarantine.test", "b@nowhere.test", "fail", "quarantine"),
    ("a@pct.test", "b@nowhere.test", "fail", "quarantine"),  # pct=0: reject lowered to quarantine
    ("a@nodmarc.test", "b@nowhere.test", "none", "none"),
    ("a@brokendmarc.test", "b@nowhere.test", "permerror", "none"),
    ("a@slowdmarc.test", "b@nowhere.test", "temperror", "none"),
    ("a@sub.org.test", "b@nowhere.test", "fail", "reject"),  # the organizational domain's sp=
    ("a@strict.test", "x@bounce.strict.test", "fail", "reject"),  # aspf=s: a subdomain is not aligned
])
async def test_dmarc_results(verifier: Verifier, frm: str, mail_from: str, result: str, disposition: str) -> None:
    v = await check(verifier, message(frm), ORIGIN_IP, mail_from)
    assert (v.dmarc.result, v.dmarc.disposition) == (result, disposition), v.dmarc.reason
    assert f"dmarc={result}" in v.header_value()
    assert v.temporary == (result == "temperror")


async def test_dmarc_relaxed_alignment_of_a_subdomain(verifier: Verifier) -> None:
    v = await check(verifier, message("a@sub.org.test"), ORIGIN_IP, "b@sub.org.test")
    assert v.dmarc.result == "pass" and v.dmarc.policy_domain == "org.test"
    aligned_without_record = await check(verifier, message("a@nodmarc.test"), ORIGIN_IP, "b@nodmarc.test")
    assert aligned_without_record.dmarc.result == "none" and aligned_without_record.authenticated


@pytest.mark.parametrize("head", [b"To: x@example.com\r\n", b"From: a@origin.test\r\nFrom: b@origin.test\r\n",
                                  b"From: a@origin.test, b@nodmarc.test\r\n"])
async def test_dmarc_permerror_without_one_from_domain(verifier: Verifier, head: bytes) -> None:
    v = await check(verifier, head + b"Subject: x\r\n\r\nbody\r\n", ORIGIN_IP, "bounce@origin.test")
    assert v.dmarc.result == "permerror" and not v.authenticated


# -- ARC ---------------------------------------------------------------------------------------------------

def forwarded(keys: Keys, *, sealer: str = "fwd.test", selector: str = "arc1") -> bytes:
    """A list at `sealer` got Alice's signed mail from her server, recorded that it authenticated, added a
    subject tag and a footer (breaking her DKIM), sealed it and sent it on."""
    original = keys.sign(message(), "origin.test", "r1")
    received = (f"Authentication-Results: lists.{sealer}; spf=pass smtp.mailfrom=origin.test; "
                "dkim=pass header.d=origin.test; dmarc=pass header.from=origin.test\r\n").encode() + original
    changed = received.replace(b"Subject: Hello", b"Subject: [list] Hello") + b"-- \r\nlist footer\r\n"
    return keys.arc_seal(changed, sealer, selector, f"lists.{sealer}")


async def test_arc_from_a_trusted_forwarder_authenticates(verifier: Verifier, keys: Keys) -> None:
    v = await check(verifier, forwarded(keys), FORWARDER_IP, "list-bounces@fwd.test")
    assert v.dkim[0].result == "fail" and v.dmarc.result == "fail"  # the author's DKIM broke on the way
    assert (v.arc.result, v.arc.trusted_hop, v.arc.trusted_sealer) == ("pass", 1, "fwd.test")
    assert v.authenticated and "trusted ARC sealer fwd.test" in v.arc_override
    assert "arc=pass" in v.header_value() and "smtp.remote-ip=127.0.0.20" in v.header_value()


async def test_arc_from_an_untrusted_forwarder_does_not(dns_server: DnsTestServer, keys: Keys) -> None:
    v = Verifier(build_resolver([dns_server.nameserver], timeout=0.6), authserv_id=AUTHSERV, trusted_sealers=[])
    out = await check(v, forwarded(keys), FORWARDER_IP, "list-bounces@fwd.test")
    assert out.arc.result == "pass" and out.arc.trusted_hop == 0 and not out.authenticated


async def test_arc_chain_broken_after_sealing_fails(verifier: Verifier, keys: Keys) -> None:
    raw = forwarded(keys).replace(b"list footer", b"changed footer")
    v = await check(verifier, raw, FORWARDER_IP, "list-bounces@fwd.test")
    assert v.arc.result == "fail" and not v.authenticated


async def test_arc_trust_needs_an_unbroken_run_from_the_newest_hop(verifier: Verifier, keys: Keys,
                                                                    dns_server: DnsTestServer) -> None:
    # An untrusted hop after the trusted one: it could have replaced the content, so i=1 is not believed.
    two = keys.arc_seal(b"Authentication-Results: hop2.test; arc=pass; dmarc=fail header.from=origin.test\r\n"
                        + forwarded(keys), "hop2.test", "arc2", "hop2.test")
    v = await check(verifier, two, "127.0.0.21", "bounces@hop2.test")
    assert v.arc.result == "pass" and v.arc.instances == 2 and v.arc.trusted_hop == 0
    assert not v.authenticated
    # Both trusted, and hop 2 says it validated the chain: hop 1 (the first trusted hop) is believed.
    both = Verifier(build_resolver([dns_server.nameserver], timeout=0.6), authserv_id=AUTHSERV,
                    trusted_sealers=["fwd.test", "hop2.test"])
    w = await check(both, two, "127.0.0.21", "bounces@hop2.test")
    assert w.arc.trusted_hop == 1 and w.authenticated


async def test_no_arc_headers(verifier: Verifier) -> None:
    v = await check(verifier, message(), ORIGIN_IP, "bounce@origin.test")
    assert v.arc.result == "none" and "arc=none" in v.header_value()


async def test_the_whole_verdict_is_bounded_in_time(dns_server: DnsTestServer, keys: Keys) -> None:
    v = Verifier(build_resolver([dns_server.nameserver], timeout=5), authserv_id=AUTHSERV, timeout=0.3)
    signed = _resign_with(keys.sign(message("a@slowdmarc.test"), "origin.test", "r1"), b"s=r1;", b"s=slow;")
    out = await check(v, signed, STRANGER_IP, "x@slowspf.test")
    assert out.spf.result == "temperror" and out.dkim[0].result == "temperror"
    assert out.dmarc.result == "temperror" and out.temporary


async def test_the_header_cannot_be_injected_through_the_message(verifier: Verifier) -> None:
    raw = message('"Eve" <eve@origin.test>', extra="DKIM-Signature: v=1; a=rsa-sha256; d=origin.test;\r\n"
                  " s=x)\r\n X-Evil: 1; b=AAAA; bh=AAAA; h=from\r\n")
    v = await check(verifier, raw, STRANGER_IP, "eve@origin.test\r\nX-Evil: 1")
    lines = v.header_value().split("\r\n")
    assert all(line.startswith("\t") for line in lines[1:])  # every line a continuation of our one field
    assert not any(line.lstrip().startswith("X-Evil") for line in lines)


def test_opendkim_tools_present_or_skipped() -> None:
    """Documents why the OpenDKIM interoperability test may skip on a machine without the packages."""
    reason = opendkim.missing()
    if reason:
        pytest.skip(reason)
    assert Path(opendkim.OPENDKIM or "").name == "opendkim"
