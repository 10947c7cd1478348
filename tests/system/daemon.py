"""Run `mailgw serve` as a real subprocess for system tests: config in, readiness, signals, kill -9."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MAILGW = str(Path(sys.executable).parent / "mailgw")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TEST_ALIASES = ("inbox", "help", "sales", "a", "b")


def seed_directory(state_dir: Path, aliases: tuple[str, ...] = TEST_ALIASES, domain: str = "example.com") -> None:
    """Write the alias directory cache the daemon loads at start, as if Odoo had been reached before."""
    from gateway.odoo.directory import write_cache
    from routing.directory import Alias, AliasDomain, Directory, InstanceDirectory

    inst = InstanceDirectory(
        instance="main", domains=(AliasDomain(id=1, name=domain),),
        aliases=tuple(Alias(id=i + 1, name=a, domain=domain, model="mail.test") for i, a in enumerate(aliases)),
        server_version="19.0", fetched_at=time.time())
    state_dir.mkdir(parents=True, exist_ok=True)
    write_cache(Directory.build([inst], {domain: "main"}), state_dir / "directory.json")


def base_config(tmp: Path, **extra: Any) -> dict[str, Any]:
    port = free_port()
    cfg: dict[str, Any] = {
        "state_dir": str(tmp / "state"),
        "listeners": [
            {"kind": "smtp", "bind": f"127.0.0.1:{port}", "hostname": "mx.test"},
            {"kind": "lmtp", "bind": f"unix:{tmp / 'state' / 'lmtp.sock'}", "hostname": "mx.test"},
        ],
        "odoo": [{"name": "main", "url": "http://127.0.0.1:9", "database": "odoo", "password_env": "MAILGW_TEST_PW",
                  "domains": ["example.com"]}],
        "logging": {"format": "json"},
        "drain_timeout": "5s",
    }
    cfg.update(extra)
    seed_directory(Path(cfg["state_dir"]))
    return cfg


_RUNNABLE: dict[str, str | None] = {}


def mailgw_for(user: str) -> str | None:
    """A `mailgw` executable `user` can run, or None. The venv's own when that user can reach it; otherwise (the
    interpreter in a private home, e.g. pyenv under /root, or the checkout in a directory only root may enter,
    as `mktemp -d` makes) a copy under /tmp that every user can read: a venv on the system's Python of the same
    version, with this venv's site-packages and mailgw's packages hard-linked in (copied where /tmp is another
    file system; compiled wheels are built per minor version, so they load in either interpreter). Made once per
    user and test session."""
    if user in _RUNNABLE:
        return _RUNNABLE[user]
    import atexit
    import shutil
    import sysconfig
    import tempfile

    def runs(exe: str) -> bool:  # through a shell: a direct exec by setpriv is not what pipe(8) does
        probe = [*as_user(user), "/bin/sh", "-c", 'exec "$0" --version', exe]
        return subprocess.run(probe, capture_output=True).returncode == 0

    def mirror(src: Path, dst: Path) -> None:
        if subprocess.run(["cp", "-al", str(src), str(dst)], capture_output=True).returncode != 0:
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, symlinks=True)

    found: str | None = MAILGW if runs(MAILGW) else None
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if found is None and system.exists():
        shim = Path(tempfile.mkdtemp(prefix="mailgw-test-python-", dir="/tmp"))
        atexit.register(shutil.rmtree, shim, True)
        os.chmod(shim, 0o755)
        subprocess.run([str(system), "-m", "venv", "--without-pip", str(shim / "venv")], check=True)
        site = subprocess.run([str(shim / "venv" / "bin" / "python"), "-c", "import sysconfig; "
                               "print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True)
        mirror(Path(sysconfig.get_paths()["purelib"]), shim / "site")
        for editable in (shim / "site").glob("__editable__*"):  # they point into the checkout: src/ instead
            editable.unlink()
        (shim / "src").mkdir()
        for package in ("gateway", "routing", "bounce", "dns_checks"):
            mirror(REPO / package, shim / "src" / package)
        Path(site.stdout.strip(), "mailgw-test-venv.pth").write_text(
            f"import sys, site; sys.path.insert(0, {str(shim / 'src')!r}); site.addsitedir({str(shim / 'site')!r})\n")
        launcher = shim / "mailgw"
        launcher.write_text(f"#!{shim / 'venv' / 'bin' / 'python'}\nimport sys\nfrom gateway.cli import main\n"
                            "sys.exit(main())\n")
        os.chmod(launcher, 0o755)
        found = str(launcher) if runs(str(launcher)) else None
    _RUNNABLE[user] = found
    return found


def as_user(user: str | None) -> list[str]:
    """Command prefix that runs a command as `user` (its own group, no supplementary groups); [] for None."""
    if user is None:
        return []
    import grp
    import pwd

    group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    return ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", "--"]


class DaemonProcess:
    def __init__(self, tmp: Path, config: dict[str, Any], env: dict[str, str] | None = None,
                 run_as: str | None = None):
        self.tmp = tmp
        self.prefix = as_user(run_as)  # the daemon and `cli` run as this user (None: as the test)
        self.mailgw = MAILGW if run_as is None else (mailgw_for(run_as) or MAILGW)
        self.config = config
        self.config_path = tmp / "config.yaml"
        self.write_config(config)
        self.env = {**os.environ, "MAILGW_TEST_PW": "test-secret", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "daemon.log"
        self._log_offset = 0

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    @property
    def smtp_port(self) -> int:
        for lst in self.config["listeners"]:
            if lst["kind"] == "smtp":
                return int(lst["bind"].rpartition(":")[2])
        raise KeyError("no smtp listener")

    def start(self, timeout: float = 20.0) -> None:
        # Readiness is read from what this start writes, not from an earlier run's lines in the same log.
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([*self.prefix, self.mailgw, "serve", "-c", str(self.config_path)], stdout=log,
                                     stderr=log, env=self.env, cwd=self.tmp)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if self.log_path.exists() and b"daemon.ready" in self.log_path.read_bytes()[self._log_offset:]:
                return
            time.sleep(0.05)
        raise TimeoutError(f"daemon not ready:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def cli(self, *args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*self.prefix, self.mailgw, *args], input=stdin, capture_output=True, env=self.env,
                              cwd=self.tmp, timeout=timeout)

    def queue(self) -> list[dict[str, Any]]:
        out = self.cli("queue", "list", "--json", "--limit", "100000", "-c", str(self.config_path))
        assert out.returncode == 0, out.stderr
        result: list[dict[str, Any]] = json.loads(out.stdout)
        return result
