"""`mailgw dns-check` as operators and monitoring run it: a subprocess against a loopback DNS server."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from routing.directory import AliasDomain, Directory, InstanceDirectory
from tests.dkim_keys import rsa_key
from tests.integration.dnsserver import DnsTestServer, mail_zone

MAILGW = Path(sys.executable).with_name("mailgw")
GW_IP = "127.0.0.10"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    pem, pub = rsa_key(pkcs8=True)
    path = tmp_path_factory.mktemp("dkim") / "sel1.pem"
    path.write_bytes(pem)
    return path, pub


@pytest.fixture(scope="module")
def server(key: tuple[Path, str]) -> Iterator[DnsTestServer]:
    _, p = key

    def dom(name: str, **kw: object) -> str:
        args: dict[str, object] = {
            "mx": ["10 mx.gw.test."], "spf": f"v=spf1 ip4:{GW_IP} -all",
            "dmarc": f"v=DMARC1; p=reject; adkim=s; aspf=s; rua=mailto:dmarc@{name}",
            "dkim": {"sel1": f"v=DKIM1; k=rsa; p={p}"}}
        args.update(kw)
        return mail_zone(name, **args)  # type: ignore[arg-type]

    zones = [
        mail_zone("gw.test", extra=[f"mx A {GW_IP}"]),
        mail_zone("10.0.0.127.in-addr.arpa", extra=["@ PTR mx.gw.test."]),
        dom("good.test"),
        dom("good2.test"),
        dom("broken.test", mx=["0 ."], spf=["v=spf1 -all", "v=spf1 +all"]),  # null MX, two SPF records
        dom("warn.test", dmarc=None),
    ]
    with DnsTestServer(*zones) as srv:
        yield srv


def mailgw(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MAILGW), "dns-check", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"})


def common(server: DnsTestServer) -> list[str]:
    return ["--nameserver", server.nameserver, "--ip", GW_IP, "--selector", "sel1", "--timeout", "2",
            "--expect-mx", "mx.gw.test", "--"]


def test_healthy_zone_exits_0(server: DnsTestServer, tmp_path: Path) -> None:
    r = mailgw(*common(server), "good.test", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0].split() == ["DOMAIN", "CHECK", "STATUS", "FINDING"]
    # No MTA-STS, no TLS-RPT: said, as information; the exit status stays 0.
    assert "dns-check ok: 1 domain, 7 ok, 0 warn, 0 fail, 2 info" in r.stdout
    assert re.search(r"^ +mta-sts +info +not published \(optional", r.stdout, re.M), r.stdout
    assert "\033[" not in r.stdout  # not a TTY: no colour


def test_broken_zone_exits_2(server: DnsTestServer, tmp_path: Path) -> None:
    r = mailgw(*common(server), "broken.test", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "null MX (RFC 7505)" in r.stdout and "2 SPF records" in r.stdout


def test_warning_exits_1_and_json_has_the_documented_shape(server: DnsTestServer, tmp_path: Path) -> None:
    r = mailgw("--json", *common(server), "warn.test", "good.test", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert [d["domain"] for d in data] == ["warn.test", "good.test"]
    for d in data:
        for c in d["checks"]:
            assert set(c) == {"check", "status", "finding", "records"}
            assert c["status"] in ("ok", "info", "unknown", "warn", "fail") and isinstance(c["records"], list)
    dmarc = next(c for c in data[0]["checks"] if c["check"] == "dmarc")
    assert dmarc["status"] == "warn" and "no DMARC record" in dmarc["finding"]


def test_domains_and_keys_from_the_config(server: DnsTestServer, key: tuple[Path, str], tmp_path: Path) -> None:
    key_file, _ = key
    config = tmp_path / "config.yaml"
    config.write_text(f"""
odoo:
  - name: main
    url: http://127.0.0.1:8069
    database: odoo
    password_env: ODOO_PASSWORD
    domains: [good.test, good2.test]
outbound:
  dkim:
    - {{domain: good.test, selector: sel1, key_file: {key_file}}}
    - {{domain: good2.test, selector: sel1, key_file: {key_file}}}
