"""DirectorySync against the stand-in Odoo: fetch, on-disk cache, restart while Odoo is down, Odoo ≤16, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main as cli_main
from gateway.config import Config, parse_config
from gateway.inbound import build_clients
from gateway.odoo.client import OdooClient
from gateway.odoo.directory import DirectorySync, load_cached
from routing.directory import Directory
from tests.odoo_standin import OdooStandin, odoo_instance_config


def config(tmp_path: Path, *instances: dict[str, Any]) -> Config:
    return parse_config({"state_dir": str(tmp_path / "state"), "odoo": list(instances)})


async def closing(clients: dict[str, OdooClient]) -> None:
    for c in clients.values():
        await c.close()


@pytest.mark.parametrize("api", ["xmlrpc", "json2"])
async def test_fetch_snapshot_and_cache(odoo_standin: OdooStandin, tmp_path: Path, api: str) -> None:
    odoo_standin.add_domain("second.example.net")
    odoo_standin.add_alias("projects", "project.task", domain_id=2, force_thread_id=9, incoming_local=True,
                           parent_model="res.partner", parent_thread_id=3, contact="followers")
    odoo_standin.set_param("mail.catchall.domain.allowed", "Example.com,other.org")
    odoo_standin.set_param("mail.gateway.loop.threshold", "7")
    odoo_standin.db["mail.gateway.allowed"].append({"id": 1, "email": "Bot@x.org", "email_normalized": "bot@x.org"})
    cfg = config(tmp_path, odoo_instance_config(odoo_standin, tmp_path, api=api,
                                                domains=["example.com", "second.example.net"]))
    clients = build_clients(cfg)
    sync = DirectorySync(cfg, clients)
    seen: list[Directory] = []
    sync.subscribe(seen.append)
    assert await sync.refresh() == {"main": None}
    inst = sync.current.instances["main"]
    assert [d.name for d in inst.domains] == ["example.com", "second.example.net"]
    assert inst.domains[0].bounce_email == "bounce@example.com"
    assert inst.domains[1].catchall_email == "catchall@second.example.net"
    by_name = {a.full_name: a for a in inst.aliases}
    assert by_name["sales@example.com"].model == "crm.lead"
    assert by_name["support@example.com"].contact == "partners"
    proj = by_name["projects@second.example.net"]
    assert (proj.model, proj.force_thread_id, proj.incoming_local, proj.parent_model, proj.parent_thread_id,
            proj.contact) == ("project.task", 9, True, "res.partner", 3, "followers")
    assert inst.allowed_domains == ("example.com", "other.org")
    assert inst.loop_threshold == 7 and inst.loop_minutes == 120 and inst.loop_allowed == ("bot@x.org",)
    assert inst.server_version == "19.0"
    assert seen and seen[-1] is sync.current
    assert sync.current.owner_of("Second.Example.NET") == "main"
    # The cache is the snapshot, and is what a restart loads.
    cached = json.loads((tmp_path / "state" / "directory.json").read_text())
    assert Directory.from_dict(cached) == sync.current
    assert not list((tmp_path / "state").glob(".directory.*"))  # no temp file left behind
    await closing(clients)


async def test_restart_while_odoo_down_keeps_aliases(odoo_standin: OdooStandin, tmp_path: Path) -> None:
    cfg = config(tmp_path, odoo_instance_config(odoo_standin, tmp_path))
    clients = build_clients(cfg)
    await DirectorySync(cfg, clients).refresh()
    await closing(clients)
    odoo_standin.down()
    # "Restart": new clients, new sync, Odoo unreachable.
    clients = build_clients(cfg)
    sync = DirectorySync(cfg, clients)
    assert sync.current.is_ready("main")
    report = await sync.refresh()
    assert report["main"] and "connect" in report["main"]
    assert {a.full_name for a in sync.current.instances["main"].aliases} == {"sales@example.com",
                                                                             "support@example.com"}
    await closing(clients)


async def test_failed_refresh_keeps_previous_and_later_change_is_seen(odoo_standin: OdooStandin,
                                                                      tmp_path: Path) -> None:
    cfg = config(tmp_path, odoo_instance_config(odoo_standin, tmp_path))
    clients = build_clients(cfg)
    sync = DirectorySync(cfg, clients)
    await sync.refresh()
    before = sync.current
    odoo_standin.set_behaviour("503")
    assert (await sync.refresh())["main"]
    assert sync.current is before
    odoo_standin.set_behaviour("ok")
    odoo_standin.add_alias("jobs", "hr.applicant")
    await sync.refresh()
    assert "jobs@example.com" in {a.full_name for a in sync.current.instances["main"].aliases}
    await closing(clients)


async def test_timer_refresh(odoo_standin: OdooStandin, tmp_path: Path) -> None:
    import asyncio

    cfg = config(tmp_path, odoo_instance_config(odoo_standin, tmp_path, directory_refresh="0.1s"))
    clients = build_clients(cfg)
    sync = DirectorySync(cfg, clients)
    await sync.start()
    for _ in range(100):
        if sync.current.is_ready("main"):
            break
        await asyncio.sleep(0.02)
    odoo_standin.add_alias("late", "crm.lead")
    for _ in range(100):
        if "late@example.com" in {a.full_name for a in sync.current.instances["main"].aliases}:
            break
        await asyncio.sleep(0.02)
    await sync.stop()
    assert "late@example.com" in {a.full_name for a in sync.current.instances["main"].aliases}
    await closing(clients)


async def test_legacy_odoo16_uses_catchall_icps(tmp_path: Path) -> None:
    with OdooStandin(legacy=True, domain="old.example.com") as legacy:
        cfg = config(tmp_path, odoo_instance_config(legacy, tmp_path, domains=["old.example.com"]))
        clients = build_clients(cfg)
        sync = DirectorySync(cfg, clients)
        assert await sync.refresh() == {"main": None}
        inst = sync.current.instances["main"]
        assert inst.server_version == "16.0"
        assert [(d.id, d.name, d.bounce_email, d.catchall_email) for d in inst.domains] == [
            (0, "old.example.com", "bounce@old.example.com", "catchall@old.example.com")]
        assert {a.full_name for a in inst.aliases} == {"sales@old.example.com", "support@old.example.com"}
        # It never asked for what Odoo 16 lacks (the stand-in would have failed the call).
        assert not [c for c in legacy.calls if c.model == "mail.alias.domain"]
        await closing(clients)


async def test_legacy_without_catchall_domain_matches_any_domain(tmp_path: Path) -> None:
    with OdooStandin(legacy=True) as legacy:
        legacy.db["ir.config_parameter"] = [r for r in legacy.db["ir.config_parameter"]
                                            if r["key"] != "mail.catchall.domain"]
        cfg = config(tmp_path, odoo_instance_config(legacy, tmp_path, legacy_directory=True))
        clients = build_clients(cfg)
        sync = DirectorySync(cfg, clients)
        await sync.refresh()
        inst = sync.current.instances["main"]
        assert inst.domains == () and all(a.incoming_local and a.domain is None for a in inst.aliases)
        await closing(clients)


def test_cli_show_and_refresh(odoo_standin: OdooStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                    "odoo": [odoo_instance_config(odoo_standin, tmp_path)]}))
    assert cli_main(["directory", "show", "-c", str(path)]) == 0
    out = capsys.readouterr()
    assert "never fetched" in out.out and "directory refresh" in out.err
    assert cli_main(["directory", "refresh", "-c", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "main: ok"
    assert cli_main(["directory", "show", "-c", str(path)]) == 0
    text = capsys.readouterr().out
    assert "sales@example.com" in text and "-> crm.lead" in text and "bounce@example.com" in text
    assert cli_main(["directory", "show", "--json", "-c", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["instances"][0]["instance"] == "main" and data["domain_owner"] == {"example.com": "main"}
    odoo_standin.down()
    assert cli_main(["directory", "refresh", "-c", str(path)]) == 75
    out = capsys.readouterr()  # one line saying so, not a JSON log line and then a plain one
    assert out.out == "" and len(out.err.splitlines()) == 1 and out.err.startswith("main: cannot connect to")
    assert load_cached(parse_config(yaml.safe_load(path.read_text()))).is_ready("main")
