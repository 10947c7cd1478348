"""`mailgw pipe` beside Odoo's own `odoo-mailgate.py`, the script it replaces, in one run.

    .venv/bin/python bench/pipe.py --mailgate PATH/odoo-mailgate.py [--messages 200] [--size 3000]

odoo-mailgate.py is Odoo's (LGPL-3) and is not shipped here: take it from an Odoo source tree
(`addons/mail/static/scripts/odoo-mailgate.py`, e.g. from https://github.com/odoo/odoo) and give its path with
--mailgate or $ODOO_MAILGATE.

Each message is one new process fed on stdin, as an MTA's pipe(8) runs it; the clock stops at its exit status:
  odoo-mailgate.py  `odoo-mailgate.py -d odoo -u 7 -p secret --host 127.0.0.1 --port P`: one XML-RPC
                    `message_process` call to a stand-in Odoo (tests/odoo_standin.py, its own process) that answers
                    at once without parsing
  mailgw up         `mailgw pipe -c CONFIG --sender S --rcpt R` with `mailgw serve` running: the message is handed to
                    the daemon over <state_dir>/pipe.sock and committed by its spool writer (fsync) before exit 0.
                    The daemon's Odoo is unreachable, as in an outage (the mail is spooled deferred), so that its
                    deliveries do not take CPU from the processes being timed: this is the intake's cost
  mailgw down       the same command with the daemon stopped: it loads the config and writes the spool itself
Both scripts run on the same interpreter, set up as `pip install` leaves mailgw: a venv on this venv's base Python
whose site-packages names the repository and this venv's packages as plain paths. (This development venv has mailgw
as an editable install, whose import hook makes every Python start here ~10 ms slower; the row "mailgw up, dev venv"
runs the venv's own `mailgw` to show it.) The sides alternate message by message, so machine noise hits them alike;
the daemon-down phase runs after the daemon is stopped, alternating with odoo-mailgate.py again. Prints the median
and 90th percentile of wall time per message, the largest RSS of one run, and the ratio to odoo-mailgate.py (the
issue asks for mailgw up: at most 60 ms and at most half of odoo-mailgate.py), and each interpreter's bare start-up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
# bench/ holds routing.py and bounce.py: the repository must come first, or they shadow the packages.
sys.path.insert(0, str(REPO))
MAILGW = str(Path(sys.executable).parent / "mailgw")

from bench.odoo_delivery import make_message, start_standin  # noqa: E402 - needs the path above


def run_once(argv: list[str], data: bytes) -> float:
    """Wall seconds from fork to exit status; raises on a non-zero exit."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, input=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:2]} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def max_rss(argv: list[str], data: bytes, runs: int = 5) -> float | None:
    """The largest RSS (MiB) of `runs` runs, measured by GNU time: a child's own rusage would count the pages it
    shared with this (larger) process between fork and exec. None without /usr/bin/time."""
    if not Path("/usr/bin/time").exists():
        return None
    peaks = []
    for _ in range(runs):
        out = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], input=data, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, check=True)
        peaks.append(int(out.stderr.decode().strip().splitlines()[-1]))
    return max(peaks) / 1024


def summary(name: str, walls: list[float], rss: float | None) -> dict[str, Any]:
    walls = sorted(walls)
    return {"name": name, "median": statistics.median(walls), "p90": walls[int(len(walls) * 0.9) - 1], "rss": rss}


