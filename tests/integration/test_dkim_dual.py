"""Dual DKIM signatures (RSA-2048 + Ed25519, RFC 8463) from keys made by `mailgw dkim keygen`: the printed
records pass `mailgw dns-check`, and each signature verifies with dkimpy and with OpenDKIM's opendkim-testmsg."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dkim
import pytest

from gateway.outbound.dkim import DkimKey, DkimSigner
from tests.integration.dnsserver import DnsTestServer, mail_zone, txt
from tests.integration.test_outbound import dnsfunc_for

MAILGW = Path(sys.executable).with_name("mailgw")
MESSAGE = (b"From: \"Shop\" <notifications@example.com>\r\nTo: ann@example.org\r\nSubject: Invoice\r\n"
           b"Date: Mon, 01 Dec 2025 10:00:00 +0000\r\nMessage-Id: <inv-1@example.com>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\nYour invoice.\r\n")


def keygen(tmp_path: Path, selector: str, algorithm: str) -> tuple[Path, str]:
    path = tmp_path / f"{selector}.key"
    r = subprocess.run([str(MAILGW), "dkim", "keygen", "example.com", selector, "--algorithm", algorithm,
                        "--key-file", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if " IN TXT " in x)
    assert line.startswith(f"{selector}._domainkey.example.com. IN TXT (")
    record = "".join(re.findall(r'"([^"]*)"', line))
    assert (path.stat().st_mode & 0o777) == 0o600
    return path, record


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    tmp = tmp_path_factory.mktemp("dkimkeys")
    return {"rsa": keygen(tmp, "s2026r", "rsa"), "ed25519": keygen(tmp, "s2026e", "ed25519")}


def zone(keys: dict[str, tuple[Path, str]]) -> str:
    return mail_zone("example.com", mx=["10 mx.example.com."], spf="v=spf1 ip4:127.0.0.10 -all",
                     dmarc="v=DMARC1; p=reject", extra=["mx A 127.0.0.10",
                                                        f"s2026r._domainkey TXT {txt(keys['rsa'][1])}",
                                                        f"s2026e._domainkey TXT {txt(keys['ed25519'][1])}"])


def signed(keys: dict[str, tuple[Path, str]]) -> bytes:
    signer = DkimSigner([DkimKey("example.com", "s2026r", keys["rsa"][0].read_bytes(), "rsa-sha256"),
                         DkimKey("example.com", "s2026e", keys["ed25519"][0].read_bytes(), "ed25519-sha256")])
    return signer.sign(MESSAGE)


def split_signatures(message: bytes) -> tuple[list[bytes], bytes]:
    """(each DKIM-Signature field, the rest of the message)."""
    fields: list[bytes] = []
    rest = message
    while rest.startswith(b"DKIM-Signature:"):
        end = re.search(rb"\r\n(?![ \t])", rest)
        assert end is not None
        fields.append(rest[:end.end()])
        rest = rest[end.end():]
    return fields, rest


def test_keygen_records_pass_dns_check(keys: dict[str, tuple[Path, str]], tmp_path: Path) -> None:
    assert keys["rsa"][1].startswith("v=DKIM1; k=rsa; p=") and keys["ed25519"][1].startswith("v=DKIM1; k=ed25519;")
    config = tmp_path / "config.yaml"
    config.write_text(f"""
odoo:
  - {{name: main, url: "http://127.0.0.1:8069", database: odoo, password_env: PW, domains: [example.com]}}
outbound:
  dkim:
    - {{domain: example.com, selector: s2026r, key_file: {keys['rsa'][0]}, algorithm: rsa-sha256}}
    - {{domain: example.com, selector: s2026e, key_file: {keys['ed25519'][0]}, algorithm: ed25519-sha256}}
