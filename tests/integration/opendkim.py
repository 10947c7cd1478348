"""OpenDKIM as a DKIM signer for tests: keys from `opendkim-genkey`, signatures from OpenDKIM's milter.

Debian's `opendkim` package is the milter; `miltertest` (package miltertest) speaks the milter protocol to it
as an MTA would, so no MTA is needed: each `sign()` runs a small Lua script that hands over the envelope,
header fields and body, and prints the DKIM-Signature the milter asks to insert. (`opendkim-testmsg` can
sign too, but only rsa-sha1, which RFC 8301 forbids.) The milter runs on a unix socket in a temporary
directory, in the foreground, and is stopped by PID.

    signer = OpenDkimSigner(tmp_path, [("origin.test", "odk")])
    with signer:
        zone_txt = signer.txt("origin.test", "odk")            # the TXT value opendkim-genkey wrote
        signed = signer.sign([("From", "a@origin.test"), ("Subject", "hi")], b"hello\\r\\n")
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

OPENDKIM = shutil.which("opendkim") or shutil.which("opendkim", path="/usr/sbin:/sbin")
GENKEY = shutil.which("opendkim-genkey") or shutil.which("opendkim-genkey", path="/usr/sbin:/sbin")
MILTERTEST = shutil.which("miltertest") or shutil.which("miltertest", path="/usr/sbin:/sbin")


def missing() -> str | None:
    """Why OpenDKIM signing cannot run here (a reason for pytest.skip), or None."""
    for tool, pkg in ((OPENDKIM, "opendkim"), (GENKEY, "opendkim-tools"), (MILTERTEST, "miltertest")):
        if tool is None:
            return f"Debian package {pkg} is not installed (./run test installs it as root)"
    return None


def _lua(text: str | bytes) -> str:
    """A Lua string literal holding `text` byte for byte (long brackets would turn CRLF into LF)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}" for b in data) + '"'


class OpenDkimSigner:
    def __init__(self, workdir: Path, keys: Sequence[tuple[str, str]]):
        self.dir = workdir
        self.keys = list(keys)
        self.socket = workdir / "milter.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OpenDkimSigner:
        assert OPENDKIM and GENKEY
        keytable, signingtable = [], []
        for domain, selector in self.keys:
            kdir = self.dir / domain
            kdir.mkdir(parents=True, exist_ok=True)
            subprocess.run([GENKEY, "-b", "2048", "-d", domain, "-s", selector, "-D", str(kdir)], check=True)
            keytable.append(f"{selector}.{domain} {domain}:{selector}:{kdir / (selector + '.private')}")
            signingtable.append(f"*@{domain} {selector}.{domain}")
        (self.dir / "KeyTable").write_text("\n".join(keytable) + "\n")
        (self.dir / "SigningTable").write_text("\n".join(signingtable) + "\n")
        conf = self.dir / "opendkim.conf"
        conf.write_text(f"""Mode s
KeyTable file:{self.dir}/KeyTable
SigningTable refile:{self.dir}/SigningTable
Socket local:{self.socket}
Background no
Canonicalization relaxed/simple
SignatureAlgorithm rsa-sha256
Syslog no
RequireSafeKeys no
UserID {_user()}
""")
        self.proc = subprocess.Popen([OPENDKIM, "-f", "-x", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr and self.proc.poll() is not None else ""
                self.stop()
                raise RuntimeError(f"opendkim did not start: {err}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> OpenDkimSigner:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def txt(self, domain: str, selector: str) -> str:
        """The key record's TXT value, from the zone stub opendkim-genkey wrote."""
        stub = (self.dir / domain / f"{selector}.txt").read_text()
        return "".join(re.findall(r'"([^"]*)"', stub))

    def sign(self, headers: Sequence[tuple[str, str]], body: bytes, *, mail_from: str = "sender@origin.test",
             rcpt: str = "rcpt@example.com") -> bytes:
        """The message (CRLF) with OpenDKIM's DKIM-Signature on top."""
        assert MILTERTEST
        lines = [f"conn = mt.connect({_lua('local:' + str(self.socket))}, 20, 0.1)",
                 'if conn == nil then error("cannot connect to opendkim") end',
                 # OpenDKIM signs for clients in InternalHosts (127.0.0.1 by default).
                 'mt.conninfo(conn, "localhost", "127.0.0.1")',
                 f"mt.mailfrom(conn, {_lua(mail_from)})", f"mt.rcptto(conn, {_lua(rcpt)})"]
        lines += [f"mt.header(conn, {_lua(n)}, {_lua(v)})" for n, v in headers]
        lines += ["mt.eoh(conn)", f"mt.bodystring(conn, {_lua(body)})", "mt.eom(conn)",
                  'sig = mt.getheader(conn, "DKIM-Signature", 0)',
                  'if sig == nil then error("opendkim added no DKIM-Signature") end',
                  "io.write(sig)", "mt.disconnect(conn)"]
        script = self.dir / "sign.lua"
        script.write_text("\n".join(lines) + "\n")
        out = subprocess.run([MILTERTEST, "-s", str(script)], capture_output=True, timeout=30)
        if out.returncode != 0 or not out.stdout:
            raise RuntimeError(f"miltertest failed ({out.returncode}): {out.stderr.decode(errors='replace')}")
        value = out.stdout.decode().replace("\r\n", "\n").replace("\n", "\r\n")
        head = "".join(f"{n}: {v}\r\n" for n, v in headers)
        return f"DKIM-Signature: {value}\r\n{head}\r\n".encode() + body


def _user() -> str:
    import getpass

    return getpass.getuser()



SIGNER_KEYS = (("origin.test", "odk"), ("example.com", "odk"))


def signer_or_none(workdir: Path) -> Iterator[tuple[OpenDkimSigner | None, dict[str, dict[str, str]]]]:
    """For a fixture: (a running signer for SIGNER_KEYS, its keys as extra zone data {domain: {selector: txt}}),
    or (None, {}) where OpenDKIM is not installed (the tests that need it then skip with `missing()`)."""
    if missing():
        yield None, {}
        return
    with OpenDkimSigner(workdir, SIGNER_KEYS) as signer:
        yield signer, {d: {s: signer.txt(d, s)} for d, s in SIGNER_KEYS}
