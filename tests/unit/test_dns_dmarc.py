"""DMARC record parsing, organizational domains, alignment verdicts — pure."""

from __future__ import annotations

import pytest

from dns_checks.dmarc import (
    DkimSigner,
    DmarcLookup,
    DmarcRecordError,
    check_alignment,
    is_aligned,
    organizational_domain,
    parse_dmarc,
)
from dns_checks.resolver import Answer
from dns_checks.result import Status


def test_parse_full_record() -> None:
    pol = parse_dmarc("v=DMARC1; p=quarantine; sp=reject; pct=50; adkim=s; aspf=r; "
                      "rua=mailto:a@example.com,mailto:b@example.net!10m; ruf=mailto:f@example.com; fo=1")
    assert (pol.p, pol.sp, pol.pct, pol.adkim, pol.aspf) == ("quarantine", "reject", 50, "s", "r")
    assert pol.rua == ("mailto:a@example.com", "mailto:b@example.net!10m")
    assert pol.ruf == ("mailto:f@example.com",)


def test_defaults_and_lenient_spacing() -> None:
    pol = parse_dmarc("v=DMARC1;p=reject")
    assert (pol.sp, pol.pct, pol.adkim, pol.aspf, pol.rua) == (None, 100, "r", "r", ())
    assert parse_dmarc("v = DMARC1 ; p = none ;").p == "none"


def test_bad_policy_with_rua_is_treated_as_none() -> None:
    # RFC 7489 §6.6.3: a record with a valid rua but an invalid p= counts as p=none.
    assert parse_dmarc("v=DMARC1; p=block; rua=mailto:d@example.com").p == "none"


@pytest.mark.parametrize("text", [
    "p=reject; v=DMARC1",  # v= must come first
    "v=DMARC2; p=reject",
    "v=DMARC1; p=block",
    "v=DMARC1",
    "v=DMARC1; p=reject; pct=150",
    "v=DMARC1; p=reject; adkim=x",
    "v=DMARC1; p=reject; sp=maybe",
    "v=DMARC1; p=reject; junk",
])
def test_invalid_records(text: str) -> None:
    with pytest.raises(DmarcRecordError):
        parse_dmarc(text)


