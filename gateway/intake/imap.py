"""IMAP intake: `ImapPoller` watches one folder (IDLE, or polling) and moves its new mail into the spool.

Per message, in this order: UID FETCH with BODY.PEEK (no implicit \\Seen) -> spool commit (ledger key
``imap:<name>:<uidvalidity>:<uid>``) -> the configured action (`after`: \\Seen, MOVE, or \\Deleted + EXPUNGE).
A crash anywhere before the action leaves the message in the "new" view; the next pass finds its key in the
ledger and only applies the action. See gateway/intake/mailbox.py for the envelope and duplicate rules.

Connection life: connect (implicit TLS, STARTTLS or plain) -> LOGIN -> SELECT -> catch up (UID SEARCH) ->
IDLE until something arrives or `idle_renew` passes (servers drop idlers after 30 min) -> catch up -> …
Any error closes the connection and reconnects with backoff; every (re)connect starts with the catch-up, so
mail that arrived while disconnected is found. Every call is raced against the connection-lost callback and a
timeout (`ImapClient.call`): the client connection, aioimaplib with what a long-running poller needs
(STARTTLS, XOAUTH2, EXISTS and BYE tracking), is in imap_client.py.

The catch-up's FETCHes and mailbox actions bypass aioimaplib: they are pipelined on the connection by
`gateway.intake.imap_pipeline.Pipeline` (aioimaplib would run them one at a time and parse every line through
several layers). Everything else (LOGIN, SELECT, SEARCH, IDLE, LOGOUT) is aioimaplib's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import aioimaplib
from aioimaplib.aioimaplib import STOP_WAIT_SERVER_PUSH, quoted

from gateway.config import Config, ConfigError, ImapConfig
from gateway.errors import GatewayError
from gateway.intake.imap_client import ImapClient, connect_client, parse_search, response_text, select_info
from gateway.intake.imap_pipeline import (
    FetchItems,
    ImapAuthError,
    ImapConnectionLost,
    ImapError,
    Pipeline,
    Reply,
)
from gateway.intake.mailbox import (
    BackoffPolicy,
    FetchedMessage,
    MailboxPoller,
    SpoolOutcome,
    crash_point,
    imap_key,
    is_loopback,
)
from gateway.intake.oauth2 import OAuth2Error, TokenSource
from gateway.logs import get_logger
from gateway.spool.base import Spool

T = TypeVar("T")
log = get_logger("mailgw.intake.imap")

# UIDs per command (STORE/MOVE/COPY/EXPUNGE, and the RFC822.SIZE pre-fetch): committed messages are flagged in
# groups of this size (what a crash between a commit and its flag may make us fetch again). Larger groups cost
# the server less per message (bench/imap.py with the spool stubbed out: 0.46x -> 0.53x of a bare FETCH from
# 200 to 1,000); 500 keeps a command of
# scattered 7-digit UIDs within 4 KiB (RFC 7162 §4 asks servers to accept 8,192 octets).
MAX_UIDS_PER_COMMAND = 500
MAX_BATCH_BYTES = 32 * 1024 * 1024  # bodies held at once, fetched or being fetched (a single one may exceed it)
FETCH_WINDOW = 3  # FETCHes outstanding at once: the server works on the next batch while we read one
# Batches handed to the spool and not yet committed: the spool commits what queued up during a commit in one
# transaction, so several in flight make fewer, larger commits (one fsync each) and the fetching never waits
# for one. Their bytes count against MAX_BATCH_BYTES with the FETCHes outstanding.
STORES_IN_FLIGHT = 6
LITERAL_SLACK = 64 * 1024  # a literal may exceed max_message_size by this much (RFC822.SIZE vs. what is sent)
IDLE_RENEW_MAX = 28 * 60.0  # RFC 2177: servers may log an idle client out after 30 minutes
# A message whose FETCH failed this often while it was fetched alone (the server said NO or dropped the connection)
# is recorded as unreadable and left in the mailbox, so that it cannot block the rest forever; it is tried again,
# once, every UNREADABLE_RETRY seconds (and at every start), and spooled when the server can read it again.
UNREADABLE_AFTER = 4
UNREADABLE_RETRY = 3600.0



def uid_set(uids: Iterable[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> "1:3,7,9:10"."""
    out: list[str] = []
    ordered = sorted(set(uids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(out)


def _chunks(items: Sequence[T], n: int) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]



def search_criteria(cfg: ImapConfig) -> str:
    # after: seen -> the unread messages are the "new" view; move/delete -> everything still in the folder.
    return "UNSEEN" if cfg.after == "seen" else "ALL"


class ImapPoller(MailboxPoller):
    """One mailbox folder -> the spool. `await run()` until `await stop()`; never raises for server trouble."""

    intake = "imap"
    identity = ("uidvalidity", "uid")
    extra_stats = ("flagged",)
    cfg: ImapConfig

    def __init__(self, cfg: ImapConfig, config: Config, spool: Spool) -> None:
        super().__init__(cfg, config, spool)
        self.uidvalidity: int | None = None
        self.idle_active = False  # True while an IDLE is acknowledged by the server (tests and metrics read it)
        self._left: set[int] = set()  # UIDs (of the current UIDVALIDITY) deliberately left in the mailbox
        # UID -> failed FETCHes while it was fetched alone. A UID becomes a suspect when a FETCH for it failed
        # before its data came; suspects are fetched one at a time, after the others. Reset by a good FETCH.
        self._suspects: dict[int, int] = {}
        self._unreadable_at: dict[int, float] = {}  # UIDs recorded unreadable -> when (monotonic), for the retry
        self._caps: set[str] = set()  # the server's capabilities, as of this session's login
        self._tokens = TokenSource(cfg.oauth2, what=cfg.name) if cfg.oauth2 is not None else None

    # -- lifecycle --------------------------------------------------------------------------------------

    async def _poll(self) -> None:
        self._backoff = BackoffPolicy(self.backoff_initial, self.backoff_max)
        try:
            while not self._stopping:
                client: ImapClient | None = None
                try:
                    client, starttls = connect_client(self.cfg)
                    await self._session(client, starttls)
                except asyncio.CancelledError:
                    raise
                except (ImapAuthError, OAuth2Error) as exc:
                    self._note_error(exc)
                    if self._tokens is not None:
                        self._tokens.invalidate()  # refused or revoked: ask the token endpoint again next time
                    # Hammering a wrong password gets accounts locked: wait at least a minute.
                    self._backoff.current = max(self._backoff.current, 60.0)
                except (OSError, TimeoutError, ssl.SSLError, GatewayError, ConfigError,
                        aioimaplib.AioImapException) as exc:
                    self._note_error(exc)
                except Exception as exc:  # a bug must not kill the intake; say so loudly and carry on
                    self.stats["errors"] += 1
                    self.log.exception("imap.poller_error", error=repr(exc))
                finally:
                    self.idle_active = False
                    if client is not None:
                        await client.close_gracefully()
                if not self._stopping:
                    await self._sleep(self._backoff.next_delay())
        finally:
            self.log.info("imap.stopped")

    # -- one connection ---------------------------------------------------------------------------------

    async def _session(self, client: ImapClient, starttls: ssl.SSLContext | None) -> None:
        cfg = self.cfg
        if cfg.tls == "none" and not is_loopback(cfg.host):
            self.log.warning("imap.plaintext", note="tls: none sends the password in clear text")
        if cfg.after == f"move:{cfg.folder}":
            raise ImapError(f"after: move:{cfg.folder} moves messages into the folder they are read from")
        await client.open(cfg.user, cfg.password() if self._tokens is None else None, starttls=starttls,
                          tokens=self._tokens)
        resp = await client.ok(client.select(quoted(cfg.folder)), f"SELECT {cfg.folder}")
        uidvalidity, exists = select_info(resp.lines)
        if uidvalidity is None:
            raise ImapError(f"SELECT {cfg.folder}: the server sent no UIDVALIDITY")
        if self.uidvalidity is not None and uidvalidity != self.uidvalidity:
            # Old UIDs mean nothing now. Ledger keys carry the UIDVALIDITY, so no new message is mistaken for an
            # old one; the Message-Id check keeps messages spooled under the old UIDVALIDITY from coming twice.
            self.log.warning("imap.uidvalidity_changed", old=self.uidvalidity, new=uidvalidity)
            self._left.clear()
            self._suspects.clear()
            self._unreadable_at.clear()
        self.uidvalidity = uidvalidity
        if cfg.after.startswith("move:"):
            target = cfg.after[5:]
            with contextlib.suppress(ImapError):  # NO [ALREADYEXISTS] is the usual answer
                await client.ok(client.create(quoted(target)), f"CREATE {target}")
        self.stats["sessions"] += 1
        self._last_error = None
        self._caps = client.capabilities
        use_idle = cfg.idle and "IDLE" in self._caps
        self.log.info("imap.connected", host=cfg.host, folder=cfg.folder, uidvalidity=uidvalidity, exists=exists,
                      idle=use_idle, tls=client.tls_info())
        first = True
        while not self._stopping:
            await self._catch_up(client)
            if first:
                self._backoff.reset()  # only once a session has done real work
                first = False
            if self._stopping:
                break
            if use_idle:
                await self._idle(client)
            else:
                await self._sleep(cfg.poll_interval)
                await client.ok(client.noop(), "NOOP")

    async def _catch_up(self, client: ImapClient) -> None:
        """Spool and flag everything in the "new" view; repeat while the server reports new arrivals."""
        handled: set[int] = set()
        self._retry_unreadable()
        while not self._stopping:
            client.protocol.exists_seen = False
            resp = await client.ok(client.uid_search(search_criteria(self.cfg), charset=None), "UID SEARCH")
            todo = [u for u in parse_search(resp.lines) if u not in handled and u not in self._left]
            if todo:
                await self._process(client, todo)
                handled.update(todo)
            if not todo and not client.protocol.exists_seen:
                return

    async def _process(self, client: ImapClient, uids: list[int]) -> None:
        """Spool and flag these UIDs: the unsuspected ones pipelined (`_process_on`), then each suspect alone,
        the least suspected first, with nothing else outstanding — so that when one fails, it is the one.

        A FETCH that fails makes suspects of the UIDs it did not deliver (`Pipeline.unanswered`), never of the
        FETCH that happened to be awaited. A suspect's failure while fetched alone counts against it; after
        UNREADABLE_AFTER such failures it is recorded as unreadable and left in the mailbox.
        """
        for u in [u for u in uids if self._suspects.get(u, 0) >= UNREADABLE_AFTER]:
            await self._unreadable(u)
        uids = [u for u in uids if u not in self._left]
        plain = [u for u in uids if u not in self._suspects]
        suspects = sorted((u for u in uids if u in self._suspects), key=lambda u: (self._suspects[u], u))
        pipe = client.start_pipeline(max_literal=self.cfg.max_message_size + LITERAL_SLACK)
        alone: int | None = None
        try:
            if plain:
                await self._process_on(pipe, plain)
            for alone in suspects:
                await self._process_on(pipe, [alone])
            alone = None
        except Exception:
            for u in pipe.unanswered():
                self._suspects[u] = self._suspects.get(u, 0) + (1 if u == alone else 0)
            raise
        finally:
            pipe.close()  # after a failure it never hands back: the session ends and the connection is dropped

    def _retry_unreadable(self) -> None:
        """UIDs recorded unreadable UNREADABLE_RETRY ago get one more try, alone (the server may read them now)."""
        now = time.monotonic()
        for u, since in list(self._unreadable_at.items()):
            if now - since >= UNREADABLE_RETRY:
                del self._unreadable_at[u]
                self._left.discard(u)
                self._suspects[u] = UNREADABLE_AFTER - 1

    async def _process_on(self, pipe: Pipeline, uids: list[int]) -> None:
        """Batches bounded in count and bytes, so that the server is never idle waiting for us. FETCH_WINDOW
        FETCHes are outstanding at once (the server starts on the next batch while we read this one), a batch's
        spool commit (fsync) runs while the next is fetched, and committed UIDs are flagged, a command per
        MAX_UIDS_PER_COMMAND of them, without waiting for the answer before the next FETCH goes out. For one UID
        every command waits for the one before it.

        No ledger look-up before fetching: the spool's put() checks the ledger key in the same transaction, so a
        message spooled before (crash before the flag, a human marked it unread) costs one re-download and is
        then only flagged. That keeps the common case at zero extra round trips to the spool.
        """
        size_fetches = [self._send_fetch(pipe, group, "(UID RFC822.SIZE)")
                        for group in _chunks(uids, MAX_UIDS_PER_COMMAND)]
        sizes: dict[int, int | None] = {}
        for fut in size_fetches:
            sizes.update({u: s for u, (s, _) in (await self._fetched(pipe, fut, "UID FETCH RFC822.SIZE")).items()})
        batches: list[tuple[list[int], int]] = []  # (UIDs, bytes)
        for u in uids:
            size = sizes.get(u)
            if size is None:
                continue  # expunged meanwhile by another client
            if size > self.cfg.max_message_size:
                await self._oversized(pipe, u, size)
                continue
            if not batches or len(batches[-1][0]) >= self.cfg.batch_size \
                    or batches[-1][1] + size > MAX_BATCH_BYTES:
                batches.append(([], 0))
            batches[-1][0].append(u)
            batches[-1] = (batches[-1][0], batches[-1][1] + size)

        todo = deque(batches)
        fetches: deque[tuple[list[int], int, asyncio.Future[Reply]]] = deque()
        stores: deque[tuple[int, asyncio.Future[list[SpoolOutcome]]]] = deque()
        actions: deque[asyncio.Future[None]] = deque()
        committed: list[tuple[int, str]] = []  # spooled, not yet flagged
        failed: list[SpoolOutcome] = []

        def settle(outcomes: list[SpoolOutcome]) -> None:
            """A commit returned; flag a full group of committed messages without waiting for the answer."""
            nonlocal committed
            self._settle(outcomes, committed, failed)
            if len(committed) >= MAX_UIDS_PER_COMMAND:
                actions.append(asyncio.ensure_future(self._after(pipe, committed)))
                committed = []

        try:
            while fetches or (todo and not self._stopping):
                # Keep FETCH_WINDOW FETCHes outstanding within MAX_BATCH_BYTES (a bigger batch goes alone).
                held = sum(n for _, n, _ in fetches) + sum(n for n, _ in stores)
                while todo and not self._stopping and len(fetches) < FETCH_WINDOW \
                        and (held == 0 or held + todo[0][1] <= MAX_BATCH_BYTES):
                    batch, nbytes = todo.popleft()
                    fetches.append((batch, nbytes, self._send_fetch(pipe, batch, "(UID RFC822.SIZE BODY.PEEK[])")))
                    held += nbytes
                if not fetches:  # nothing fits beside the commits in flight: let the oldest finish
                    settle(await stores.popleft()[1])
                    continue
                batch, nbytes, fut = fetches.popleft()
                stores.append((nbytes, asyncio.ensure_future(self.ledger.store(self._messages(
                    batch, await self._fetched(pipe, fut, "UID FETCH"))))))
                while stores and (len(stores) > STORES_IN_FLIGHT or stores[0][1].done()):
                    settle(await stores.popleft()[1])
                while actions and actions[0].done():
                    actions.popleft().result()  # raises what the action met
            while stores:
                settle(await stores.popleft()[1])
            if committed:
                actions.append(asyncio.ensure_future(self._after(pipe, committed)))
            while actions:
                await actions.popleft()
        finally:
            pending: list[asyncio.Future[Any]] = [*(f for _, f in stores), *actions]
            for f in pending:
                # Failed mid-way: a commit in flight completes on its own (harmless; its messages are flagged on
                # the next pass), an action's command is answered or the connection dropped. Collect outcomes.
                f.add_done_callback(lambda f: f.cancelled() or f.exception())
        if failed:
            # The spool refused a write (disk full, …): those stay unflagged; retry after a backoff.
            raise ImapError(f"{len(failed)} message(s) could not be spooled: {failed[0].error}")

    @staticmethod
    def _send_fetch(pipe: Pipeline, uids: Sequence[int], items: str) -> asyncio.Future[Reply]:
        return pipe.send(f"UID FETCH {uid_set(uids)} {items}", fetch_uids=uids, body="BODY" in items)

    @staticmethod
    async def _fetched(pipe: Pipeline, future: asyncio.Future[Reply], what: str) -> FetchItems:
        """A FETCH's items (if it fails, the pipeline knows which of its UIDs it did not deliver)."""
        return (await pipe.ok(future, what)).items

    def _messages(self, uids: list[int], fetched: FetchItems) -> list[FetchedMessage]:
        assert self.uidvalidity is not None
        uv = self.uidvalidity
        for u in uids:
            self._suspects.pop(u, None)
        name, folder = self.cfg.name, self.cfg.folder
        return [FetchedMessage(imap_key(name, uv, u), body, {"uidvalidity": uv, "uid": u, "folder": folder})
                for u in uids if (body := fetched.get(u, (None, None))[1]) is not None]

    def _settle(self, outcomes: list[SpoolOutcome], committed: list[tuple[int, str]],
                failed: list[SpoolOutcome]) -> None:
        """A batch's commit returned: count it, note what may now leave the "new" view."""
        self._count(outcomes)
        crash_point()
        for o in outcomes:
            if o.committed:
                committed.append((int(o.key.rsplit(":", 1)[1]), o.queue_id or ""))
            else:
                failed.append(o)

    async def _oversized(self, pipe: Pipeline, uid: int, size: int) -> None:
        assert self.uidvalidity is not None
        fut = self._send_fetch(pipe, [uid], "(UID RFC822.SIZE BODY.PEEK[HEADER])")
        head = (await self._fetched(pipe, fut, "UID FETCH HEADER")).get(uid, (None, None))[1] or b""
        outcome = await self.ledger.store_oversized(
            imap_key(self.cfg.name, self.uidvalidity, uid), head, size,
            {"uidvalidity": self.uidvalidity, "uid": uid, "folder": self.cfg.folder})
        if outcome.committed:
            self.stats["oversized"] += int(outcome.created)  # reported once, however often it is seen
            self._left.add(uid)

    async def _unreadable(self, uid: int) -> None:
        """Give up on a UID the server keeps failing to deliver: record it (parked `failed`), leave it in place."""
        assert self.uidvalidity is not None
        failures = self._suspects.pop(uid, 0)
        reason = (f"the server failed {failures} times to return this message (NO or connection dropped during "
                  f"FETCH); it was left in the mailbox")
        outcome = await self.ledger.store_left(
            imap_key(self.cfg.name, self.uidvalidity, uid), b"",
            {"uidvalidity": self.uidvalidity, "uid": uid, "folder": self.cfg.folder}, event="unreadable",
            reason=reason)
        if outcome.committed:
            self.stats["unreadable"] += int(outcome.created)
            self._left.add(uid)
            self._unreadable_at[uid] = time.monotonic()

    async def _after(self, pipe: Pipeline, committed: list[tuple[int, str]]) -> None:
        """Take committed messages out of the "new" view, as configured. Commands that do not depend on each
        other go out together; a COPY is answered before its messages are flagged \\Deleted."""
        uids = [u for u, _ in committed]
        after = self.cfg.after
        caps = self._caps
        target = quoted(after[5:]) if after.startswith("move:") else ""
        for chunk in _chunks(sorted(uids), MAX_UIDS_PER_COMMAND):
            s = uid_set(chunk)
            if after == "seen":
                sent = [(pipe.send(f"UID STORE {s} +FLAGS.SILENT (\\Seen)"), "UID STORE \\Seen")]
            elif target and "MOVE" in caps:
                sent = [(pipe.send(f"UID MOVE {s} {target}"), "UID MOVE")]
            else:
                if target:
                    await pipe.ok(pipe.send(f"UID COPY {s} {target}"), "UID COPY")
                sent = [(pipe.send(f"UID STORE {s} +FLAGS.SILENT (\\Deleted)"), "UID STORE \\Deleted"),
                        # Without UIDPLUS only a plain EXPUNGE exists; it also removes what others marked \Deleted.
                        (pipe.send(f"UID EXPUNGE {s}" if "UIDPLUS" in caps else "EXPUNGE"), "EXPUNGE")]
            for fut, what in sent:
                await pipe.ok(fut, what)
        self.stats["flagged"] += len(uids)
        self.log.info("imap.flagged", action=after, count=len(uids), uids=uid_set(uids),
                      queue_ids=[q for _, q in committed])

    async def _idle(self, client: ImapClient) -> None:
        """IDLE until new mail, `idle_renew`, stop() or a dead connection (which raises)."""
        renew = min(self.cfg.idle_renew, IDLE_RENEW_MAX)
        protocol = client.protocol
        while not protocol.idle_queue.empty():  # stale pushes from the previous IDLE
            protocol.idle_queue.get_nowait()
        # idle_start can hang forever when the server answers BYE (aioimaplib#110): bounded by call().
        idle_task = await client.call(client.idle_start(timeout=renew), "IDLE")
        self.idle_active = True
        try:
            if not protocol.exists_seen:  # nothing arrived between the last search and IDLE
                await self._wait_for_push(client, renew)
        finally:
            self.idle_active = False
        if client.lost.is_set():
            raise ImapConnectionLost(f"connection lost during IDLE: {client.lost_reason}")
        client.idle_done()
        resp = await client.call(idle_task, "IDLE DONE")
        if resp.result != "OK":
            raise ImapError(f"IDLE ended with {resp.result} {response_text(resp)}")

    async def _wait_for_push(self, client: ImapClient, renew: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + renew + 30.0  # aioimaplib pushes STOP at `renew`; this is the watchdog
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            push = asyncio.ensure_future(client.wait_server_push(timeout=remaining))
            stop = asyncio.ensure_future(self._stop_event.wait())
            lost = asyncio.ensure_future(client.lost.wait())
            try:
                done, _ = await asyncio.wait({push, stop, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (push, stop, lost):
                    t.cancel()
            if push not in done or push.cancelled():
                return  # stop() or connection lost: the caller looks at which
            try:
                lines = push.result()
            except TimeoutError:
                return
            if lines == STOP_WAIT_SERVER_PUSH:
                return  # idle_renew reached: re-IDLE
            texts = [bytes(x) if isinstance(x, bytes | bytearray) else str(x).encode() for x in lines]
            if any(t.startswith(b"BYE") for t in texts):
                raise ImapConnectionLost("server said " + texts[0].decode(errors="replace"))
            if any(t.endswith(b"EXISTS") for t in texts):
                return
            # Flag changes and expunges by other clients: nothing new to fetch, keep idling.
