"""docs/postfix.md shows the files of contrib/postfix verbatim (the real-Postfix tests read the same files), and the
snippets say what mailgw's config accepts."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from gateway.config import parse_config

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib" / "postfix"
DOC = REPO / "docs" / "postfix.md"
# <!-- contrib/postfix/NAME --> right before a fenced block: that block is the file.
_INCLUDED = re.compile(r"<!-- (contrib/postfix/[\w.-]+) -->\n```[a-z]*\n(.*?)```\n", re.DOTALL)


def test_every_snippet_is_in_the_docs_verbatim() -> None:
    shown = {name: body for name, body in _INCLUDED.findall(DOC.read_text())}
    files = {f"contrib/postfix/{p.name}" for p in CONTRIB.iterdir()}
    assert set(shown) == files, "docs/postfix.md and contrib/postfix must show the same files"
    for name, body in shown.items():
        assert body == (REPO / name).read_text(), f"{name} differs from its copy in docs/postfix.md"


def test_the_listeners_snippet_is_a_valid_config() -> None:
    listeners = yaml.safe_load((CONTRIB / "mailgw.yaml").read_text())["listeners"]
    cfg = parse_config({"listeners": listeners})
    assert {x.kind for x in cfg.listeners} == {"lmtp", "policy"}
    assert all((x.unix_path or "").startswith("/var/spool/postfix/mailgw/") for x in cfg.listeners)
    # The transport and policy paths Postfix uses are the same sockets, relative to its queue directory.
    transport = (CONTRIB / "lmtp.transport").read_text()
    policy = (CONTRIB / "policy.main.cf").read_text()
    assert "lmtp:unix:mailgw/lmtp.sock" in transport and "unix:mailgw/policy.sock" in policy
