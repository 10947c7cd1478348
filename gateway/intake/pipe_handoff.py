"""`mailgw pipe`'s fast path: hand the message to the running daemon over `<state_dir>/pipe.sock`.

The daemon already has the config loaded and owns the spool writer, so the client needs no config models, no
logging set-up and no spool: Python's own start-up plus one round trip on a unix socket. This module is stdlib
only and imports nothing heavy on purpose (no pydantic, structlog, aiosmtpd): `mailgw pipe` is forked once per
message by an MTA, and what it imports is most of what it costs (bench/pipe.py).

Wire format, version 1, on one unix stream connection:

    daemon -> client  {"mailgw_pipe": 1, "limit": N}\\n     once it has a free slot; N = the largest message
    client -> daemon  {"config": [dev, ino, size, mtime_ns], "sender": S or null, "rcpts": [...], "size": n}\\n
                      then exactly n bytes of message
    daemon -> client  {"exit": CODE, "queue_id": ID}\\n  or  {"exit": CODE, "error": TEXT}\\n
                      or {"fallback": REASON}\\n          (the client stores the message itself)

`config` identifies the config file the client was given; a daemon that loaded another file (or the same file
before an edit) answers "fallback", and so does anything unexpected on either side. A connection that ends
before n bytes arrived stores nothing. Exit 0 comes only with a queue id, after the daemon's spool commit.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, BinaryIO, NamedTuple

SOCKET_NAME = "pipe.sock"  # in the state directory
VERSION = 1
DEFAULT_STATE_DIR = "./var"  # gateway.config.Config.state_dir's default
GREETING_TIMEOUT = 10.0  # the daemon greets once a slot is free; longer than this: store it ourselves
ANSWER_TIMEOUT = 120.0  # after the whole message was sent: the daemon's spool commit
MAX_LINE = 64 * 1024  # header and answer lines


class Fallback(Exception):
    """The daemon cannot take this message (not running, another config, a protocol surprise): store it without
    the daemon. Raised only while nothing can have been committed. `raw` is the message if stdin was read."""

    def __init__(self, reason: str, raw: bytes | None = None):
        super().__init__(reason)
        self.raw = raw


class Answer(NamedTuple):  # not a dataclass: importing dataclasses costs this path 5 ms (inspect)
    exit: int  # the sysexits code `mailgw pipe` returns
    queue_id: str | None = None
    error: str | None = None  # starts with an RFC 3463 status code, which Postfix's pipe(8) puts in its DSN

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"exit": self.exit}
        if self.queue_id is not None:
            body["queue_id"] = self.queue_id
        if self.error is not None:
            body["error"] = self.error
        return json.dumps(body).encode() + b"\n"


def too_big(limit: int) -> Answer:
    return Answer(65, error=f"5.3.4 message too big for system (limit {limit} octets)")  # EX_DATAERR


def config_identity(config_path: str) -> list[int]:
    """What tells two processes they read the same config file, unchanged: device, inode, size, mtime."""
    st = os.stat(config_path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


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
    the file says it in any other way: the caller then loads the config properly (and reports its errors)."""
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


def _readline(sock: socket.socket, buf: bytearray) -> dict[str, Any]:
    """One JSON line from `sock` (raises OSError/ValueError on EOF, timeout or garbage)."""
    while b"\n" not in buf:
        if len(buf) > MAX_LINE:
            raise ValueError("line too long")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def hand_over(config_path: str, sender: str | None, rcpts: list[str], stdin: BinaryIO) -> Answer:
    """Give the message on `stdin` to the daemon; its answer, or Fallback (nothing committed)."""
    path = socket_path(config_path)
    if path is None:
        raise Fallback("state_dir not found by the quick read")
    try:
        identity = config_identity(config_path)
    except OSError as exc:
        raise Fallback(f"config: {exc.strerror}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw: bytes | None = None
    buf = bytearray()
    try:
        sock.settimeout(GREETING_TIMEOUT)
        try:
            sock.connect(path)
            greeting = _readline(sock, buf)
            limit = int(greeting["limit"])
            if greeting.get("mailgw_pipe") != VERSION or limit <= 0:
                raise ValueError(f"unexpected greeting {greeting!r}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise Fallback(f"daemon not reachable at {path}: {exc}") from None
        raw = stdin.read(limit + 1)  # never more than the limit in memory
        if len(raw) > limit:
            return too_big(limit)
        header = {"config": identity, "sender": sender, "rcpts": rcpts, "size": len(raw)}
        try:
            sock.sendall(json.dumps(header).encode() + b"\n")
            sock.sendall(raw)
        except OSError as exc:  # the daemon left before the message was whole: it stored nothing
            raise Fallback(f"daemon went away: {exc}", raw) from None
        sock.settimeout(ANSWER_TIMEOUT)
        try:
            answer = _readline(sock, buf)
        except (OSError, ValueError) as exc:
            # The message was sent whole: it may be committed or not. Let the MTA retry (never lose it).
            return Answer(75, error=f"4.3.0 no answer from the mailgw daemon ({exc}); try again later")
        if "fallback" in answer:
            raise Fallback(f"daemon: {answer['fallback']}", raw)
        return Answer(int(answer["exit"]), answer.get("queue_id"), answer.get("error"))
    except (KeyError, TypeError, ValueError) as exc:  # an answer we cannot read: same as no answer
        return Answer(75, error=f"4.3.0 unreadable answer from the mailgw daemon ({exc}); try again later")
    finally:
        sock.close()
