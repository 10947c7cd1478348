"""`mailgw queue` for outbound mail, in-process against a real spool: list by destination, cancel, flush, stats."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main as mailgw
from gateway.spool import Direction, Envelope, SqliteSpool, State


def seed(tmp_path: Path) -> dict[str, str]:
    async def go() -> dict[str, str]:
        spool = await SqliteSpool.open(tmp_path / "state" / "spool.sqlite3")
        ids = {}
        try:
            later = time.time() + 3600
            for name, rcpts in (("gmail", ("a@gmail.com", "b@gmail.com")), ("mixed", ("c@gmail.com", "d@yahoo.com")),
                                ("yahoo", ("e@yahoo.com",))):
                env = Envelope(mail_from="bounce@example.com", rcpt_tos=rcpts, intake="submission")
                ids[name], _ = await spool.put(env, b"Subject: x\r\n\r\nx\r\n", direction=Direction.OUTBOUND,
                                               next_attempt_at=later)
            # mixed: gmail done, yahoo still waiting
            await spool.transition(ids["mixed"], State.OUTGOING, next_attempt_at=later, rcpt_status={
                "c@gmail.com": {"state": "sent"}, "d@yahoo.com": {"state": "deferred"}})
            # yahoo: failed for good
            await spool.transition(ids["yahoo"], State.EXCEPTION, rcpt_status={"e@yahoo.com": {"state": "failed"}})
            inbound = Envelope(mail_from="x@example.org", rcpt_tos=("sales@example.com",), intake="smtp")
            ids["inbound"], _ = await spool.put(inbound, b"Subject: y\r\n\r\ny\r\n")
        finally:
            await spool.close()
        return ids

    (tmp_path / "state").mkdir()
    (tmp_path / "config.yaml").write_text(f"state_dir: {tmp_path / 'state'}\n")
    return asyncio.run(go())


def run(tmp_path: Path, capsys: Any, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = mailgw(["queue", *args, "-c", str(tmp_path / "config.yaml")])
    out = capsys.readouterr()
    return rc, out.out, out.err


def entry(tmp_path: Path, qid: str) -> Any:
    async def go() -> Any:
        spool = await SqliteSpool.open(tmp_path / "state" / "spool.sqlite3")
        try:
            return await spool.get(qid)
        finally:
            await spool.close()

    return asyncio.run(go())


def test_list_by_destination_and_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = seed(tmp_path)
    rc, out, _ = run(tmp_path, capsys, "list", "--json", "--destination", "gmail.com")
    assert rc == 0 and [e["queue_id"] for e in json.loads(out)] == [ids["gmail"]]  # mixed's gmail rcpt is done
    rc, out, _ = run(tmp_path, capsys, "list", "--json", "--destination", "yahoo.com", "--state", "outgoing")
    assert [e["queue_id"] for e in json.loads(out)] == [ids["mixed"]]
    rc, out, _ = run(tmp_path, capsys, "list", "--json", "--destination", "YAHOO.COM")
    assert [e["queue_id"] for e in json.loads(out)] == [ids["mixed"]]  # exception entries have nothing waiting


def test_stats_per_state_and_destination(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed(tmp_path)
    rc, out, _ = run(tmp_path, capsys, "stats", "--json")
    data = json.loads(out)
    assert rc == 0
    assert {(s["direction"], s["state"]): s["count"] for s in data["states"]} == {
        ("inbound", "received"): 1, ("outbound", "outgoing"): 2, ("outbound", "exception"): 1}
    assert data["destinations"] == {
        "gmail.com": {"outgoing_messages": 1, "outgoing_recipients": 2},
        "yahoo.com": {"outgoing_messages": 1, "outgoing_recipients": 1, "exception_messages": 1,
                      "exception_recipients": 1}}
    rc, out, _ = run(tmp_path, capsys, "stats")
    assert "gmail.com" in out and out.splitlines()[0].split() == ["DIRECTION", "STATE", "COUNT"]


def test_flush_makes_one_destination_due_now(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = seed(tmp_path)
    rc, out, _ = run(tmp_path, capsys, "flush", "gmail.com")
    assert rc == 0 and out.startswith("1 outgoing message for gmail.com due now")
    assert entry(tmp_path, ids["gmail"]).next_attempt_at <= time.time()
    assert entry(tmp_path, ids["mixed"]).next_attempt_at > time.time() + 3000
    rc, out, _ = run(tmp_path, capsys, "flush")
    assert out.startswith("1 outgoing message due now (1 already due)")


def test_cancel_outbound_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = seed(tmp_path)
    rc, out, _ = run(tmp_path, capsys, "cancel", ids["gmail"], ids["yahoo"])
    assert rc == 0 and out.splitlines() == [f"{ids['gmail']}: cancel", f"{ids['yahoo']}: cancel"]
    assert entry(tmp_path, ids["gmail"]).state == State.CANCEL
    rc, _, err = run(tmp_path, capsys, "cancel", ids["inbound"])
    assert rc == 65 and "cancel is for outbound mail" in err
    rc, _, err = run(tmp_path, capsys, "cancel", "NOSUCHID")
    assert rc == 65 and "no entry NOSUCHID" in err
    # `queue retry` puts a cancelled message back
    rc, out, _ = run(tmp_path, capsys, "retry", ids["gmail"])
    assert rc == 0 and entry(tmp_path, ids["gmail"]).state == State.OUTGOING
