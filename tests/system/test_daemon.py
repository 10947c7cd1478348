"""`mailgw serve` and `mailgw pipe` as real processes: durability under kill -9, signals, sd_notify, systemd."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.system.daemon import MAILGW, REPO, DaemonProcess, base_config
from tests.waiting import wait_until_sync


def sender_thread(port: int, tag: str, acked: list[str], stop: threading.Event) -> None:
    """Send messages one connection each until stopped or the server dies; remember what got a 250."""
    n = 0
    while not stop.is_set():
        mid = f"<{tag}-{n}@load.test>"
        n += 1
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.sendmail("load@example.org", ["inbox@example.com"],
                                f"Message-Id: {mid}\r\nSubject: load\r\n\r\n{'x' * 2000}\r\n".encode())
            acked.append(mid)  # sendmail returned: the server said 250 after DATA
        except (OSError, smtplib.SMTPException):
            if stop.is_set():
                return
            time.sleep(0.01)


def test_kill9_under_load_loses_no_acknowledged_message(daemon: DaemonProcess) -> None:
    daemon.start()
    acked: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=sender_thread, args=(daemon.smtp_port, f"t{i}", acked, stop))
               for i in range(12)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.02)
    daemon.kill9()  # mid-load: sessions in every phase of the dialogue
    stop.set()
    for t in threads:
        t.join(10)
    acknowledged = list(acked)
    assert len(acknowledged) >= 150
    daemon.start()  # recovery on the same spool
    counts = Counter(e["message_id"] for e in daemon.queue())
    missing = [m for m in acknowledged if counts[m] == 0]
    duplicated = [m for m in acknowledged if counts[m] > 1]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:3]}"
    assert not duplicated
    assert daemon.stop() == 0


def test_pipe_exit_codes_and_durability(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, base_config(tmp_path))  # not started: pipe works without the daemon
    cfg = str(d.config_path)
    msg = b"Message-Id: <pipe-1@x>\r\nSubject: pipe\r\nTo: help@example.com\r\n\r\nbody\r\n"
    ok = d.cli("pipe", "-c", cfg, stdin=msg)
    assert ok.returncode == 0, ok.stderr
    queue_id = ok.stdout.decode().strip()
    [entry] = d.queue()
    assert entry["queue_id"] == queue_id and entry["rcpt_tos"] == ["help@example.com"] and entry["intake"] == "pipe"
    # odoo-mailgate.py's options are accepted (drop-in), envelope given explicitly.
    legacy = d.cli("pipe", "-c", cfg, "-d", "odoo", "-u", "2", "-p", "secret", "--host", "localhost", "--port",
                   "8069", "--sender", "s@example.org", "--rcpt", "sales@example.com", stdin=msg)
    assert legacy.returncode == 0, legacy.stderr
    assert d.cli("pipe", "-c", cfg, "--rcpt", "x@foreign.test", stdin=msg).returncode == 67
    d.write_config({"state_dir": str(tmp_path / "state"), "odoo": "broken"})
    assert d.cli("pipe", "-c", cfg, stdin=msg).returncode == 75  # config problem: the MTA keeps the mail


def test_pipe_killed_mid_write_stores_nothing(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, base_config(tmp_path))
    proc = subprocess.Popen([MAILGW, "pipe", "-c", str(d.config_path), "--rcpt", "a@example.com"],
                            stdin=subprocess.PIPE, env=d.env, cwd=tmp_path)
    assert proc.stdin is not None
    proc.stdin.write(b"Message-Id: <half@x>\r\nSubject: half\r\n\r\n" + b"z" * 100_000)
    proc.stdin.flush()
    time.sleep(0.3)
    proc.kill()
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    # Nothing acknowledged, nothing stored; the spool still works.
    assert all(e["message_id"] != "<half@x>" for e in d.queue()) if (tmp_path / "state").exists() else True
    assert d.cli("pipe", "-c", str(d.config_path), "--rcpt", "a@example.com", stdin=b"Subject: ok\r\n\r\nx\r\n"
                 ).returncode == 0
    assert len(d.queue()) == 1


def test_sighup_with_invalid_config_keeps_running_and_sigterm_drains(daemon: DaemonProcess) -> None:
    daemon.start()
    good = dict(daemon.config)
    daemon.write_config({**good, "listeners": "nonsense"})
    daemon.signal(signal.SIGHUP)
    wait_until_sync(lambda: "daemon.reload_rejected" in daemon.log_text(), "the bad config to be refused", 10)
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=5) as client:  # still serving
        client.sendmail("a@example.org", ["b@example.com"], b"Subject: after hup\r\n\r\nx\r\n")
    daemon.write_config(good)
    daemon.signal(signal.SIGHUP)
    wait_until_sync(lambda: "daemon.reloaded" in daemon.log_text(), "the reload", 10)
    assert daemon.stop() == 0
    assert "daemon.stopped" in daemon.log_text()


def test_sigterm_lets_data_in_progress_finish(daemon: DaemonProcess) -> None:
    daemon.start()
    s = socket.create_connection(("127.0.0.1", daemon.smtp_port), timeout=10)
    f = s.makefile("rb")

    def reply() -> bytes:
        line = f.readline()
        while line[3:4] == b"-":
            line = f.readline()
        return line

    reply()
    for cmd in (b"EHLO c", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.com>", b"DATA"):
        s.sendall(cmd + b"\r\n")
        reply()
    s.sendall(b"Message-Id: <drain@x>\r\nSubject: drain\r\n\r\nfirst half\r\n")
    daemon.signal(signal.SIGTERM)
    time.sleep(0.5)  # the daemon is draining while our DATA is open
    s.sendall(b"second half\r\n.\r\n")
    assert reply().startswith(b"250 2.0.0")
    s.close()
    assert daemon.proc is not None and daemon.proc.wait(20) == 0
    assert any(e["message_id"] == "<drain@x>" for e in daemon.queue())


def test_sd_notify_ready_and_stopping(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(20)
    d = DaemonProcess(tmp_path, base_config(tmp_path), env={"NOTIFY_SOCKET": str(notify_path),
                                                            "WATCHDOG_USEC": "400000"})
    try:
        d.start()
        messages = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("WATCHDOG=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        assert any(m.startswith("READY=1") for m in messages)
        assert any("WATCHDOG=1" in m for m in messages)
        assert d.stop() == 0
        while not any("STOPPING=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
    finally:
        sock.close()
        if d.proc is not None and d.proc.poll() is None:
            d.kill9()


def test_check_config_exit_codes(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, base_config(tmp_path))
    assert d.cli("check-config", "-c", str(d.config_path)).stdout.strip() == b"ok"
    d.env.pop("MAILGW_ODOO_PASSWORD", None)
    unset = d.cli("check-config", "-c", str(REPO / "config.yaml"))  # a warning: the daemon runs without it
    assert unset.returncode == 0 and b"warning: odoo[main].password: environment variable MAILGW_ODOO_PASSWORD " \
        b"is not set: nothing can be delivered" in unset.stderr
    assert d.cli("check-config", "--strict", "-c", str(REPO / "config.yaml")).returncode == 78
    d.env["MAILGW_ODOO_PASSWORD"] = "s3cret-value"
    shipped = d.cli("check-config", "-c", str(REPO / "config.yaml"))
    assert shipped.returncode == 0, shipped.stderr
    assert b"s3cret-value" not in shipped.stdout + shipped.stderr
    d.write_config({"listeners": [{"kind": "smtp", "bind": "x"}], "odoo": [{"name": "a", "url": "http://x",
                    "database": "d", "password": "inline", "domains": ["example.com"]}], "bogus": 1})
    bad = d.cli("check-config", "-c", str(d.config_path))
    assert bad.returncode == 78
    text = bad.stderr.decode()
    assert "listeners[0]" in text and "bogus" in text and "inline secret 'password'" in text
    assert b"inline" not in bad.stdout


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (REPO / "systemd" / "mailgw.service").read_text().replace("/opt/mailgw/venv/bin/mailgw", MAILGW)
    (tmp_path / "mailgw.service").write_text(unit)
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "mailgw.service")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "mailgw.service" not in out.stderr  # no warning about our unit


def test_auto_submitted_refused_at_end_of_data_when_configured(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, base_config(tmp_path, routing={"auto_submitted": "refuse"}))
    try:
        d.start()
        auto = b"From: bot@example.org\r\nTo: inbox@example.com\r\nAuto-Submitted: auto-replied\r\n" \
               b"Subject: Out of office\r\n\r\naway\r\n"
        with pytest.raises(smtplib.SMTPDataError) as exc, smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=10) as c:
            c.sendmail("bot@example.org", ["inbox@example.com"], auto)
        assert exc.value.smtp_code == 550
        with smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=10) as c:  # ordinary mail to the same alias passes
            c.sendmail("human@example.org", ["inbox@example.com"], b"Subject: hi\r\n\r\nhello\r\n")
        assert [e["mail_from"] for e in d.queue()] == ["human@example.org"]
    finally:
        d.stop()


def test_metrics_healthz_and_periodic_dns_check(tmp_path: Path) -> None:
    import json
    import urllib.request

    from tests.integration.dnsserver import DnsTestServer, mail_zone
    from tests.system.daemon import free_port

    zone = mail_zone("example.com", mx=["10 mx.example.com."], spf="v=spf1 +all", extra=["mx A 127.0.0.1"])
    with DnsTestServer(zone) as dns:
        port = free_port()
        d = DaemonProcess(tmp_path, base_config(tmp_path, metrics={"bind": f"127.0.0.1:{port}"},
                                                dns_check={"interval": "1h", "nameservers": [dns.nameserver]}))
        try:
            d.start()
            with smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=10) as c:
                c.sendmail("a@example.org", ["inbox@example.com"], b"Subject: m\r\n\r\nx\r\n")
            deadline = time.monotonic() + 20
            text = ""
            while time.monotonic() < deadline and 'mailgw_dns_check_status{domain="example.com"}' not in text:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                time.sleep(0.1)
            assert 'mailgw_dns_check_status{domain="example.com"} 2' in text  # +all is a failure
            assert 'mailgw_intake_accepted_total{kind="smtp"' in text and "mailgw_spool_entries{" in text
            assert 'mailgw_directory_aliases{instance="main"} 5' in text
            assert 'mailgw_outbound_sessions_total{how="opened"} 0' in text
            health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
            assert health["ok"] is True and health["odoo"]["main"] in ("closed", "open", "half_open")
            assert "dnscheck.summary" in d.log_text()
        finally:
            d.stop()


def test_shipped_config_runs_with_no_secrets_set(tmp_path: Path) -> None:
    """What `./run serve` does on a fresh machine: the shipped config, no environment, no Odoo."""
    import socket as socket_mod

    with socket_mod.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 2525)) == 0:
            pytest.skip("127.0.0.1:2525 (the shipped config's port) is in use on this machine")
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGW_")}
    proc = subprocess.Popen([MAILGW, "serve", "-c", "config.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        out = b""
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        while b"daemon.ready" not in out and time.monotonic() < deadline and proc.poll() is None:
            out += proc.stdout.read() or b""
            time.sleep(0.05)
        assert b"daemon.ready" in out, out.decode(errors="replace")
        assert b"bounce.verp_off" in out  # no secret: VERP off, said once, nothing crashes
        assert out.count(b"config.secret_missing") == 1 and b"MAILGW_ODOO_PASSWORD is not set" in out
        # No alias directory yet (Odoo unreachable): RCPT is deferred with 451, never accepted blind or bounced.
        with smtplib.SMTP("127.0.0.1", 2525, timeout=10) as client:
            client.ehlo("t")
            client.mail("a@example.org")
            assert client.rcpt("someone@example.com")[0] == 451
            assert client.rcpt("x@elsewhere.test")[0] == 550
        assert (tmp_path / "var" / "lmtp.sock").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
