"""What the IMAP and POP3 pollers share: the envelope read from headers, the ledger, spooling, TLS, backoff.

The guarantee both give is SMTP's: a message leaves the mailbox's "new" view (\\Seen, moved, deleted) only after
it is committed to the spool. The spool's `dedup_key` is the ledger: ``imap:<name>:<uidvalidity>:<uid>`` or
``pop3:<name>:<uidl>``; a key already stored means "spooled before, only the mailbox action is missing" (a crash
between commit and flag), so a re-fetch is a no-op. The Message-Id is the second line of defence for what the
key cannot see — a new UIDVALIDITY (server migration, mailbox rebuilt), a POP3 server without stable UIDLs, the
same message delivered into the mailbox twice: a message whose Message-Id this mailbox already spooled is not
spooled again (Odoo would drop it as a duplicate anyway).

A message the poller leaves in the mailbox (over max_message_size, or a server that cannot return it) gets a
*placeholder* under its key: an entry parked `failed` that holds its header section or nothing, marked
`left_in_mailbox`, so that an operator sees it and it is reported once. A placeholder never counts as stored:
the message is not flagged, and once the poller can fetch it whole (the server reads it again, the limit was
raised) the message replaces the placeholder under the key.

Envelope of mailbox mail (there was no SMTP transaction we saw):
- mail_from: the topmost Return-Path (the final delivery agent's record of the envelope sender; ``<>`` -> "").
  Without one: "" — never the From header, so a DSN the gateway might send later cannot be backscatter to a
  forged From, and a bounce without Return-Path stays recognisable as one.
- rcpt_tos: the addresses in Delivered-To, X-Original-To, To, Cc, Resent-To, Resent-Cc whose domain belongs to
  an Odoo instance; else the mailbox's `recipient`; else its `user` if that is an address. `source.rcpt_from`
  says which ("headers", "recipient", "user"). With none of these the message is spooled as `failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import re
import signal
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Config, MailboxBase
from gateway.headers import address_domain, envelope_from_head, header_section
from gateway.logs import get_logger
from gateway.spool.base import Envelope, MailboxLock, PutItem, Spool, SpoolEntry, State, UnknownEntry

log = get_logger("mailgw.intake.mailbox")

_HEADER_LINE = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")


def imap_key(name: str, uidvalidity: int, uid: int) -> str:
    return f"imap:{name}:{uidvalidity}:{uid}"


def pop3_key(name: str, uidl: str) -> str:
    return f"pop3:{name}:{uidl}"


def is_placeholder(entry: SpoolEntry) -> bool:
    """Does this entry only record a message left in its mailbox (not the message itself)?"""
    return bool(entry.envelope.source and entry.envelope.source.get("left_in_mailbox"))


def broken_reason(raw: bytes, head: bytes | None = None) -> str | None:
    """Why this is not a message Odoo could parse, or None. Deliberately lenient: only what is hopeless.
    `head`: the header section, when the caller has split it off already."""
    if not raw or raw.isspace():  # `not raw.strip()` without copying the message
        return "empty message"
    if head is None:
        head = header_section(raw)
    first = head.split(b"\n", 1)[0]
    if not (_HEADER_LINE.match(first) or first.startswith(b"From ")):
        return "no header section (the first line is not a header field)"
    if b"\x00" in head:
        return "NUL byte in the header section"
    return None


@dataclass(slots=True)  # not frozen: built per message on the hot path, frozen costs a setattr per field
class MailboxEnvelope:
    envelope: Envelope
    message_id: str
    message_id_generated: bool
    state: State
    reason: str | None  # why `failed`, None when `received`


def build_envelope(raw: bytes, mailbox: MailboxBase, config: Config, *, intake: str,
                   source: dict[str, Any], received_at: float | None = None) -> MailboxEnvelope:
    """Envelope, Message-Id and initial state for one fetched message (pure: no I/O)."""
    head = header_section(raw)
    reason = broken_reason(raw, head)
    mail_from, rcpts, message_id = envelope_from_head(head, lambda d: config.instance_for_domain(d) is not None)
    generated = not message_id
    if generated:
        # Stable across re-fetches (content hash), so the duplicate check works for these too.
        message_id = f"<mailgw.{hashlib.sha256(raw).hexdigest()[:32]}@{mailbox.host}>"

    src = dict(source)
    src["mailbox"] = mailbox.name
    if mailbox.instance:
        src["instance"] = mailbox.instance
    if rcpts:
        src["rcpt_from"] = "headers"
    elif mailbox.recipient:
        rcpts = [mailbox.recipient]
        src["rcpt_from"] = "recipient"
    elif address_domain(mailbox.user):
        rcpts = [mailbox.user]
        src["rcpt_from"] = "user"
    else:
        reason = reason or ("cannot route: no recipient of an Odoo domain in the headers, no `recipient` "
                            "configured and the mailbox user is not an address")
    env = Envelope(mail_from=mail_from, rcpt_tos=tuple(rcpts), intake=intake, peer=mailbox.host,
                   received_at=time.time() if received_at is None else received_at, source=src)
    return MailboxEnvelope(env, message_id, generated, State.FAILED if reason else State.RECEIVED, reason)


@dataclass(slots=True)  # not frozen: built per message on the hot path, frozen costs a setattr per field
class FetchedMessage:
    """One message as a poller fetched it: its ledger key, bytes and protocol-specific source fields."""

    key: str
    raw: bytes
    source: dict[str, Any]


@dataclass(slots=True)  # not frozen: built per message on the hot path, frozen costs a setattr per field
class SpoolOutcome:
    key: str
    queue_id: str | None  # None only when `error` is set
    message_id: str | None
    created: bool  # False: the ledger key or the Message-Id was already in the spool
    state: State | None = None
    duplicate_of: str | None = None  # spooled before under another key (same Message-Id, same mailbox)
    error: BaseException | None = None

    @property
    def committed(self) -> bool:
        """True when the mailbox action may be applied: the message is durably in the spool (now or before)."""
        return self.error is None


class MailboxLedger:
    """The (mailbox, key) -> queue_id ledger kept in the spool, and the one place mailbox mail is spooled."""

    def __init__(self, spool: Spool, mailbox: MailboxBase, config: Config, *, intake: str,
                 identity: tuple[str, ...]):
        self.spool = spool
        self.mailbox = mailbox
        self.config = config
        self.intake = intake
        # The source fields that name one message in the mailbox (IMAP: uidvalidity+uid, POP3: uidl): an entry
        # with the same Message-Id *and* identity is this very message again (a re-fetch), not a duplicate.
        self.identity = identity
        self.log = get_logger(f"mailgw.intake.{intake}").bind(mailbox=mailbox.name)

    async def stored(self, keys: Sequence[str]) -> dict[str, str]:
        """Keys whose message is in the spool -> its queue_id. A key held by a placeholder is not stored."""
        found = await self.spool.has_dedup_keys(keys)
        placeholders = await self._placeholders(found.values())
        return {k: q for k, q in found.items() if q not in placeholders}

    async def _placeholders(self, queue_ids: Iterable[str]) -> set[str]:
        """Which of these entries are placeholders. Asked only for keys found in the spool (a re-fetch), so one
        read per entry is fine."""
        out: set[str] = set()
        for queue_id in queue_ids:
            entry = await self.spool.get(queue_id)
            if entry is not None and is_placeholder(entry):
                out.add(queue_id)
        return out

    def _already_spooled(self, entries: Sequence[SpoolEntry], source: dict[str, Any]) -> str | None:
        """Queue id of another message of this mailbox among these entries (all with one Message-Id), if any."""
        for entry in entries:
            src = entry.envelope.source or {}
            if entry.envelope.intake != self.intake or src.get("mailbox") != self.mailbox.name \
                    or is_placeholder(entry):
                continue
            if all(src.get(f) == source.get(f) for f in self.identity):
                continue  # the same mailbox message: the ledger key decides (a re-fetch)
            return entry.queue_id
        return None

    async def store(self, messages: Sequence[FetchedMessage]) -> list[SpoolOutcome]:
        """Spool a batch (concurrently, so the spool groups the commits). Never raises for one bad message."""
        prepared = [(m, build_envelope(m.raw, self.mailbox, self.config, intake=self.intake, source=m.source))
                    for m in messages]
        by_mid = await self.spool.find_message_ids([p.message_id for _m, p in prepared])
        earlier = [self._already_spooled(by_mid.get(p.message_id, ()), m.source) for m, p in prepared]
        first_in_batch: dict[str, int] = {}  # Message-Id -> index of its first copy in this batch
        to_put = [i for i, (_m, p) in enumerate(prepared)
                  if not earlier[i] and first_in_batch.setdefault(p.message_id, i) == i]
        items = {i: PutItem(p.envelope, m.raw, message_id=p.message_id, message_id_generated=p.message_id_generated,
                            dedup_key=m.key, state=p.state, last_error=p.reason)
                 for i in to_put for m, p in (prepared[i],)}
        # One writer operation for the whole chunk: one commit, no per-message round trip to the writer thread.
        put_result = await self._put_many(items)
        refetched = {i: res[0] for i, res in put_result.items() if isinstance(res, tuple) and not res[1]}
        if refetched:
            put_result.update(await self._replace_placeholders(refetched, items))

        outcomes: list[SpoolOutcome] = []
        for i, (m, p) in enumerate(prepared):
            res = put_result.get(i)
            if i not in put_result:
                # Same Message-Id as a message spooled earlier (or earlier in this batch).
                dup = earlier[i]
                if dup is None:
                    first = put_result.get(first_in_batch[p.message_id])
                    if isinstance(first, BaseException) or first is None:
                        outcomes.append(SpoolOutcome(m.key, None, p.message_id, created=False,
                                                     error=first or RuntimeError("first copy not spooled")))
                        continue
                    dup = first[0]
                outcomes.append(SpoolOutcome(m.key, dup, p.message_id, created=False, duplicate_of=dup))
                self.log.info(f"{self.intake}.duplicate", queue_id=dup, message_id=p.message_id, key=m.key,
                              note="Message-Id already spooled from this mailbox; not spooled again")
            elif isinstance(res, BaseException):
                if isinstance(res, asyncio.CancelledError):
                    raise res
                outcomes.append(SpoolOutcome(m.key, None, p.message_id, created=False, error=res))
                self.log.error(f"{self.intake}.spool_failed", key=m.key, message_id=p.message_id, error=str(res))
            else:
                assert res is not None
                queue_id, created = res
                outcomes.append(SpoolOutcome(m.key, queue_id, p.message_id, created=created, state=p.state))
                if not created:
                    self.log.info(f"{self.intake}.refetched", queue_id=queue_id, message_id=p.message_id, key=m.key,
                                  note="already in the spool (ledger); only the mailbox action was missing")
                elif p.state == State.FAILED:
                    self.log.warning(f"{self.intake}.parked", queue_id=queue_id, message_id=p.message_id, key=m.key,
                                     reason=p.reason)
                # A message spooled normally is logged once, by the spool ("spool.put" with mailbox and key).
        return outcomes

    async def _put_many(self, items: dict[int, PutItem]) -> dict[int, Any]:
        """put_many keyed like `items`; a failed commit is every item's error (none of them is stored)."""
        try:
            results: list[Any] = await self.spool.put_many(list(items.values()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            results = [exc] * len(items)
        return dict(zip(items, results, strict=True))

    async def _replace_placeholders(self, refetched: dict[int, str], items: dict[int, PutItem]) -> dict[int, Any]:
        """Of these fetched messages whose key was already in the spool, spool those whose key held only a
        placeholder: the placeholder is deleted, then the message is put under the key. A crash between the two
        writes leaves the message unflagged in the mailbox with no entry: the next pass spools it."""
        placeholders = await self._placeholders(refetched.values())
        redo: dict[int, PutItem] = {}
        out: dict[int, Any] = {}
        for i, queue_id in refetched.items():
            if queue_id not in placeholders:
                continue
            try:
                await self.spool.delete(queue_id)
            except UnknownEntry:
                pass  # deleted meanwhile (an operator): the key is free all the same
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                out[i] = exc
                continue
            redo[i] = items[i]
        for i, res in (await self._put_many(redo)).items() if redo else ():
            out[i] = res
            if isinstance(res, tuple):
                self.log.info(f"{self.intake}.readable_again", queue_id=res[0], replaces=refetched[i],
                              key=items[i].dedup_key, message_id=items[i].message_id,
                              note="the message left in the mailbox was fetched whole and replaces its placeholder")
        return out

    async def store_left(self, key: str, head: bytes, source: dict[str, Any], *, event: str, reason: str,
                         **log_fields: Any) -> SpoolOutcome:
        """Record a message the gateway leaves in the mailbox (oversized, unreadable): a placeholder holding its
        header section (or nothing), parked `failed` with the reason, so an operator sees it, once. If the key
        holds the message itself already (spooled before, only the flag was lost), that entry stays."""
        src = dict(source, left_in_mailbox=True)
        p = build_envelope(head, self.mailbox, self.config, intake=self.intake, source=src)
        message_id = p.message_id
        if not head:  # nothing to hash: name it after its ledger key instead
            message_id = f"<mailgw.left.{hashlib.sha256(key.encode()).hexdigest()[:32]}@{self.mailbox.host}>"
        try:
            queue_id, created = await self.spool.put(p.envelope, head, message_id=message_id,
                                                     message_id_generated=p.message_id_generated or not head,
                                                     dedup_key=key, state=State.FAILED, last_error=reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.error(f"{self.intake}.spool_failed", key=key, message_id=message_id, error=str(exc))
            return SpoolOutcome(key, None, message_id, created=False, error=exc)
        if created:
            self.log.warning(f"{self.intake}.{event}", queue_id=queue_id, message_id=message_id, key=key,
                             reason=reason, **log_fields)
        return SpoolOutcome(key, queue_id, message_id, created=created, state=State.FAILED)

    async def store_oversized(self, key: str, head: bytes, size: int, source: dict[str, Any]) -> SpoolOutcome:
        """A message over max_message_size: its header section is spooled `failed`; the message stays put."""
        reason = (f"message of {size} bytes is over max_message_size ({self.mailbox.max_message_size}); only its "
                  f"header is spooled and the message was left in the mailbox")
        return await self.store_left(key, head, dict(source, size=size), event="oversized", reason=reason,
                                     size=size, limit=self.mailbox.max_message_size)


def ssl_context_for(mailbox: MailboxBase) -> ssl.SSLContext:
    """Verifying client context: the system CAs, or `ca_file` for a private CA. Never unverified."""
    ctx = ssl.create_default_context(cafile=str(mailbox.ca_file) if mailbox.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def default_port(mailbox: MailboxBase, protocol: str) -> int:
    if mailbox.port:
        return mailbox.port
    implicit = mailbox.tls == "implicit"
    return {"imap": 993 if implicit else 143, "pop3": 995 if implicit else 110}[protocol]


@dataclass
class BackoffPolicy:
    """Exponential reconnect delay with jitter; `reset()` after a session that got as far as reading mail."""

    initial: float = 1.0
    maximum: float = 300.0
    current: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.current = self.initial

    def next_delay(self) -> float:
        delay = self.current * random.uniform(0.8, 1.2)
        self.current = min(self.current * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.current = self.initial


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def crash_point() -> None:
    """Fault injection for the kill -9 system test, between a batch's spool commit and its mailbox action.

    With MAILGW_TEST_KILL_AFTER_COMMIT=N in the environment the process SIGKILLs itself after the Nth committed
    batch. Unset (production): a dictionary lookup and nothing else.
    """
    target = os.environ.get("MAILGW_TEST_KILL_AFTER_COMMIT")
    if not target:
        return
    global _commits_seen
    _commits_seen += 1
    if _commits_seen >= int(target):
        os.kill(os.getpid(), signal.SIGKILL)


_commits_seen = 0


class MailboxPoller:
    """What the IMAP and POP3 pollers share: state, stats, backoff, a stop that finishes the batch in
    progress, outage logging once per change, and polling only while this gateway holds the mailbox. Subclasses
    implement `_poll()`, which runs until `_stopping`."""

    intake = "mailbox"
    identity: tuple[str, ...] = ()
    extra_stats: tuple[str, ...] = ()
    backoff_initial = 1.0
    backoff_max = 300.0
    standby_retry = 2.0  # seconds between tries for a mailbox another gateway polls

    def __init__(self, cfg: MailboxBase, config: Config, spool: Spool) -> None:
        self.cfg = cfg
        self.config = config
        self.spool = spool
        self.ledger = MailboxLedger(spool, cfg, config, intake=self.intake, identity=self.identity)
        self.log = get_logger(f"mailgw.intake.{self.intake}").bind(mailbox=cfg.name)
        self.stats: dict[str, int] = dict.fromkeys(
            ("sessions", "errors", "fetched", "refetched", "duplicates", "parked", "oversized", "unreadable",
             *self.extra_stats), 0)
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()
        self._backoff = BackoffPolicy(self.backoff_initial, self.backoff_max)
        self._last_error: str | None = None

    async def _poll(self) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        """Poll the mailbox while this gateway holds it. Gateways sharing a PostgreSQL spool take turns: one polls,
        the others wait on standby and take over when its database session ends (it died, or lost the database).
        With SQLite the lock is always held."""
        self._task = asyncio.current_task()
        lock = self.spool.mailbox_lock(f"{self.intake}:{self.cfg.name}")
        standby = False
        try:
            while not self._stopping:
                if not await lock.acquire():
                    if not standby:
                        self.log.info(f"{self.intake}.standby", note="another gateway polls this mailbox (or the "
                                      "spool database is unreachable); waiting for the mailbox")
                        standby = True
                    await self._sleep(self.standby_retry)
                    continue
                if standby:
                    self.log.info(f"{self.intake}.active", note="this gateway polls the mailbox now")
                    standby = False
                await self._poll_while_held(lock)
        finally:
            with contextlib.suppress(Exception):
                await lock.release()
            self._finished.set()

    async def _poll_while_held(self, lock: MailboxLock) -> None:
        poll = asyncio.create_task(self._poll(), name=f"{self.intake}-{self.cfg.name}")
        lost = asyncio.create_task(lock.lost.wait())
        try:
            await asyncio.wait({poll, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not poll.done():
                # Mid-batch is fine: what was committed and not yet flagged is a ledger hit for the next holder.
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await poll
        failure = poll.exception() if poll.done() and not poll.cancelled() else None
        if failure is not None:
            raise failure
        if lock.lost.is_set() and not self._stopping:
            self.log.warning(f"{self.intake}.mailbox_lost", note="the spool session holding the mailbox ended; "
                             "polling stopped until it is held again")

    async def stop(self, grace: float = 10.0) -> None:
        """Finish the batch in progress (spool + mailbox action), log out, return. Cancels after `grace`."""
        self._stopping = True
        self._stop_event.set()
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._finished.wait()), grace)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _note_error(self, exc: BaseException) -> None:
        self.stats["errors"] += 1
        text = f"{type(exc).__name__}: {exc}"
        # Outages are logged once per change, not once per retry.
        if text != self._last_error:
            self.log.warning(f"{self.intake}.disconnected", error=text, retry_in=round(self._backoff.current, 1))
        else:
            self.log.debug(f"{self.intake}.disconnected", error=text)
        self._last_error = text

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    def _count(self, outcomes: Sequence[SpoolOutcome]) -> None:
        for o in outcomes:
            if o.duplicate_of:
                self.stats["duplicates"] += 1
            elif o.created and o.state == State.FAILED:
                self.stats["parked"] += 1
            elif o.created:
                self.stats["fetched"] += 1
            elif o.committed:
                self.stats["refetched"] += 1
