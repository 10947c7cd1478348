"""`mailgw pipe`'s fast path: hand the message to the running daemon over `<state_dir>/pipe.sock`.

The daemon already has the config loaded and owns the spool writer, so the client needs no config models, no
logging set-up and no spool: Python's own start-up plus one round trip on a unix socket. `mailgw pipe` is forked
once per message by an MTA and what it imports is most of what it costs (bench/pipe.py), so this module imports
only `os` and the C socket module (`socket` itself would add selectors and enum), and the wire format is plain
text lines (json would add json and re): a few milliseconds at every start.

Wire format, version 1, on one unix stream connection; lines end with LF, text is UTF-8 (surrogateescape):

    daemon -> client  "mailgw-pipe 1 LIMIT"           once it has a free slot; LIMIT: the largest message
    client -> daemon  "config DEV INO SIZE MTIME_NS"  the config file it was given (see below)
                      "size N"                        then "sender ADDR" (absent: not given), "rcpt ADDR"
                      ...                             once per recipient, an empty line, and N octets of message
    daemon -> client  "ok QUEUE_ID"  |  "exit CODE TEXT"  |  "fallback REASON" (the client stores it itself)

A daemon that loaded another config file (or this one before an edit) answers "fallback", and so does anything
unexpected on either side. A connection that ends before N octets arrived stores nothing. "ok" comes only after
the daemon's spool commit returned.
"""

from __future__ import annotations

import _socket  # the C module: see above
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time, see above)
if TYPE_CHECKING:
    from typing import BinaryIO

SOCKET_NAME = "pipe.sock"  # in the state directory
VERSION = 1
DEFAULT_STATE_DIR = "./var"  # gateway.config.Config.state_dir's default
GREETING_TIMEOUT = 10.0  # the daemon greets once a slot is free; longer than this: store it ourselves
ANSWER_TIMEOUT = 120.0  # after the whole message was sent: the daemon's spool commit
MAX_LINE = 64 * 1024  # greeting, header and answer


class Fallback(Exception):
    """The daemon cannot take this message (not running, another config, a protocol surprise): store it without
    the daemon. Raised only while nothing can have been committed. `raw` is the message if stdin was read."""

    def __init__(self, reason: str, raw: bytes | None = None):
        super().__init__(reason)
        self.raw = raw


class Answer:
    """How one message went: the sysexits code `mailgw pipe` returns, the queue id once stored, or the error, which
    starts with an RFC 3463 status code (Postfix's pipe(8) puts it in its DSN). A plain class: importing dataclasses
    or typing would cost this path more than everything else it does."""

    __slots__ = ("error", "exit", "queue_id")

    def __init__(self, exit: int, queue_id: str | None = None, error: str | None = None):
        self.exit, self.queue_id, self.error = exit, queue_id, error

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Answer) and (self.exit, self.queue_id, self.error) == (
            other.exit, other.queue_id, other.error)

    def __repr__(self) -> str:
        return f"Answer({self.exit!r}, {self.queue_id!r}, {self.error!r})"

    def line(self) -> bytes:
        """The daemon's answer line for this outcome."""
        text = f"ok {self.queue_id}" if self.exit == 0 else f"exit {self.exit} {self.error or ''}"
        return encode(text.replace("\n", " ")) + b"\n"


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def too_big(limit: int) -> Answer:
    return Answer(65, error=f"5.3.4 message too big for system (limit {limit} octets)")  # EX_DATAERR


