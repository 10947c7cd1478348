"""gateway/intake/smtp_syntax.py: what RFC 5321/6531 allow in MAIL/RCPT paths and ESMTP parameters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.intake.smtp_syntax import PathError, is_local_name, is_valid_helo, parse_params, split_path
from gateway.logs import printable


@pytest.mark.parametrize(("arg", "address", "params"), [
    ("<a@example.com>", "a@example.com", ""),
    ("<a@example.com> SIZE=100 BODY=8BITMIME", "a@example.com", "SIZE=100 BODY=8BITMIME"),
    (" <a@example.com>", "a@example.com", ""),  # "MAIL FROM: <a@b>": a space after the colon, as clients send
    ("a@example.com SIZE=1", "a@example.com", "SIZE=1"),  # no angle brackets (Postfix accepts it too)
    ("<first.last+tag@sub.example.com>", "first.last+tag@sub.example.com", ""),
    ("<\"john doe\"@example.org>", "\"john doe\"@example.org", ""),
    ("<\"john\"@example.org>", "john@example.org", ""),  # minimum quoting (RFC 5321 4.1.2)
    ("<\"a\\\"b\"@example.org>", "\"a\\\"b\"@example.org", ""),
    ("<@relay.test,@other.test:b@example.com>", "b@example.com", ""),  # source route dropped
    ("<u@[192.0.2.1]>", "u@[192.0.2.1]", ""),
    ("<u@[IPv6:2001:db8::1]>", "u@[IPv6:2001:db8::1]", ""),
    ("<jürgen@exämple.org> SMTPUTF8", "jürgen@exämple.org", "SMTPUTF8"),  # the caller checks SMTPUTF8
    ("<bounce+TOKEN_1-x=y@example.com>", "bounce+TOKEN_1-x=y@example.com", ""),
])
def test_paths_that_parse(arg: str, address: str, params: str) -> None:
    path = split_path(arg, null_ok=False)
    assert (path.address, path.params) == (address, params)
    assert path.needs_smtputf8 == (not address.isascii())


@pytest.mark.parametrize("arg", [
    "", "<", "<>x", "<u@", "u@", "<u@>", "<@example.org>", "<a@b@c>", "<a b@example.org>", "<a@example..org>",
    "<.a@example.org>", "<a.@example.org>", "<a@-example.org>", "<a@example.org", "<<a@example.org>>",
    "<a@example.org>>", "<a@example.org>SIZE=1", "<@x.test:>", "<@x.test:a>", "<@:a@example.org>",
    "<\"unterminated@example.org>", "<a\x00b@example.org>", "<a@exa\rmple.org>", "<postmaster>",
    "<" + "a" * 300 + "@example.org>",
])
def test_paths_that_do_not(arg: str) -> None:
    with pytest.raises(PathError):
        split_path(arg, null_ok=False)


def test_null_path_only_where_allowed() -> None:
    assert split_path("<> SIZE=10", null_ok=True) == split_path("<>  SIZE=10", null_ok=True)
    assert split_path("<>", null_ok=True).address == ""
    with pytest.raises(PathError):
        split_path("<>", null_ok=False)
    with pytest.raises(PathError):
        split_path("", null_ok=True)  # "MAIL FROM:" with nothing is not the null path


def test_params() -> None:
    assert parse_params("size=100 BODY=8bitmime  SMTPUTF8") == {"SIZE": "100", "BODY": "8bitmime", "SMTPUTF8": True}
    assert parse_params("") == {}
    for bad in ("SIZE=", "=1", "A=b=c", "X=\x00", "BODY=8BITMIME\x01", "ü=1", "-X=1"):
        assert parse_params(bad) is None, bad


def test_helo_names_and_local_names() -> None:
    assert is_valid_helo("client.example.org") and is_valid_helo("[192.0.2.1]") and is_valid_helo("localhost")
    for bad in ("", "höst.example", "a b", "a\x00b", "a\tb"):
        assert not is_valid_helo(bad)
    assert is_local_name("postmaster") and is_local_name("jürgen") and not is_local_name("a b")


@given(st.text(max_size=80))
def test_any_text_parses_or_raises_path_error(text: str) -> None:
    """Whatever a client sends, the parser answers (an address) or refuses (PathError): never another error
    (the defect: IndexError in aiosmtpd's fallback parser, answered 451)."""
    for arg in (text, f"<{text}>", f"<{text}@example.com>", f"{text}@"):
        try:
            path = split_path(arg, null_ok=True)
        except PathError:
            continue
        assert "\r" not in path.address and "\n" not in path.address and "\x00" not in path.address
        assert " " not in path.address or '"' in path.address


def test_printable_escapes_what_a_client_could_forge_logs_with() -> None:
    assert printable("plain text") == "plain text"
    assert printable("a\r\nb\x00c\x1b[2J") == "a\\r\\nb\\x00c\\x1b[2J"
    assert printable(b"\xff\xfe") == r"\xff\xfe"
    assert printable("x" * 300, 10) == "x" * 10 + "..."
