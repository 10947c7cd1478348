"""`mailgw queue list|show|retry` on a real SQLite spool, run in-process through the CLI entry point."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
import yaml

from gateway.cli import main as cli_main
from gateway.config import Config, parse_config
from gateway.exitcodes import EX_DATAERR
from gateway.spool import Envelope, PutItem, SqliteSpool, State


def make_config(tmp_path: Path) -> tuple[Path, Config]:
    data = {"state_dir": str(tmp_path / "state"),
            "odoo": [{"name": "main", "url": "http://127.0.0.1:9", "database": "odoo",
                      "password_env": "MAILGW_TEST_PW", "domains": ["example.com"]}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, parse_config(data)


def fill(config: Config, n: int, *, state: State | None = None) -> list[str]:
    async def go() -> list[str]:
        spool = await SqliteSpool.open(config.spool_path)
        try:
            results = await spool.put_many([
                PutItem(Envelope(f"s{i}@example.org", ("help@example.com",), intake="pipe", received_at=1e9 + i),
                        b"Subject: x\r\n\r\nbody\r\n", message_id=f"<m{i}@x>", state=state) for i in range(n)])
            return [r[0] for r in results if isinstance(r, tuple)]
        finally:
            await spool.close()

    return asyncio.run(go())  # (the spool logs each put on stdout: the caller's readouterr() drops it)


def test_json_list_has_every_entry_in_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, config = make_config(tmp_path)
    ids = fill(config, 1205)
    capsys.readouterr()
    assert cli_main(["queue", "list", "--json", "-c", str(path)]) == 0
    out = capsys.readouterr()
    rows = json.loads(out.out)
    assert [r["queue_id"] for r in rows] == ids  # all of them (it stopped at 1,000), oldest first
    assert out.err == ""
    assert rows[0]["message_id"] == "<m0@x>" and rows[0]["state"] == "received"


def test_a_limit_that_cuts_says_so_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, config = make_config(tmp_path)
    fill(config, 1003)
    capsys.readouterr()
    assert cli_main(["queue", "list", "-c", str(path)]) == 0  # text: 1,000 by default
    out = capsys.readouterr()
    assert out.out.count("<s") == 1000 and "-- 1000 entries" in out.out
    assert "showing the first 1000 entries of 1003; 3 left out" in out.err
    assert cli_main(["queue", "list", "--json", "--limit", "2", "-c", str(path)]) == 0
    out = capsys.readouterr()
    assert len(json.loads(out.out)) == 2 and "2 entries of 1003; 1001 left out" in out.err
    assert cli_main(["queue", "list", "--limit", "0", "-c", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out.count("<s") == 1003 and out.err == ""


def test_empty_queue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, config = make_config(tmp_path)
    fill(config, 0)
    capsys.readouterr()
    assert cli_main(["queue", "list", "--json", "-c", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli_main(["queue", "list", "-c", str(path)]) == 0
    assert capsys.readouterr().out == "queue is empty\n"


def test_show_is_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, config = make_config(tmp_path)
    [qid] = fill(config, 1)

    async def route_it() -> None:
        spool = await SqliteSpool.open(config.spool_path)
        try:
            await spool.transition(qid, State.FAILED, error="550 5.1.1 no such alias", route=[
                {"recipient": "help@example.com", "route": "reject", "instance": None, "model": None,
                 "thread_id": None, "alias": None, "rule": "reject", "reason": "no alias help"}],
                rcpt_status={"help@example.com": {"state": "failed", "detail": "no alias help", "at": 1e9 + 5}})
        finally:
            await spool.close()

    asyncio.run(route_it())
    capsys.readouterr()
    assert cli_main(["queue", "show", qid, "-c", str(path)]) == 0
    text = capsys.readouterr().out
    assert "None" not in text and "{" not in text and "1000000" not in text, text
    assert re.search(r"^Received +2001-09-09 01:46:40 UTC$", text, re.M), text
    assert re.search(r"^Sender +<s0@example.org>$", text, re.M)
    assert "  help@example.com: reject (reject; no alias help)" in text
    assert "  help@example.com: failed (at 2001-09-09 01:46:45 UTC, detail no alias help)" in text
    assert "Subject: x" in text
    assert cli_main(["queue", "show", qid, "--json", "-c", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["queue_id"] == qid and data["received_at"] == 1e9 and data["headers"] == "Subject: x"


def test_retry_refuses_a_placeholder_of_a_message_left_in_its_mailbox(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path, config = make_config(tmp_path)

    async def put_placeholder() -> str:
        spool = await SqliteSpool.open(config.spool_path)
        try:
            qid, _ = await spool.put(Envelope("", ("help@example.com",), intake="imap",
                                              source={"mailbox": "support", "uid": 7, "left_in_mailbox": True}),
                                     b"", dedup_key="imap:support:1:7", state=State.FAILED, last_error="unreadable")
            return qid
        finally:
            await spool.close()

    qid = asyncio.run(put_placeholder())
    assert cli_main(["queue", "retry", qid, "-c", str(path)]) == EX_DATAERR
    assert "left in mailbox 'support'" in capsys.readouterr().err
