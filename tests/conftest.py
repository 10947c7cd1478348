"""Shared test set-up. Area fixtures live in their own modules (tests/integration/*.py) and are imported here
only when every test needs them. Keep this file small."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.odoo_standin import OdooStandin

REPO = Path(__file__).resolve().parents[1]
# ../shared next to the repository: the bounce corpus and the Odoo docs. Absent on a user's fresh clone.
SHARED = REPO.parent / "shared"


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


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is only present in the development workspace)")
    return path


# Odoo side (gateway/odoo): a real HTTP stand-in Odoo speaking XML-RPC and JSON-2 (tests/odoo_standin.py).
@pytest.fixture
def odoo_standin() -> Iterator[OdooStandin]:
    from tests.odoo_standin import OdooStandin

    standin = OdooStandin().start()
    try:
        yield standin
    finally:
        standin.stop()
