"""SPF record syntax and macro expansion (RFC 7208 §4.6, §5, §7) — pure."""

from __future__ import annotations

import ipaddress

import pytest

from dns_checks.spf_record import MacroContext, SpfSyntaxError, expand, is_spf_record, parse_spf


@pytest.mark.parametrize("text, expected", [
    ("v=spf1 -all", True),
    ("v=spf1", True),
    ("V=SPF1 mx", True),
    ("v=spf10 -all", False),
    ("v=spf1-all", False),
    ("google-site-verification=abc", False),
])
def test_is_spf_record(text: str, expected: bool) -> None:
    assert is_spf_record(text) is expected


def test_parse_a_typical_record() -> None:
    rec = parse_spf("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx:example.org/24//64 "
                    "include:_spf.example.net ~all exp=explain.%{d}")
    names = [m.name for m in rec.mechanisms]
    assert names == ["ip4", "ip6", "a", "mx", "include", "all"]
    assert rec.mechanisms[0].network == ipaddress.ip_network("192.0.2.0/24")
    mx = rec.mechanisms[3]
    assert (mx.domain_spec, mx.cidr4, mx.cidr6) == ("example.org", 24, 64)
    assert rec.all_mechanism is not None and rec.all_mechanism.result == "softfail"
    assert rec.exp == "explain.%{d}"
    assert [m.costs_lookup for m in rec.mechanisms] == [False, False, True, True, True, False]


def test_redirect_counts_only_without_all() -> None:
    assert parse_spf("v=spf1 mx redirect=_spf.example.com").effective_redirect == "_spf.example.com"
    assert parse_spf("v=spf1 mx redirect=_spf.example.com -all").effective_redirect is None


def test_unknown_modifiers_are_ignored_and_spaces_tolerated() -> None:
    rec = parse_spf("v=spf1  ip4:192.0.2.1   moo.cow-far_out=man:dog/cat -all")
    assert [m.name for m in rec.mechanisms] == ["ip4", "all"]


@pytest.mark.parametrize("text", [
    "v=spf1 ip4:192.0.2.300 -all",  # bad address
    "v=spf1 ip4:192.0.2.0/33 -all",  # prefix too long
    "v=spf1 ip4:192.0.2.0/024 -all",  # leading zero
    "v=spf1 ip6:2001:db8::/129",
    "v=spf1 a:example.com/24//129",
    "v=spf1 include -all",  # include needs a domain
    "v=spf1 inclde:example.com -all",  # unknown mechanism (typo)
    "v=spf1 redirect:example.com",  # redirect is a modifier
    "v=spf1 redirect=a.example.com redirect=b.example.com",
    "v=spf1 a:foo-bar -all",  # no top label
    "v=spf1 a:example.123 -all",  # numeric top label
    "v=spf1 exists:%{z}.example.com -all",  # bad macro letter
    "v=spf1 exists:%example.com -all",  # bare %
    "v=spf1 -all.",
    "v=spf1 ip4:1.2.3.4 -all moo",  # a syntax error anywhere counts
])
def test_syntax_errors(text: str) -> None:
    with pytest.raises(SpfSyntaxError):
        parse_spf(text)


# RFC 7208 §7.4 examples: sender strong-bad@email.example.com, IP 192.0.2.3 / 2001:db8::cb01.
CTX4 = MacroContext("strong-bad@email.example.com", ipaddress.ip_address("192.0.2.3"), "email.example.com")
CTX6 = MacroContext("strong-bad@email.example.com", ipaddress.ip_address("2001:db8::cb01"), "email.example.com")


@pytest.mark.parametrize("spec, expected", [
    ("%{s}", "strong-bad@email.example.com"),
    ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"),
    ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"),
    ("%{d1}", "com"),
    ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"),
    ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"),
    ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    ("%{S}", "strong-bad%40email.example.com"),
    ("a%%b%_c%-d", "a%b c%20d"),
])
def test_macro_expansion_rfc_examples(spec: str, expected: str) -> None:
    assert expand(spec, CTX4, exp=True) == expected


def test_macro_expansion_ipv6() -> None:
    assert expand("%{ir}.%{v}._spf.%{d2}", CTX6) == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")


def test_expanded_domain_is_shortened_to_253_octets() -> None:
    ctx = MacroContext("x@" + ".".join(["a" * 60] * 4) + ".example", ipaddress.ip_address("192.0.2.1"),
                       "example.com")
    out = expand("%{o}.example.com", ctx)
    assert len(out) <= 253 and out.endswith(".example.com")
