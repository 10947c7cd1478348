"""Fixtures for integration tests. Each area adds its own block; keep each block small."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.auth_zone import Keys, make_keys
from tests.integration.dovecot import DovecotServer, dovecot_server_fixture
from tests.integration.opendkim import OpenDkimSigner, signer_or_none

ZoneData = dict[str, dict[str, str]]


# -- Dovecot (IMAP/POP3 intakes): one server per session, a fresh mailbox user per test -----------------
@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    yield from dovecot_server_fixture()


# -- Sender authentication: dkimpy keys and an OpenDKIM signer (None where not installed), per test module -----
@pytest.fixture(scope="module")
def keys() -> Keys:
    return make_keys()


@pytest.fixture(scope="module")
def opendkim_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OpenDkimSigner | None, ZoneData]]:
    yield from signer_or_none(tmp_path_factory.mktemp("opendkim"))


@pytest.fixture(scope="module")
def signer(opendkim_key: tuple[OpenDkimSigner | None, ZoneData]) -> OpenDkimSigner | None:
    return opendkim_key[0]
