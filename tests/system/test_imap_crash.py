"""kill -9 of the gateway between spool commit and the mailbox action (\\Seen / DELE), then a restart:
every message ends up in the spool exactly once and marked as configured. IMAP and POP3, real Dovecot.

The daemon is `mailgw serve` (its inbound worker finds no Odoo here: entries go `deferred`, which changes
nothing for the intake). MAILGW_TEST_KILL_AFTER_COMMIT=N makes it SIGKILL itself right after its Nth spool
commit of a mailbox batch, before it touches the mailbox: the exact window the ledger has to cover. A second
test kills it from outside at an arbitrary moment.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.dovecot import (
    DovecotServer,
    MailUser,
    dovecot_server_fixture,
    mailbox_config_dict,
    message,
    preload_maildir,
)
from tests.waiting import wait_until_sync

MAILGW = str(Path(sys.executable).parent / "mailgw")


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotServer]:
    yield from dovecot_server_fixture()


_RUNNING: list[RunnerProcess] = []


@pytest.fixture(autouse=True)
def _kill_leftover_daemons() -> Iterator[None]:
    """A failed assertion must not leave a daemon behind (it would keep polling the test mailbox)."""
    yield
    while _RUNNING:
        runner = _RUNNING.pop()
        if runner.proc is not None and runner.proc.poll() is None:
            runner.proc.kill()
            runner.proc.wait(10)


class RunnerProcess:
    def __init__(self, tmp: Path, cfg: dict[str, Any]):
        self.tmp = tmp
        cfg = {**cfg, "logging": {"format": "json", "level": "info"}, "drain_timeout": "5s"}
        self.config = tmp / "config.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.spool = Path(cfg["state_dir"]) / "spool.sqlite3"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        _RUNNING.append(self)

    def start(self, **env: str) -> None:
        self.runs += 1
        log = open(self.tmp / f"runner{self.runs}.log", "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([MAILGW, "serve", "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "MAILGW_TEST_PW": "unused", **env})
        log.close()

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self) -> int:
        """Graceful stop once the current run is ready (a SIGTERM before Python installed its handler — the
        process still importing — would end it by the default action, which is not what is being tested)."""
        assert self.proc is not None
        wait_until_sync(lambda: any(e.get("event") == "daemon.ready" for e in self.log_events(self.runs))
                        or self.proc is None or self.proc.poll() is not None, what="daemon ready")
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def log_events(self, run: int) -> list[dict[str, Any]]:
        out = []
        for line in (self.tmp / f"runner{run}.log").read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def entries(self) -> list[tuple[str, str | None, str, str]]:
        """(queue_id, message_id, dedup_key, state) of every spool entry."""
        if not self.spool.exists():
            return []
        conn = sqlite3.connect(f"file:{self.spool}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute("SELECT queue_id, message_id, dedup_key, state FROM entries").fetchall()
        except sqlite3.OperationalError:  # schema not created yet
            return []
        finally:
            conn.close()


def assert_exactly_once(runner: RunnerProcess, raws: list[bytes]) -> None:
    entries = runner.entries()
    assert len(entries) == len(raws), f"{len(entries)} spool entries for {len(raws)} messages"
    assert len({mid for _, mid, _, _ in entries}) == len(raws)
    assert len({key for _, _, key, _ in entries}) == len(raws)
    conn = sqlite3.connect(f"file:{runner.spool}?mode=ro", uri=True)
    stored = sorted(bytes(r[0]) for r in conn.execute("SELECT raw FROM messages"))
    conn.close()
    assert stored == sorted(raws)


def seen_count(dovecot: DovecotServer, user: MailUser) -> int:
    return sum("\\Seen" in f for f in dovecot.flags(user).values())


def test_imap_kill_9_between_commit_and_seen(dovecot: DovecotServer, tmp_path: Path) -> None:
    user = dovecot.add_user()
    raws = [message(i) for i in range(30)]
    preload_maildir(dovecot, user, raws)
    runner = RunnerProcess(tmp_path, mailbox_config_dict(dovecot, user, tmp_path / "state", batch_size=5))
    runner.start(MAILGW_TEST_KILL_AFTER_COMMIT="2")
    assert runner.wait() == -signal.SIGKILL
    # Died right after its 2nd batch commit, before flagging: at least 10 spooled, some of them not \Seen.
    spooled = len(runner.entries())
    seen_after_crash = seen_count(dovecot, user)
    assert spooled >= 10 and seen_after_crash < spooled

    runner.start()
    wait_until_sync(lambda: seen_count(dovecot, user) == 30, what="all 30 \\Seen after the restart")
    assert runner.terminate() == 0
    assert_exactly_once(runner, raws)
    events = runner.log_events(2)
    redone = [e for e in events if e.get("event") == "imap.refetched"]
    # the committed-but-unflagged ones: fetched again, recognised by their ledger key, flagged, not re-spooled
    assert len(redone) == spooled - seen_after_crash
    assert not [e for e in events if e.get("event") == "imap.duplicate"]


def test_imap_kill_9_at_an_arbitrary_moment(dovecot: DovecotServer, tmp_path: Path) -> None:
    user = dovecot.add_user()
    raws = [message(i, size=3000) for i in range(120)]
    preload_maildir(dovecot, user, raws)
    runner = RunnerProcess(tmp_path, mailbox_config_dict(dovecot, user, tmp_path / "state", batch_size=7,
                                                         after="move:Done"))
    runner.start()
    wait_until_sync(lambda: len(runner.entries()) >= 40, what="some progress")
    runner.kill()
    runner.start()
    wait_until_sync(lambda: len(dovecot.flags(user, "Done")) == 120, what="all moved")
    assert runner.terminate() == 0
    assert dovecot.flags(user) == {}
    assert_exactly_once(runner, raws)


def test_pop3_kill_9_between_commit_and_dele(dovecot: DovecotServer, tmp_path: Path) -> None:
    user = dovecot.add_user()
    raws = [message(i) for i in range(30)]
    preload_maildir(dovecot, user, raws)
    cfg = mailbox_config_dict(dovecot, user, tmp_path / "state", protocol="pop3", name="legacy", poll_interval="0.2s")
    runner = RunnerProcess(tmp_path, cfg)
    runner.start(MAILGW_TEST_KILL_AFTER_COMMIT="1")
    assert runner.wait() == -signal.SIGKILL
    # The first batch (20) is committed; no DELE reached the server, let alone a QUIT.
    assert len(runner.entries()) == 20
    assert dovecot.pop3_count(user) == 30

    runner.start()
    wait_until_sync(lambda: dovecot.pop3_count(user) == 0, what="maildrop emptied")
    assert runner.terminate() == 0
    assert_exactly_once(runner, raws)
    redone = [e for e in runner.log_events(2) if e.get("event") == "pop3.already_spooled"]
    assert len(redone) == 20
