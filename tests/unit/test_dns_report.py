"""Rendering, summaries, exit codes, nameserver arguments and check plans — pure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dns_checks import (
    CheckResult,
    DomainReport,
    MailDomain,
    Status,
    exit_code,
    parse_nameserver,
    plan_checks,
    render_json,
    render_table,
    summarize,
)
from gateway.config import parse_config

OK = CheckResult("mx", Status.OK, "1 MX host(s)", ("MX 10 mx.example.com (192.0.2.1)",))
WARN = CheckResult("dmarc", Status.WARN, "no DMARC record", ())
FAIL = CheckResult("spf", Status.FAIL, "2 SPF records", ("example.net: v=spf1 -all", "example.net: v=spf1 mx"))


def test_exit_code_is_the_worst_status() -> None:
    assert exit_code([DomainReport("a.example", (OK,))]) == 0
    assert exit_code([DomainReport("a.example", (OK, WARN))]) == 1
    assert exit_code([DomainReport("a.example", (OK,)), DomainReport("b.example", (WARN, FAIL))]) == 2
    assert exit_code([]) == 0


def test_json_shape() -> None:
    data = json.loads(render_json([DomainReport("example.net", (OK, FAIL))]))
    assert data == [{"domain": "example.net", "status": "fail", "checks": [
        {"check": "mx", "status": "ok", "finding": "1 MX host(s)", "records": ["MX 10 mx.example.com (192.0.2.1)"]},
        {"check": "spf", "status": "fail", "finding": "2 SPF records",
         "records": ["example.net: v=spf1 -all", "example.net: v=spf1 mx"]},
    ]}]


def test_table_shows_records_of_problems_only_and_no_colour_by_default() -> None:
    text = render_table([DomainReport("example.net", (OK, WARN, FAIL))])
    lines = text.splitlines()
    assert lines[0].split() == ["DOMAIN", "CHECK", "STATUS", "FINDING"]
    assert lines[1].startswith("example.net  mx") and "ok" in lines[1]
    assert lines[2].startswith(" " * len("example.net"))  # the domain is not repeated
    assert "| example.net: v=spf1 mx" in text
    assert "MX 10 mx.example.com" not in text
    assert "\033[" not in text
    assert lines[-1] == "dns-check fail: 1 domain, 1 ok, 1 warn, 1 fail (example.net fail)"
    verbose = render_table([DomainReport("example.net", (OK,))], verbose=True, colour=True)
    assert "MX 10 mx.example.com" in verbose and "\033[32m" in verbose


def test_summarize() -> None:
    s = summarize([DomainReport("a.example", (OK,)), DomainReport("b.example", (WARN, FAIL))])
    assert (s.status, s.exit_code, s.metric) == (Status.FAIL, 2, 2)
    assert s.counts == {"ok": 1, "info": 0, "unknown": 0, "warn": 1, "fail": 1}
    assert s.domains == {"a.example": "ok", "b.example": "fail"}
    assert s.problems[0].startswith("b.example spf fail: 2 SPF records")
    assert s.to_dict()["status"] == "fail"


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1", ("127.0.0.1", 53)),
    ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("::1", ("::1", 53)),
    ("[::1]:5353", ("::1", 5353)),
    ("[::1]", ("::1", 53)),
])
def test_parse_nameserver(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:x", "127.0.0.1:0", "[::1]5353", "127.0.0.1:70000"])
def test_parse_nameserver_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_nameserver(text)


CONFIG = {
    "listeners": [{"kind": "smtp", "bind": "192.0.2.25:25", "hostname": "mx.gw.example"},
                  {"kind": "lmtp", "bind": "unix:/run/mailgw/lmtp"}],
    "odoo": [{"name": "a", "url": "http://odoo:8069", "database": "db", "password_env": "PW",
              "domains": ["example.com", "Shop.Example.com"]},
             {"name": "b", "url": "http://odoo2:8069", "database": "db", "password_env": "PW",
              "domains": ["example.net"]}],
    "outbound": {"dkim": [{"domain": "example.com", "selector": "s2048", "key_file": "/k/a.pem"},
                          {"domain": "example.com", "selector": "ed", "key_file": "/k/ed.key",
                           "algorithm": "ed25519-sha256"}],
                 "helo_name": "mx.gw.example"},
    "dns_check": {"ip": "192.0.2.25"},
}


def test_plan_from_config() -> None:
    plan = plan_checks(parse_config(CONFIG))
    assert [t.domain for t in plan.targets] == ["example.com", "shop.example.com", "example.net"]
    com, shop, net = plan.targets
    assert [k.selector for k in com.signers] == ["s2048", "ed"]
    assert [k.selector for k in shop.signers] == ["s2048", "ed"]  # relaxed alignment: same org domain
    assert net.signers == () and net.selectors == ()
    assert com.bounce_domain == "example.com"
    assert plan.ip == "192.0.2.25" and plan.helo_name == "mx.gw.example"
    # No expect_mx configured: the SMTP listener's banner name and its specific bind address.
    assert plan.expect_mx == ("mx.gw.example", "192.0.2.25")
    assert com.signers[0].key_file == Path("/k/a.pem")


def test_plan_options_override_config() -> None:
    cfg = parse_config({**CONFIG, "dns_check": {"ip": "192.0.2.25", "expect_mx": ["mx1.example.com"],
                                                "selector": "cfgsel"}})
    plan = plan_checks(cfg, ["Example.NET."], bounce_domain="bounces.example.org", selector="cli",
                       ip="198.51.100.1", expect_mx=["mx9.example.com"])
    (t,) = plan.targets
    assert (t.domain, t.bounce_domain, t.selectors) == ("example.net", "bounces.example.org", ("cli",))
    assert (plan.ip, plan.expect_mx) == ("198.51.100.1", ("mx9.example.com",))
    cfg_plan = plan_checks(cfg)
    assert cfg_plan.expect_mx == ("mx1.example.com",)
    assert cfg_plan.targets[2].selectors == ("cfgsel",)
    # A selector the gateway already signs with is checked once, with its key.
    assert plan_checks(cfg, ["example.com"], selector="s2048").targets[0].selectors == ()


def test_plan_without_config_and_with_directory_domains() -> None:
    plan = plan_checks(None, extra_domains=[MailDomain("Alias.example.org", "bounce.example.org"), "x.example"])
    assert [(t.domain, t.bounce_domain) for t in plan.targets] == [
        ("alias.example.org", "bounce.example.org"), ("x.example", "x.example")]
    assert plan.ip is None and plan.expect_mx == ()
