"""One `mailgw serve` per state directory: two real daemons on one config; `pipe` and the read-only commands
beside a running daemon, from another working directory."""

from __future__ import annotations

import json
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.exitcodes import EX_TEMPFAIL
from tests.system.daemon import MAILGW, DaemonProcess, base_config


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    config = base_config(tmp_path)
    # LMTP first: without the lock a second daemon replaced this socket before failing on the SMTP port, and
    # deleted it on its way out, leaving the first one running deaf.
    config["listeners"].reverse()
    d = DaemonProcess(tmp_path, config)
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.kill9()


def lhlo(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"LHLO t\r\nQUIT\r\n")
        return f.readline()


def test_a_second_serve_on_the_same_state_dir_refuses_and_touches_nothing(daemon: DaemonProcess,
                                                                          tmp_path: Path) -> None:
    daemon.start()
    assert daemon.proc is not None
    sock = tmp_path / "state" / "lmtp.sock"
    assert lhlo(sock).startswith(b"250")
    # The same config, from another directory: refused at once with a message naming the running daemon.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    second = subprocess.run([MAILGW, "serve", "-c", str(daemon.config_path)], capture_output=True,
                            env=daemon.env, cwd=elsewhere, timeout=30)
    assert second.returncode == EX_TEMPFAIL, second.stderr.decode(errors="replace")
    err = second.stderr.decode()
    assert "daemon.already_running" in err and f"another mailgw serve (PID {daemon.proc.pid})" in err
    assert str(tmp_path / "state") in err and "daemon.ready" not in err
    # The first one is untouched: its LMTP socket is still there and answers, SMTP too.
    assert sock.exists() and lhlo(sock).startswith(b"250")
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        client.sendmail("a@example.org", ["help@example.com"], b"Message-Id: <smtp@x>\r\n\r\nx\r\n")
    # pipe and the read-only commands work beside it (from another working directory).
    cfg = str(daemon.config_path)

    def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([MAILGW, *args], input=stdin, capture_output=True, env=daemon.env, cwd=elsewhere,
                              timeout=60)

    piped = cli("pipe", "-c", cfg, "--rcpt", "help@example.com", stdin=b"Message-Id: <pipe@x>\r\n\r\nx\r\n")
    assert piped.returncode == 0, piped.stderr
    listed = cli("queue", "list", "--json", "-c", cfg)
    assert listed.returncode == 0, listed.stderr
    assert {"<smtp@x>", "<pipe@x>"} <= {e["message_id"] for e in json.loads(listed.stdout)}
    for args in (("queue", "show", piped.stdout.decode().strip()), ("check-config",), ("directory", "show")):
        done = cli(*args, "-c", cfg)
        assert done.returncode == 0, (args, done.stderr)
    assert daemon.stop() == 0


def test_the_lock_goes_with_the_process_even_after_kill9(daemon: DaemonProcess) -> None:
    daemon.start()
    daemon.kill9()
    daemon.start()  # no stale lock: the kernel dropped it with the process
    assert daemon.stop() == 0
    daemon.start()
    assert daemon.stop() == 0
