"""`mailgw pipe` as the MTA runs it: options, exit codes, the hand-over to a running daemon and the path without
it, the size limit with bounded memory, and relative paths from an unrelated directory as an unprivileged user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.system.daemon import MAILGW, DaemonProcess, as_user, base_config, mailgw_for, seed_directory
from tests.waiting import wait_until_sync

MSG = b"Message-Id: <pipe-%d@x>\r\nSubject: pipe\r\nTo: help@example.com\r\n\r\nbody\r\n"


def message(i: int) -> bytes:
    return MSG.replace(b"%d", str(i).encode())



def stored_by_daemon(d: DaemonProcess) -> set[str]:
    """Message-Ids the daemon itself put in the spool (its log), i.e. what came through the hand-over socket."""
    return {e.get("message_id") for e in d.events() if e.get("event") == "spool.put" and e.get("intake") == "pipe"}


@pytest.mark.parametrize("running", [True, False], ids=["daemon-up", "daemon-down"])
def test_envelope_options_and_exit_codes(daemon: DaemonProcess, running: bool) -> None:
    if running:
        daemon.start()
    cfg = str(daemon.config_path)
    # Postfix expands `--rcpt ${recipient}` to one argument per recipient; repeated --rcpt works too.
    one = daemon.cli("pipe", "-c", cfg, "--sender", "s@example.org", "--rcpt", "a@example.com", "b@example.com",
                     stdin=message(1))
    two = daemon.cli("pipe", "-c", cfg, "--sender", "", "--rcpt", "a@example.com", "--rcpt", "b@example.com",
                     "-r", "inbox@example.com", stdin=message(2))
    # odoo-mailgate.py's options (old and new script) are accepted; the envelope then comes from the headers.
    legacy = daemon.cli("pipe", "-c", cfg, "-d", "odoo", "-u", "2", "-p", "secret", "--password-file", "/nonexistent",
                        "--host", "localhost", "--port", "8069", "--proto", "https", "--timeout", "30", "--debug",
                        "--retry-status", stdin=message(3))
    mailer_daemon = daemon.cli("pipe", "-c", cfg, "--sender", "MAILER-DAEMON", "--rcpt", "a@example.com",
                               stdin=message(4))
    for run in (one, two, legacy, mailer_daemon):
        assert run.returncode == 0, run.stderr
    by_mid = {e["message_id"]: e for e in daemon.queue()}
    assert by_mid["<pipe-1@x>"]["rcpt_tos"] == ["a@example.com", "b@example.com"]
    assert by_mid["<pipe-1@x>"]["mail_from"] == "s@example.org"
    assert by_mid["<pipe-2@x>"]["rcpt_tos"] == ["a@example.com", "b@example.com", "inbox@example.com"]
    assert by_mid["<pipe-2@x>"]["mail_from"] == ""
    assert by_mid["<pipe-3@x>"]["rcpt_tos"] == ["help@example.com"]
    assert by_mid["<pipe-4@x>"]["mail_from"] == ""  # pipe(8) without null_sender= says MAILER-DAEMON for <>
    assert one.stdout.decode().strip() == by_mid["<pipe-1@x>"]["queue_id"]
    assert stored_by_daemon(daemon) == ({"<pipe-1@x>", "<pipe-2@x>", "<pipe-3@x>", "<pipe-4@x>"} if running else set())

    # Usage errors are EX_USAGE (Postfix would bounce argparse's 2 as permanent, and 2 is no sysexits code).
    for bad in (["--bogus"], ["--rcpt"], ["--sender"], ["extra-positional"]):
        run = daemon.cli("pipe", "-c", cfg, *bad, stdin=message(9))
        assert run.returncode == 64, (bad, run.stderr)
    foreign = daemon.cli("pipe", "-c", cfg, "--rcpt", "x@foreign.test", stdin=message(10))
    assert foreign.returncode == 67 and foreign.stderr.startswith(b"5.1.1 ")
    too_many = daemon.cli("pipe", "-c", cfg, "--rcpt", *[f"r{i}@example.com" for i in range(101)], stdin=message(11))
    assert too_many.returncode == 64 and b"limit 100" in too_many.stderr
    assert {e["message_id"] for e in daemon.queue()} == {"<pipe-1@x>", "<pipe-2@x>", "<pipe-3@x>", "<pipe-4@x>"}


@pytest.mark.parametrize("running", [True, False], ids=["daemon-up", "daemon-down"])
def test_oversize_refused_with_a_reason_without_reading_it_all(tmp_path: Path, running: bool) -> None:
    config = base_config(tmp_path)
    for lst in config["listeners"]:
        lst["max_message_size"] = "1MiB"
    d = DaemonProcess(tmp_path, config)
    try:
        if running:
            d.start()
        exact = b"Subject: big\r\nTo: help@example.com\r\n\r\n"
        exact += b"x" * (1024 * 1024 - len(exact))
        ok = d.cli("pipe", "-c", str(d.config_path), stdin=exact)
        assert ok.returncode == 0, ok.stderr  # the limit itself is allowed
        offered = 256 * 1024 * 1024
        proc = subprocess.Popen([MAILGW, "pipe", "-c", str(d.config_path), "--rcpt", "help@example.com"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=d.env)
        written = [0]

        def feed() -> None:  # the MTA keeps writing until the command stops reading
            assert proc.stdin is not None
            chunk = b"y" * (1024 * 1024)
            try:
                while written[0] < offered:
                    proc.stdin.write(chunk)
                    written[0] += len(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass

        feeder = threading.Thread(target=feed)
        feeder.start()
        proc.wait(60)
        feeder.join(30)
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        assert proc.returncode == 65, stderr
        # pipe(8) takes the enhanced status code at the start of the output into its bounce.
        assert stderr.startswith(b"5.3.4 ") and b"1048576" in stderr
        # It stopped reading at the limit: what the feeder got rid of is the limit, the one write in flight and
        # the pipe's buffer, not the 256 MiB offered. (The rest of stdin was never read, so never held.)
        assert written[0] <= 3 * 1024 * 1024, written[0]
        assert len(d.queue()) == 1
    finally:
        d.stop()


def test_hand_over_only_to_a_daemon_running_the_same_config(daemon: DaemonProcess, tmp_path: Path) -> None:
    daemon.start()
    copy = tmp_path / "copy.yaml"
    shutil.copy(daemon.config_path, copy)  # same state_dir (absolute), another file: stored without the daemon
    run = daemon.cli("pipe", "-c", str(copy), stdin=message(1))
    assert run.returncode == 0, run.stderr
    daemon.config_path.write_text(daemon.config_path.read_text() + "\n# edited after the daemon read it\n")
    edited = daemon.cli("pipe", "-c", str(daemon.config_path), stdin=message(2))
    assert edited.returncode == 0, edited.stderr
    assert {e["message_id"] for e in daemon.queue()} == {"<pipe-1@x>", "<pipe-2@x>"}
    assert stored_by_daemon(daemon) == set()
    daemon.signal(1)  # SIGHUP: the daemon reads the edited file; the hand-over works again
    daemon_reloaded = lambda: any(e.get("event") == "daemon.reloaded" for e in daemon.events())  # noqa: E731
    wait_until_sync(daemon_reloaded, "the daemon to reload", 20)
    assert daemon.cli("pipe", "-c", str(daemon.config_path), stdin=message(3)).returncode == 0
    assert stored_by_daemon(daemon) == {"<pipe-3@x>"}


def test_broken_config_keeps_the_mail_at_the_mta(daemon: DaemonProcess) -> None:
    daemon.start()
    daemon.write_config({**daemon.config, "odoo": "broken"})  # the running daemon still has the good one
    run = daemon.cli("pipe", "-c", str(daemon.config_path), stdin=message(1))
    assert run.returncode == 75 and run.stderr.startswith(b"4.3.5 ")  # Postfix defers: 4.x, exit 75
    assert b"odoo" in run.stderr
    daemon.write_config(daemon.config)
    assert daemon.queue() == []


def _unprivileged_user() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root to run mailgw as an unprivileged user (setpriv)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    if mailgw_for("nobody") is None:
        pytest.skip(f"user nobody cannot run {MAILGW} (nor a launcher on /usr/bin's Python): put the checkout and "
                    "its Python where every user can read them")
    return "nobody"


@pytest.mark.needs_root
@pytest.mark.parametrize("running", [True, False], ids=["daemon-up", "daemon-down"])
def test_relative_paths_from_an_unrelated_directory_as_an_unprivileged_user(public_tmp: Path, running: bool) -> None:
    """The issue's case: `state_dir: ./var` with pipe run by Postfix from its queue directory as another user."""
    user = _unprivileged_user()
    home = public_tmp / "etc-mailgw"  # where the config file is
    config = base_config(public_tmp)
    config["state_dir"] = "./var"  # relative, as an operator writes it
    config["listeners"] = [{"kind": "lmtp", "bind": "unix:./var/lmtp.sock"}]
    seed_directory(home / "var")
    d = DaemonProcess(home, config, run_as=user)
    subprocess.run(["chown", "-R", user, str(home)], check=True)
    unrelated = public_tmp / "unrelated"  # like Postfix's queue directory: not writable by the user
    unrelated.mkdir(mode=0o755)
    try:
        if running:
            d.start()
        piped = subprocess.run([*as_user(user), d.mailgw, "pipe", "-c", str(d.config_path), "--rcpt",
                                "help@example.com"], input=message(1), capture_output=True, cwd=unrelated, env=d.env)
        assert piped.returncode == 0, piped.stderr
        listed = subprocess.run([*as_user(user), d.mailgw, "queue", "list", "--json", "-c", str(d.config_path)],
                                capture_output=True, cwd="/", env=d.env)
        assert listed.returncode == 0, listed.stderr
        [entry] = json.loads(listed.stdout)
        assert entry["queue_id"] == piped.stdout.decode().strip()
        assert list(unrelated.iterdir()) == []  # no second, orphan spool
        assert (home / "var" / "spool.sqlite3").exists()
        assert stored_by_daemon(d) == ({"<pipe-1@x>"} if running else set())
    finally:
        d.stop()
