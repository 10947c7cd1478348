"""Config parsing: units, secrets, YAML paths in errors, cross-checks, the shipped default."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.admission import AdmissionPolicy, is_loopback_peer
from gateway.config import ConfigError, load_config, parse_config, parse_duration, parse_size, resolve_secret

REPO = Path(__file__).resolve().parents[2]
ODOO = {"name": "main", "url": "http://127.0.0.1:8069", "database": "odoo", "password_env": "PW",
        "domains": ["Example.COM."]}


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("2h", 7200), ("5d", 432000),
                                               (12, 12), ("1.5s", 1.5), ("250ms", 0.25)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [("25MiB", 25 * 1024**2), ("10MB", 10**7), ("512k", 512000),
                                            ("1GiB", 1024**3), (1000, 1000)])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["5 minutes", "-1s", True, "1x"])
def test_bad_duration(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_errors_name_their_yaml_path() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"listeners": [{"kind": "smtp", "bind": "127.0.0.1:25", "max_message_size": "lots"}],
                      "odoo": [{**ODOO, "api": "soap"}], "unknown_key": 1})
    text = "\n".join(exc.value.errors)
    assert "listeners[0].max_message_size" in text and "odoo[0].api" in text and "unknown_key" in text


def test_inline_secret_refused_with_advice() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"odoo": [{**ODOO, "password": "hunter2"}]})
    assert "password_env" in exc.value.errors[0] and "hunter2" not in exc.value.errors[0]


def test_domains_normalised_and_owned_once() -> None:
    cfg = parse_config({"odoo": [ODOO]})
    assert cfg.odoo[0].domains == ["example.com"]
    assert cfg.instance_for_domain("EXAMPLE.com").name == "main"  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as exc:
        parse_config({"odoo": [ODOO, {**ODOO, "name": "other"}]})
    assert "belongs to both" in exc.value.errors[0]


def test_unix_socket_only_for_lmtp_and_octal_mode() -> None:
    cfg = parse_config({"listeners": [{"kind": "lmtp", "bind": "unix:/run/x.sock", "socket_mode": "0o600"}]})
    assert cfg.listeners[0].socket_mode == 0o600 and cfg.listeners[0].unix_path == "/run/x.sock"
    with pytest.raises(ConfigError):
        parse_config({"listeners": [{"kind": "smtp", "bind": "unix:/run/x.sock"}]})


def test_secrets_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "s").write_text("from-file\n")
    monkeypatch.setenv("MAILGW_T_SECRET", "from-env")
    assert resolve_secret("MAILGW_T_SECRET", None, what="x") == "from-env"
    assert resolve_secret("MAILGW_T_UNSET", tmp_path / "s", what="x") == "from-file"
    with pytest.raises(ConfigError):
        resolve_secret("MAILGW_T_UNSET", None, what="x")


def test_shipped_config_is_valid() -> None:
    cfg = load_config(REPO / "config.yaml")
    assert [x.kind for x in cfg.listeners] == ["smtp", "lmtp"]
    assert cfg.listeners[0].bind == "127.0.0.1:2525" and cfg.spool.backend == "sqlite"


def test_admission_relay_check_before_anything() -> None:
    cfg = parse_config({"odoo": [ODOO]})
    policy = AdmissionPolicy(cfg, precheck=lambda rcpt, sender: "550 5.1.1 unknown")
    assert policy.check_rcpt("x@elsewhere.test", "", "1.2.3.4:5").startswith("550 5.7.1")  # type: ignore[union-attr]
    assert policy.check_rcpt("no-at-sign", "", "1.2.3.4:5").startswith("550 5.7.1")  # type: ignore[union-attr]
    assert policy.check_rcpt("x@EXAMPLE.com", "", "1.2.3.4:5") == "550 5.1.1 unknown"


def test_submission_without_auth_only_from_loopback() -> None:
    open_check = AdmissionPolicy.submission_check(auth_configured=False)
    assert open_check("a@anywhere.test", "b@example.com", "127.0.0.1:4000") is None
    assert open_check("a@anywhere.test", "b@example.com", "::1:4000") is None
    assert open_check("a@anywhere.test", "b@example.com", "192.0.2.7:4000").startswith("550 5.7.1")  # type: ignore[union-attr]
    assert AdmissionPolicy.submission_check(auth_configured=True)("a@x.test", "", "192.0.2.7:1") is None
    assert is_loopback_peer("unix") and not is_loopback_peer("10.0.0.1:25")
