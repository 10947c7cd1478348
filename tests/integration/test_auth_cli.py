"""`mailgw auth check` against the loopback DNS server: the text report and the JSON object."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from tests.integration.auth_zone import STRANGER_IP, Keys, message, zones
from tests.integration.dnsserver import DnsTestServer


@pytest.fixture(scope="module")
def dns(keys: Keys) -> Iterator[DnsTestServer]:
    with DnsTestServer(*zones(keys)) as srv:
        yield srv


@pytest.fixture
def config(tmp_path: Path, dns: DnsTestServer) -> Path:
    secret = tmp_path / "odoo.secret"
    secret.write_text("x")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "var"),
        "auth": {"enabled": True, "authserv_id": "mx.example.com", "nameservers": [dns.nameserver]},
        "odoo": [{"name": "main", "url": "http://127.0.0.1:9", "database": "odoo", "password_file": str(secret),
                  "domains": ["example.com"], "auth": {"dmarc_reject": "hold"}}],
    }))
    return path


def test_json_object(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(b"Return-Path: <alice@origin.test>\r\n" + message())
    rc = main(["auth", "check", str(eml), "--ip", STRANGER_IP, "--helo", "client.test", "-c", str(config),
               "--json", "--offline"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["spf"]["result"] == "fail" and out["spf"]["domain"] == "origin.test"
    assert out["dkim"] == []
    assert (out["dmarc"]["result"], out["dmarc"]["policy"], out["dmarc"]["from_domain"]) == \
        ("fail", "reject", "origin.test")
    assert out["arc"]["result"] == "none"
    assert out["authentication_results"].startswith("mx.example.com; spf=fail")
    # The instance's policy holds p=reject failures instead of refusing them.
    assert out["recipients"]["support@example.com"]["action"] == "hold"


def test_text_report(tmp_path: Path, config: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(keys.sign(message(), "origin.test", "e1"))
    rc = main(["auth", "check", str(eml), "--ip", STRANGER_IP, "--mail-from", "", "--rcpt", "sales@example.com",
               "-c", str(config)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "DKIM    pass      d=origin.test s=e1 ed25519-sha256" in text
    assert "DMARC   pass" in text and "sales@example.com: accept" in text
    assert "Authentication-Results: mx.example.com;" in text


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["auth", "check", str(tmp_path / "none.eml"), "--ip", "127.0.0.1", "-c",
                 str(tmp_path / "c.yaml")]) == 78
    (tmp_path / "m.eml").write_bytes(message())
    assert main(["auth", "check", str(tmp_path / "m.eml"), "--ip", "not-an-ip"]) == 64
