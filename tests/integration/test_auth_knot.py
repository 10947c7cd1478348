"""Sender authentication against Knot DNS (Debian's knotd): the same zones as with the in-process server, now
from a real authoritative server (wire format, TCP for the large key records, negative answers with SOA)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.auth import Verifier
from gateway.auth.resolver import build_resolver
from tests.integration import opendkim
from tests.integration.auth_zone import FORWARDER_IP, ORIGIN_IP, STRANGER_IP, Keys, message, zones
from tests.integration.conftest import ZoneData
from tests.integration.knot import KNOTD, MISSING, by_origin, knot_server
from tests.integration.test_auth_verify import forwarded

pytestmark = pytest.mark.skipif(KNOTD is None, reason=MISSING)


@pytest.fixture(scope="module")
def knot_auth(tmp_path_factory: pytest.TempPathFactory, keys: Keys,
              opendkim_key: tuple[opendkim.OpenDkimSigner | None, ZoneData]
              ) -> Iterator[tuple[Verifier, Keys]]:
    extra = opendkim_key[1]
    with knot_server(by_origin(zones(keys, extra)), tmp_path_factory.mktemp("knot-auth")) as (host, port):
        resolver = build_resolver([f"{host}:{port}"], timeout=2)
        yield Verifier(resolver, authserv_id="mx.example.com", trusted_sealers=["fwd.test"]), keys


async def test_verdicts_through_knot(knot_auth: tuple[Verifier, Keys]) -> None:
    v, keys = knot_auth
    ok = await v.check(keys.sign(message(), "origin.test", "r1"), ip=ORIGIN_IP, helo="mx.origin.test",
                       mail_from="alice@origin.test")
    assert (ok.spf.result, ok.dkim[0].result, ok.dmarc.result) == ("pass", "pass", "pass")
    ed = await v.check(keys.sign(message(), "origin.test", "e1"), ip=STRANGER_IP, helo=None, mail_from="")
    assert ed.dkim[0].result == "pass" and ed.dmarc.result == "pass"
    forged = await v.check(message(), ip=STRANGER_IP, helo="x.test", mail_from="alice@origin.test")
    assert (forged.spf.result, forged.dmarc.result, forged.dmarc.disposition) == ("fail", "fail", "reject")
    assert (await v.check(message(), ip=ORIGIN_IP, helo=None, mail_from="x@nospf.test")).spf.result == "none"
    assert (await v.check(message(), ip=ORIGIN_IP, helo=None, mail_from="x@brokenspf.test")).spf.result == \
        "permerror"
    arc = await v.check(forwarded(keys), ip=FORWARDER_IP, helo=None, mail_from="list@fwd.test")
    assert arc.arc.result == "pass" and arc.authenticated


async def test_opendkim_signature_through_knot(knot_auth: tuple[Verifier, Keys],
                                               signer: opendkim.OpenDkimSigner | None) -> None:
    if signer is None:
        pytest.skip(opendkim.missing() or "")
    v, _keys = knot_auth
    raw = signer.sign([("From", "Boss <boss@example.com>"), ("To", "sales@example.com"), ("Subject", "Q")],
                      b"Numbers attached.\r\n")
    out = await v.check(raw, ip=STRANGER_IP, helo=None, mail_from="boss@example.com")
    assert (out.dkim[0].selector, out.dkim[0].result, out.dmarc.result) == ("odk", "pass", "pass")
