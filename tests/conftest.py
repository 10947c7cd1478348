"""Shared test set-up. Area fixtures live in their own modules (tests/integration/*.py) and are imported here
only when every test needs them. Keep this file small."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.odoo_standin import OdooStandin
    from tests.pgcluster import PgCluster

REPO = Path(__file__).resolve().parents[1]
# Optional test data that the repository does not ship (licence, size): found through an environment variable,
# or in ../shared next to the checkout (the development workspace's layout). Absent from a fresh clone: the
# tests that need it skip and say how to provide it.
SHARED = REPO.parent / "shared"
BOUNCE_CORPUS_HINT = (
    "set MAILGW_BOUNCE_CORPUS to a directory holding eml/*.eml and answers.json (real bounces with the expected "
    "result per recipient; docs/bounces.md, 'Scoring the parser', gives the format — e.g. messages from "
    "Sisimai's set-of-emails, BSD-2-Clause, https://github.com/sisimai/set-of-emails), or put that directory "
    "at ../shared/corpus/bounces next to the checkout")


def bounce_corpus() -> Path | None:
    """The bounce corpus: $MAILGW_BOUNCE_CORPUS, else ../shared/corpus/bounces next to the checkout, else None."""
    for candidate in (os.environ.get("MAILGW_BOUNCE_CORPUS"), SHARED / "corpus" / "bounces"):
        if candidate and Path(candidate, "answers.json").is_file():
            return Path(candidate)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("MAILGW_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak test: set MAILGW_SOAK=1 to run it")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_logging_config_leaks() -> Iterator[None]:
    """`mailgw` run in-process (cli.main, the daemon) configures structlog globally, e.g. at level warning; a
    later test's capture_logs() would then see no info events at all. Every test starts from the defaults."""
    import structlog

    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


# Odoo side (gateway/odoo): a real HTTP stand-in Odoo speaking XML-RPC and JSON-2 (tests/odoo_standin.py).
@pytest.fixture
def odoo_standin() -> Iterator[OdooStandin]:
    from tests.odoo_standin import OdooStandin

    standin = OdooStandin().start()
    try:
        yield standin
    finally:
        standin.stop()


# Spool on PostgreSQL: one private server per test session (tests/pgcluster.py), a fresh schema per test.
@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    from tests.pgcluster import cluster_fixture

    yield from cluster_fixture("mailgw_test")


@pytest.fixture
def pg_spool(pg_cluster: PgCluster) -> Iterator[dict[str, str]]:
    """`{"dsn": ..., "schema": ...}` of an empty spool of its own (the schema is created by the gateway)."""
    import secrets

    schema = f"t_{secrets.token_hex(6)}"
    yield {"dsn": pg_cluster.dsn("mailgw_test"), "schema": schema}
    if pg_cluster.proc is not None and pg_cluster.proc.poll() is None:
        pg_cluster.psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE", "mailgw_test")


@pytest.fixture(params=["sqlite", "postgres"])
def spool_opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Awaitable[Any]]:
    """The spool contract on both backends: opens the test's spool (the same store on every call), as a gateway
    daemon would."""
    if request.param == "sqlite":
        from gateway.spool import SqliteSpool

        return lambda: SqliteSpool.open(tmp_path / "s.db")
    pg = request.getfixturevalue("pg_spool")
    from gateway.spool.postgres import PostgresSpool

    return lambda: PostgresSpool.open(pg["dsn"], schema=pg["schema"], instance="test-gw", daemon=True)
