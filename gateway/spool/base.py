"""The spool's vocabulary: states, their transition tables, entries, and the interface backends implement."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import orjson

from gateway.errors import GatewayError
from gateway.logs import get_logger

log = get_logger("mailgw.spool")


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class State(StrEnum):
    # inbound
    RECEIVED = "received"
    ROUTED = "routed"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    FAILED = "failed"
    HELD = "held"  # quarantined by sender authentication (gateway/auth) until an operator releases or deletes it
    # outbound: Odoo's mail.mail words, so an Odoo admin reads the queue without a glossary
    OUTGOING = "outgoing"
    SENT = "sent"
    EXCEPTION = "exception"
    CANCEL = "cancel"


S = State
# Every allowed move. The spool refuses anything else (InvalidTransition).
TRANSITIONS: Mapping[Direction, Mapping[State, frozenset[State]]] = {
    Direction.INBOUND: {
        S.RECEIVED: frozenset({S.ROUTED, S.DEFERRED, S.FAILED, S.DELIVERED, S.HELD}),
        S.ROUTED: frozenset({S.DELIVERED, S.DEFERRED, S.FAILED, S.HELD}),
        S.DEFERRED: frozenset({S.ROUTED, S.DELIVERED, S.DEFERRED, S.FAILED, S.RECEIVED, S.HELD}),
        S.FAILED: frozenset({S.RECEIVED}),  # operator requeue
        # Held mail is never claimed: only an operator moves it on (`queue release` -> received); `queue delete`
        # and the expiry after auth.held_lifetime remove it.
        S.HELD: frozenset({S.RECEIVED}),
        S.DELIVERED: frozenset(),
    },
    Direction.OUTBOUND: {
        S.OUTGOING: frozenset({S.OUTGOING, S.SENT, S.EXCEPTION, S.CANCEL}),
        S.EXCEPTION: frozenset({S.OUTGOING, S.CANCEL}),
        S.CANCEL: frozenset({S.OUTGOING}),
        S.SENT: frozenset(),
    },
}

INITIAL: Mapping[Direction, State] = {Direction.INBOUND: S.RECEIVED, Direction.OUTBOUND: S.OUTGOING}
# States a worker may claim work from.
ACTIVE: Mapping[Direction, frozenset[State]] = {
    Direction.INBOUND: frozenset({S.RECEIVED, S.ROUTED, S.DEFERRED}),
    Direction.OUTBOUND: frozenset({S.OUTGOING}),
}
# Where an operator's `queue retry` sends an entry.
REQUEUE: Mapping[Direction, State] = {Direction.INBOUND: S.RECEIVED, Direction.OUTBOUND: S.OUTGOING}
# Inbound states `defer_many` moves to deferred (as text, for the statements).
DEFERRABLE = tuple(sorted(str(st) for st, to in TRANSITIONS[Direction.INBOUND].items() if S.DEFERRED in to))
# rcpt_status also carries the sender-authentication gate's own state under this key (no recipient address can
# be "@auth"): {"state": "held" | "released", "rule", "detail", "at"}. A released entry is delivered as if it
# had passed; the key survives every later transition because workers rewrite rcpt_status whole.
AUTH_STATUS_KEY = "@auth"


class SpoolError(GatewayError):
    pass


class InvalidTransition(SpoolError):
    pass


class UnknownEntry(SpoolError):
    pass


class SpoolUnavailable(SpoolError):
    """The spool cannot be reached now (database down, restarting, timed out): try again later. Nothing was
    acknowledged for what raised it; a write may or may not have been committed (at-least-once)."""


class LeaseLost(SpoolError):
    """This process's claim on the entry expired and another instance took it over: the write was not done."""


# What Envelope.client may hold (XFORWARD's attributes, lower-cased): address, reverse name, port, HELO name,
# protocol (SMTP, ESMTPS ...), the relay's own queue id, LOCAL or REMOTE.
CLIENT_KEYS = ("addr", "name", "port", "helo", "proto", "ident", "source")

