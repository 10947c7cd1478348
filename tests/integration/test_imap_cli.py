"""`mailgw imap test NAME` as an operator runs it, against a real Dovecot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.exitcodes import EX_NOPERM, EX_TEMPFAIL, EX_USAGE
from tests.integration.dovecot import DovecotServer, MailUser, mailbox_config_dict, message

MAILGW = str(Path(sys.executable).parent / "mailgw")


def run(tmp_path: Path, cfg: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([MAILGW, "imap", "test", *args, "-c", str(path)], capture_output=True, text=True,
                          timeout=60)


def both(dovecot: DovecotServer, user: MailUser, tmp_path: Path, **imap: Any) -> dict[str, Any]:
    cfg = mailbox_config_dict(dovecot, user, tmp_path / "state", **imap)
    cfg["pop3"] = mailbox_config_dict(dovecot, user, tmp_path / "state", protocol="pop3", name="legacy")["pop3"]
    return cfg


def test_imap_and_pop3_report(dovecot: DovecotServer, tmp_path: Path) -> None:
    user = dovecot.add_user()
    for i in range(3):
        dovecot.append(user, message(i))
    dovecot.append(user, message(9), flags="\\Seen")
    cfg = both(dovecot, user, tmp_path, after="move:Done")
    res = run(tmp_path, cfg, "support")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "TLSv1.3" in out and "certificate verified" in out and "login: ok" in out
    assert "IDLE" in out and "UIDPLUS" in out
    assert "folder INBOX: 4 messages" in out and "read-write" in out
    assert "new messages (ALL, after: move:Done): 4" in out and "UID MOVE to Done" in out
    assert user.password not in out + res.stderr
    res = run(tmp_path, cfg, "legacy")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "new messages: 4" in res.stdout and "UIDL: yes" in res.stdout
    # nothing was read or flagged
    assert sum("\\Seen" in f for f in dovecot.flags(user).values()) == 1


def test_starttls_and_failures(dovecot: DovecotServer, tmp_path: Path) -> None:
    user = dovecot.add_user()
    res = run(tmp_path, both(dovecot, user, tmp_path, tls="starttls", port=dovecot.imap_port), "support")
    assert res.returncode == 0 and "STARTTLS: TLSv1.3" in res.stdout and "new messages (UNSEEN" in res.stdout, \
        res.stdout
    res = run(tmp_path, both(dovecot, user, tmp_path, ca_file=None), "support")
    assert res.returncode == EX_TEMPFAIL and "certificate verification" in res.stdout, res.stdout
    bad = both(dovecot, user, tmp_path)
    (tmp_path / "state" / "support.password").write_text("wrong\n")
    res = run(tmp_path, bad, "support")
    assert res.returncode == EX_NOPERM and "LOGIN refused" in res.stdout, res.stdout
    res = run(tmp_path, bad, "nosuch")
    assert res.returncode == EX_USAGE and "imap:support" in res.stderr and "pop3:legacy" in res.stderr