def installed_python(tmp: Path) -> tuple[str, str]:
    """(python, mailgw launcher) of a venv that sees mailgw as an installed package would be seen (docstring)."""
    venv = tmp / "py"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "mailgw-bench.pth").write_text(f"{REPO}\n{sysconfig.get_paths()['purelib']}\n")
    launcher = venv / "bin" / "mailgw"
    launcher.write_text(f"#!{python}\nimport sys\nfrom gateway.cli import main\nsys.exit(main())\n")  # as pip's
    launcher.chmod(0o755)
    return python, str(launcher)


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen([MAILGW, "serve", "-c", str(config)], stdout=out, stderr=out)
    deadline = time.monotonic() + 30
    while b"daemon.ready" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"daemon did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mailgate", default=os.environ.get("ODOO_MAILGATE"),
                    help="path of Odoo's odoo-mailgate.py (or $ODOO_MAILGATE)")
    ap.add_argument("--messages", type=int, default=200, help="messages per side and phase")
    ap.add_argument("--size", type=int, default=3000)
    args = ap.parse_args()
    if not args.mailgate or not Path(args.mailgate).is_file():
        ap.error("give Odoo's odoo-mailgate.py with --mailgate PATH or $ODOO_MAILGATE (see the docstring)")

    standin, url = start_standin()
    port = int(url.rpartition(":")[2])
    tmp = Path(tempfile.mkdtemp(prefix="mailgw-bench-pipe-"))
    daemon: subprocess.Popen[bytes] | None = None
    try:
        secret = tmp / "odoo.secret"
        secret.write_text("secret")
        config = tmp / "config.yaml"
        config.write_text(yaml.safe_dump({
            "state_dir": "./var",
            "odoo": [{"name": "main", "url": "http://127.0.0.1:9", "database": "odoo", "login": "mailgw",
                      "password_file": str(secret), "domains": ["example.com"]}],  # nothing listens on port 9
            "logging": {"level": "info", "format": "json"},  # as shipped; the daemon's log goes to a file
        }))
        python, launcher = installed_python(tmp)
        mailgate = [python, args.mailgate, "-d", "odoo", "-u", "7", "-p", "secret", "--host", "127.0.0.1",
                    "--port", str(port)]
        pipe_args = ["pipe", "-c", str(config), "--sender", "sender@example.org", "--rcpt", "sales@example.com"]
        messages = [make_message(i, args.size) for i in range(args.messages)]
        for warm in messages[:5]:  # page cache and .pyc files
            run_once(mailgate, warm)
            run_once([launcher, *pipe_args], warm)
        floor = {name: statistics.median(run_once(argv, b"") for _ in range(20))
                 for name, argv in (("python -c pass", [python, "-c", "pass"]),
                                    ("dev venv python -c pass", [sys.executable, "-c", "pass"]))}

        phases: list[list[dict[str, Any]]] = []
        daemon = start_daemon(config, tmp / "daemon.log")
        for phase in ("up", "down"):
            if phase == "down":
                assert daemon is not None
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(30)
                daemon = None
            sides: dict[str, list[str]] = {"odoo-mailgate.py": mailgate, f"mailgw {phase}": [launcher, *pipe_args]}
            if phase == "up":
                sides["mailgw up, dev venv"] = [MAILGW, *pipe_args]
            samples: dict[str, list[float]] = {name: [] for name in sides}
            for msg in messages:
                for name, argv in sides.items():
                    samples[name].append(run_once(argv, msg))
            phases.append([summary(name, got, max_rss(sides[name], messages[0])) for name, got in samples.items()])

        print(f"{args.messages} messages of {args.size} octets per side and phase, one process per message")
        print(f"{'':<22} {'median ms':>10} {'p90 ms':>8} {'max RSS MiB':>12} {'ratio':>7}")
        for rows in phases:
            for row in rows:
                rss = "n/a" if row["rss"] is None else f"{row['rss']:.1f}"
                print(f"{row['name']:<22} {row['median'] * 1000:>10.1f} {row['p90'] * 1000:>8.1f} {rss:>12} "
                      f"{row['median'] / rows[0]['median']:>6.2f}x")
        for name, seconds in floor.items():
            print(f"{name:<22} {seconds * 1000:>10.1f}   (the interpreter's start-up alone)")
        gate, up = phases[0][0], phases[0][1]
        print(f"mailgw up: {up['median'] * 1000:.1f} ms per message = {up['median'] / gate['median']:.2f}x "
              "odoo-mailgate.py (goal: <= 60 ms and <= 0.5x)")
        return 0
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        assert standin.stdin is not None
        standin.stdin.close()
        standin.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
