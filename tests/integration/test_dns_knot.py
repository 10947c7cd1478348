"""The checks against Knot DNS (Debian's knotd) on loopback: the same verdicts as with the in-process
server, from a real authoritative server (wire format, TCP, negative answers as knot gives them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dns_checks import CheckPlan, DnsClient, DomainTarget, Status, run_checks
from gateway.config import DkimConfig
from tests.dkim_keys import rsa_key
from tests.integration.dnsserver import mail_zone
from tests.integration.knot import KNOTD, MISSING, knot_server

pytestmark = pytest.mark.skipif(KNOTD is None, reason=MISSING)

GW_IP = "127.0.0.10"


@pytest.fixture(scope="module")
def keyfile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    pem, pub = rsa_key()
    path = tmp_path_factory.mktemp("dkim") / "sel1.pem"
    path.write_bytes(pem)
    return path, pub


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory, keyfile: tuple[Path, str]) -> Iterator[tuple[str, int]]:
    _, p = keyfile
    dkim = {"sel1": f"v=DKIM1; k=rsa; p={p}"}
    zones = {
        "gw.test": mail_zone("gw.test", extra=[f"mx A {GW_IP}"]),
        "provider.test": mail_zone("provider.test", extra=["mx A 127.0.0.99"]),
        "10.0.0.127.in-addr.arpa": mail_zone("10.0.0.127.in-addr.arpa", extra=["@ PTR mx.gw.test."]),
        "good.test": mail_zone("good.test", mx=["10 mx.gw.test."], spf=f"v=spf1 ip4:{GW_IP} -all",
                               dmarc="v=DMARC1; p=reject; adkim=s; aspf=s; rua=mailto:d@good.test", dkim=dkim),
        # The three classic Odoo mistakes at once: MX elsewhere, SPF without the gateway, strict DMARC
        # with a bounce subdomain and no DKIM key.
        "broken.test": mail_zone("broken.test", mx=["10 mx.provider.test."], spf="v=spf1 ip4:192.0.2.1 -all",
                                 dmarc="v=DMARC1; p=reject; adkim=s; aspf=s",
                                 extra=['bounce TXT "v=spf1 ip4:192.0.2.1 -all"']),
    }
    with knot_server(zones, tmp_path_factory.mktemp("knot")) as address:
        yield address


async def test_knot_healthy_and_broken(knot: tuple[str, int], keyfile: tuple[Path, str]) -> None:
    key_file, _ = keyfile
    good = DomainTarget("good.test", "good.test", (),
                        (DkimConfig(domain="good.test", selector="sel1", key_file=key_file),))
    broken = DomainTarget("broken.test", "bounce.broken.test")
    plan = CheckPlan((good, broken), ip=GW_IP, expect_mx=("mx.gw.test",))
    good_r, broken_r = await run_checks(plan, DnsClient.create([knot], lifetime=2.0))
    assert good_r.status is Status.OK, good_r.to_dict()
    by = {c.check: c for c in broken_r.checks}
    assert by["mx-gateway"].status is Status.FAIL and "not to the gateway" in by["mx-gateway"].finding
    assert by["spf-bounce"].status is Status.FAIL
    assert "127.0.0.10 is not authorised for bounce.broken.test" in by["spf-bounce"].finding
    assert by["dkim"].status is Status.WARN
    assert by["dmarc-alignment"].status is Status.FAIL
    assert "not aligned with From @broken.test" in by["dmarc-alignment"].finding
