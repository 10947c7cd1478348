"""What the benchmarks share: loopback ports, Postfix's smtp-sink, a private PostgreSQL server and its spool
schemas, message bodies of a given size, the log sink.

A benchmark puts the repository first on sys.path before it imports this (bench/ holds routing.py and bounce.py,
which would shadow the packages of the same names)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - the log sink for the whole run
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


def start_sink(port: int) -> subprocess.Popen[bytes]:
    """Postfix's smtp-sink on 127.0.0.1:`port` (accepts and discards; the reference the ratios are taken to)."""
    return subprocess.Popen([SMTP_SINK, "-u", "nobody" if os.getuid() == 0 else os.environ.get("USER", "nobody"),
                             f"127.0.0.1:{port}", "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def padded(head: bytes, line: bytes, size: int) -> bytes:
    """A message of about `size` bytes: the header section, then `line` repeated (at least once)."""
    return head + line * max(1, (size - len(head)) // len(line))


def start_postgres() -> Any:
    """A private PostgreSQL server (tests/pgcluster.py) with fsync on and a database "bench", or None when it
    cannot run here."""
    from tests.pgcluster import PgCluster, why_unavailable

    reason = why_unavailable()
    if reason:
        print(f"PostgreSQL runs skipped: {reason}", file=sys.stderr)
        return None
    cluster = PgCluster(durable=True).start()
    cluster.create_database("bench")
    return cluster


def pg_spool(cluster: Any, workdir: Path, schema: str) -> dict[str, str]:
    """The spool section for a fresh schema on the bench's server, so that a measurement starts from an empty
    queue (the DSN goes to a file in `workdir`: it is a secret)."""
    secret = workdir / "spool.dsn"
    secret.write_text(cluster.dsn("bench"))
    return {"backend": "postgres", "dsn_file": str(secret), "schema": schema}
