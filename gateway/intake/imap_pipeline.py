"""Pipelined IMAP commands for the poller's hot path: UID FETCH of sizes and bodies, and the mailbox action.

aioimaplib runs one command per kind of untagged answer at a time (a second FETCH, or a STORE, waits for the
FETCH before it), and hands every response line through several layers of parsing. Catching up on 2,000 small
messages that way left Dovecot idle between commands and cost ~40 µs of CPU per message. While a `Pipeline` is
installed on the protocol it owns the connection: it writes commands without waiting for earlier ones (the
caller decides how many are outstanding; the commands of one turn of the event loop go out in one write, so one
TLS record and one syscall, and the server reads them together) and reads the answers itself — one `bytes.find`
per line, a literal taken as one slice. Untagged FETCH data is collected by UID and handed to the FETCH command
that asked for the UID when its tagged completion arrives; other untagged lines go to the protocol's
`note_untagged` (EXISTS, BYE), as on aioimaplib's path.

Only commands whose answers are plain (UID FETCH/STORE/COPY/MOVE/EXPUNGE) go through it; IDLE, SEARCH, LOGOUT
stay with aioimaplib. `close()` hands the connection back at a response boundary.

When something goes wrong, `unanswered()` names the UIDs a FETCH asked for and did not get: the ones to suspect.
Which command was being *awaited* says nothing: a server may work on several pipelined FETCHes at once (Dovecot
does) and die on a later one before it sends the tagged OK of an earlier one whose data it already sent.

RFC 3501 §5.5: a server answers pipelined commands in order, and the client must not pipeline commands whose
outcome depends on each other — the poller waits for a COPY before it flags the copied messages \\Deleted.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import GatewayError

MAX_LINE = 1024 * 1024  # a response line (not counting literals) longer than this is a broken server


class ImapError(GatewayError):
    """The server said NO/BAD or something unexpected; the poller reconnects."""


class ImapConnectionLost(ImapError):
    pass


class ImapAuthError(ImapError):
    pass


_LITERAL = re.compile(rb"\{(\d+)\}$")
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_BODY_BEFORE_LITERAL = re.compile(rb"BODY\[(?:HEADER)?\](?:<\d+>)? $")
_EMPTY_BODY = re.compile(rb"BODY\[(?:HEADER)?\](?:<\d+>)? (?:\"\"|NIL)")
# What Dovecot, Gmail and Exchange send for `(UID RFC822.SIZE BODY.PEEK[])`, read in one match.
_COMMON_FETCH = re.compile(rb"\* \d+ FETCH \(UID (\d+) RFC822\.SIZE (\d+) BODY\[\] $")
_FETCH = re.compile(rb"\* \d+ FETCH \(")

FetchItems = dict[int, tuple[int | None, bytes | None]]  # UID -> (RFC822.SIZE, BODY[] or BODY[HEADER] literal)


class ResponseReader:
    """Cuts a byte stream into IMAP responses. A response is (texts, literals): the text before each literal,
    then the text after the last one, so ``len(texts) == len(literals) + 1``. Any split of the stream into reads
    gives the same responses (a property test checks it)."""

    __slots__ = ("_chunks", "_literals", "_max_literal", "_need", "_rest", "_texts")

    def __init__(self, max_literal: int, pending: bytes = b"") -> None:
        self._max_literal = max_literal
        self._rest = pending  # an incomplete line
        self._texts: list[bytes] = []  # of the response in progress
        self._literals: list[bytes] = []
        self._need = 0  # bytes still missing from the literal in progress
        self._chunks: list[bytes] = []  # what has arrived of it

    @property
    def at_boundary(self) -> bool:
        """Between responses (an incomplete line may be buffered; no response is half read)."""
        return not self._texts and not self._need

    @property
    def rest(self) -> bytes:
        return self._rest

    def feed(self, data: bytes) -> list[tuple[list[bytes], list[bytes]]]:
        out: list[tuple[list[bytes], list[bytes]]] = []
        if self._need:
            if len(data) < self._need:
                self._chunks.append(data)
                self._need -= len(data)
                return out
            self._chunks.append(data[: self._need])
            data = data[self._need :]
            self._need = 0
            self._literals.append(b"".join(self._chunks))
            self._chunks = []
        buf = self._rest + data if self._rest else data
        self._rest = b""
        pos, end = 0, len(buf)
        texts, literals = self._texts, self._literals
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                if end - pos > MAX_LINE:
                    raise ImapError(f"response line over {MAX_LINE} bytes")
                self._rest = buf[pos:]
                break
            line = buf[pos:nl]
            pos = nl + 2
            m = _LITERAL.search(line) if line.endswith(b"}") else None
            if m is None:
                texts.append(line)
                out.append((texts, literals))
                texts, literals = [], []
                continue
            size = int(m.group(1))
            if size > self._max_literal:
                raise ImapError(f"the server sent a literal of {size} bytes (limit {self._max_literal})")
            texts.append(line[: m.start()])
            if end - pos >= size:
                literals.append(buf[pos : pos + size])
                pos += size
                continue
            self._chunks = [buf[pos:]]
            self._need = size - (end - pos)
            break
        self._texts, self._literals = texts, literals
        return out


def fetch_item(texts: list[bytes], literals: list[bytes]) -> tuple[int, int | None, bytes | None] | None:
    """(UID, RFC822.SIZE, body) of one untagged FETCH response; None without a UID (an unsolicited flag
    update). The body is the literal after ``BODY[]`` / ``BODY[HEADER]``, b"" for an empty one, else None."""
    if len(literals) == 1 and texts[1] == b")" and (common := _COMMON_FETCH.match(texts[0])):
        return int(common.group(1)), int(common.group(2)), literals[0]
    text = texts[0] if len(texts) == 1 else b" ".join(texts)
    m = _UID.search(text)
    if m is None:
        return None
    size = _SIZE.search(text)
    body: bytes | None = None
    for before, literal in zip(texts, literals, strict=False):
        if _BODY_BEFORE_LITERAL.search(before):
            body = literal
            break
    else:
        if _EMPTY_BODY.search(text):
            body = b""
    return int(m.group(1)), int(size.group(1)) if size else None, body


@dataclass(slots=True)
class Reply:
    """A tagged completion: OK/NO/BAD, its text, and for a FETCH what was fetched of the UIDs it asked for."""

    result: str
    text: str
    items: FetchItems = field(default_factory=dict)


@dataclass(slots=True)
class _Command:
    future: asyncio.Future[Reply]
    uids: list[int] | None  # a FETCH's UIDs
    wants: int = 0  # which item of FetchItems the FETCH is for: 0 its RFC822.SIZE, 1 a body (BODY[]/BODY[HEADER])


class Pipeline:
    """Outstanding commands on one connection, answered in the order they were written.

    `send()` writes a command and returns a future for its `Reply`; `wait()` awaits one, bounded by the
    connection's life and by `timeout` seconds without any data from the server (not overall: a large FETCH on
    a slow link may take long, a silent server may not)."""

    def __init__(self, protocol: Any, *, timeout: float, max_literal: int, pending: bytes = b"") -> None:
        self.protocol = protocol
        self.timeout = timeout
        self.loop: asyncio.AbstractEventLoop = protocol.loop
        self.reader = ResponseReader(max_literal, pending)
        self.last_data = self.loop.time()
        self._commands: dict[str, _Command] = {}
        self._items: FetchItems = {}
        self._wanted: set[int] = set()
        self._unanswered: set[int] = set()  # UIDs of FETCHes that failed (NO/BAD, connection lost) without them
        self._failed: BaseException | None = None
        self._closing = False
        self._out: list[bytes] = []  # commands of this loop turn, written together by `_flush`

    # -- the caller's side ---------------------------------------------------------------------------------

    def send(self, command: str, *, fetch_uids: Iterable[int] | None = None, body: bool = False
             ) -> asyncio.Future[Reply]:
        """Write `command` (without tag) now; the future resolves with its tagged completion. A FETCH names its
        UIDs (`fetch_uids`) and whether it asks for a body (else for RFC822.SIZE)."""
        future: asyncio.Future[Reply] = self.loop.create_future()
        if self._failed is not None:
            future.set_exception(self._failed)
            return future
        tag = self.protocol.new_tag()
        uids = list(fetch_uids) if fetch_uids is not None else None
        if uids is not None:
            self._wanted.update(uids)
        if not self._commands:
            self.last_data = self.loop.time()  # the silence clock starts with the first outstanding command
        self._commands[tag] = _Command(future, uids, 1 if body else 0)
        self._out.append(f"{tag} {command}\r\n".encode())
        if len(self._out) == 1:
            self.loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._failed is None:
            self.protocol.transport.write(b"".join(out))

    async def wait(self, future: asyncio.Future[Reply], what: str) -> Reply:
        while True:
            done, _ = await asyncio.wait({future}, timeout=self.timeout)
            if done:
                return future.result()
            silent = self.loop.time() - self.last_data
            if silent >= self.timeout:
                error = ImapConnectionLost(f"no data from the server for {silent:.0f}s during {what} (watchdog)")
                self.fail(error)
                raise error

    async def ok(self, future: asyncio.Future[Reply], what: str) -> Reply:
        reply = await self.wait(future, what)
        if reply.result != "OK":
            raise ImapError(f"{what}: {reply.result} {reply.text}")
        return reply

    def unanswered(self) -> set[int]:
        """UIDs that FETCHes which failed (NO/BAD, or outstanding when the connection failed) asked for and did
        not get. A UID whose data arrived is not among them: it was readable, whatever happened next."""
        return set(self._unanswered)

    def _missing(self, cmd: _Command) -> None:
        if cmd.uids is not None:
            self._unanswered.update(u for u in cmd.uids
                                    if (got := self._items.get(u)) is None or got[cmd.wants] is None)

    def fail(self, error: BaseException) -> None:
        """The connection is unusable (lost, timed out, protocol error): every outstanding command fails."""
        if self._failed is None:
            self._failed = error
        commands, self._commands = self._commands, {}
        for cmd in commands.values():
            self._missing(cmd)
            if not cmd.future.done():
                cmd.future.set_exception(error)
                # Nobody may be waiting for this one (its waiter failed first): don't warn "never retrieved".
                cmd.future.exception()

    def close(self) -> None:
        """Hand the connection back to aioimaplib once every command is answered and no response is half read."""
        self._closing = True
        self._maybe_hand_back()

    # -- the protocol's side -------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.last_data = self.loop.time()
        if self._failed is not None:
            return
        try:
            responses = self.reader.feed(data)
            for texts, literals in responses:
                self._dispatch(texts, literals)
        except ImapError as exc:
            self.fail(exc)
            self.protocol.transport.close()
            return
        self._maybe_hand_back()

    def _dispatch(self, texts: list[bytes], literals: list[bytes]) -> None:
        head = texts[0]
        if head[:2] == b"* ":
            if _FETCH.match(head):
                item = fetch_item(texts, literals)
                if item is not None and item[0] in self._wanted:
                    uid, size, body = item
                    old = self._items.get(uid)
                    # Another FETCH response for the UID (an unsolicited flag update) adds to what came, never
                    # erases it.
                    self._items[uid] = (size, body) if old is None else (
                        old[0] if size is None else size, old[1] if body is None else body)
            else:
                self.protocol.note_untagged(head)
            return
        if head[:1] == b"+":
            raise ImapError("the server asked for a continuation nothing here sent")
        tag, _, rest = head.partition(b" ")
        cmd = self._commands.pop(tag.decode(errors="replace"), None)
        if cmd is None:
            raise ImapError(f"tagged response for no command of ours: {head[:80]!r}")
        result, _, text = rest.partition(b" ")
        items: FetchItems = {}
        if result.upper() != b"OK":
            self._missing(cmd)
        if cmd.uids is not None:
            for u in cmd.uids:
                self._wanted.discard(u)
                got = self._items.pop(u, None)
                if got is not None:
                    items[u] = got
        if not cmd.future.done():
            cmd.future.set_result(Reply(result.decode(errors="replace").upper(), text.decode(errors="replace"),
                                        items))

    def _maybe_hand_back(self) -> None:
        if self._closing and not self._commands and self.reader.at_boundary:
            self.protocol.end_pipeline(self.reader.rest)