@pytest.mark.parametrize("domain, org", [
    ("example.com", "example.com"),
    ("mail.example.com", "example.com"),
    ("a.b.example.co.uk", "example.co.uk"),
    ("shop.example.com.au", "example.com.au"),
    ("example.de", "example.de"),
    ("x.example.de", "example.de"),
])
def test_organizational_domain(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


def test_alignment_modes() -> None:
    assert is_aligned("bounce.example.com", "example.com", "r")
    assert not is_aligned("bounce.example.com", "example.com", "s")
    assert is_aligned("Example.COM.", "example.com", "s")
    assert not is_aligned("example.net", "example.com", "r")


def _found(record: str | None, domain: str = "example.com") -> DmarcLookup:
    out = DmarcLookup(domain)
    if record:
        out.policy = parse_dmarc(record)
        out.found_at = domain
    return out


STRICT_REJECT = "v=DMARC1; p=reject; adkim=s; aspf=s"


def test_classic_odoo_mistake_strict_reject_with_other_bounce_domain_and_no_dkim() -> None:
    res = check_alignment(_found(STRICT_REJECT), from_domain="example.com",
                          bounce_domain="bounce.example.com", spf_result="pass", signers=[])
    assert res.status is Status.FAIL
    assert "Return-Path @bounce.example.com is not aligned with From @example.com" in res.finding
    assert "p=reject" in res.finding and "no DKIM signature" in res.finding


def test_aligned_dkim_saves_a_misaligned_return_path() -> None:
    res = check_alignment(_found(STRICT_REJECT), from_domain="example.com",
                          bounce_domain="bounce.example.com", spf_result="pass",
                          signers=[DkimSigner("example.com", "sel1", usable=True)])
    assert res.status is Status.OK and "through DKIM only" in res.finding


def test_broken_dkim_and_spf_fail_under_quarantine() -> None:
    res = check_alignment(_found("v=DMARC1; p=quarantine"), from_domain="example.com",
                          bounce_domain="example.com", spf_result="fail",
                          signers=[DkimSigner("example.com", "sel1", usable=False)])
    assert res.status is Status.FAIL
    assert "SPF fail for the gateway IP" in res.finding and "broken" in res.finding


def test_relaxed_alignment_accepts_a_subdomain_bounce() -> None:
    res = check_alignment(_found("v=DMARC1; p=reject"), from_domain="example.com",
                          bounce_domain="bounce.example.com", spf_result="pass", signers=[])
    assert res.status is Status.OK and "through SPF only" in res.finding


def test_misalignment_without_enforcement_is_a_warning() -> None:
    for record in ("v=DMARC1; p=none; aspf=s", None):
        res = check_alignment(_found(record), from_domain="example.com",
                              bounce_domain="example.net", spf_result=None, signers=[])
        assert res.status is Status.WARN, record


def test_both_aligned_without_ip() -> None:
    res = check_alignment(_found(STRICT_REJECT), from_domain="example.com", bounce_domain="example.com",
                          spf_result=None, signers=[DkimSigner("example.com", "s", usable=True)])
    assert res.status is Status.OK and res.finding.startswith("passes DMARC through DKIM; SPF at example.com was "
                                                                "not evaluated (give --ip")


def test_subdomain_inherits_sp() -> None:
    found = DmarcLookup("shop.example.com", policy=parse_dmarc("v=DMARC1; p=reject; sp=none"),
                        found_at="example.com")
    assert found.effective_p == "none"


def test_spf_temperror_is_not_a_dmarc_failure_nor_a_pass() -> None:
    res = check_alignment(_found(STRICT_REJECT), from_domain="example.com", bounce_domain="example.com",
                          spf_result="temperror", signers=[])
    assert res.status is Status.UNKNOWN and res.finding == (
        "cannot tell whether DMARC passes: SPF at example.com could not be evaluated (DNS error, see spf); "
        "no DKIM signature (no key configured for this domain)")


def test_unknown_inputs_never_make_alignment_ok() -> None:
    """It said "ok: passes DMARC through SPF only" when SPF had not been looked at (no --ip, or no answer)."""
    for spf_result in (None, "temperror"):
        res = check_alignment(_found(STRICT_REJECT), from_domain="example.com", bounce_domain="example.com",
                              spf_result=spf_result, signers=[DkimSigner("other.test", "s", usable=True)])
        assert res.status is Status.UNKNOWN and res.finding.startswith("cannot tell whether DMARC passes")
    # A DKIM key that could not be looked up is no pass either; a known SPF failure beside it does not decide.
    res = check_alignment(_found(STRICT_REJECT), from_domain="example.com", bounce_domain="example.com",
                          spf_result="fail", signers=[DkimSigner("example.com", "s", usable=None)])
    assert res.status is Status.UNKNOWN and "could not be looked up" in res.finding
    # The DMARC record could not be read: only what passes under strict alignment is sure to pass.
    unread = DmarcLookup("example.com", answer=Answer("_dmarc.example.com", "TXT", "timeout"),
                         problem="_dmarc.example.com TXT: DNS timeout")
    res = check_alignment(unread, from_domain="example.com", bounce_domain="bounce.example.com",
                          spf_result="pass", signers=[])
    assert res.status is Status.UNKNOWN and "the DMARC record could not be read" in res.finding
    res = check_alignment(unread, from_domain="example.com", bounce_domain="example.com", spf_result="pass",
                          signers=[])
    assert res.status is Status.OK


def test_no_spf_record_means_the_spf_leg_cannot_pass() -> None:
    res = check_alignment(_found(STRICT_REJECT), from_domain="example.com", bounce_domain="example.com",
                          spf_result="none", signers=[])
    assert res.status is Status.FAIL and "no SPF record at example.com" in res.finding
