"""Recipient checks at a real Postfix's door, as docs/postfix.md sets them up: the policy service (live lookup,
contrib/postfix/policy.main.cf) and address verification probes (contrib/postfix/verify.main.cf), in front of
`mailgw serve` with a stand-in Odoo. Unknown alias: 550 during Postfix's own SMTP dialogue; known: 250; an alias
created in Odoo after a refusal: accepted after the next directory refresh; no directory yet: 4xx, never 5xx."""

from __future__ import annotations

import smtplib
import time

import pytest

from tests.odoo_standin import OdooStandin, odoo_instance_config
from tests.system.postfix import CLIENT_ADDRESS, PostfixStack
from tests.waiting import wait_until_sync

pytestmark = pytest.mark.needs_root


def rcpt(port: int, address: str) -> tuple[int, str]:
    """Postfix's answer to RCPT TO:<address> from an Internet client (not in mynetworks)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.ehlo("client.sender.test")
        client.mail("someone@sender.test")
        code, text = client.rcpt(address)
        return code, text.decode(errors="replace")


def rcpt_until(port: int, address: str, code: int, timeout: float = 60.0) -> tuple[int, str]:
    """Ask again until Postfix answers `code` (a refresh, a cache expiry); the last answer otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        answer = rcpt(port, address)
        if answer[0] == code or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


@pytest.mark.parametrize("check", ["policy", "verify"])
def test_unknown_alias_refused_in_postfix_dialogue(stack: PostfixStack, odoo_standin: OdooStandin,
                                                   check: str) -> None:
    odoo_standin.down()  # the gateway starts without a directory: it cannot tell an alias from a typo yet
    odoo = odoo_instance_config(odoo_standin, stack.home, directory_refresh="1s")
    daemon = stack.build("lmtp.main.cf", "lmtp.transport", f"{check}.main.cf", odoo=odoo, seed=False,
                         delivery={"breaker_cooldown": "1s"})
    if check == "verify":
        # Only clocks are shortened, so the test need not wait: the documented minute of the refusal cache becomes
        # two seconds, and Postfix's 3 s between looks at a probe in progress one.
        stack.postfix.main.append("address_verify_negative_expire_time = 2s\n"
                                  "address_verify_negative_refresh_time = 2s\naddress_verify_poll_delay = 1s")
    port = stack.postfix.port
    stack.start()

    for address in ("sales@example.com", "ghost@example.com"):
        code, text = rcpt(port, address)
        assert 400 <= code < 500, (address, code, text)  # try later; never a bounce for want of a directory
        if check == "policy":  # the policy service's own answer; a probe says "verification in progress"
            assert code == 451 and "4.3.0" in text and "directory unavailable" in text, text

    odoo_standin.up()
    directory = stack.root / "state" / "directory.json"
    wait_until_sync(directory.exists, "the directory cache", 30, details=daemon.log_text, interval=0.2)
    code, text = rcpt_until(port, "sales@example.com", 250)
    assert code == 250, text
    code, text = rcpt_until(port, "ghost@example.com", 550)
    assert code == 550 and "5.1.1" in text, text

    odoo_standin.add_alias("ghost", "crm.lead")  # created in Odoo after the refusal
    code, text = rcpt_until(port, "ghost@example.com", 250)
    assert code == 250, text

    if check == "policy":
        daemon.stop()  # mailgw down: Postfix's default action, a 4xx
        code, text = rcpt(port, "sales@example.com")
        assert code == 451 and "4.3.5" in text, text
