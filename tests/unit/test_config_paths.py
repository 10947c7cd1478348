"""Relative paths in the config are taken from the config file's directory, for every path-holding field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, load_config, parse_config

ODOO = {"name": "main", "url": "http://127.0.0.1:8069", "database": "odoo", "password_file": "secrets/odoo",
        "domains": ["example.com"]}


def write(tmp_path: Path, data: dict[str, object]) -> Path:
    conf = tmp_path / "etc" / "config.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(yaml.safe_dump(data))
    return conf


def test_every_relative_path_follows_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = write(tmp_path, {
        "state_dir": "./var",
        "spool": {"path": "spool/db.sqlite3"},
        "listeners": [
            {"kind": "smtp", "bind": "127.0.0.1:2525", "tls": {"cert_file": "tls.pem", "key_file": "/abs/tls.key"}},
            {"kind": "lmtp", "bind": "unix:./var/lmtp.sock"},
            {"kind": "policy", "bind": "unix:/run/mailgw/policy.sock"},
            {"kind": "submission", "bind": "127.0.0.1:2587", "auth": {"users_file": "users"}},
        ],
        "odoo": [ODOO],
        "outbound": {"dkim": [{"domain": "example.com", "selector": "s", "key_file": "../keys/dkim.key"}]},
        "bounce": {"verp_secret_file": "verp.secret"},
    })
    monkeypatch.chdir(tmp_path)  # an unrelated directory: nothing below may depend on it
    etc = conf.parent
    cfg = load_config(Path("etc") / "config.yaml")
    assert cfg.state_dir == etc / "var"
    assert cfg.spool_path == etc / "spool" / "db.sqlite3"
    smtp, lmtp, policy, submission = cfg.listeners
    assert smtp.bind == "127.0.0.1:2525"
    assert smtp.tls is not None and smtp.tls.cert_file == etc / "tls.pem" and smtp.tls.key_file == Path("/abs/tls.key")
    assert lmtp.unix_path == str(etc / "var" / "lmtp.sock")
    assert policy.unix_path == "/run/mailgw/policy.sock"
    assert submission.auth is not None and submission.auth.users_file == etc / "users"
    assert cfg.odoo[0].password_file == etc / "secrets" / "odoo"
    assert cfg.outbound.dkim[0].key_file == etc / ".." / "keys" / "dkim.key"
    assert cfg.bounce.verp_secret_file == etc / "verp.secret"
    assert cfg.domain_owner == {"example.com": "main"}


def test_the_default_state_dir_is_beside_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = write(tmp_path, {"odoo": [ODOO]})
    monkeypatch.chdir("/")
    assert load_config(str(conf)).state_dir == conf.parent / "var"


def test_parse_config_without_a_file_keeps_paths_as_given() -> None:
    assert parse_config({"state_dir": "rel"}).state_dir == Path("rel")


@pytest.mark.parametrize(("listener", "error"), [
    ({"kind": "lmtp", "bind": "unix:/x.sock", "trusted_relays": ["127.0.0.1"]}, "has no peer address"),
    ({"kind": "smtp", "bind": "127.0.0.1:25", "trusted_relays": ["unix"]}, "bound to a unix: socket"),
    ({"kind": "smtp", "bind": "127.0.0.1:25", "trusted_relays": ["postfix.local"]}, "neither"),
    ({"kind": "policy", "bind": "unix:/p.sock", "trusted_relays": ["unix"]}, "policy listener"),
    ({"kind": "smtp", "bind": "unix:/p.sock"}, "only for kind: lmtp and kind: policy"),
])
def test_listener_checks(listener: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"listeners": [listener]})
    assert error in exc.value.errors[0]


def test_trusted_relays_accepted() -> None:
    cfg = parse_config({"listeners": [
        {"kind": "lmtp", "bind": "unix:/x.sock", "trusted_relays": ["unix"]},
        {"kind": "smtp", "bind": "127.0.0.1:2525", "trusted_relays": ["127.0.0.1", "10.0.0.0/8", "::1"]},
        {"kind": "policy", "bind": "127.0.0.1:9998"},
    ]})
    assert cfg.listeners[1].trusted_relays == ["127.0.0.1", "10.0.0.0/8", "::1"]
