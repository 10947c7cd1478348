"""The original client behind trusted relays: XFORWARD attributes and the relays' Received headers."""

from __future__ import annotations

from gateway.auth.client import Client, from_received, from_xforward, is_in, networks

RELAYS = networks(["127.0.0.1", "10.0.0.0/8", "::1"])


def test_postfix_received_names_the_client() -> None:
    raw = (b"Received: from mail.customer.test (mail.customer.test [192.0.2.25])\r\n"
           b"\tby mx.example.com (Postfix) with ESMTPS id 4AbC for <a@example.com>; Mon, 2 Nov 2026 10:00:00 +0000\r\n"
           b"Received: from forged.test ([203.0.113.9]) by elsewhere; Mon, 2 Nov 2026 09:00:00 +0000\r\n"
           b"From: a@customer.test\r\n\r\nbody\r\n")
    assert from_received(raw, RELAYS) == Client("192.0.2.25", "mail.customer.test", "received")


def test_internal_relays_are_skipped_and_exim_helo_is_read() -> None:
    raw = (b"Received: from relay2.example.com ([10.1.2.3]) by mx.example.com; date\r\n"
           b"Received: from [2001:db8::7] (helo=client.test) by relay2 with esmtp; date\r\n"
           b"Received: from [IPv6:2001:db8::7] (unknown [IPv6:2001:db8::7]) by x; date\r\n\r\n")
    assert from_received(raw, RELAYS) == Client("2001:db8::7", "client.test", "received")
    assert from_received(b"Received: by localhost; date\r\n\r\n", RELAYS) is None
    assert from_received(b"Subject: none\r\n\r\n", RELAYS) is None


def test_xforward_attributes() -> None:
    assert from_xforward({"ADDR": "192.0.2.25", "HELO": "mail.customer.test", "NAME": "x"}) == \
        Client("192.0.2.25", "mail.customer.test", "xforward")
    assert from_xforward({"ADDR": "IPV6:2001:db8::1", "HELO": "[UNAVAILABLE]"}) == \
        Client("2001:db8::1", None, "xforward")
    assert from_xforward({"ADDR": "[UNAVAILABLE]"}) is None and from_xforward(None) is None


def test_is_in() -> None:
    assert is_in("10.9.9.9", RELAYS) and is_in("::ffff:127.0.0.1", RELAYS) and is_in("[::1]", RELAYS)
    assert not is_in("127.0.0.2", RELAYS) and not is_in("unix", RELAYS) and not is_in(None, RELAYS)
