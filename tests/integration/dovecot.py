"""A real Dovecot (IMAP + POP3, plain/STARTTLS and implicit TLS) on free 127.0.0.1 ports, for tests and bench.

`DovecotServer(base).start()` writes a private config (own base_dir, so several instances and the system's own
Dovecot never collide) and TLS files from trustme. Authentication is a static passdb (one password, any user
name), so `add_user()` needs no reload and one server per test session serves a fresh mailbox to every test;
`DovecotServer(oauth2_introspection_url=URL)` also offers AUTH=XOAUTH2 through Dovecot's oauth2 passdb, which
checks each token at URL (tests/integration/oauth2_idp.py is such a server).
`stop()` kills by PID and waits for the exit: a restart before the old master is gone fails with "already running".
Needs root (Dovecot's master starts as root and runs the mail processes as an unprivileged user: the system's
`nobody`, so the tests add no user to the machine) and the Debian packages dovecot-imapd and dovecot-pop3d;
`why_unavailable()` says why not, for skip messages.
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import poplib
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"

CONF = """\
# mailgw test Dovecot: dovecot -F -c {base}/dovecot.conf
protocols = imap pop3
listen = 127.0.0.1
base_dir = {base}/run
state_dir = {base}/state
instance_name = mailgw-{tag}
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
ssl = yes
ssl_cert = <{base}/tls/server.pem
ssl_key = <{base}/tls/server.key
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login{oauth2_mechanisms}
mail_location = maildir:{base}/mail/%u/Maildir
mail_uid = {mail_user}
mail_gid = {mail_group}
first_valid_uid = 1
pop3_uidl_format = %08Xu%08Xv
namespace inbox {{
  inbox = yes
  separator = /
}}
{oauth2_passdb}passdb {{
  # Any user name logs in with this one password: every test gets a fresh, empty mailbox by picking a new name.
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_group} home={base}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s}
    ssl = yes
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


def why_unavailable() -> str | None:
    """None when a test Dovecot can run here, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "Dovecot tests need root (Dovecot's master starts as root; run ./run test as root)"
    if not Path(DOVECOT).exists():
        return "dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)"
    if not Path("/usr/lib/dovecot/pop3").exists():
        return "dovecot-pop3d is not installed"
    try:
        import trustme  # noqa: F401
    except ImportError:
        return "trustme is not installed"
    return None


# The user Dovecot's mail processes run as: one every Debian system has (base-passwd), so nothing is added.
MAIL_USER = "nobody"
MAIL_GROUP = grp.getgrgid(pwd.getpwnam(MAIL_USER).pw_gid).gr_name


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _descendants(pid: int) -> list[int]:
    """PIDs of every process below `pid` (children of children …), from /proc."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces: the ppid is the 2nd field after ')'
        parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out: list[int] = []
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


@dataclass(frozen=True)
class MailUser:
    address: str
    password: str


