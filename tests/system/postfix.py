"""A private Postfix instance in front of `mailgw serve`, configured from the snippets in contrib/postfix (the files
docs/postfix.md shows), for the tests in tests/system/test_postfix_*.py.

Nothing of the machine's Postfix is touched. Postfix reads its configuration from /etc/postfix and starts another
directory only when /etc/postfix/main.cf allows it (alternate_config_directories), so every Postfix command runs in
a private mount namespace (`unshare --mount`) where a temporary directory is bind-mounted over /etc/postfix. The
instance has its own queue and data directories, smtpd on a loopback port, no chroot, and logs to a file through
postlogd (`maillog_file = /dev/stdout` of `postfix start-fg`).

What the instance starts from is a stock Debian Postfix: Debian's main.cf template and the settings its installer
adds, and Debian's master.cf (chroot column turned off for the test). The snippets are used as shipped; the only
words replaced are install locations and the user name (/opt/mailgw/venv/bin/mailgw, /etc/mailgw/config.yaml,
/var/spool/postfix, user mailgw), listed in `PrivatePostfix.substitutions`.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import smtplib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.system.daemon import MAILGW, REPO, DaemonProcess, mailgw_for, seed_directory

CONTRIB = REPO / "contrib" / "postfix"
DEBIAN_MAIN = Path("/usr/share/postfix/main.cf.debian")
DEBIAN_MASTER = Path("/usr/share/postfix/master.cf.dist")
# What Debian's installer (postfix.postinst, "Internet Site") writes into main.cf besides main.cf.debian.
DEBIAN_POSTINST = """\
smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated defer_unauth_destination
relayhost =
mailbox_size_limit = 0
recipient_delimiter = +
"""
MAILGW_USER = "nobody"  # plays the user `mailgw`: unprivileged, not root, not Postfix's mail_owner
# Internet clients connect from here; mynetworks is only 127.0.0.1, so their mail is checked like a stranger's.
CLIENT_ADDRESS = "127.0.0.2"


def skip_reason() -> str | None:
    """Why the real-Postfix tests cannot run here, in words a user can act on; None when they can."""
    if os.geteuid() != 0:
        return "needs root: Postfix's master runs as root, in a private mount namespace (run ./run test as root)"
    for tool in ("postfix", "postmap", "postqueue", "unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (./run test installs postfix and util-linux when run as root)"
    if not DEBIAN_MASTER.exists():
        return f"{DEBIAN_MASTER} is missing: these tests start from Debian's Postfix packaging"
    try:
        pwd.getpwnam("postfix")
        pwd.getpwnam(MAILGW_USER)
    except KeyError as exc:
        return f"user {exc} is missing"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"cannot create a mount namespace here: {probe.stderr.decode(errors='replace').strip()}"
    if mailgw_for(MAILGW_USER) is None:
        return (f"user {MAILGW_USER} cannot run {MAILGW} (nor a launcher on /usr/bin's Python): put the checkout "
                "and its Python where every user can read them")
    return None


def send(port: int, sender: str, rcpts: list[str], mid: str, body: str = "hello") -> None:
    """One message to the instance's smtpd, from an Internet client (CLIENT_ADDRESS)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.ehlo("client.sender.test")
        client.sendmail(sender, rcpts, f"Message-Id: {mid}\r\nSubject: via postfix\r\n\r\n{body}\r\n".encode())