def config_identity(config_path: str) -> list[int]:
    """What tells two processes they read the same config file, unchanged: device, inode, size, mtime."""
    st = os.stat(config_path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def request_head(identity: list[int], sender: str | None, rcpts: list[str], size: int) -> bytes | None:
    """The client's header block, or None when a value cannot go on a line (the slow path takes the message)."""
    lines = ["config " + " ".join(map(str, identity)), f"size {size}"]
    if sender is not None:
        lines.append(f"sender {sender}")
    lines += [f"rcpt {r}" for r in rcpts]
    if any("\n" in x or "\r" in x for x in lines):
        return None
    return encode("\n".join(lines)) + b"\n\n"


def parse_head(block: bytes) -> tuple[list[int], int, str | None, list[str]]:
    """The daemon's reading of `request_head` (the empty line included): (identity, size, sender, recipients).
    Raises ValueError on anything else."""
    identity: list[int] = []
    size = -1
    sender: str | None = None
    rcpts: list[str] = []
    for line in decode(block).split("\n"):
        key, _, value = line.partition(" ")
        if key == "config":
            identity = [int(x) for x in value.split()]
        elif key == "size":
            size = int(value)
        elif key == "sender":
            sender = value
        elif key == "rcpt":
            rcpts.append(value)
        elif line:
            raise ValueError(f"unknown header line {line[:40]!r}")
    if len(identity) != 4 or size < 0:
        raise ValueError("incomplete header")
    return identity, size, sender, rcpts


def _scalar(text: str) -> str | None:
    """A plain or simply quoted YAML scalar with an optional comment, or None for anything else."""
    text = text.strip()
    if text[:1] in ("'", '"'):
        end = text.find(text[0], 1)
        rest = text[end + 1:].strip() if end > 0 else "?"
        inner = text[1:end]
        if end < 0 or (rest and not rest.startswith("#")) or "\\" in inner or (text[0] == "'" and "''" in text):
            return None
        return inner
    value = text.split(" #", 1)[0].strip()
    if not value or value[0] in "&*!|>[{@`%,?:-" or "#" in value or ": " in value:
        return None
    return value


def socket_path(config_path: str) -> str | None:
    """`<state_dir>/pipe.sock` from a minimal read of the config: the top-level `state_dir:` line as a plain or
    quoted scalar, relative to the config's directory (as gateway.config resolves it), or the default. None when
    the file says it in any other way: the caller then loads the config properly (and reports its errors). A wrong
    guess costs only speed: the daemon hands the message back unless it runs this very config file."""
    try:
        with open(config_path, "rb") as f:
            text = f.read(1 << 20).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    found: list[str] = []
    for line in text.splitlines():
        if line.startswith("state_dir"):
            key, colon, rest = line.partition(":")
            value = _scalar(rest) if colon and key.rstrip() == "state_dir" else None
            if value is None:
                return None
            found.append(value)
        elif "state_dir" in line and not line.lstrip().startswith("#"):
            return None  # a flow mapping, a quoted key, a nested key of the same name: not ours to guess
    if len(found) > 1 or text.lstrip().startswith(("{", "%")):
        return None
    state_dir = found[0] if found else DEFAULT_STATE_DIR
    base = os.path.dirname(os.path.abspath(config_path))
    return os.path.join(base, state_dir, SOCKET_NAME)


def _readline(sock: _socket.socket, buf: bytearray) -> str:
    """One line from `sock`, without its LF (OSError or ValueError on EOF, timeout or an endless line)."""
    while b"\n" not in buf:
        if len(buf) > MAX_LINE:
            raise ValueError("line too long")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return decode(line)


def hand_over(config_path: str, sender: str | None, rcpts: list[str], stdin: BinaryIO) -> Answer:
    """Give the message on `stdin` to the daemon; its answer, or Fallback (nothing committed)."""
    path = socket_path(config_path)
    if path is None:
        raise Fallback("state_dir not found by the quick read")
    try:
        identity = config_identity(config_path)
    except OSError as exc:
        raise Fallback(f"config: {exc.strerror}") from None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    buf = bytearray()
    try:
        sock.settimeout(GREETING_TIMEOUT)
        try:
            sock.connect(path)
            name, version, limit_text = _readline(sock, buf).split(" ")
            limit = int(limit_text)
            if name != "mailgw-pipe" or version != str(VERSION) or limit <= 0:
                raise ValueError("unexpected greeting")
        except (OSError, ValueError) as exc:
            raise Fallback(f"daemon not reachable at {path}: {exc}") from None
        raw = stdin.read(limit + 1)  # never more than the limit in memory
        if len(raw) > limit:
            return too_big(limit)
        head = request_head(identity, sender, rcpts, len(raw))
        if head is None:
            raise Fallback("a line break in the envelope", raw)
        try:
            sock.sendall(head)
            sock.sendall(raw)
        except OSError as exc:  # the daemon left before the message was whole: it stored nothing
            raise Fallback(f"daemon went away: {exc}", raw) from None
        sock.settimeout(ANSWER_TIMEOUT)
        try:
            kind, _, rest = _readline(sock, buf).partition(" ")
            if kind == "fallback":
                raise Fallback(f"daemon: {rest}", raw)
            if kind == "ok" and rest:
                return Answer(0, queue_id=rest)
            code, _, text = rest.partition(" ")
            if kind != "exit" or not code.isdigit() or code == "0":
                raise ValueError(f"unexpected answer {kind!r}")
            return Answer(int(code), error=text)
        except (OSError, ValueError) as exc:
            # The message was sent whole: it may be committed or not. Let the MTA retry (never lose it).
            return Answer(75, error=f"4.3.0 no usable answer from the mailgw daemon ({exc}); try again later")
    finally:
        sock.close()
