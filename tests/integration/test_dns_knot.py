"""The checks against Knot DNS (Debian's knotd) on loopback: the same verdicts as with the in-process
server, from a real authoritative server (wire format, TCP, negative answers as knot gives them)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dns_checks import CheckPlan, DnsClient, DomainTarget, Status, run_checks
from gateway.config import DkimConfig
from tests.dkim_keys import rsa_key
from tests.integration.dnsserver import mail_zone

KNOTD = shutil.which("knotd") or (shutil.which("knotd", path="/usr/sbin:/sbin"))
pytestmark = pytest.mark.skipif(KNOTD is None, reason="knotd not installed (Debian package knot)")

GW_IP = "127.0.0.10"


def _free_port() -> int:
    """A port free for both UDP and TCP right now (knotd binds it a moment later)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise OSError("no free port")


@pytest.fixture(scope="module")
def keyfile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    pem, pub = rsa_key()
    path = tmp_path_factory.mktemp("dkim") / "sel1.pem"
    path.write_bytes(pem)
    return path, pub


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory, keyfile: tuple[Path, str]) -> Iterator[tuple[str, int]]:
    assert KNOTD is not None
    d = tmp_path_factory.mktemp("knot")
    for sub in ("run", "db", "zones"):
        (d / sub).mkdir()
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
    for name, text in zones.items():
        (d / "zones" / f"{name}.zone").write_text(text)
    port = _free_port()
    conf = d / "knot.conf"
    conf.write_text(f"""
server:
    rundir: {d}/run
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: {d}/db
control:
    listen: {d}/run/knot.sock
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: {d}/zones
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: on
zone:
""" + "".join(f"  - domain: {name}\n" for name in zones))
    proc = subprocess.Popen([KNOTD, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(port, proc)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    client = DnsClient.create([("127.0.0.1", port)], lifetime=0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"knotd exited with {proc.returncode}: {err}")
        ans = asyncio.run(client.session().query("broken.test", "SOA"))
        if ans.is_ok:
            return
        time.sleep(0.1)
    raise RuntimeError("knotd did not answer within 10 s")


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