def wait_entries(daemon: DaemonProcess, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """mailgw's spool once it holds `count` entries (or what it holds when the time is up)."""
    deadline = time.monotonic() + timeout
    while len(entries := daemon.queue()) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return entries


def entries_by_mid(daemon: DaemonProcess, count: int) -> dict[str, list[dict[str, Any]]]:
    """`wait_entries`, grouped by Message-Id."""
    by_mid: dict[str, list[dict[str, Any]]] = {}
    for e in wait_entries(daemon, count):
        by_mid.setdefault(e["message_id"], []).append(e)
    return by_mid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostfix:
    def __init__(self, root: Path, config_path: Path):
        self.root = root
        self.etc = root / "etc-postfix"
        self.queue = root / "postfix-queue"
        self.data = root / "postfix-data"
        self.log_path = root / "maillog"
        self.port = free_port()
        self.config_path = config_path  # mailgw's
        self.proc: subprocess.Popen[bytes] | None = None
        # Install locations of the docs -> this test's; the recipes themselves are used as written.
        self.substitutions = {
            "/opt/mailgw/venv/bin/mailgw": mailgw_for(MAILGW_USER) or MAILGW,
            "/etc/mailgw/config.yaml": str(config_path),
            "/var/spool/postfix": str(self.queue),
            "user=mailgw": f"user={MAILGW_USER}",
        }
        self.main: list[str] = []
        self.master: list[str] = []
        self.maps: dict[str, str] = {}

    # -- configuration ------------------------------------------------------------------------------------

    def snippet(self, name: str) -> str:
        text = (CONTRIB / name).read_text()
        for old, new in self.substitutions.items():
            text = text.replace(old, new)
        return text

    def use(self, *names: str) -> None:
        """Add contrib/postfix snippets: *.main.cf to main.cf, *.master.cf to master.cf, *.transport as the map."""
        for name in names:
            text = self.snippet(name)
            if name.endswith(".main.cf"):
                self.main.append(text)
            elif name.endswith(".master.cf"):
                self.master.append(text)
            elif name.endswith(".transport"):
                self.maps["transport"] = text
            else:
                raise ValueError(name)

    def mailgw_listeners(self) -> list[dict[str, Any]]:
        listeners: list[dict[str, Any]] = yaml.safe_load(self.snippet("mailgw.yaml"))["listeners"]
        return listeners

    def make_socket_dir(self) -> None:
        """What mailgw.tmpfiles.conf's line asks systemd-tmpfiles to create, with the test's user for mailgw."""
        [line] = [x for x in self.snippet("mailgw.tmpfiles.conf").splitlines() if x and not x.startswith("#")]
        kind, path, mode, user, group, _age = line.split()
        assert kind == "d"
        os.makedirs(path, exist_ok=True)
        os.chown(path, pwd.getpwnam(MAILGW_USER if user == "mailgw" else user).pw_uid, grp.getgrnam(group).gr_gid)
        os.chmod(path, int(mode, 8))

    def _write_config(self) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        for name in ("dynamicmaps.cf", "postfix-files"):  # Postfix's own metadata (meta_directory)
            if Path("/etc/postfix", name).exists():
                shutil.copy(Path("/etc/postfix", name), self.etc / name)
        for name in ("dynamicmaps.cf.d", "postfix-files.d"):
            (self.etc / name).mkdir(exist_ok=True)
        test_instance = f"""\
# -- this test's instance: its own directories, loopback only, logs through postlogd to the master's stdout
queue_directory = {self.queue}
data_directory = {self.data}
maillog_file = /dev/stdout
myhostname = mx.postfix.test
mydestination = localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
alias_maps =
alias_database =
"""
        main = [DEBIAN_MAIN.read_text(), DEBIAN_POSTINST, test_instance, *self.main]
        (self.etc / "main.cf").write_text("\n".join(main))
        master = []
        for line in DEBIAN_MASTER.read_text().splitlines():
            fields = line.split()
            if line[:1].isalpha() and len(fields) >= 8:
                if fields[1] == "inet":
                    continue  # the test's own smtpd below, on a loopback port
                fields[4] = "n"  # no chroot for the test (docs/postfix.md covers Debian's chroot)
                line = "  ".join(fields)
            master.append(line)
        master.append(f"127.0.0.1:{self.port}  inet  n  -  n  -  -  smtpd")
        (self.etc / "master.cf").write_text("\n".join([*master, *self.master]) + "\n")
        for name, text in self.maps.items():
            (self.etc / name).write_text(text)

    # -- processes ----------------------------------------------------------------------------------------

    def command(self, *args: str) -> list[str]:
        """`args` in a private mount namespace whose /etc/postfix is this instance's."""
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /etc/postfix && exec "$@"', str(self.etc), *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {out.returncode}\n{out.stdout}{out.stderr}\n{self.log_text()}")
        return out

    def start(self) -> None:
        self._write_config()
        self.queue.mkdir(exist_ok=True)
        self.data.mkdir(exist_ok=True)
        os.chown(self.data, pwd.getpwnam("postfix").pw_uid, -1)
        for name in self.maps:
            self.run("postmap", f"/etc/postfix/{name}")
        self.run("postfix", "check")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command("postfix", "start-fg"), stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"postfix exited:\n{self.log_text()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(512).startswith(b"220"):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"postfix did not start:\n{self.log_text()}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.run("postfix", "stop", check=False)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.run("postfix", "abort", check=False)
            self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def queue_entries(self) -> list[dict[str, Any]]:
        """Postfix's queue (postqueue -j): one dict per message still in it."""
        out = self.run("postqueue", "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def deliveries(self) -> list[dict[str, str]]:
        """Delivery attempts from the log: to, relay, status (sent, bounced, deferred), dsn and the text."""
        found = []
        for m in re.finditer(r"postfix/(?:lmtp|pipe)\[\d+\]: \w+: to=<([^>]*)>.*?relay=(\S+?),.*?dsn=([\d.]+), "
                             r"status=(\w+) (.*)", self.log_text()):
            found.append({"to": m.group(1), "relay": m.group(2), "dsn": m.group(3), "status": m.group(4),
                          "text": m.group(5)})
        return found

    def wait_queue_empty(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while (entries := self.queue_entries()) and time.monotonic() < deadline:
            if any(e.get("queue_name") == "deferred" for e in entries):
                break  # nothing retries a deferred message within a test: report it now
            time.sleep(0.2)
        assert not entries, f"still in Postfix's queue: {entries}\n{self.log_text()[-4000:]}"


class PostfixStack:
    """Private Postfix + `mailgw serve` (as the unprivileged user) wired by the contrib snippets. Call `build`,
    then `start`; `close` stops both."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "mailgw"  # mailgw's config directory
        self.home.mkdir()
        self.postfix = PrivatePostfix(root, self.home / "config.yaml")
        self.daemon: DaemonProcess | None = None

    def build(self, *snippets: str, odoo: dict[str, Any] | None = None, seed: bool = True,
              listener: dict[str, Any] | None = None, **extra: Any) -> DaemonProcess:
        self.postfix.use(*snippets)
        state = self.root / "state"
        if seed:
            seed_directory(state)
        state.mkdir(exist_ok=True)
        config: dict[str, Any] = {
            "state_dir": str(state),
            "listeners": [{**x, **(listener or {})} if x["kind"] == "lmtp" else x
                          for x in self.postfix.mailgw_listeners()],
            "odoo": [odoo or {"name": "main", "url": "http://127.0.0.1:9", "database": "odoo",
                              "password_env": "MAILGW_TEST_PW", "domains": ["example.com"]}],
            "logging": {"format": "json"},
            "drain_timeout": "5s",
            **extra,
        }
        self.daemon = DaemonProcess(self.home, config, run_as=MAILGW_USER)
        uid = pwd.getpwnam(MAILGW_USER).pw_uid
        for path in (self.home, state, *self.home.iterdir(), *state.iterdir()):
            os.chown(path, uid, -1)
        return self.daemon

    def start(self, daemon: bool = True) -> None:
        self.postfix.start()
        self.postfix.make_socket_dir()
        if daemon:
            assert self.daemon is not None
            self.daemon.start()

    def close(self) -> None:
        try:
            if self.daemon is not None:
                self.daemon.stop()
        finally:
            self.postfix.stop()
