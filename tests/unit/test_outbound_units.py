"""Pure parts of outbound: destination limits and AIMD (injected clock), MTA-STS policies, reply classification,
addresses on sessions without SMTPUTF8, Odoo failure types."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import parse_config
from gateway.odoo.notifications import failure_type_for
from gateway.outbound.destinations import Destinations
from gateway.outbound.mta_sts import StsFetchError, StsPolicy, parse_policy
from gateway.outbound.results import is_throttling, reply_result
from gateway.outbound.sender import tls_result_type, wire_address
from routing.address import normalize_address


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def destinations(clock: Clock, **outbound: object) -> Destinations:
    return Destinations(parse_config({"outbound": outbound}).outbound, clock)


def test_destination_names_by_domain_mx_and_configuration() -> None:
    d = destinations(Clock(), destinations={"google": {"rate": "2/s", "concurrency": 3}, "corp": {"domains":
                                                                                                ["corp.test"]}})
    assert d.name_for("GMail.com.") == "google"
    assert d.name_for("customer.test", ["aspmx.l.google.com"]) == "google"  # Workspace: by MX
    assert d.name_for("tenant.test", ["tenant-test.mail.protection.outlook.com"]) == "microsoft"
    assert d.name_for("corp.test") == "corp"
    assert d.name_for("small.test", ["mx.small.test"]) == "domain:small.test"
    google = d.for_domain("gmail.com")
    assert (google.limits.rate, google.limits.concurrency) == (2.0, 3)  # the configured entry replaces the default
    assert d.for_domain("small.test").limits.concurrency == 10 and d.for_domain("small.test").rate is None


def test_token_bucket_paces_at_the_configured_rate() -> None:
    clock = Clock()
    dest = destinations(clock, destinations={"default": {"rate": "2/s"}}).for_domain("a.test")
    assert dest.wait_time() == 0.0
    dest.take()
    assert dest.wait_time() == pytest.approx(0.5)
    clock.now += 0.5
    assert dest.wait_time() == 0.0


def test_throttling_decreases_multiplicatively_and_recovers_slowly_with_time() -> None:
    clock = Clock()
    dest = destinations(clock, destinations={"default": {"rate": "10/s", "concurrency": 8}},
                        throttle={"pause": "60s", "increase": 0.1}).for_domain("a.test")
    dest.throttled("421 4.7.28 slow down")
    assert dest.rate == 5.0 and dest.concurrency == 4
    assert dest.wait_time() == pytest.approx(60.0)  # paused: no new message for a minute
    dest.throttled("421 again, from a parallel session")  # the same episode: no second decrease
    assert dest.rate == 5.0 and dest.throttles == 1
    clock.now += 61 + 60 * 5  # five quiet minutes after the pause: +10 % of 5/s per minute, one session each
    dest.delivered_one()
    assert dest.rate == pytest.approx(5.0 + 0.1 * 5.0 * (1 + 5), rel=0.05) and dest.concurrency == 8
    clock.now += 60 * 60
    dest.delivered_one()
    assert dest.rate == 10.0  # never above the configured rate


def test_unconfigured_destination_learns_a_rate_and_forgets_it() -> None:
    clock = Clock()
    dest = destinations(clock, throttle={"pause": "10s", "forget": "1h"}).for_domain("a.test")
    for _ in range(20):  # 20 messages in 10 s: 2/s
        dest.delivered_one()
        clock.now += 0.5
    dest.throttled("421 4.7.0 too fast")
    assert dest.rate == pytest.approx(1.0, rel=0.1)
    clock.now += 3700
    dest.delivered_one()
    assert dest.rate is None


async def test_concurrency_slots_wait_and_time_out() -> None:
    dest = destinations(Clock(), destinations={"default": {"concurrency": 1}}).for_domain("a.test")
    assert await dest.acquire(0.01)
    assert not await dest.acquire(0.01)
    waiter = asyncio.create_task(dest.acquire(5))
    await asyncio.sleep(0)
    await dest.release()
    assert await waiter


@pytest.mark.parametrize(("code", "text", "throttled"), [
    (421, "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred", True),
    (451, "4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.", True),
    (450, "4.2.1 The user you are trying to contact is receiving mail too quickly", False),
    (452, "Too many messages from your IP, try later", True),
    (451, "4.3.0 Mail server temporarily rejected message.", False),
    (550, "5.7.1 rate limit exceeded permanently", False),
])
def test_throttling_replies(code: int, text: str, throttled: bool) -> None:
    assert is_throttling(code, text) is throttled
    assert reply_result(code, text).throttled is throttled


def test_addresses_on_a_session_without_smtputf8() -> None:
    assert wire_address("ann@example.com", False) == "ann@example.com"
    assert wire_address("ann@bücher.example", False) == "ann@xn--bcher-kva.example"  # A-label suffices
    assert wire_address("jörg@example.com", False) is None  # needs SMTPUTF8 (RFC 6531)
    assert wire_address("jörg@example.com", True) == "jörg@example.com"
    assert wire_address("", False) == ""  # the null sender


def test_mta_sts_policy_parsing_and_matching() -> None:
    policy = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
                          "max_age: 604800\r\n", "example.com", "id1", 0.0)
    assert (policy.mode, policy.mx, policy.max_age) == ("enforce", ("mail.example.com", "*.example.net"), 604800)
    assert policy.matches("MAIL.example.com.") and policy.matches("mx1.example.net")
    assert not policy.matches("a.b.example.net") and not policy.matches("example.net")  # one label only
    assert not policy.matches("evil-mail.example.com")
    assert policy.lines()[:2] == ["version: STSv1", "mode: enforce"]
    for text in ("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n", "version: STSv1\nmode: strict\nmax_age: 1\n",
                 "version: STSv1\nmode: enforce\nmax_age: 1\n", "version: STSv1\nmode: testing\nmx: a\nmax_age: x\n",
                 "version: STSv1\nmode: testing\nmx: a\nmax_age: 99999999999\n", "garbage"):
        with pytest.raises(StsFetchError):
            parse_policy(text, "example.com", "id", 0.0)
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n", "d", "i", 0).mode == "none"
    assert StsPolicy("d", "i", "testing", ("a",), 10, 100.0).expires_at == 110.0


def test_tls_failure_result_types() -> None:
    import ssl

    err = ssl.SSLCertVerificationError("certificate verify failed")
    err.verify_code = 62
    assert tls_result_type(err) == "certificate-host-mismatch"
    err.verify_code = 10
    assert tls_result_type(err) == "certificate-expired"
    err.verify_code = 20
    assert tls_result_type(err) == "certificate-not-trusted"
    assert tls_result_type(OSError("reset")) == "validation-failure"


@pytest.mark.parametrize(("status", "reason", "expected"), [
    ("5.6.7", "contenterror", "mail_email_invalid"), ("5.1.3", "userunknown", "mail_email_invalid"),
    ("5.7.1", "spamdetected", "unknown"), ("5.4.4", "hostunknown", "mail_smtp"),
    ("5.4.7", "expired", "unknown"), ("5.7.1", "policyviolation", "unknown"), ("5.3.0", "systemerror", "unknown"),
])
def test_odoo_failure_types(status: str, reason: str, expected: str) -> None:
    assert failure_type_for(status, reason) == expected


def test_recipient_normalized_as_odoo_does_for_partners() -> None:
    assert normalize_address("<Ann.Smith@Example.COM>") == "ann.smith@example.com"
    assert normalize_address("Jörg@Example.COM") == "Jörg@example.com"  # non-ASCII local part kept as is
