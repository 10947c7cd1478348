"""The PostgreSQL spool's schema: every table, index and trigger, as numbered migrations, and `migrate()`.

One place for the schema. A change is a new entry at the end of MIGRATIONS (never an edit of an applied one);
a column both backends gain goes into base.ADDED_COLUMNS instead, which becomes a migration here. The gateway
applies what is missing at start-up and with `mailgw spool migrate`, in one transaction with their rows in
`schema_version` (all or nothing: DDL is transactional in PostgreSQL). Several gateways starting at once are
safe: the migration runs under a transaction-scoped advisory lock, and whoever comes second finds it applied.

The entry columns mirror the SQLite spool's (gateway/spool/sqlite/schema.py) so `entry_from_row` reads both; what
only PostgreSQL needs is the lease: `claim_instance` (the gateway's name), `claim_token` (one per process, so
a restarted gateway can tell its dead predecessor's claims from its own) and `lease_expires_at` (database
time, so the gateways' clocks do not matter).
"""

from __future__ import annotations

import hashlib
from typing import Any

from gateway.logs import get_logger
from gateway.spool.base import ACTIVE, ADDED_COLUMNS, SpoolError

log = get_logger("mailgw.spool")

# States a worker claims from, as SQL literals for the partial index (a parameter would not let the planner
# match the index predicate).
_ACTIVE_SQL = ", ".join(sorted({f"'{s}'" for states in ACTIVE.values() for s in states}))

# (version, description, SQL with {s} for the schema). Append only.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "entries, messages, claim leases, new-mail notification", f"""
CREATE TABLE {{s}}.entries (
    queue_id text PRIMARY KEY,
    direction text NOT NULL,
    state text NOT NULL,
    mail_from text NOT NULL,
    rcpt_tos text NOT NULL,
    intake text NOT NULL,
    peer text,
    helo text,
    source text,
    message_id text,
    message_id_generated integer NOT NULL DEFAULT 0,
    size integer NOT NULL,
    received_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL,
    last_error text,
    route text,
    rcpt_status text,
    claimed_by text,
    claimed_at double precision,
    claim_instance text,
    claim_token text,
    lease_expires_at timestamptz,
    crashes integer NOT NULL DEFAULT 0,
    dedup_key text UNIQUE
);
CREATE INDEX entries_due ON {{s}}.entries (direction, state, next_attempt_at);
CREATE INDEX entries_claimable ON {{s}}.entries (direction, received_at, queue_id) WHERE state IN ({_ACTIVE_SQL});
CREATE INDEX entries_state ON {{s}}.entries (state);
CREATE INDEX entries_message_id ON {{s}}.entries (message_id);
CREATE INDEX entries_claimed ON {{s}}.entries (claim_instance) WHERE claim_token IS NOT NULL;
CREATE TABLE {{s}}.messages (
    queue_id text PRIMARY KEY,
    raw bytea NOT NULL
);
-- Wake idle workers of every gateway (LISTEN) when mail they could claim now is stored: once per INSERT
-- statement, whatever its row count, and delivered only when the transaction commits.
CREATE FUNCTION {{s}}.notify_new_entries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], d.direction)
       FROM (SELECT DISTINCT direction FROM new_rows WHERE state IN ('received', 'outgoing')) AS d;
    RETURN NULL;
END $$;
CREATE TRIGGER entries_notify AFTER INSERT ON {{s}}.entries REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {{s}}.notify_new_entries('{{channel}}');
"""),
)
# The columns both backends added since (gateway/spool/base.py ADDED_COLUMNS): the same version numbers.
MIGRATIONS += tuple((version, f"entries.{column}", f"ALTER TABLE {{s}}.entries ADD COLUMN {column} {sql_type}")
                    for version, column, sql_type in ADDED_COLUMNS)
LATEST = MIGRATIONS[-1][0]


def channel_name(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a spool (channels are per database; schemas share a database)."""
    return f"{schema}_new_mail"


def lock_key(schema: str, kind: str, name: str = "") -> int:
    """A 64-bit advisory lock key for (schema, kind, name): migrations, an instance name, a mailbox."""
    digest = hashlib.blake2b(f"mailgw\0{schema}\0{kind}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def current_version(conn: Any, schema: str) -> int:
    """0 when the schema does not exist yet."""
    table = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.schema_version")
    if table is None:
        return 0
    return int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {schema}.schema_version"))


async def migrate(conn: Any, schema: str) -> tuple[int, int]:
    """Apply the missing migrations; returns (version before, version after). `conn` is an asyncpg connection."""
    before = await current_version(conn, schema)
    if before > LATEST:
        raise SpoolError(f"the spool schema {schema} is at version {before}, newer than this mailgw knows "
                         f"({LATEST}): upgrade mailgw")
    if before == LATEST:
        return before, before
    async with conn.transaction():
        # Serialises concurrent migrators; released with the transaction.
        await conn.execute("SET LOCAL statement_timeout = 0")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(schema, "migrate"))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.schema_version (version integer PRIMARY KEY, "
                           "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), "
                           "applied_by text NOT NULL DEFAULT current_user)")
        done = int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {schema}.schema_version"))
        for version, description, sql in MIGRATIONS:
            if version <= done:
                continue
            await conn.execute(sql.format(s=schema, channel=channel_name(schema)))
            await conn.execute(f"INSERT INTO {schema}.schema_version (version, description) VALUES ($1, $2)",
                               version, description)
            log.info("spool.migrated", schema=schema, version=version, description=description)
    return before, LATEST
