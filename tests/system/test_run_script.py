"""`./run`: one install for `serve` and `test`, and `test` leaving the machine booting as it did."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.system.daemon import REPO

COMPAT = "--config-settings editable_mode=compat"


def fake_venv(root: Path, pip: str = "") -> Path:
    """A venv whose pip and mailgw only write down how they were called (`pip`: more shell for pip)."""
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, body in (("python", "exit 0"), ("pip", f'echo "pip $*" >> {root}/calls\n{pip}'),
                       ("mailgw", f'echo "mailgw $*" >> {root}/calls')):
        script = venv / "bin" / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    return venv


def run(*args: str, venv: Path) -> subprocess.CompletedProcess[str]:
    """./run from a copy of the script beside pyproject.toml (`serve` makes ./var where the script lives)."""
    copy = venv.parent / "checkout"
    if not copy.exists():
        copy.mkdir()
        for name in ("run", "pyproject.toml"):
            shutil.copy2(REPO / name, copy / name)
    env = {**os.environ, "MAILGW_VENV": str(venv)}
    return subprocess.run([str(copy / "run"), *args], capture_output=True, text=True, env=env, timeout=60,
                          check=False)


def test_serve_after_test_installs_nothing_again(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    calls = tmp_path / "calls"
    assert run("setup", venv=venv).returncode == 0  # what ./run test does before pytest
    assert calls.read_text().splitlines() == [f"pip install -q -e .[test] {COMPAT}"]
    assert (venv / ".mailgw-installed").read_text() == "[test]\n"
    assert run("serve", "--foo", venv=venv).returncode == 0
    # Nothing installed again: the test extras contain what serve needs.
    assert calls.read_text().splitlines() == [f"pip install -q -e .[test] {COMPAT}",
                                              "mailgw serve -c config.yaml --foo"]
    assert run("setup", venv=venv).returncode == 0
    assert len(calls.read_text().splitlines()) == 2
    # serve first, then test: test adds its extras once.
    shutil.rmtree(venv)
    calls.unlink()
    venv = fake_venv(tmp_path)
    run("serve", venv=venv)
    run("setup", venv=venv)
    run("serve", venv=venv)
    assert calls.read_text().splitlines() == [f"pip install -q -e . {COMPAT}", "mailgw serve -c config.yaml",
                                              f"pip install -q -e .[test] {COMPAT}", "mailgw serve -c config.yaml"]


def test_an_install_that_refuses_compat_mode_falls_back_to_the_default(tmp_path: Path) -> None:
    """The compat editable mode saves every Python start its import hook; a setuptools without it still
    installs."""
    venv = fake_venv(tmp_path, pip='case "$*" in *editable_mode=compat*) echo refused >&2; exit 1;; esac')
    assert run("setup", venv=venv).returncode == 0
    assert (tmp_path / "calls").read_text().splitlines() == [f"pip install -q -e .[test] {COMPAT}",
                                                             "pip install -q -e .[test]"]
    assert (venv / ".mailgw-installed").read_text() == "[test]\n"


def test_boot_changes_undo_only_what_the_new_packages_enabled(tmp_path: Path) -> None:
    """As if dovecot had just been installed: its boot links are the only ones to undo; postfix's, which were
    there before, are left alone."""
    if shutil.which("dpkg-query") is None or subprocess.run(["dpkg", "-s", "dovecot-core"], capture_output=True,
                                                            check=False).returncode != 0:
        pytest.skip("needs a Debian system with dovecot-core installed (./run test installs it as root)")
    links = subprocess.run(["find", "/etc/systemd/system", "/etc/rc2.d", "-type", "l"], capture_output=True,
                           text=True, check=False).stdout.split()
    if not any("dovecot" in link for link in links):
        pytest.skip("dovecot is not enabled at boot on this machine: nothing to undo in this simulation")
    installed = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Package}\\n"], capture_output=True,
                               text=True, check=True).stdout.splitlines()
    before = sorted(line.split()[1] for line in installed if line.startswith("ii") and "dovecot" not in line)
    (tmp_path / "packages").write_text("".join(f"{p}\n" for p in before))
    all_links = subprocess.run(
        ["bash", "-c", "find /etc/systemd/system /etc/rc0.d /etc/rc1.d /etc/rc2.d /etc/rc3.d /etc/rc4.d "
         "/etc/rc5.d /etc/rc6.d /etc/rcS.d -type l 2>/dev/null | sort"], capture_output=True, text=True,
        check=False).stdout.splitlines()
    (tmp_path / "links").write_text("".join(f"{link}\n" for link in all_links if "dovecot" not in link))
    out = run("boot-changes", str(tmp_path / "packages"), str(tmp_path / "links"), venv=tmp_path / "unused")
    assert out.returncode == 0, out.stderr
    commands = out.stdout.splitlines()
    assert "deb-systemd-helper disable dovecot.service" in commands
    assert all("dovecot" in c for c in commands), commands
