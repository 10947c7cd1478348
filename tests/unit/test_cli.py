"""The `mailgw` command line: where -c may go, a description on every page of --help."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from gateway.cli import build_parser, command_name
from gateway.cli import main as cli_main


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...],
                                                                                      argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser)]
    return [leaf for name, p in subs[0].choices.items() for leaf in leaves(p, (*path, name))]


def test_every_leaf_help_page_has_a_description() -> None:
    found = leaves(build_parser())
    assert len(found) >= 14
    missing = [" ".join(path) for path, p in found if not (p.description or "").strip()]
    assert missing == []


def test_command_name_skips_the_config_value() -> None:
    assert command_name(["-c", "x.yaml", "queue", "list"]) == "queue"
    assert command_name(["--config", "x.yaml", "queue"]) == "queue"
    assert command_name(["--config=x.yaml", "pipe"]) == "pipe"
    assert command_name(["queue", "list", "-c", "x.yaml"]) == "queue"
    assert command_name(["--version"]) is None


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "odoo": [
        {"name": "main", "url": "http://127.0.0.1:9", "database": "odoo", "password_env": "X",
         "domains": ["example.com"]}]}))
    return path


@pytest.mark.parametrize("where", ["before", "after", "--config=", "both"])
def test_config_before_or_after_the_command(where: str, config: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no config.yaml here: the default would fail
    args = {"before": ["-c", str(config), "queue", "list", "--json"],
            "after": ["queue", "list", "--json", "-c", str(config)],
            "--config=": [f"--config={config}", "queue", "list", "--json"],
            "both": ["-c", "nonexistent.yaml", "queue", "list", "--json", "-c", str(config)]}[where]
    assert cli_main(args) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out) == []


def test_without_config_the_default_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_main(["check-config"]) == 78
    assert "config.yaml" in capsys.readouterr().err
