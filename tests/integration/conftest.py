"""Fixtures for integration tests. Each area adds its own block; keep each block small."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.dovecot import DovecotServer, ensure_vmail_user, why_unavailable


# -- Dovecot (IMAP/POP3 intakes): one server per session, a fresh mailbox user per test -----------------
@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    ensure_vmail_user()
    server = DovecotServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()
