"""One `mailgw serve` per state directory: an exclusive flock on `<state_dir>/mailgw.lock`.

Two daemons on one spool would each recover (and so release) the other's claimed entries, poll the same
mailboxes, and the second would replace the first's LMTP socket and delete it on exit, leaving the first
running deaf. The lock is taken before anything else (spool, sockets) and held for the life of the process;
the kernel drops it when the process ends, however it ends (kill -9 included), so there is never a stale lock
to clean up. The file is never deleted: unlinking a lock file lets a third process lock a new file while the
second still holds the old one.

Only `serve` takes it. `mailgw pipe` and the other commands share the spool with a running daemon (SQLite's
own locking arbitrates their writes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from gateway.errors import GatewayError

LOCK_NAME = "mailgw.lock"


class StateDirLocked(GatewayError):
    """Another process holds the state directory."""


class StateLock:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock, or raise StateDirLocked naming the holder. Writes our PID into the file for the next one."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _pid_in(fd)
            os.close(fd)
            who = f"PID {holder}" if holder else "another process"
            raise StateDirLocked(
                f"another mailgw serve ({who}) is running on the state directory {self.path.parent} (it holds "
                f"{self.path}); two daemons must not share a spool: stop that one first, or give this one its "
                "own state_dir") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the last descriptor drops the flock


def _pid_in(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).split()[0])
    return None
