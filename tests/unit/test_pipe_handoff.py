"""`mailgw pipe`'s fast path: where it looks for the daemon, and that it imports nothing heavy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.intake.pipe_handoff import parse_head, request_head, socket_path

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "state_dir"), [
    ("state_dir: ./var\n", "./var"),
    ("state_dir: /var/lib/mailgw   # absolute\n", "/var/lib/mailgw"),
    ("state_dir: 'my state'\n", "my state"),
    ('state_dir: "/srv/mail gw" # quoted\n', "/srv/mail gw"),
    ("# state_dir: /elsewhere\nlisteners: []\n", "./var"),  # the default
    ("---\nodoo: []\nstate_dir: var2\n", "var2"),
])
def test_state_dir_found(tmp_path: Path, text: str, state_dir: str) -> None:
    conf = tmp_path / "config.yaml"
    conf.write_text(text)
    found = socket_path(str(conf))
    assert found is not None and os.path.normpath(found) == str(tmp_path / state_dir / "pipe.sock")


@pytest.mark.parametrize("text", [
    "{state_dir: /x}\n",  # flow mapping
    "state_dir: &anchor /x\n",
    "state_dir: /a\nstate_dir: /b\n",  # duplicate: YAML would refuse it
    'state_dir: "a\\tb"\n',  # escapes
    "state_dir:\n  /x\n",  # value on the next line
    "spool:\n  state_dir: /x\n",  # a key of that name elsewhere
    '"state_dir": /x\n',
])
def test_anything_unusual_means_the_full_config_load(tmp_path: Path, text: str) -> None:
    conf = tmp_path / "config.yaml"
    conf.write_text(text)
    assert socket_path(str(conf)) is None


def test_missing_config_means_the_full_config_load(tmp_path: Path) -> None:
    assert socket_path(str(tmp_path / "absent.yaml")) is None


def test_the_fast_path_imports_nothing_heavy() -> None:
    """What `mailgw pipe` imports, beyond the interpreter's own start-up, before it hands the message over."""
    code = ("import sys; before = set(sys.modules); from gateway.cli import main; from gateway.commands import pipe; "
            "assert pipe.quick_args(['-c', 'x.yaml', '--sender', '', '--rcpt', 'a@x', 'b@x']) is not None; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    loaded = set(out.split())
    heavy = {"pydantic", "structlog", "aiosmtpd", "yaml", "asyncio", "sqlite3", "gateway.config", "gateway.logs",
             "gateway.spool", "orjson", "email", "dataclasses", "typing", "argparse", "json", "socket", "selectors"}
    assert not loaded & heavy, loaded & heavy


@pytest.mark.parametrize(("argv", "parsed"), [
    (["-c", "/etc/mailgw.yaml", "--sender", "", "--rcpt", "a@x", "b@x"], ("/etc/mailgw.yaml", "", ["a@x", "b@x"])),
    (["--rcpt", "a@x", "-r", "b@x", "--config", "c.yaml", "-f", "s@y"], ("c.yaml", "s@y", ["a@x", "b@x"])),
    (["--rcpt"], None),  # argparse's usage error (64)
    (["--sender", "-x"], None),
    (["-d", "odoo", "--rcpt", "a@x"], None),  # odoo-mailgate.py's options: argparse
    (["--help"], None),
    (["--rcpt=a@x"], None),
    (["extra"], None),
])
def test_quick_arguments(argv: list[str], parsed: object) -> None:
    from gateway.commands import DEFAULT_CONFIG
    from gateway.commands.pipe import quick_args

    assert quick_args(argv) == parsed
    assert quick_args(["--rcpt", "a@x"]) == (DEFAULT_CONFIG, None, ["a@x"])


def test_request_head_round_trip() -> None:
    head = request_head([1, 2, 3, 4], None, ["a@x", "caf\udce9@x"], 10)
    assert head is not None and parse_head(head) == ([1, 2, 3, 4], 10, None, ["a@x", "caf\udce9@x"])
    assert parse_head(request_head([1, 2, 3, 4], "", [], 0) or b"") == ([1, 2, 3, 4], 0, "", [])
    assert request_head([1, 2, 3, 4], "a\nb@x", [], 0) is None  # cannot go on a line: the slow path stores it
    with pytest.raises(ValueError):
        parse_head(b"size 3\n\n")
