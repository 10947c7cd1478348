"""`mailgw pipe`'s message into the spool: the envelope rules both paths share, and the daemon's end of the
hand-over socket (wire format: gateway/intake/pipe_handoff.py).

Two ways in, one set of rules (`pipe_envelope`, `store_piped`):
- the daemon runs: `PipeListener` takes the message on `<state_dir>/pipe.sock` and stores it with the daemon's
  spool writer (group commit, the worker kicked at once);
- it does not: `mailgw pipe` opens the spool itself (gateway/commands/pipe.py).
Either way the answer is sent only after the spool commit returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.admission import domain_of
from gateway.config import Config, ListenerConfig
from gateway.exitcodes import EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_USAGE
from gateway.headers import envelope_from_headers, extract_message_id
from gateway.intake.pipe_handoff import MAX_LINE, SOCKET_NAME, VERSION, Answer, parse_head, too_big
from gateway.logs import get_logger
from gateway.spool import Direction, Envelope, Spool, State

if TYPE_CHECKING:  # not at run time: the daemon-down path of `mailgw pipe` imports this module, aiosmtpd need not
    from gateway.intake.smtp import Hold, HoldCheck

log = get_logger("mailgw.intake")

_SLOTS = 32  # messages read and stored at once; more clients wait for their greeting
_READ_TIMEOUT = 60.0  # a client that stops sending mid-message is dropped (nothing stored)
# pipe(8) passes the null sender as MAILER-DAEMON unless the master.cf entry says null_sender= (docs/postfix.md).
_NULL_SENDERS = ("", "<>", "mailer-daemon")


def pipe_limits(config: Config) -> tuple[int, int]:
    """(largest message, most recipients) for piped mail: what the inbound listeners accept."""
    inbound = [x for x in config.listeners if x.kind in ("smtp", "lmtp")]
    fields = ListenerConfig.model_fields
    return (max((x.max_message_size for x in inbound), default=int(fields["max_message_size"].default)),
            max((x.max_recipients for x in inbound), default=int(fields["max_recipients"].default)))


def pipe_envelope(config: Config, sender: str | None, rcpts: list[str], raw: bytes) -> tuple[str, list[str]] | Answer:
    """(sender, recipients in our domains), or the refusal. The MTA's envelope (--sender/--rcpt) wins; what it leaves
    out comes from the headers (Return-Path; Delivered-To, X-Original-To, To, Cc, Resent-*)."""
    ours = config.domain_owner
    header_sender, header_rcpts, _ = envelope_from_headers(raw, ours.__contains__)
    if sender is None:
        mail_from = header_sender if not rcpts else ""
    else:
        mail_from = sender.strip().strip("<>")
        if mail_from.lower() in _NULL_SENDERS:
            mail_from = ""
    wanted = [r.strip().strip("<>") for r in rcpts] or header_rcpts
    _, max_rcpts = pipe_limits(config)
    if len(wanted) > max_rcpts:
        return Answer(EX_USAGE, error=f"5.5.3 too many recipients ({len(wanted)}, limit {max_rcpts}): set the "
                      "transport's _destination_recipient_limit below it")
    accepted = [r for r in wanted if domain_of(r) in ours]
    if not accepted:
        return Answer(EX_NOUSER, error="5.1.1 no recipient in a domain this gateway serves")
    return mail_from, accepted


async def store_piped(config: Config, spool: Spool, sender: str | None, rcpts: list[str], raw: bytes, *,
                      hostname: str, hold_check: HoldCheck | None = None) -> Answer:
    """Store one piped message durably; the answer for `mailgw pipe` (exit 0 only after the commit)."""
    limit, _ = pipe_limits(config)
    if len(raw) > limit:
        return too_big(limit)
    if not raw.strip():
        return Answer(65, error="5.6.0 empty message")  # EX_DATAERR
    envelope = pipe_envelope(config, sender, rcpts, raw)
    if isinstance(envelope, Answer):
        return envelope
    mail_from, accepted = envelope
    env = Envelope(mail_from=mail_from, rcpt_tos=tuple(accepted), intake="pipe", peer="stdin", received_at=time.time())
    hold: Hold | None = hold_check(mail_from, env.rcpt_tos) if hold_check is not None else None
    try:
        queue_id, _ = await spool.put(
            env, raw, message_id=extract_message_id(raw), message_id_domain=hostname,
            state=State.DEFERRED if hold else None, next_attempt_at=hold.until if hold else None,
            last_error=hold.reason if hold else None)
    except Exception as exc:  # not committed: the MTA keeps the mail and retries
        log.error("intake.spool_failed", intake="pipe", error=str(exc))
        return Answer(EX_TEMPFAIL, error=f"4.3.0 not stored, try again later: {exc}")
    if hold is not None:
        hold.spooled(queue_id)
    return Answer(EX_OK, queue_id=queue_id)


class PipeListener:
    """The daemon's end of `mailgw pipe`'s hand-over: `<state_dir>/pipe.sock`, mode 0660 (the MTA's pipe runs as
    the gateway's user or group, the same ones that may write the spool directly)."""

    def __init__(self, config: Config, spool: Spool, *, hostname: str, identity: Callable[[], list[int] | None],
                 on_stored: Callable[[Direction], None] | None = None, hold_check: HoldCheck | None = None):
        self.config = config
        self.spool = spool
        self.hostname = hostname
        self.identity = identity
        self.on_stored = on_stored
        self.hold_check = hold_check
        self.path = Path(config.state_dir) / SOCKET_NAME
        self.server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(_SLOTS)
        self._busy: set[asyncio.Task[Any]] = set()
        self.accepted = 0

    @property
    def address(self) -> str:
        return f"unix:{self.path}"

    async def start(self) -> None:
        if self.path.exists():
            self.path.unlink()  # a stale socket from a previous run (the state dir is ours)
        self.server = await asyncio.start_unix_server(self._session, path=str(self.path), limit=MAX_LINE)
        os.chmod(self.path, 0o660)
        log.info("intake.listening", kind="pipe", address=self.address)

    async def drain(self, grace: float) -> None:
        """Stop accepting; let messages being stored finish (they are answered), up to `grace` seconds."""
        if self.server is not None:
            self.server.close()
        if self._busy:
            await asyncio.wait(set(self._busy), timeout=grace)
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        try:
            async with self._slots:
                if task is not None:
                    self._busy.add(task)
                limit, _ = pipe_limits(self.config)
                writer.write(f"mailgw-pipe {VERSION} {limit}\n".encode())
                answer = await self._receive(reader, limit)
                writer.write(answer if isinstance(answer, bytes) else answer.line())
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
            # The client left or sent what we cannot read: nothing was stored, it exits non-zero or falls back.
            log.warning("intake.pipe_dropped", error=repr(exc))
        finally:
            if task is not None:
                self._busy.discard(task)
            writer.close()

    async def _receive(self, reader: asyncio.StreamReader, limit: int) -> Answer | bytes:
        identity, size, sender, rcpts = parse_head(await asyncio.wait_for(reader.readuntil(b"\n\n"), _READ_TIMEOUT))
        if identity != self.identity():
            # The client was given another config file, or this one changed since the daemon read it.
            return b"fallback the daemon runs another config\n"
        if size > limit:
            return too_big(limit)
        raw = await asyncio.wait_for(reader.readexactly(size), _READ_TIMEOUT)
        answer = await store_piped(self.config, self.spool, sender, rcpts, raw, hostname=self.hostname,
                                   hold_check=self.hold_check)
        if answer.exit == EX_OK:
            self.accepted += 1
            if self.on_stored is not None:
                self.on_stored(Direction.INBOUND)
        return answer
