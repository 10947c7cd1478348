"""Delivery headers and the JSON-2 re-encoding (pure functions, no sockets)."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import Message

from hypothesis import given
from hypothesis import strategies as st

from gateway.headers import extract_message_id, get_header, header_section, line_ending, split_message
from gateway.odoo.headers import delivery_headers, json_safe_message, stable_message_id

LATIN1 = (
    b"From: J\xf6rg M\xfcller <j@example.org>\r\nTo: sales@example.com\r\n"
    b"Subject: Gr\xfc\xdfe aus K\xf6ln\r\n and more\r\nMessage-Id: <l1@example.org>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\npreamble \xe9\r\n--XX\r\n'
    b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"H\xe9llo w\xf6rld\r\nline2\r\n"
    b"--XX\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"caf=E9 and raw \xe9\r\n"
    b'--XX\r\nContent-Type: application/octet-stream; name="a.bin"\r\n'
    b'Content-Disposition: attachment; filename="a.bin"\r\n\r\n\x00\x01\xff\xfe\x80\r\n'
    b"--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner \xe4\r\n\r\ninner body \xe4\r\n"
    b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nvalid utf8 \xc3\xa9\r\n--XX--\r\nepilogue \xff\r\n"
)


def leaves(msg: Message) -> list[tuple[str, bytes | None]]:
    out = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        out.append((part.get_content_type(), part.get_payload(decode=True)))
    return out


def header_bytes(msg: Message, name: str) -> bytes:
    # Both sides decode to str with surrogate escapes for unknown 8-bit bytes: compare the bytes behind them.
    return str(msg[name]).encode("utf-8", "surrogateescape")


def test_delivery_headers_crlf_and_order() -> None:
    block = delivery_headers(mail_from="a@example.org", recipients=["sales@example.com", "x@example.com"],
                             queue_id="01ABC", received_at=0.0, intake="smtp", helo="mx.example.org",
                             peer="192.0.2.1", hostname="gw.example.com", message_id="<m@x>")
    text = block.decode()
    assert text.startswith("Return-Path: <a@example.org>\r\nDelivered-To: sales@example.com\r\n"
                           "Delivered-To: x@example.com\r\nReceived: from mx.example.org (192.0.2.1)\r\n\t"
                           "by gw.example.com (mailgw) with ESMTP\r\n\tid 01ABC;\r\n\t")
    assert text.endswith("Message-Id: <m@x>\r\n")
    assert "\n" not in text.replace("\r\n", "")
    parsed = email.message_from_bytes(block + b"Subject: s\r\n\r\nbody\r\n", policy=email.policy.SMTP)
    assert parsed.get_all("Delivered-To") == ["sales@example.com", "x@example.com"]
    assert parsed["Return-Path"] == "<a@example.org>"


def test_delivery_headers_null_sender_lf_and_no_injection() -> None:
    block = delivery_headers(mail_from="", recipients=["bounce@example.com"], queue_id="Q", received_at=0.0,
                             eol=b"\n")
    assert block.startswith(b"Return-Path: <>\nDelivered-To: bounce@example.com\nReceived: by ")
    assert b"\r" not in block and b"for <bounce@example.com>" in block
    evil = delivery_headers(mail_from="a@b\r\nBcc: x@y", recipients=["r@example.com"], queue_id="Q",
                            received_at=0.0)
    assert b"\r\nBcc:" not in evil


def test_line_ending_split_and_get_header() -> None:
    assert line_ending(b"A: b\r\n\r\nx") == b"\r\n"
    assert line_ending(b"A: b\n\nx") == b"\n"
    head, blank, body = split_message(b"A: 1\r\nB: 2\r\n folded\r\n\r\nbody\r\n")
    assert head == b"A: 1\r\nB: 2\r\n folded\r\n" and blank == b"\r\n" and body == b"body\r\n"
    assert get_header(b"a: 1\r\nMESSAGE-ID:\r\n <x@y>\r\n\r\nMessage-Id: <body@y>\r\n", "Message-Id") == "<x@y>"
    assert get_header(b"Subject: x\r\n\r\nMessage-Id: <body@y>\r\n", "Message-Id") is None
    assert split_message(b"\r\nbody") == (b"", b"\r\n", b"body")


def test_stable_message_id_is_deterministic() -> None:
    assert stable_message_id("01ABC", "Example.COM") == stable_message_id("01ABC", "example.com")
    assert stable_message_id("01ABC", "example.com") != stable_message_id("01ABD", "example.com")
    assert stable_message_id("01ABC", "").endswith("@mailgw.invalid>")


def test_json_safe_keeps_utf8_identical() -> None:
    raw = "From: a@b\r\nSubject: Grüße\r\n\r\nhé\xa0llo\r\n".encode()
    assert json_safe_message(raw).encode("utf-8") == raw


def test_json_safe_reencodes_8bit_without_losing_bytes() -> None:
    text = json_safe_message(LATIN1)
    out = text.encode("utf-8")
    assert out.isascii() or out.decode("utf-8")  # valid UTF-8 whatever happens
    a = email.message_from_bytes(LATIN1, policy=email.policy.SMTP)
    b = email.message_from_bytes(out, policy=email.policy.SMTP)
    for name in ("From", "Subject", "To", "Message-Id"):
        assert header_bytes(a, name) == header_bytes(b, name), name
    assert leaves(a) == leaves(b)
    assert b"H\xe9llo w\xf6rld\r\nline2" in [p for _t, p in leaves(b)]
    # The untouched UTF-8 part is still byte-identical in the output.
    assert b"valid utf8 \xc3\xa9\r\n--XX--" in out


def test_json_safe_single_part_and_bad_base64() -> None:
    raw = b"Subject: x\nContent-Type: text/plain; charset=latin-1\n\n\xe9t\xe9\n"
    out = json_safe_message(raw).encode()
    assert email.message_from_bytes(out).get_payload(decode=True) == b"\xe9t\xe9\n"
    raw64 = b"Content-Transfer-Encoding: base64\r\n\r\naGVs\xffbG8=\r\n"
    out64 = json_safe_message(raw64).encode()
    assert email.message_from_bytes(out64).get_payload(decode=True) == b"hello"


def test_extract_message_id_unfolds_and_tolerates_garbage() -> None:
    assert extract_message_id(b"Subject: x\r\nMessage-ID:\r\n <a.b@\r\n c>\r\n\r\nbody") == "<a.b@c>"
    assert extract_message_id(b"Subject: x\r\n\r\nMessage-Id: <in-body@x>\r\n") is None
    assert extract_message_id(b"Message-Id:   \r\n\r\n") is None
    assert extract_message_id(b"\xff\xfe\x00garbage") is None


_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


def _split_by_regex(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """The definition split_message implements with two bytes.find: the first `\\r?\\n\\r?\\n` ends the header."""
    if raw.startswith((b"\r\n", b"\n")):
        eol = b"\r\n" if raw.startswith(b"\r\n") else b"\n"
        return b"", eol, raw[len(eol):]
    m = _BLANK_LINE.search(raw)
    if m is None:
        return raw, b"", b""
    nl = raw.index(b"\n", m.start()) + 1
    return raw[:nl], raw[nl:m.end()], raw[m.end():]


@given(st.lists(st.sampled_from([b"\r", b"\n", b"a", b":", b" ", b"\r\n"]), max_size=16).map(b"".join))
def test_split_message_finds_the_first_blank_line(raw: bytes) -> None:
    assert split_message(raw) == _split_by_regex(raw)
    head, blank, body = split_message(raw)
    assert head + blank + body == raw
    assert header_section(raw) == head
