"""`mailgw route` offline (--directory), and the config -> policy adapters the daemon uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import parse_config
from gateway.routing_policy import empty_directory, policy_from_config, rcpt_precheck
from routing.router import Router
from tests.unit.routing_fixture import CATCHALL, D2, GROUPS, M0, R_ID, D, make_router

CONFIG = """
state_dir: STATE
routing:
  auto_submitted: discard
odoo:
  - name: odoo
    url: http://127.0.0.1:1
    database: db
    password_env: MAILGW_TEST_NO_SUCH_VAR
    domains: [D1, D2]
    fallback: {action: deliver, model: crm.lead, domains: [D2]}
    reference_patterns:
      - {regex: 'SO-?\\d+', model: sale.order, field: name}
    subaddress_models: [sale.order, crm.lead]
    loop_threshold: 3
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG.replace("STATE", str(tmp_path / "var")).replace("D1", D).replace("D2", D2))
    snapshot = tmp_path / "directory.json"
    snapshot.write_text(json.dumps(make_router().directory.to_dict()))
    return cfg, snapshot


def _eml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.eml"
    path.write_bytes(text.replace("\n", "\r\n").encode())
    return path


def test_route_json_offline(setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, snapshot = setup
    eml = _eml(tmp_path, f"From: s@x.y\nTo: {GROUPS}, catchall.test+SO-00042@{D}\nCc: friend@gmail.com\n\nbody\n")
    assert main(["route", "-c", str(cfg), str(eml), "--directory", str(snapshot), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["recipient"], r["route"], r["rule"]) for r in out["recipients"]] == [
        (GROUPS, "alias", "alias.full_address"),
        (f"catchall.test+SO-00042@{D}", "alias", "alias.other_recipient"),
        ("friend@gmail.com", "refuse", "relay.denied"),
    ]
    assert set(out) == {"recipients"}
    assert set(out["recipients"][0]) == {"recipient", "route", "instance", "model", "thread_id", "alias", "rule",
                                         "reason"}


def test_route_rcpt_and_known_and_text(setup: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    cfg, snapshot = setup
    eml = _eml(tmp_path, f"From: s@x.y\nTo: {CATCHALL}\nIn-Reply-To: {M0}\nSubject: Re: x\n\n")
    args = ["route", "-c", str(cfg), str(eml), "--directory", str(snapshot)]
    assert main([*args, "--json"]) == 0
    [r] = json.loads(capsys.readouterr().out)["recipients"]
    assert (r["route"], r["rule"]) == ("refuse", "catchall.direct")  # offline: the reply is unknown
    assert main([*args, "--json", "--known", f"{M0}=odoo:mail.test.gateway-{R_ID}"]) == 0
    [r] = json.loads(capsys.readouterr().out)["recipients"]
    assert (r["route"], r["model"], r["thread_id"]) == ("reply", "mail.test.gateway", R_ID)
    assert main([*args, "--rcpt", f"catchall.test+SO-00042@{D}", "--rcpt", f"who@{D2}"]) == 0
    out = capsys.readouterr().out
    assert "subaddress on odoo sale.order where name = 'SO-00042'" in out
    assert f"who@{D2}: subaddress" in out and "Message-Id: (none)" in out


def test_route_errors(setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, snapshot = setup
    eml = _eml(tmp_path, "From: s@x.y\nSubject: nobody\n\n")
    assert main(["route", "-c", str(cfg), str(eml), "--directory", str(snapshot)]) == 64  # no recipients
    assert main(["route", "-c", str(cfg), str(tmp_path / "nope.eml")]) == 66
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["route", "-c", str(cfg), str(eml), "--rcpt", GROUPS, "--directory", str(bad)]) == 65
    assert main(["route", "-c", str(cfg), str(eml), "--rcpt", GROUPS, "--known", "junk"]) == 64
    broken = tmp_path / "broken.yaml"
    broken.write_text("odoo: 3\n")
    assert main(["route", "-c", str(broken), str(eml)]) == 78
    capsys.readouterr()


def test_route_without_snapshot_says_so(setup: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _snapshot = setup
    eml = _eml(tmp_path, f"From: s@x.y\nTo: {GROUPS}\n\n")
    assert main(["route", "-c", str(cfg), str(eml), "--offline"]) == 0
    out = capsys.readouterr().out
    assert "[451 4.3.0]" in out and "no directory snapshot" in out


def test_policy_from_config_and_rcpt_precheck(setup: tuple[Path, Path]) -> None:
    cfg_path, _snapshot = setup
    import yaml

    cfg = parse_config(yaml.safe_load(cfg_path.read_text()))
    policy = policy_from_config(cfg)
    inst = policy.instance("odoo")
    assert policy.auto_submitted == "discard" and inst.loop_threshold == 3 and inst.loop_minutes is None
    assert inst.fallback.applies_to(D2) and not inst.fallback.applies_to(D)
    assert inst.subaddress_models == frozenset({"sale.order", "crm.lead"})
    assert inst.reference_patterns[0].match("SO-00042") == "SO-00042"

    router: list[Router] = []
    check = rcpt_precheck(lambda: router[0] if router else None, clock=lambda: 0.0)
    assert check(GROUPS, "s@x.y") == "451 4.3.0 Recipient directory unavailable, try again later"
    router.append(Router(empty_directory(cfg), policy))
    assert (check(GROUPS, "s@x.y") or "").startswith("451 4.3.0")
    router[0] = router[0].with_directory(make_router().directory)
    assert check(GROUPS, "s@x.y") is None
    assert (check(f"nobody@{D}", "s@x.y") or "").startswith("550 5.1.1")
    assert (check("x@elsewhere.example", "s@x.y") or "").startswith("550 5.7.1")
    assert check(f"catchall.test+res.users-2@{D}", "s@x.y") is not None  # not in subaddress_models