dns_check:
  ip: {GW_IP}
  expect_mx: [mx.gw.test]
""")
    r = mailgw("-c", str(config), "--json", "--nameserver", server.nameserver, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert [d["domain"] for d in data] == ["good.test", "good2.test"]
    dkim = next(c for c in data[0]["checks"] if c["check"] == "dkim")
    assert "matches the signing key" in dkim["finding"]


def test_alias_domains_from_the_directory_snapshot(server: DnsTestServer, tmp_path: Path) -> None:
    """Odoo knows alias domains beyond odoo[].domains: the daemon's cached snapshot adds them."""
    (tmp_path / "var").mkdir()
    snapshot = Directory.build([InstanceDirectory("main", domains=(AliasDomain(1, "good2.test"),
                                                                   AliasDomain(2, "broken.test")))], {})
    (tmp_path / "var" / "directory.json").write_text(json.dumps(snapshot.to_dict()))
    (tmp_path / "config.yaml").write_text(f"""
state_dir: var
odoo:
  - {{name: main, url: "http://127.0.0.1:8069", database: odoo, password_env: PW, domains: [good.test]}}
dns_check: {{ip: {GW_IP}, selector: sel1, expect_mx: [mx.gw.test]}}
""")
    r = mailgw("--json", "--nameserver", server.nameserver, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert [d["domain"] for d in json.loads(r.stdout)] == ["good.test", "good2.test", "broken.test"]
    # --directory FILE instead of the cached snapshot.
    (tmp_path / "snap.json").write_text(json.dumps(Directory.build(
        [InstanceDirectory("main", domains=(AliasDomain(1, "good2.test"),))], {}).to_dict()))
    r = mailgw("--json", "--nameserver", server.nameserver, "--directory", "snap.json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [d["domain"] for d in json.loads(r.stdout)] == ["good.test", "good2.test"]


def test_usage_and_config_errors(server: DnsTestServer, tmp_path: Path) -> None:
    assert mailgw("--nameserver", "127.0.0.1:notaport", "good.test", cwd=tmp_path).returncode == 64
    assert mailgw("--ip", "not-an-ip", "good.test", cwd=tmp_path).returncode == 64
    no_domains = mailgw("--nameserver", server.nameserver, cwd=tmp_path)  # no config.yaml here either
    assert no_domains.returncode == 78 and "config.yaml" in no_domains.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("odoo: 3\n")
    r = mailgw("-c", str(bad), "--nameserver", server.nameserver, cwd=tmp_path)
    assert r.returncode == 78 and "odoo" in r.stderr


def test_a_resolver_that_refuses_is_a_failure_not_a_list_of_timeouts(tmp_path: Path) -> None:
    """Nothing listens on the port: the ICMP "port unreachable" is heard and said, and nothing is called ok."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = mailgw("--nameserver", f"127.0.0.1:{port}", "--ip", GW_IP, "--timeout", "2", "good.test", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert (f"resolver  fail     no answer from 127.0.0.1:{port} (connection refused: nothing listens on that "
            "port): nothing was checked") in r.stdout
    assert "timeout" not in r.stdout and " ok " not in r.stdout


def test_a_resolver_that_never_answers_is_a_failure(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        r = mailgw("--json", "--nameserver", f"127.0.0.1:{port}", "--timeout", "1", "good.test", "warn.test",
                   cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert [(d["domain"], d["status"]) for d in data] == [("good.test", "fail"), ("warn.test", "fail")]
    assert data[0]["checks"] == [{"check": "resolver", "status": "fail", "records": [], "finding":
                                  f"no answer from 127.0.0.1:{port} (no reply within 1s): nothing was checked"}]


def test_one_answering_resolver_of_two_is_enough(server: DnsTestServer, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    r = mailgw("--nameserver", f"127.0.0.1:{dead}", *common(server), "good.test", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr  # the dead one is a warning; the checks ran on the other
    assert (f"resolver         warn     no answer from 127.0.0.1:{dead} (connection refused: nothing listens on "
            "that port): the checks asked the other servers") in r.stdout
    assert "dns-check warn: 1 domain, 7 ok, 1 warn, 0 fail, 2 info" in r.stdout
