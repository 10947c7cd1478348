"""A private PostgreSQL server for tests and benchmarks: Debian's initdb + postgres binaries, run as an
unprivileged user, in a temporary directory, on a free loopback port; stopped by its PID.

Never touches the machine's own cluster (/var/lib/postgresql, port 5432). As root the server runs as the
`postgres` system user (Debian's package creates it) through `setpriv`, which execs, so the PID we hold is
the postmaster's own. `why_unavailable()` says why it cannot run here (for pytest.skip).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

_BIN_ROOT = Path("/usr/lib/postgresql")


def find_bindir() -> Path | None:
    """The newest installed server's bin directory (Debian layout), or one named by $MAILGW_PG_BINDIR."""
    env = os.environ.get("MAILGW_PG_BINDIR")
    if env:
        return Path(env) if (Path(env) / "initdb").exists() else None
    if not _BIN_ROOT.is_dir():
        return None
    versions = sorted((p for p in _BIN_ROOT.iterdir() if (p / "bin" / "initdb").exists()),
                      key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)] or [0])
    return versions[-1] / "bin" if versions else None


def _run_as() -> str | None:
    """The unprivileged user the server runs as: ourselves, or `postgres` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"


def why_unavailable() -> str | None:
    if find_bindir() is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql; ./run test installs it as root)"
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed (pip install 'mailgw[postgres]')"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is needed to run the test server as an unprivileged user"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """`start()`, then `dsn(database)`; `stop()` / `restart()`; `cleanup()` removes everything.

    `durable=False` (tests) turns fsync off: a test server need not survive power loss, and the gateway still
    waits for each commit as it would with fsync on. Benchmarks use `durable=True`.
    """

    def __init__(self, *, durable: bool = False, base: Path | None = None, settings: dict[str, str] | None = None):
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(why_unavailable() or "no PostgreSQL")
        self.bindir = bindir
        self.user = _run_as()
        self.base = base or Path(tempfile.mkdtemp(prefix="mailgw-pg-"))
        self.data = self.base / "data"
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.durable = durable
        self.settings = settings or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.base / "server.log"
        self._initdb()

    # -- helpers ----------------------------------------------------------------------------------------

    def _cmd(self, *args: str) -> list[str]:
        if self.user is None:
            return list(args)
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", "--", *args]

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            shutil.chown(path, self.user, self.user)

    def _initdb(self) -> None:
        self.base.chmod(0o700)
        self._chown(self.base)
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        self._chown(pwfile)
        # Local socket: trust (admin by the test); TCP: a password, as a real deployment has.
        out = subprocess.run(self._cmd(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                       f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                                       "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"),
                             capture_output=True, cwd=self.base, timeout=120)
        pwfile.unlink()
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stderr.decode(errors='replace')[-2000:]}")

    @property
    def socket_dir(self) -> Path:
        return self.base

    def dsn(self, database: str = "postgres", *, user: str = "postgres", password: str | None = None) -> str:
        return (f"postgresql://{user}:{password or self.password}@127.0.0.1:{self.port}/{database}"
                "?sslmode=disable")

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> PgCluster:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        options = {
            "listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": str(self.base),
            "fsync": "on" if self.durable else "off", "full_page_writes": "on" if self.durable else "off",
            "max_connections": "200", "logging_collector": "off", "log_min_messages": "warning",
            **self.settings,
        }
        args = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for key, value in options.items():
            args += ["-c", f"{key}={value}"]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self._cmd(*args), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     cwd=self.base)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: {self.log_tail()}")
            ready = subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", str(self.base), "-p",
                                    str(self.port)], capture_output=True)
            if ready.returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready after {timeout}s: {self.log_tail()}")
            time.sleep(0.05)

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """SIGINT (fast: disconnect clients, clean shutdown), SIGQUIT (immediate) or SIGKILL, to our PID."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT,
               "kill": signal.SIGKILL}[mode]
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if mode == "kill":
            # The postmaster's children notice it is gone and exit; wait until none holds the data dir.
            pid_file = self.data / "postmaster.pid"
            with contextlib.suppress(OSError):
                pid_file.unlink()
            time.sleep(0.5)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- administration (as the superuser over the local socket) ------------------------------------------

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(self._cmd(str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                       "-h", str(self.base), "-p", str(self.port), "-U", "postgres", "-d", database,
                                       "-c", sql),
                             capture_output=True, timeout=60, cwd=self.base)
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.decode(errors='replace')}")
        return out.stdout.decode().strip()

    def create_database(self, name: str, owner: str = "postgres") -> str:
        """A fresh database; returns its DSN (as `owner`, which must be postgres or have a password set)."""
        self.psql(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        return self.dsn(name)

    def create_role(self, name: str, password: str) -> None:
        self.psql(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")


def cluster_fixture(database: str) -> Iterator[PgCluster]:
    """Body of the PostgreSQL fixtures: skip with the reason when no server can run here; else start one, with
    `database` created, and remove it afterwards."""
    import pytest

    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = PgCluster().start()
    try:
        cluster.create_database(database)
        yield cluster
    finally:
        cluster.cleanup()