""")
    with DnsTestServer(zone(keys)) as dns:
        r = subprocess.run([str(MAILGW), "dns-check", "-c", str(config), "--json", "--nameserver", dns.nameserver,
                            "--ip", "127.0.0.10"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    import json

    checks = [c for c in json.loads(r.stdout)[0]["checks"] if c["check"] == "dkim"]
    assert len(checks) == 2, r.stdout
    for check in checks:
        assert check["status"] == "ok" and "matches the signing key" in check["finding"], check


def test_dual_signature_verifies_with_dkimpy(keys: dict[str, tuple[Path, str]]) -> None:
    message = signed(keys)
    fields, _rest = split_signatures(message)
    assert [b"a=rsa-sha256" in f for f in fields] == [True, False]  # RSA on top, Ed25519 below
    assert b"a=ed25519-sha256" in fields[1]
    with DnsTestServer(zone(keys)) as dns:
        dnsfunc = dnsfunc_for(dns.address)
        verifier = dkim.DKIM(message)
        assert verifier.verify(idx=0, dnsfunc=dnsfunc) and verifier.verify(idx=1, dnsfunc=dnsfunc)
        tampered = message.replace(b"Your invoice.", b"Your bill.")
        for idx in (0, 1):
            with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
                dkim.DKIM(tampered).verify(idx=idx, dnsfunc=dnsfunc)


NETNS_HELPER = """
import subprocess, sys
sys.path.insert(0, {repo!r})
from tests.integration.dnsserver import DnsTestServer
zone = open({zone!r}).read()
with DnsTestServer(zone, port=53):
    for path in sys.argv[1:]:
        with open(path, "rb") as f:
            r = subprocess.run(["opendkim-testmsg", "-C"], stdin=f, capture_output=True)
        print(path, r.returncode, r.stderr.decode().strip().replace(chr(10), " "), flush=True)
"""


@pytest.mark.needs_root
def test_each_signature_verifies_with_opendkim(keys: dict[str, tuple[Path, str]], tmp_path: Path) -> None:
    """opendkim-testmsg resolves keys with libc's resolver on port 53: it runs in a private network and mount
    namespace (unshare) where /etc/resolv.conf is bind-mounted to 127.0.0.1 and the loopback DNS server
    listens on 127.0.0.1:53. Nothing outside the namespace changes."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace (unshare --net --mount)")
    for tool in ("opendkim-testmsg", "unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: opendkim-tools, util-linux, iproute2)")
    fields, rest = split_signatures(signed(keys))
    cases = {"rsa.eml": fields[0] + rest, "ed25519.eml": fields[1] + rest,
             "both.eml": fields[0] + fields[1] + rest,
             "rsa-tampered.eml": fields[0] + rest.replace(b"invoice.", b"bill."),
             "ed25519-tampered.eml": fields[1] + rest.replace(b"invoice.", b"bill.")}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "zone.txt").write_text(zone(keys))
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    repo = str(Path(__file__).resolve().parents[2])
    (tmp_path / "helper.py").write_text(NETNS_HELPER.format(repo=repo, zone=str(tmp_path / "zone.txt")))
    script = (f"ip link set lo up && mount --bind {tmp_path / 'resolv.conf'} /etc/resolv.conf && "
              f"exec {sys.executable} {tmp_path / 'helper.py'} " + " ".join(str(tmp_path / n) for n in cases))
    r = subprocess.run(["unshare", "--net", "--mount", "--", "sh", "-c", script], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0 and "unshare failed" in r.stderr:
        pytest.skip(f"cannot create namespaces here: {r.stderr.strip()}")
    results = {Path(line.split()[0]).name: line.split(maxsplit=2)[1:] for line in r.stdout.splitlines()}
    assert set(results) == set(cases), r.stdout + r.stderr
    for name in ("rsa.eml", "ed25519.eml", "both.eml"):
        assert results[name][0] == "0", (name, results[name])
    for name in ("rsa-tampered.eml", "ed25519-tampered.eml"):
        assert results[name][0] != "0" and "Bad signature" in results[name][1], (name, results[name])
