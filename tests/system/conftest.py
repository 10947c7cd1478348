"""Fixtures for system tests (the daemon and its peers as processes)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


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
