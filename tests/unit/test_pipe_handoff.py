"""`mailgw pipe`'s fast path: where it looks for the daemon, and that it imports nothing heavy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.intake.pipe_handoff import socket_path

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
    """What `mailgw pipe` imports before it knows whether the daemon takes the message."""
    code = ("import sys; from gateway.cli import build_parser; import gateway.intake.pipe_handoff; "
            "build_parser('pipe'); print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    loaded = set(out.split())
    heavy = {"pydantic", "structlog", "aiosmtpd", "yaml", "asyncio", "sqlite3", "gateway.config", "gateway.logs",
             "gateway.spool", "orjson", "email.message", "dataclasses"}
    assert not loaded & heavy, loaded & heavy
