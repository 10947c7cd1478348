"""The PostgreSQL spool's statements that are more than a line (the grouped writes' are in writer.py), built
once per schema."""

from __future__ import annotations

from typing import Any

from gateway.spool.base import ACTIVE, ENTRY_COLUMNS, EXPORT_COLUMNS, Direction

RAW_WITH_CLAIM = 64 * 1024  # messages up to this size come back with their claim
CLEAR_CLAIM = ("claimed_by = NULL, claimed_at = NULL, claim_instance = NULL, claim_token = NULL, "
               "lease_expires_at = NULL")
# What `import_rows` stores: an exported entry without its claim.
IMPORTED_COLUMNS = tuple(n for n in EXPORT_COLUMNS if n != "claimed_by")
_FLOAT_COLUMNS = frozenset({"received_at", "updated_at", "next_attempt_at"})
_INT_COLUMNS = frozenset({"message_id_generated", "size", "attempts", "crashes"})


def cols(prefix: str = "") -> str:
    return ", ".join(prefix + c for c in ENTRY_COLUMNS)


def claim_sql(s: str, direction: Direction) -> str:
    """Claim due entries of `direction` in schema `s`. $1 now, $2 limit, $3 claimed_by, $4 instance, $5 claim
    token, $6 lease seconds, $7 this process's token prefix. Returns the entries, whether each was taken over
    from a dead holder, that holder, and the bytes of the small ones."""
    states = ", ".join(f"'{state}'" for state in sorted(ACTIVE[direction]))

    def claimable(t: str = "") -> str:
        """Due and not claimed (or its claim ran out), for rows of table alias `t`."""
        return (f"{t}direction = '{direction}' AND {t}state IN ({states}) AND {t}next_attempt_at <= $1 "
                f"AND ({t}claim_token IS NULL OR {t}lease_expires_at < now())")

    def taken_over(t: str = "") -> str:
        """Another process's claim ran out: it died (or lost the database) while working on the entry."""
        return f"{t}claim_token IS NOT NULL AND NOT starts_with({t}claim_token, $7) AS taken_over"

    if direction == Direction.OUTBOUND:
        # Round robin between sender domains (one Odoo instance each), each in arrival order: a mailing of
        # thousands from one instance does not hold back another instance's mail (as the SQLite spool does).
        # FOR UPDATE cannot sit beside a window function: the turns are computed below it, and the condition is
        # repeated where the rows are locked (a row another gateway claimed meanwhile is re-checked there).
        picked = f"""
    SELECT e.queue_id, e.size, e.claimed_by AS previous, {taken_over("e.")}
    FROM {s}.entries e JOIN (
        SELECT queue_id, turn, received_at FROM (
            SELECT queue_id, received_at, row_number() OVER (PARTITION BY lower(split_part(mail_from, '@', 2))
                                                             ORDER BY received_at, queue_id) AS turn
            FROM {s}.entries WHERE {claimable()}) AS ranked
        ORDER BY turn, received_at, queue_id LIMIT $2) AS r USING (queue_id)
    WHERE {claimable("e.")}
    ORDER BY r.turn, r.received_at, r.queue_id
    FOR UPDATE OF e SKIP LOCKED"""
    else:
        # Arrival order among what is due, so a sender's mail reaches Odoo in the order it came.
        picked = f"""
    SELECT queue_id, size, claimed_by AS previous, {taken_over()}
    FROM {s}.entries WHERE {claimable()}
    ORDER BY received_at, queue_id LIMIT $2
    FOR UPDATE SKIP LOCKED"""
    return f"""
WITH picked AS ({picked}
)
UPDATE {s}.entries e SET claimed_by = $3, claimed_at = $1, claim_instance = $4, claim_token = $5,
    lease_expires_at = now() + make_interval(secs => $6), crashes = e.crashes + p.taken_over::int
FROM picked p LEFT JOIN {s}.messages m ON m.queue_id = p.queue_id AND p.size <= {RAW_WITH_CLAIM}
WHERE e.queue_id = p.queue_id
RETURNING {cols('e.')}, p.taken_over, p.previous, m.raw"""


def renew_sql(s: str) -> str:
    """Extend the leases of ($1 queue ids, $2 their claim tokens) by $3 seconds; returns the claims that were not
    renewed, with the claim token and holder each entry had when the statement began."""
    return f"""
WITH c AS (SELECT * FROM unnest($1::text[], $2::text[]) AS c(queue_id, token)),
renewed AS (
    UPDATE {s}.entries e SET lease_expires_at = now() + make_interval(secs => $3) FROM c
    WHERE e.queue_id = c.queue_id AND e.claim_token = c.token RETURNING e.queue_id
)
SELECT c.queue_id, e.claim_token, e.claimed_by FROM c LEFT JOIN {s}.entries e USING (queue_id)
WHERE c.queue_id NOT IN (SELECT queue_id FROM renewed)"""


def import_sql(s: str) -> str:
    """One exported entry (IMPORTED_COLUMNS, then the raw bytes) unless its queue id or ledger key is there."""
    marks = ", ".join(f"${i + 1}" for i in range(len(IMPORTED_COLUMNS)))
    return (f"WITH ins AS (INSERT INTO {s}.entries ({', '.join(IMPORTED_COLUMNS)}) VALUES ({marks}) "
            f"ON CONFLICT DO NOTHING RETURNING queue_id) INSERT INTO {s}.messages (queue_id, raw) "
            f"SELECT queue_id, ${len(IMPORTED_COLUMNS) + 1} FROM ins "
            "ON CONFLICT (queue_id) DO UPDATE SET raw = EXCLUDED.raw RETURNING queue_id")


def import_values(row: dict[str, Any]) -> list[Any]:
    """An exported entry's values as the columns want them (a JSON export has 1 where a float column wants 1.0)."""
    out: list[Any] = []
    for name in IMPORTED_COLUMNS:
        value = row.get(name)
        if value is not None and name in _FLOAT_COLUMNS:
            value = float(value)
        elif value is not None and name in _INT_COLUMNS:
            value = int(value)
        out.append(value)
    return out


class Statements:
    """The statements of one schema, built once."""

    def __init__(self, schema: str):
        self.claim = {d: claim_sql(schema, d) for d in Direction}
        self.import_row = import_sql(schema)


