"""A spool written by an older mailgw (schema 1) is brought up to date when opened, and keeps its entries."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.spool import Envelope, SqliteSpool
from gateway.spool.base import ADDED_COLUMNS, SCHEMA_VERSION
from gateway.spool.sqlite import SCHEMA


def old_spool(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)  # the first schema, as mailgw 0.1 created it
    conn.execute("INSERT INTO meta(key, value) VALUES ('schema', '1')")
    conn.execute("INSERT INTO entries (queue_id, direction, state, mail_from, rcpt_tos, intake, size, received_at, "
                 "updated_at, next_attempt_at) VALUES ('OLD1', 'inbound', 'received', 'a@x', '[\"b@y\"]', 'smtp', 3, "
                 "1, 1, 1)")
    conn.execute("INSERT INTO messages (queue_id, raw) VALUES ('OLD1', x'616263')")
    conn.commit()
    conn.close()


async def test_old_spool_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    old_spool(path)
    spool = await SqliteSpool.open(path)
    try:
        old = await spool.get("OLD1")
        assert old is not None and old.envelope.client is None and await spool.raw("OLD1") == b"abc"
        client = {"addr": "192.0.2.7", "helo": "mail.sender.test", "proto": "ESMTPS"}
        queue_id, _ = await spool.put(Envelope("s@x", ("r@y",), "lmtp", client=client), b"Subject: new\r\n\r\n")
        new = await spool.get(queue_id)
        assert new is not None and new.envelope.client == client and new.to_dict()["client"] == client
    finally:
        await spool.close()
    conn = sqlite3.connect(path)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
    assert {column for _v, column, _t in ADDED_COLUMNS} <= columns
    assert conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)
    conn.close()
    again = await SqliteSpool.open(path)  # opening a current spool changes nothing
    await again.close()
