"""`mailgw pipe`, `mailgw queue …` and `mailgw spool …` as processes against a PostgreSQL spool: what an operator
and an MTA see, including the move from a SQLite spool and a database that cannot be reached."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.spool.postgres.schema import LATEST
from tests.pgcluster import PgCluster, free_port
from tests.system.daemon import DaemonProcess, base_config


def pg_config(tmp: Path, dsn: str, schema: str, **spool: Any) -> dict[str, Any]:
    secret = tmp / "spool.dsn"
    secret.write_text(dsn + "\n")
    secret.chmod(0o600)
    return base_config(tmp, spool={"backend": "postgres", "dsn_file": str(secret), "schema": schema, **spool})


MSG = b"Message-Id: <%d@pipe.test>\r\nSubject: pipe %d\r\nTo: help@example.com\r\n\r\nbody\r\n"


def test_pipe_and_queue_commands_on_postgres(tmp_path: Path, pg_spool: dict[str, str]) -> None:
    d = DaemonProcess(tmp_path, pg_config(tmp_path, pg_spool["dsn"], pg_spool["schema"]))
    cfg = str(d.config_path)
    ids = []
    for i in range(3):
        out = d.cli("pipe", "-c", cfg, stdin=MSG % (i, i))
        assert out.returncode == 0, out.stderr
        ids.append(out.stdout.decode().strip())
    listed = d.queue()
    assert [e["queue_id"] for e in listed] == ids and {e["intake"] for e in listed} == {"pipe"}
    show = d.cli("queue", "show", ids[0], "--json", "-c", cfg)
    assert show.returncode == 0 and json.loads(show.stdout)["message_id"] == "<0@pipe.test>"
    assert b"Subject: pipe 0" in d.cli("queue", "show", ids[0], "-c", cfg).stdout
    assert d.cli("queue", "retry", ids[1], "-c", cfg).returncode == 65  # received: nothing to retry
    assert d.cli("queue", "delete", ids[1], "-c", cfg).returncode == 0
    assert [e["queue_id"] for e in d.queue()] == [ids[0], ids[2]]
    status = d.cli("spool", "status", "-c", cfg)
    assert status.returncode == 0, status.stderr
    assert f"schema version: {LATEST}".encode() in status.stdout and b"inbound/received: 2" in status.stdout
    assert pg_spool["dsn"].split("@")[0].split(":")[-1].encode() not in status.stdout  # no password shown


def test_pipe_exits_75_when_the_database_is_unreachable(tmp_path: Path) -> None:
    dsn = f"postgresql://mailgw:hunter2-secret@127.0.0.1:{free_port()}/mailgw"
    d = DaemonProcess(tmp_path, pg_config(tmp_path, dsn, "mailgw", connect_timeout="2s"))
    out = d.cli("pipe", "-c", str(d.config_path), stdin=MSG % (1, 1))
    assert out.returncode == 75, out.stderr
    assert b"hunter2-secret" not in out.stdout + out.stderr
    listed = d.cli("queue", "list", "-c", str(d.config_path))
    assert listed.returncode == 75 and b"hunter2-secret" not in listed.stderr


def test_moving_a_sqlite_spool_to_postgres_is_idempotent(tmp_path: Path, pg_cluster: PgCluster,
                                                         pg_spool: dict[str, str]) -> None:
    (tmp_path / "old").mkdir()
    old = DaemonProcess(tmp_path / "old", base_config(tmp_path / "old"))
    for i in range(5):
        assert old.cli("pipe", "-c", str(old.config_path), stdin=MSG % (i, i)).returncode == 0
    before = {e["queue_id"]: e for e in old.queue()}
    sqlite_file = tmp_path / "old" / "state" / "spool.sqlite3"

    (tmp_path / "new").mkdir()
    new = DaemonProcess(tmp_path / "new", pg_config(tmp_path / "new", pg_spool["dsn"], pg_spool["schema"]))
    cfg = str(new.config_path)
    first = new.cli("spool", "migrate", "--from", "sqlite", str(sqlite_file), "-c", cfg)
    assert first.returncode == 0, first.stderr
    assert f"from version 0 to {LATEST}".encode() in first.stdout and b"copied 5 entries" in first.stdout
    again = new.cli("spool", "migrate", "--from", "sqlite", str(sqlite_file), "-c", cfg)
    assert b"up to date" in again.stdout and b"copied 0 entries" in again.stdout and b"5 already there" in again.stdout
    after = {e["queue_id"]: e for e in new.queue()}
    assert after == before

    # export -> import into another spool, twice: the same entries, once.
    dump = tmp_path / "spool.jsonl"
    exported = new.cli("spool", "export", "-o", str(dump), "-c", cfg)
    assert exported.returncode == 0 and b"exported 5 entries" in exported.stderr
    (tmp_path / "other").mkdir()
    other = DaemonProcess(tmp_path / "other", pg_config(tmp_path / "other", pg_spool["dsn"],
                                                        pg_spool["schema"] + "_b"))
    try:
        assert b"imported 5 entries" in other.cli("spool", "import", str(dump), "-c", str(other.config_path)).stdout
        assert b"imported 0 entries; 5 already there" in other.cli("spool", "import", str(dump), "-c",
                                                                 str(other.config_path)).stdout
        assert {e["queue_id"]: e for e in other.queue()} == before
        bad = other.cli("spool", "import", str(sqlite_file), "-c", str(other.config_path))
        assert bad.returncode == 65 and b"not a mailgw spool export" in bad.stderr
    finally:
        pg_cluster.psql(f"DROP SCHEMA IF EXISTS {pg_spool['schema']}_b CASCADE", "mailgw_test")


def test_serve_and_check_config_without_the_dsn_secret_exit_78(tmp_path: Path) -> None:
    """Unlike Odoo's password (the daemon runs without it and says so), the spool's DSN is where mail goes: a
    gateway without it does not start, and check-config says so."""
    cfg = base_config(tmp_path, spool={"backend": "postgres", "dsn_env": "MAILGW_TEST_NO_SUCH_DSN"})
    d = DaemonProcess(tmp_path, cfg)
    d.env.pop("MAILGW_TEST_NO_SUCH_DSN", None)
    checked = d.cli("check-config", "-c", str(d.config_path))
    assert checked.returncode == 78 and b"MAILGW_TEST_NO_SUCH_DSN is not set" in checked.stderr
    served = d.cli("serve", "-c", str(d.config_path), timeout=60)
    assert served.returncode == 78
    assert b"spool.dsn: environment variable MAILGW_TEST_NO_SUCH_DSN is not set" in served.stdout + served.stderr