# Columns `entries` gained after the first schema, oldest first: (schema version, column, SQL type). A backend
# adds the missing ones when it opens an older spool (one place for both backends: the types are plain SQL that
# SQLite and PostgreSQL both accept).
ADDED_COLUMNS: tuple[tuple[int, str, str], ...] = (
    (2, "client", "TEXT"),  # Envelope.client as JSON
)
SCHEMA_VERSION = ADDED_COLUMNS[-1][0]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits -> 2 characters
_PAIR_SHIFTS = tuple(range(90, -1, -10))  # 100 bits, most significant first


def new_queue_id(now: float | None = None) -> str:
    """Time-ordered id (48-bit ms timestamp + 50 random bits, Crockford base32): sortable, URL/local-part safe."""
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    # Uniqueness, not secrecy (VERP tokens carry their own MAC): no urandom syscall per message.
    value = (ms << 50) | random.getrandbits(50)
    return "".join([_CROCKFORD_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


@dataclass(frozen=True, slots=True)
class Envelope:
    mail_from: str  # "" for the null sender <>
    rcpt_tos: tuple[str, ...]
    intake: str  # smtp | lmtp | submission | pipe | imap | pop3 | internal
    peer: str | None = None
    helo: str | None = None
    received_at: float = field(default_factory=time.time)
    # Where it came from beyond the socket, e.g. {"mailbox": "support", "uidvalidity": 7, "uid": 42}
    source: Mapping[str, Any] | None = None
    # The original client a trusted relay named (Postfix's XFORWARD): some of CLIENT_KEYS. `peer` and `helo`
    # stay the relay's own; without a client they are the client.
    client: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    queue_id: str
    direction: Direction
    state: State
    envelope: Envelope
    message_id: str | None
    message_id_generated: bool
    size: int
    attempts: int
    next_attempt_at: float
    last_error: str | None
    route: Any  # JSON-able routing decision(s), None before routing
    rcpt_status: Mapping[str, Any] | None
    updated_at: float
    crashes: int
    claimed_by: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue_id": self.queue_id,
            "direction": str(self.direction),
            "state": str(self.state),
            "mail_from": self.envelope.mail_from,
            "rcpt_tos": list(self.envelope.rcpt_tos),
            "intake": self.envelope.intake,
            "peer": self.envelope.peer,
            "helo": self.envelope.helo,
            "source": dict(self.envelope.source) if self.envelope.source else None,
            "client": dict(self.envelope.client) if self.envelope.client else None,
            "received_at": self.envelope.received_at,
            "message_id": self.message_id,
            "message_id_generated": self.message_id_generated,
            "size": self.size,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "route": self.route,
            "rcpt_status": dict(self.rcpt_status) if self.rcpt_status else None,
            "updated_at": self.updated_at,
            "crashes": self.crashes,
        }


def dumps(value: Any) -> str | None:
    """Compact JSON text with sorted keys for the spool's JSON columns. orjson (a few times faster, this runs
    for every spooled message) unless it refuses the value: strings holding surrogates (undecodable bytes of a
    non-UTF-8 address, kept by surrogateescape), integers over 64 bits; json takes those."""
    if value is None:
        return None
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class PutItem:
    """One message for `Spool.put_many` (the same fields as `put`)."""

    envelope: Envelope
    raw: bytes
    direction: Direction = Direction.INBOUND
    message_id: str | None = None
    message_id_generated: bool = False
    dedup_key: str | None = None
    state: State | None = None
    last_error: str | None = None
    message_id_domain: str | None = None
    next_attempt_at: float | None = None  # when a worker may first claim it (None: now)


# The columns every backend stores for an entry, in the order `entry_from_row` reads them.
ENTRY_COLUMNS = (
    "queue_id", "direction", "state", "mail_from", "rcpt_tos", "intake", "peer", "helo", "source", "message_id",
    "message_id_generated", "size", "received_at", "updated_at", "attempts", "next_attempt_at", "last_error", "route",
    "rcpt_status", "crashes", "claimed_by", "client",
)
# What `put` writes, in the order of the tuple `put_row` builds.
PUT_COLUMNS = (
    "queue_id", "direction", "state", "mail_from", "rcpt_tos", "intake", "peer", "helo", "source", "message_id",
    "message_id_generated", "size", "received_at", "updated_at", "next_attempt_at", "last_error", "dedup_key",
    "client",
)


def entry_from_row(row: Sequence[Any]) -> SpoolEntry:
    """A row of ENTRY_COLUMNS (JSON columns as text) -> SpoolEntry."""
    (queue_id, direction, state, mail_from, rcpt_tos, intake, peer, helo, source, message_id, mid_gen, size,
     received_at, updated_at, attempts, next_attempt_at, last_error, route, rcpt_status, crashes,
     claimed_by, client) = row
    return SpoolEntry(
        queue_id=queue_id,
        direction=Direction(direction),
        state=State(state),
        envelope=Envelope(
            mail_from=mail_from,
            rcpt_tos=tuple(json.loads(rcpt_tos)),
            intake=intake,
            peer=peer,
            helo=helo,
            received_at=received_at,
            source=json.loads(source) if source else None,
            client=json.loads(client) if client else None,
        ),
        message_id=message_id,
        message_id_generated=bool(mid_gen),
        size=size,
        attempts=attempts,
        next_attempt_at=next_attempt_at,
        last_error=last_error,
        route=json.loads(route) if route else None,
        rcpt_status=json.loads(rcpt_status) if rcpt_status else None,
        updated_at=updated_at,
        crashes=crashes,
        claimed_by=claimed_by,
    )


# (row of PUT_COLUMNS, or the item's own error), the raw bytes, the ledger key
PutRow = tuple[tuple[Any, ...] | BaseException, bytes, str | None]


def put_row(item: PutItem) -> PutRow:
    """The row `put` stores for an item, with a fresh queue id (or the error that refuses it)."""
    env = item.envelope
    queue_id = new_queue_id(env.received_at)
    state = item.state or INITIAL[item.direction]
    if state not in TRANSITIONS[item.direction]:
        return InvalidTransition(f"{state} is not a {item.direction} state"), item.raw, item.dedup_key
    message_id, generated = item.message_id, item.message_id_generated
    if message_id is None and item.message_id_domain:
        # Stable from the first attempt on, so Odoo deduplicates a redelivery (it would invent a new one).
        message_id, generated = f"<{queue_id}@{item.message_id_domain}>", True
    now = time.time()
    row = (queue_id, str(item.direction), str(state), env.mail_from, dumps(list(env.rcpt_tos)), env.intake,
           env.peer, env.helo, dumps(env.source), message_id, int(generated), len(item.raw), env.received_at,
           now, now if item.next_attempt_at is None else item.next_attempt_at, item.last_error, item.dedup_key,
           dumps(env.client))
    return row, item.raw, item.dedup_key


def log_puts(items: Sequence[PutItem], rows: Sequence[PutRow],
             results: Sequence[tuple[str, bool] | BaseException]) -> None:
    """One `spool.put` line per message stored (not for ledger hits or failures)."""
    for item, (row, _raw, _key), result in zip(items, rows, results, strict=True):
        if isinstance(result, tuple) and result[1] and not isinstance(row, BaseException):
            src = item.envelope.source
            # Mailbox intakes add where the message came from: this is their one line per message.
            extra = {"mailbox": src["mailbox"], "key": item.dedup_key} if src and "mailbox" in src else {}
            if item.envelope.client:  # the original client a trusted relay (Postfix) named
                extra["client"] = item.envelope.client.get("addr") or item.envelope.client.get("name")
            log.info("spool.put", queue_id=result[0], message_id=row[9], state=row[2], intake=item.envelope.intake,
                     size=len(item.raw), rcpts=len(item.envelope.rcpt_tos), **extra)


def log_transition(queue_id: str, current: State, to: State, entry: SpoolEntry, error: str | None) -> None:
    log.info("spool.transition", queue_id=queue_id, message_id=entry.message_id, **{"from": str(current)},
             to=str(to), attempts=entry.attempts, error=error)


def log_deferred(queue_ids: Sequence[str], error: str) -> None:
    """One `spool.transition` line per entry `defer_many` moved."""
    for queue_id in queue_ids:
        log.info("spool.transition", queue_id=queue_id, to=str(State.DEFERRED), error=error)


def parked_reason(crashes: int, state: str) -> str:
    return f"parked: the worker died {crashes} times while handling it (was {state})"


def by_message_id(entries: Iterable[SpoolEntry]) -> dict[str, tuple[SpoolEntry, ...]]:
    """`find_message_ids`'s answer: Message-Id -> its entries, in the order given."""
    found: dict[str, list[SpoolEntry]] = {}
    for entry in entries:
        found.setdefault(entry.message_id or "", []).append(entry)
    return {k: tuple(v) for k, v in found.items()}


# Where the poison guard parks an entry, per direction.
PARKED: Mapping[Direction, State] = {Direction.INBOUND: S.FAILED, Direction.OUTBOUND: S.EXCEPTION}


# An entry as `mailgw spool export` moves it: ENTRY_COLUMNS and dedup_key by name, and the raw message.
ExportRow = tuple[dict[str, Any], bytes]
EXPORT_COLUMNS = (*ENTRY_COLUMNS, "dedup_key")


class MailboxLock(Protocol):
    """The right to poll one mailbox (IMAP folder, POP3 maildrop). With a shared spool only one gateway holds
    it at a time; `lost` is set when it was taken away (the connection that held it broke)."""

    lost: asyncio.Event

    async def acquire(self) -> bool:
        """Try once; True when held (now or already)."""
        ...

    async def release(self) -> None: ...


class AlwaysHeld:
    """The mailbox lock of a spool only one gateway uses (SQLite): always granted, never lost."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()

    async def acquire(self) -> bool:
        return True

    async def release(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    released: tuple[str, ...]
    parked: tuple[str, ...]

    def log(self) -> None:
        if self.released or self.parked:
            log.warning("spool.recovered", released=len(self.released), parked=list(self.parked))


async def requeue_target(spool: Spool, queue_id: str) -> tuple[SpoolEntry, State | None]:
    """For an operator's retry: the entry (UnknownEntry if there is none) and where it moves; None for outbound
    mail already waiting to go, which a retry leaves as it is."""
    entry = await spool.get(queue_id)
    if entry is None:
        raise UnknownEntry(queue_id)
    target = REQUEUE[entry.direction]
    return entry, None if entry.state == target and entry.direction == Direction.OUTBOUND else target


class Spool(Protocol):
    """What workers, intakes and the CLI use. One transaction per call; every transition is logged once."""

    async def put(
        self,
        envelope: Envelope,
        raw: bytes,
        *,
        direction: Direction = Direction.INBOUND,
        message_id: str | None = None,
        message_id_generated: bool = False,
        dedup_key: str | None = None,
        state: State | None = None,
        last_error: str | None = None,
        message_id_domain: str | None = None,
        next_attempt_at: float | None = None,
    ) -> tuple[str, bool]:
        """Store durably; returns (queue_id, created). With a dedup_key already stored: (its id, False).
        Written once here: an implementation that subclasses Spool stores through its put_many."""
        item = PutItem(envelope, raw, direction=direction, message_id=message_id,
                       message_id_generated=message_id_generated, dedup_key=dedup_key, state=state,
                       last_error=last_error, message_id_domain=message_id_domain, next_attempt_at=next_attempt_at)
        [result] = await self.put_many([item])
        if isinstance(result, BaseException):
            raise result
        return result

    async def put_many(self, items: Sequence[PutItem]) -> list[tuple[str, bool] | BaseException]:
        """Several messages in one commit; each stored or failed on its own, results in order."""
        ...

    async def claim(self, direction: Direction, worker: str, *, limit: int, now: float | None = None
                    ) -> list[SpoolEntry]: ...

    async def transition(
        self,
        queue_id: str,
        to: State,
        *,
        error: str | None = None,
        next_attempt_at: float | None = None,
        route: Any = None,
        rcpt_status: Mapping[str, Any] | None = None,
        count_attempt: bool = False,
        release: bool = True,
    ) -> SpoolEntry: ...

    async def defer_many(self, queue_ids: Sequence[str], *, next_attempt_at: float, error: str) -> list[str]:
        """Several inbound entries -> deferred in one write (no attempt counted, claims released). Returns the
        ids that moved; the others (gone, or in a state that cannot be deferred) are left as they are."""
        ...

    async def release(self, queue_id: str) -> None: ...

    async def get(self, queue_id: str) -> SpoolEntry | None: ...

    async def raw(self, queue_id: str) -> bytes: ...

    async def list(self, *, state: State | None = None, direction: Direction | None = None,
                   limit: int = 1000) -> list[SpoolEntry]: ...

    async def scan(self, *, state: State | None = None, direction: Direction | None = None
                   ) -> AsyncIterator[SpoolEntry]:
        """Every entry, in `list`'s order, however many there are. This fallback holds them all in memory; a
        backend streams them (SQLite: one cursor read a page at a time)."""
        for entry in await self.list(state=state, direction=direction, limit=2**62):
            yield entry

    async def delete(self, queue_id: str, *, only_in: State | None = None) -> None:
        """Remove the entry and its message; with `only_in`, only if it is in that state (InvalidTransition
        otherwise), checked in the same statement (the held-mail expiry must never delete a released entry)."""
        ...

    async def requeue(self, queue_id: str) -> SpoolEntry: ...

    async def wake(self, queue_ids: Sequence[str], now: float | None = None) -> int: ...

    async def recover(self, crash_limit: int = 3) -> RecoveryReport: ...

    async def counts(self) -> dict[tuple[str, str], int]: ...

    async def has_dedup_key(self, key: str) -> str | None:
        """The queue id stored under this ledger key, or None (written once here, on `has_dedup_keys`)."""
        return (await self.has_dedup_keys([key])).get(key)

    async def has_dedup_keys(self, keys: Sequence[str]) -> dict[str, str]: ...

    async def find_message_ids(self, message_ids: Sequence[str]) -> dict[str, tuple[SpoolEntry, ...]]: ...

    async def close(self) -> None: ...

    # Shared queue (several gateways on one spool). A spool only one gateway uses keeps these defaults.

    def add_listener(self, callback: Callable[[Direction], None]) -> None:
        """Call `callback(direction)` when another process stored mail that is due now (a peer gateway, pipe)."""
        return None

    def mailbox_lock(self, name: str) -> MailboxLock:
        """The lock that lets exactly one gateway poll mailbox `name`."""
        return AlwaysHeld()

    # Moving entries between spools (`mailgw spool export|import|migrate --from`).

    async def export_rows(self, after: str, limit: int) -> Sequence[ExportRow]:
        """Entries with queue_id > `after` in queue_id order: (ENTRY_COLUMNS + dedup_key as a dict, raw)."""
        ...

    async def import_rows(self, rows: Sequence[ExportRow]) -> Sequence[bool]:
        """Store exported entries as they are (queue ids kept, claims cleared); False for each one skipped because
        its queue id or ledger key is already stored. Idempotent."""
        ...
