"""Fixtures for integration tests. Each area adds its own block; keep each block small."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.dovecot import DovecotServer, dovecot_server_fixture


# -- Dovecot (IMAP/POP3 intakes): one server per session, a fresh mailbox user per test -----------------
@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    yield from dovecot_server_fixture()
