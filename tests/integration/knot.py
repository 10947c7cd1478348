"""Knot DNS (Debian's knotd) on loopback for tests: a real authoritative server, in the foreground, own dirs.

    with knot_server(zones, tmp_dir) as (host, port): ...     # zones: {"example.test": "<zone text>"}
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from dns_checks import DnsClient

KNOTD = shutil.which("knotd") or (shutil.which("knotd", path="/usr/sbin:/sbin"))
MISSING = "knotd not installed (Debian package knot)"


def free_port() -> int:
    """A port free for both UDP and TCP right now (knotd binds it a moment later)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise OSError("no free port")


def by_origin(zone_texts: Iterable[str]) -> dict[str, str]:
    """{"name": text} for zone texts that start with ``$ORIGIN name.`` (as dnsserver.mail_zone writes them)."""
    out = {}
    for text in zone_texts:
        m = re.search(r"^\$ORIGIN\s+(\S+?)\.?\s*$", text, re.M)
        if m is None:
            raise ValueError("zone text without $ORIGIN")
        out[m.group(1)] = text
    return out


@contextlib.contextmanager
def knot_server(zones: Mapping[str, str], workdir: Path) -> Iterator[tuple[str, int]]:
    assert KNOTD is not None, MISSING
    for sub in ("run", "db", "zones"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    for name, text in zones.items():
        (workdir / "zones" / f"{name}.zone").write_text(text)
    port = free_port()
    conf = workdir / "knot.conf"
    conf.write_text(f"""
server:
    rundir: {workdir}/run
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: {workdir}/db
control:
    listen: {workdir}/run/knot.sock
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: {workdir}/zones
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: on
zone:
""" + "".join(f"  - domain: {name}\n" for name in zones))
    proc = subprocess.Popen([KNOTD, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(port, proc, next(iter(zones)))
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(port: int, proc: subprocess.Popen[bytes], zone: str) -> None:
    client = DnsClient.create([("127.0.0.1", port)], lifetime=0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"knotd exited with {proc.returncode}: {err}")
        ans = asyncio.run(client.session().query(zone, "SOA"))
        if ans.is_ok:
            return
        time.sleep(0.1)
    raise RuntimeError("knotd did not answer within 10 s")
