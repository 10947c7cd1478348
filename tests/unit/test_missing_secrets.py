"""A secret the config names but that cannot be read is a warning saying what will not work, never a refusal to
start: check-config (and so systemd's ExecStartPre) passes, the daemon's parts run without it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.cli import main as cli_main
from gateway.config import OutboundConfig, parse_config
from gateway.exitcodes import EX_CONFIG
from gateway.outbound.sender import SmtpSender, Transaction

REPO = Path(__file__).resolve().parents[2]
UNSET = "MAILGW_TEST_NEVER_SET"
CONFIG = {
    "odoo": [{"name": "main", "url": "http://127.0.0.1:8069", "database": "odoo", "password_env": UNSET,
              "domains": ["example.com"]}],
    "imap": [{"name": "support", "host": "imap.example.com", "user": "u", "password_file": "/nonexistent/pw"}],
    "outbound": {"relay": {"host": "smtp.example.net", "port": 587, "username": "odoo", "password_env": UNSET}},
    "bounce": {"verp_secret_env": UNSET},
}


@pytest.fixture(autouse=True)
def _unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSET, raising=False)


def test_each_missing_secret_says_what_will_not_work() -> None:
    problems = parse_config(CONFIG).secret_problems()
    assert len(problems) == 3
    odoo, box, relay = problems
    assert odoo.startswith(f"odoo[main].password: environment variable {UNSET} is not set: nothing can be "
                           "delivered to Odoo instance main")
    assert "cannot read secret file /nonexistent/pw" in box and "mailbox support is not read" in box
    assert relay.startswith("outbound.relay.password:") and "waits in the spool (deferred)" in relay
    assert parse_config(CONFIG).bounce.verp_warning() == (
        f"bounce.verp_secret: environment variable {UNSET} is not set: VERP is off")


def test_check_config_warns_and_passes_strict_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    assert cli_main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out == "ok\n"
    assert out.err.count(f"{path}: warning: ") == 4 and "VERP is off" in out.err
    assert cli_main(["check-config", "--strict", "-c", str(path)]) == EX_CONFIG
    assert capsys.readouterr().out == ""
    # The shipped config with no secret in the environment: what `./run serve` starts with.
    monkeypatch.delenv("MAILGW_ODOO_PASSWORD", raising=False)
    monkeypatch.delenv("MAILGW_VERP_SECRET", raising=False)
    assert cli_main(["check-config", "-c", str(REPO / "config.yaml")]) == 0
    out = capsys.readouterr()
    assert out.out == "ok\n" and out.err.count("warning: ") == 2 and "MAILGW_ODOO_PASSWORD is not set" in out.err


def test_systemd_unit_runs_check_config_without_strict() -> None:
    unit = (REPO / "systemd" / "mailgw.service").read_text()
    [pre] = [line for line in unit.splitlines() if line.startswith("ExecStartPre=")]
    assert " check-config " in pre and "--strict" not in pre


async def test_relay_without_its_password_defers_instead_of_crashing() -> None:
    sender = SmtpSender(OutboundConfig.model_validate(CONFIG["outbound"]), helo="gw.example.com")
    results = await sender.deliver("example.org", [Transaction("a@example.com", ("x@example.org",))], b"x")
    [result] = results.values()
    assert result.outcome == "temporary" and f"{UNSET} is not set" in result.text
