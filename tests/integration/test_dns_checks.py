"""Every check against a real DNS server on loopback: a healthy domain, and one domain per defect.

The gateway is mx.gw.test = 127.0.0.10, which is also its sending IP (PTR mx.gw.test). Each defect domain
is healthy except for the one mistake, so the test proves that the right check reports it with the right
status — and that DNS failures read as "unknown", never as "missing", and never make a verdict "ok".
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dns_checks import CheckPlan, CheckResult, DnsClient, DomainTarget, Status, run_checks, summarize
from gateway.config import DkimConfig
from tests.integration.dnsserver import DnsTestServer, mail_zone

GW_IP = "127.0.0.10"
GW_MX = "10 mx.gw.test."
SPF_OK = f"v=spf1 ip4:{GW_IP} -all"


def dmarc_for(domain: str) -> str:
    return f"v=DMARC1; p=reject; adkim=s; aspf=s; rua=mailto:dmarc@{domain}"


@dataclass
class Keys:
    dir: Path
    rsa2048: Path = field(init=False)
    rsa1024: Path = field(init=False)
    ed25519: Path = field(init=False)
    p2048: str = ""
    p1024: str = ""
    p768: str = ""
    p_other: str = ""
    p_ed: str = ""


def _spki(pub: rsa.RSAPublicKey) -> str:
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def _pem(key: rsa.RSAPrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    k = Keys(tmp_path_factory.mktemp("dkim"))
    r2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    r1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    k.rsa2048, k.rsa1024 = _pem(r2048, k.dir / "2048.pem"), _pem(r1024, k.dir / "1024.pem")
    k.p2048, k.p1024 = _spki(r2048.public_key()), _spki(r1024.public_key())
    k.p_other = _spki(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
    # cryptography refuses to generate keys under 1024 bits; a public key of that size is all DNS holds.
    k.p768 = _spki(rsa.RSAPublicNumbers(65537, (1 << 767) | 0x2B).public_key())
    seed = nacl.signing.SigningKey.generate()
    k.ed25519 = k.dir / "ed.key"
    k.ed25519.write_text(base64.b64encode(bytes(seed)).decode())  # dkimpy's format: the base64 seed
    k.p_ed = base64.b64encode(bytes(seed.verify_key)).decode()
    return k


def rsa_sel(p: str, extra: str = "") -> str:
    return f"v=DKIM1; k=rsa;{extra} p={p}"


def zones(k: Keys) -> list[str]:
    """Every zone the server holds; the defect zones each differ from `good` in one way."""
    def dom(domain: str, **kw: object) -> str:
        args: dict[str, object] = {"mx": [GW_MX], "spf": SPF_OK, "dmarc": dmarc_for(domain),
                                   "dkim": {"sel1": rsa_sel(k.p2048)}}
        args.update(kw)
        return mail_zone(domain, **args)  # type: ignore[arg-type]

    many = " ".join(f"include:i{i}.manylookups.test" for i in range(11))
    return [
        mail_zone("gw.test", extra=[f"mx A {GW_IP}", "mismatch A 127.0.0.99"]),
        mail_zone("provider.test", extra=["mx A 127.0.0.99"]),
        mail_zone("10.0.0.127.in-addr.arpa", extra=["@ PTR mx.gw.test."]),
        mail_zone("12.0.0.127.in-addr.arpa", extra=["@ PTR mismatch.gw.test."]),
        dom("good.test", dkim={"sel1": rsa_sel(k.p2048), "ed1": f"v=DKIM1; k=ed25519; p={k.p_ed}"},
            extra=['_mta-sts TXT "v=STSv1; id=20250101T000000"', f"mta-sts A {GW_IP}",
                   '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tlsrpt@good.test"']),
        # MX
        dom("nomx.test", mx=[]),
        dom("implicit.test", mx=[], extra=[f"@ A {GW_IP}"]),
        dom("nullmx.test", mx=["0 ."]),
        dom("cnamemx.test", mx=["10 mail.cnamemx.test."], extra=["mail CNAME mx.gw.test."]),
        dom("deadmx.test", mx=["10 gone.deadmx.test."]),
        dom("elsewhere.test", mx=["10 mx.provider.test."]),
        dom("backupmx.test", mx=[GW_MX, "20 mx.provider.test."]),
        dom("mxservfail.test"),
        # SPF
        dom("nospf.test", spf=None),
        dom("twospf.test", spf=[SPF_OK, "v=spf1 mx -all"]),
        dom("badspf.test", spf="v=spf1 ip4:127.0.0.300 -all"),
        dom("manylookups.test", spf=f"v=spf1 {many} -all",
            extra=[f'i{i} TXT "v=spf1 ip4:192.0.2.{i} -all"' for i in range(11)]),
        dom("voids.test", spf=f"v=spf1 a:n1.voids.test a:n2.voids.test a:n3.voids.test ip4:{GW_IP} -all"),
        dom("plusall.test", spf="v=spf1 +all"),
        dom("qall.test", spf=f"v=spf1 ip4:{GW_IP} ?all"),
        dom("spfnogw.test", spf="v=spf1 ip4:192.0.2.1 -all"),
        dom("spfservfail.test"),
        dom("splitbounce.test", extra=['bounce TXT "v=spf1 ip4:192.0.2.1 -all"']),
        # DKIM
        dom("nodkim.test", dkim={}),
        dom("dkim1024.test", dkim={"sel1": rsa_sel(k.p1024)}),
        dom("dkim768.test", dkim={"sel1": rsa_sel(k.p768)}),
        dom("dkimtesting.test", dkim={"sel1": rsa_sel(k.p2048, " t=y;")}),
        dom("dkimother.test", dkim={"sel1": rsa_sel(k.p_other)}),
        dom("dkimrevoked.test", dkim={"sel1": "v=DKIM1; k=rsa; p="}),
        dom("dkimtype.test", dkim={"sel1": f"v=DKIM1; k=ed25519; p={k.p_ed}"}),
        # DMARC
        dom("nodmarc.test", dmarc=None),
        dom("baddmarc.test", dmarc="v=DMARC1; p=block"),
        dom("strict.test", dkim={}, extra=[f'bounce TXT "{SPF_OK}"']),
        dom("extrua.test", dmarc="v=DMARC1; p=reject; rua=mailto:d@reports.test"),
        dom("dmarctimeout.test"),
        dom("pnone.test", dmarc="v=DMARC1; p=none; rua=mailto:d@pnone.test"),
        # MTA-STS / TLS-RPT
        dom("badsts.test", extra=['_mta-sts TXT "v=STSv1; id=not-valid!"']),
        dom("stsnohost.test", extra=['_mta-sts TXT "v=STSv1; id=1"']),
        dom("badtlsrpt.test", extra=['_smtp._tls TXT "v=TLSRPTv1; rua=ftp://reports.test/x"']),
        dom("twosts.test", extra=['_mta-sts TXT "v=STSv1; id=1"', '_mta-sts TXT "v=STSv1; id=2"']),
        dom("twotlsrpt.test", extra=['_smtp._tls TXT "v=TLSRPTv1; rua=mailto:a@reports.test"',
                                     '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:b@reports.test"']),
    ]


SERVFAIL = {("mxservfail.test", "MX"), ("spfservfail.test", "TXT")}
DROP = {("_dmarc.dmarctimeout.test", "TXT")}


@pytest.fixture(scope="module")
def server(keys: Keys) -> Iterator[DnsTestServer]:
    with DnsTestServer(*zones(keys), servfail=SERVFAIL, drop=DROP) as srv:
        yield srv


def target(domain: str, keys: Keys, *, selectors: tuple[str, ...] = (), bounce: str | None = None,
           signers: tuple[tuple[str, Path, str], ...] | None = None) -> DomainTarget:
    """By default the gateway signs with sel1 = the 2048-bit key, as the healthy setup does."""
    if signers is None:
        signers = (("sel1", keys.rsa2048, "rsa-sha256"),)
    return DomainTarget(domain, bounce or domain, selectors,
                        tuple(DkimConfig(domain=domain, selector=s, key_file=f, algorithm=a)
                              for s, f, a in signers))


async def check(server: DnsTestServer, t: DomainTarget, *, ip: str | None = GW_IP,
                lifetime: float = 2.0) -> dict[str, CheckResult]:
    plan = CheckPlan((t,), ip=ip, expect_mx=("mx.gw.test",))
    (report,) = await run_checks(plan, DnsClient.create([server.address], lifetime=lifetime))
    out: dict[str, CheckResult] = {}
    for c in report.checks:
        out.setdefault(c.check, c)
    return out


async def test_healthy_domain_is_all_ok(server: DnsTestServer, keys: Keys) -> None:
    t = target("good.test", keys, signers=(("sel1", keys.rsa2048, "rsa-sha256"),
                                           ("ed1", keys.ed25519, "ed25519-sha256")))
    plan = CheckPlan((t,), ip=GW_IP, expect_mx=("mx.gw.test",), helo_name="mx.gw.test")
    (report,) = await run_checks(plan, DnsClient.create([server.address], lifetime=2.0))
    got = [(c.check, c.status) for c in report.checks]
    assert got == [("mx", Status.OK), ("mx-gateway", Status.OK), ("spf", Status.OK), ("dkim", Status.OK),
                   ("dkim", Status.OK), ("dmarc", Status.OK), ("dmarc-alignment", Status.OK),
                   ("ptr", Status.OK), ("mta-sts", Status.OK), ("tls-rpt", Status.OK)], report.to_dict()
    by = {c.check: c for c in report.checks}
    assert "127.0.0.10 is authorised for good.test" in by["spf"].finding
    assert "matches the signing key" in by["dkim"].finding
    assert by["dmarc-alignment"].finding == "SPF and DKIM both aligned"
    assert by["ptr"].finding == "127.0.0.10 -> mx.gw.test -> 127.0.0.10"
    assert "good.test: v=spf1 ip4:127.0.0.10 -all" in by["spf"].records
    assert summarize([report]).exit_code == 0


@dataclass(frozen=True)
class Defect:
    domain: str
    check: str
    status: Status
    words: str
    selectors: tuple[str, ...] = ()
    bounce: str | None = None
    no_signer: bool = False
    key: str = "rsa2048"  # the Keys attribute the gateway signs with


DEFECTS = [
    Defect("nomx.test", "mx", Status.FAIL, "no MX and no address"),
    Defect("implicit.test", "mx", Status.WARN, "no MX record: senders fall back"),
    Defect("nullmx.test", "mx", Status.FAIL, "null MX (RFC 7505)"),
    Defect("nullmx.test", "mx-gateway", Status.FAIL, "never reaches the gateway"),
    Defect("cnamemx.test", "mx", Status.WARN, "MX mail.cnamemx.test is a CNAME to mx.gw.test"),
    Defect("deadmx.test", "mx", Status.FAIL, "no MX host has an address"),
    Defect("absent.test", "mx", Status.FAIL, "absent.test does not exist (NXDOMAIN)"),
    Defect("elsewhere.test", "mx-gateway", Status.FAIL, "points to mx.provider.test, not to the gateway"),
    Defect("backupmx.test", "mx-gateway", Status.WARN, "backup MX mx.provider.test is not the gateway"),
    Defect("mxservfail.test", "mx", Status.UNKNOWN, "mxservfail.test MX: DNS server failure (SERVFAIL)"),
    Defect("nospf.test", "spf", Status.WARN, "no SPF record at nospf.test"),
    Defect("twospf.test", "spf", Status.FAIL, "2 SPF records at twospf.test"),
    Defect("badspf.test", "spf", Status.FAIL, "SPF syntax error at badspf.test"),
    Defect("manylookups.test", "spf", Status.FAIL, "11 DNS-lookup terms (limit 10)"),
    Defect("voids.test", "spf", Status.FAIL, "3 void lookups (limit 2)"),
    Defect("plusall.test", "spf", Status.FAIL, "'+all' authorises every host"),
    Defect("qall.test", "spf", Status.WARN, "'?all' gives no protection"),
    Defect("spfnogw.test", "spf", Status.FAIL, "127.0.0.10 is not authorised for spfnogw.test"),
    Defect("spfservfail.test", "spf", Status.UNKNOWN, "spfservfail.test TXT: DNS server failure (SERVFAIL)"),
    Defect("splitbounce.test", "spf-bounce", Status.FAIL,
           "127.0.0.10 is not authorised for bounce.splitbounce.test as bounce domain",
           bounce="bounce.splitbounce.test"),
    Defect("nodkim.test", "dkim", Status.FAIL, "no key record at sel1._domainkey.nodkim.test"),
    Defect("nodkim.test", "dkim", Status.WARN, "no DKIM key configured for nodkim.test", no_signer=True),
    Defect("dkim1024.test", "dkim", Status.WARN, "RSA key is 1024 bits", key="rsa1024"),
    Defect("dkim768.test", "dkim", Status.FAIL, "RSA key is 768 bits", selectors=("sel1",), no_signer=True),
    Defect("dkimtesting.test", "dkim", Status.WARN, "t=y (testing)"),
    Defect("dkimother.test", "dkim", Status.FAIL, "is not the public half of"),
    Defect("dkimrevoked.test", "dkim", Status.FAIL, "revoked"),
    Defect("dkimtype.test", "dkim", Status.FAIL, "DNS has a ed25519 key but the gateway signs with rsa-sha256"),
    Defect("nodmarc.test", "dmarc", Status.WARN, "no DMARC record at _dmarc.nodmarc.test"),
    Defect("baddmarc.test", "dmarc", Status.WARN, "invalid DMARC record at _dmarc.baddmarc.test"),
    # p=none protects nothing (internet.nl and MXToolbox flag it as well).
    Defect("pnone.test", "dmarc", Status.WARN, "p=none: monitoring only, mail spoofing the domain is delivered"),
    # Optional records not published: information, not a warning.
    Defect("pnone.test", "mta-sts", Status.INFO, "not published (optional"),
    Defect("pnone.test", "tls-rpt", Status.INFO, "not published (optional"),
    # The classic Odoo failure: Return-Path bounce@bounce.strict.test, From @strict.test, strict
    # alignment with p=reject, and no DKIM signature.
    Defect("strict.test", "dmarc-alignment", Status.FAIL,
           "Return-Path @bounce.strict.test is not aligned with From @strict.test (aspf=s",
           bounce="bounce.strict.test", no_signer=True),
    Defect("extrua.test", "dmarc", Status.WARN, "reports.test does not accept DMARC reports for extrua.test"),
    Defect("badsts.test", "mta-sts", Status.WARN, "id='not-valid!' must be 1-32 letters or digits"),
    Defect("stsnohost.test", "mta-sts", Status.WARN, "policy host mta-sts.stsnohost.test does not resolve"),
    Defect("badtlsrpt.test", "tls-rpt", Status.WARN, "ftp://reports.test/x is not a mailto: or https: URI"),
    Defect("twosts.test", "mta-sts", Status.WARN, "2 MTA-STS records: senders then assume no policy"),
    Defect("twotlsrpt.test", "tls-rpt", Status.WARN, "2 TLS-RPT records: senders send no reports"),
]


@pytest.mark.parametrize("d", DEFECTS, ids=lambda d: f"{d.domain}-{d.check}-{d.status.value}")
async def test_each_defect_is_reported_by_its_check(server: DnsTestServer, keys: Keys, d: Defect) -> None:
    signers = () if d.no_signer else (("sel1", getattr(keys, d.key), "rsa-sha256"),)
    t = target(d.domain, keys, selectors=d.selectors, bounce=d.bounce, signers=signers)
    res = (await check(server, t))[d.check]
    assert res.status is d.status, res
    assert d.words in res.finding, res.finding


async def test_the_right_check_only(server: DnsTestServer, keys: Keys) -> None:
    """A single defect does not make unrelated checks fail (no cascading noise)."""
    results = await check(server, target("twospf.test", keys))
    bad = {name for name, r in results.items() if r.status.rank}
    assert bad == {"spf"}
    # SPF's permerror breaks DMARC's SPF leg, but the aligned DKIM signature still passes DMARC.
    assert "through DKIM only" in results["dmarc-alignment"].finding


async def test_timeout_is_unknown_not_a_missing_record(server: DnsTestServer, keys: Keys) -> None:
    results = await check(server, target("dmarctimeout.test", keys), lifetime=0.3)
    res = results["dmarc"]
    assert res.status is Status.UNKNOWN
    assert res.finding == "_dmarc.dmarctimeout.test TXT: DNS timeout"
    assert "no DMARC" not in res.finding
    # Alignment is still sure: SPF and DKIM both pass under strict alignment, whatever the record says.
    assert results["dmarc-alignment"].status is Status.OK


async def test_alignment_is_unknown_when_what_it_depends_on_was_not_looked_at(server: DnsTestServer,
                                                                             keys: Keys) -> None:
    """No --ip and no DKIM key: whether DMARC passes depends on SPF, which was not evaluated."""
    results = await check(server, target("good.test", keys, signers=()), ip=None)
    res = results["dmarc-alignment"]
    assert res.status is Status.UNKNOWN, res
    assert res.finding.startswith("cannot tell whether DMARC passes: SPF at good.test was not evaluated (give --ip")


async def test_ptr_missing_and_not_forward_confirmed(server: DnsTestServer, keys: Keys) -> None:
    none = (await check(server, target("good.test", keys), ip="127.0.0.11"))["ptr"]
    assert none.status is Status.FAIL and "127.0.0.11 has no PTR record" in none.finding
    bad = (await check(server, target("good.test", keys), ip="127.0.0.12"))["ptr"]
    assert bad.status is Status.FAIL and "mismatch.gw.test does not resolve back to 127.0.0.12" in bad.finding


async def test_without_ip_there_is_no_ptr_check_and_spf_says_so(server: DnsTestServer, keys: Keys) -> None:
    results = await check(server, target("good.test", keys), ip=None)
    assert "ptr" not in results
    assert results["spf"].status is Status.OK and "pass --ip" in results["spf"].finding


async def test_several_domains_in_one_run(server: DnsTestServer, keys: Keys) -> None:
    plan = CheckPlan((target("good.test", keys), target("plusall.test", keys), target("qall.test", keys)),
                     ip=GW_IP, expect_mx=("mx.gw.test",))
    reports = await run_checks(plan, DnsClient.create([server.address], lifetime=2.0))
    assert [(r.domain, r.status) for r in reports] == [
        ("good.test", Status.OK), ("plusall.test", Status.FAIL), ("qall.test", Status.WARN)]
    s = summarize(reports)
    assert s.exit_code == 2 and s.domains == {"good.test": "ok", "plusall.test": "fail", "qall.test": "warn"}
    assert s.problems[0].startswith("plusall.test spf fail:")
