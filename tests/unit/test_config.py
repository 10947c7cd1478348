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


@pytest.mark.parametrize(("bind", "error"), [
    ("127.0.0.1:99999", "port 99999 is out of range (0-65535)"),
    ("127.0.0.1:-1", "the port must be a number"),
    ("127.0.0.1:", "the port must be a number"),
    (":25", "the host is missing"),
    ("127.0.0.1", "must be HOST:PORT"),
    ("::1:25", "write an IPv6 address in brackets with its port, e.g. [::1]:25"),
    ("[::1]25", "write an IPv6 address as [ADDRESS]:PORT"),
    ("[127.0.0.1]:25", "only an IPv6 address goes in brackets"),
    ("[::g]:25", "is not a valid IPv6 address"),
    ("300.1.1.1:25", "is not a valid IPv4 address"),
    ("mail_host:25", "is neither an IP address nor a host name"),
    ("unix:", "unix: needs a path"),
])
def test_every_bind_is_checked_with_its_yaml_path(bind: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"listeners": [{"kind": "lmtp", "bind": "unix:/x"}, {"kind": "lmtp", "bind": bind}]})
    [line] = exc.value.errors
    assert line.startswith("listeners[1].bind: ") and error in line, line
    with pytest.raises(ConfigError) as exc:
        parse_config({"metrics": {"bind": bind}})
    assert exc.value.errors[0].startswith("metrics.bind: ") and (error in exc.value.errors[0] or bind == "unix:")


@pytest.mark.parametrize(("bind", "host_port"), [("127.0.0.1:2525", ("127.0.0.1", 2525)), ("[::1]:25", ("::1", 25)),
                                                 ("[::]:0", ("::", 0)), ("mx.example.com:25", ("mx.example.com", 25)),
                                                 ("0.0.0.0:25", ("0.0.0.0", 25))])
def test_good_binds(bind: str, host_port: tuple[str, int]) -> None:
    cfg = parse_config({"listeners": [{"kind": "smtp", "bind": bind}], "metrics": {"bind": bind}})
    assert cfg.listeners[0].host_port == host_port


def test_ports_hosts_and_nameservers_elsewhere_are_checked_too() -> None:
    box = {"name": "b", "host": "imap.example.com", "user": "u", "password_env": "X"}
    cfg = parse_config({"outbound": {"nameservers": ["192.0.2.53", "[2001:db8::53]:5353", "2001:db8::54",
                                                     "ns.example.net:53"],
                                     "relay": {"host": "smtp.example.net", "port": 587}},
                        "imap": [{**box, "port": 993}], "dns_check": {"nameservers": ["[::1]:5353"]}})
    assert cfg.imap[0].port == 993 and cfg.outbound.relay is not None and cfg.outbound.relay.port == 587
    with pytest.raises(ConfigError) as exc:
        parse_config({"outbound": {"nameservers": ["192.0.2.53", "127.0.0.1:0"], "smtp_port": 70000,
                                   "relay": {"host": "smtp example", "port": 0}},
                      "imap": [{**box, "port": 99999}], "pop3": [{**box, "host": "-bad-"}],
                      "dns_check": {"nameservers": ["::1:5353:x"]}})
    text = "\n".join(exc.value.errors)
    for path in ("outbound.nameservers[1]: ", "outbound.smtp_port: port 70000", "outbound.relay.host: ",
                 "outbound.relay.port: port 0 is out of range (1-65535)", "imap[0].port: port 99999",
                 "pop3[0].host: '-bad-' is neither", "dns_check.nameservers[0]: "):
        assert path in text, (path, text)