class DovecotServer:
    def __init__(self, base: Path | None = None, *, oauth2_introspection_url: str | None = None):
        """`oauth2_introspection_url`: also offer AUTH=XOAUTH2, checking tokens there (RFC 7662, POST)."""
        self.oauth2_introspection_url = oauth2_introspection_url
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="mailgw-dovecot-"))
        self.base = base
        # Dovecot's mail processes run as MAIL_USER: every directory above the mail store must be traversable.
        self.base.chmod(0o755)
        self.tag = secrets.token_hex(4)
        self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = free_ports(4)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca_file = self.base / "tls" / "ca.pem"
        self.password = secrets.token_hex(8)
        self._write_files()

    @property
    def conf(self) -> Path:
        return self.base / "dovecot.conf"

    def _write_files(self) -> None:
        import trustme

        for sub in ("run", "state", "tls"):
            (self.base / sub).mkdir(exist_ok=True)
        mail = self.base / "mail"
        mail.mkdir(exist_ok=True)
        shutil.chown(mail, MAIL_USER, MAIL_GROUP)
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert.private_key_pem.write_to_path(str(self.base / "tls" / "server.key"))
        chain = b"".join(p.bytes() for p in cert.cert_chain_pems)
        (self.base / "tls" / "server.pem").write_bytes(chain)
        oauth2_passdb = oauth2_mechanisms = ""
        if self.oauth2_introspection_url:
            (self.base / "dovecot-oauth2.conf.ext").write_text(
                f"introspection_mode = post\nintrospection_url = {self.oauth2_introspection_url}\n"
                "username_attribute = username\nactive_attribute = active\nactive_value = true\n")
            oauth2_mechanisms = " xoauth2 oauthbearer"
            oauth2_passdb = (f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                             f"  args = {self.base}/dovecot-oauth2.conf.ext\n}}\n")
        self.conf.write_text(CONF.format(base=self.base, tag=self.tag, password=self.password, imap=self.imap_port,
                                         mail_user=MAIL_USER, mail_group=MAIL_GROUP,
                                         imaps=self.imaps_port, pop3=self.pop3_port, pop3s=self.pop3s_port,
                                         oauth2_passdb=oauth2_passdb, oauth2_mechanisms=oauth2_mechanisms))

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None, "already started"
        log = open(self.base / "dovecot.stderr", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        for port in (self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"dovecot exited with {self.proc.returncode}: {self.log_tail()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"dovecot did not listen on {port}: {self.log_tail()}") from None
                    time.sleep(0.02)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop like `systemctl stop` does (it signals the whole cgroup): the master and every process it forked.

        Stopping only the master leaves the imap/pop3 session processes serving their clients for another ~10 s.
        """
        proc, self.proc = self.proc, None
        if proc is None:
            return
        children = _descendants(proc.pid)
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        # The master is gone; its children (imap, pop3, login) exit once they notice. Wait for the run dir's
        # master.pid to be released so a restart does not say "already running".
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        pid_file = self.base / "run" / "master.pid"
        deadline = time.monotonic() + timeout
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, n: int = 20) -> str:
        out = []
        for name in ("dovecot.stderr", "dovecot.log"):
            p = self.base / name
            if p.exists():
                out += p.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(out)

    # -- users and mail ---------------------------------------------------------------------------------

    def add_user(self, local: str | None = None, domain: str = "example.test") -> MailUser:
        return MailUser(f"{local or 'u' + secrets.token_hex(4)}@{domain}", self.password)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    @contextlib.contextmanager
    def imap(self, user: MailUser, folder: str | None = "INBOX"):  # type: ignore[no-untyped-def]
        """A logged-in stdlib imaplib client over implicit TLS (for test set-up and checks)."""
        conn = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=self.ssl_context(), timeout=10)
        try:
            conn.login(user.address, user.password)
            if folder:
                typ, data = conn.select(f'"{folder}"')
                assert typ == "OK", data
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def append(self, user: MailUser, raw: bytes, folder: str = "INBOX", flags: str = "") -> None:
        with self.imap(user, folder=None) as conn:
            typ, data = conn.append(f'"{folder}"', f"({flags})" if flags else None, None, raw)
            assert typ == "OK", data

    def flags(self, user: MailUser, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags of every message in the folder."""
        out: dict[int, set[str]] = {}
        with self.imap(user, folder) as conn:
            typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS)")
            assert typ == "OK", data
            for item in data:
                if not item:
                    continue
                text = item.decode() if isinstance(item, bytes) else item[0].decode()
                import re

                m = re.search(r"UID (\d+)", text)
                f = re.search(r"FLAGS \(([^)]*)\)", text)
                if m:
                    out[int(m.group(1))] = set(f.group(1).split()) if f else set()
        return out

    def uidvalidity(self, user: MailUser, folder: str = "INBOX") -> int:
        with self.imap(user, folder=None) as conn:
            typ, data = conn.status(f'"{folder}"', "(UIDVALIDITY)")
            assert typ == "OK", data
            import re

            m = re.search(rb"UIDVALIDITY (\d+)", data[0] or b"")
            assert m, data
            return int(m.group(1))

    def set_uidvalidity(self, user: MailUser, value: int, folder: str = "INBOX") -> None:
        """What a server migration does: same messages, same UIDs, a new UIDVALIDITY."""
        subprocess.run([DOVEADM, "-c", str(self.conf), "mailbox", "update", "-u", user.address,
                        "--uid-validity", str(value), folder], check=True, capture_output=True)

    def pop3_count(self, user: MailUser) -> int:
        conn = poplib.POP3_SSL("127.0.0.1", self.pop3s_port, context=self.ssl_context(), timeout=10)
        try:
            conn.user(user.address)
            conn.pass_(user.password)
            return int(conn.stat()[0])
        finally:
            conn.quit()


def message(n: int, *, to: str = "support@example.test", size: int = 0, message_id: str | None = None,
            extra_headers: str = "") -> bytes:
    """A plain test message; `size` pads the body to about that many bytes."""
    mid = message_id if message_id is not None else f"<m{n}.{secrets.token_hex(6)}@sender.example>"
    head = (f"Return-Path: <sender{n}@sender.example>\r\nFrom: Sender {n} <sender{n}@sender.example>\r\n"
            f"To: {to}\r\nSubject: test message {n}\r\n")
    if mid:
        head += f"Message-ID: {mid}\r\n"
    head += extra_headers + "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\n"
    body = f"body of message {n}\r\n"
    if size > len(head) + len(body):
        line = ("x" * 76) + "\r\n"
        body += line * ((size - len(head) - len(body)) // len(line))
    return head.encode() + body.encode()


def preload_maildir(server: DovecotServer, user: MailUser, raws: list[bytes]) -> None:
    """Write messages straight into the user's Maildir/new (fast bulk load; Dovecot indexes them at SELECT)."""
    root = server.base / "mail" / user.address / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    stamp = int(time.time())
    for i, raw in enumerate(raws):
        (root / "new" / f"{stamp}.M{i}P{os.getpid()}.mailgw,S={len(raw)}").write_bytes(raw)
    for dirpath, _dirs, files in os.walk(server.base / "mail" / user.address):
        shutil.chown(dirpath, MAIL_USER, MAIL_GROUP)
        for f in files:
            shutil.chown(os.path.join(dirpath, f), MAIL_USER, MAIL_GROUP)


def dovecot_server_fixture() -> Iterator[DovecotServer]:
    """Body of the `dovecot` fixtures (tests/integration/conftest.py, system tests): skip, start, clean up."""
    import pytest

    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    server = DovecotServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def mailbox_config_dict(server: DovecotServer, user: MailUser, state_dir: Path, *, protocol: str = "imap",
                        name: str = "support", **overrides: object) -> dict[str, object]:
    """A mailgw config (as a YAML-able dict) with one mailbox on this server over implicit TLS."""
    pw = state_dir / f"{name}.password"
    state_dir.mkdir(parents=True, exist_ok=True)
    pw.write_text(user.password + "\n")
    port = server.imaps_port if protocol == "imap" else server.pop3s_port
    box: dict[str, object] = {"name": name, "host": "127.0.0.1", "port": port, "tls": "implicit",
                              "ca_file": str(server.ca_file), "user": user.address, "password_file": str(pw),
                              "instance": "main", "timeout": "10s"}
    box.update(overrides)
    return {
        "state_dir": str(state_dir),
        "odoo": [{"name": "main", "url": "http://127.0.0.1:9", "database": "odoo", "password_env": "MAILGW_TEST_PW",
                  "domains": ["example.test"]}],
        protocol if protocol == "imap" else "pop3": [box],
    }
