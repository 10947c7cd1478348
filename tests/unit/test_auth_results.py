"""Authentication-Results (RFC 8601): what the gateway writes, how it reads received ones, which it removes."""

from __future__ import annotations

import pytest

from gateway.auth.results import (
    authserv_id_of,
    build_value,
    comment,
    parse_results,
    pvalue,
    resinfo,
    strip_ours,
    with_results,
)

MSG = (b"Received: from x by y; Mon, 2 Nov 2026 10:00:00 +0000\r\n"
       b"Authentication-Results: mx.example.com; dkim=pass header.d=bank.test; dmarc=pass\r\n"
       b"Authentication-Results: (forged) MX.Example.COM;\r\n spf=pass\r\n"
       b'Authentication-Results: "mx.example.com"; dmarc=pass\r\n'
       b"Authentication-Results: mx.example.com.evil.test; spf=fail\r\n"
       b"Authentication-Results: upstream.example.net; spf=pass smtp.mailfrom=a@b.test\r\n"
       b"From: a@b.test\r\n\r\nbody with Authentication-Results: mx.example.com; dmarc=pass\r\n")


@pytest.mark.parametrize("value, authserv", [
    (" mx.example.com; spf=pass", "mx.example.com"),
    ("mx.example.com 1; none", "mx.example.com"),
    (" (comment (nested) \\) ) MX.example.com;", "mx.example.com"),
    ('"mx.example.com"; dkim=pass', "mx.example.com"),
    ("", ""),
])
def test_authserv_id_of(value: str, authserv: str) -> None:
    assert authserv_id_of(value) == authserv


def test_strip_ours_removes_only_fields_claiming_our_authserv_id() -> None:
    out = strip_ours(MSG, "mx.example.com")
    assert out.count(b"Authentication-Results:") == 3  # the other ADMDs' and the one in the body stay
    assert b"mx.example.com.evil.test; spf=fail" in out and b"upstream.example.net" in out
    assert b"bank.test" not in out.split(b"\r\n\r\n")[0] and b"(forged)" not in out
    assert out.endswith(b"body with Authentication-Results: mx.example.com; dmarc=pass\r\n")
    plain = b"From: a@b.test\r\n\r\nhi\r\n"
    assert strip_ours(plain, "mx.example.com") is plain


def test_with_results_prepends_ours_in_the_message_line_ending() -> None:
    out = with_results(MSG.replace(b"\r\n", b"\n"), "mx.example.com", build_value("mx.example.com", ["spf=none"]))
    assert out.startswith(b"Authentication-Results: mx.example.com;\n\tspf=none\n")
    head = out.split(b"\n\n", 1)[0]
    assert b"\r" not in out and head.count(b"Authentication-Results: mx.example.com;") == 1


def test_values_from_a_message_cannot_break_the_header() -> None:
    assert comment("a (b) \\ c\r\nX-Evil: 1") == "(a \\(b\\) \\\\ c X-Evil: 1)"
    assert pvalue("a@b.test") == "a@b.test" and pvalue("@b.test") == "@b.test"
    assert pvalue('x"\r\ny') == '"x\\"y"'
    assert pvalue("") is None
    assert resinfo("dkim", "pass", "", [("header.d", "d.test"), ("header.s", None)]) == "dkim=pass header.d=d.test"


def test_parse_results_of_an_arc_authentication_results_value() -> None:
    parsed = parse_results("i=1; lists.fwd.test; spf=pass (good) smtp.mailfrom=origin.test;\r\n"
                           " dkim=pass header.d=origin.test; dmarc=pass (p=reject) header.from=Origin.test;"
                           " arc=none; garbage")
    assert parsed.authserv_id == "lists.fwd.test"
    assert [(r.method, r.result) for r in parsed.results] == [("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass"),
                                                              ("arc", "none")]
    assert parsed.find("dmarc")[0].prop("header.from") == "Origin.test"
