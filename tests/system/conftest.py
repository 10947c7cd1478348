"""Fixtures for system tests (the daemon and its peers as processes)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.system.daemon import DaemonProcess, base_config

if TYPE_CHECKING:
    from tests.system.postfix import PostfixStack


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """`mailgw serve` with tests/system/daemon.py's base config, not started yet; killed if a test leaves it running."""
    d = DaemonProcess(tmp_path, base_config(tmp_path))
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.kill9()


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A temporary directory other users can reach (unprivileged mailgw, Postfix's daemons): pytest's tmp_path is
    under a directory only its owner may enter."""
    path = Path(tempfile.mkdtemp(prefix="mailgw-test-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def stack(public_tmp: Path) -> Iterator[PostfixStack]:
    """A private Postfix and `mailgw serve` wired by contrib/postfix (tests/system/postfix.py), or a skip that says
    what is missing."""
    from tests.system.postfix import PostfixStack, skip_reason

    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    built = PostfixStack(public_tmp)
    try:
        yield built
    finally:
        built.close()
