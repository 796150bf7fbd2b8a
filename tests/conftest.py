"""Shared test wiring: the tier markers and the local configuration every tier can read.

The tier of a test follows from its folder, so ``pytest -m integration`` or ``-m "not e2e"`` select
exactly what ``make test-integration`` / ``make test-unit`` run, whether or not a module marks itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from local_env import local_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
TIER_MARKERS = {"integration": pytest.mark.integration, "e2e": pytest.mark.e2e}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the tier of the folder it lives in."""
    for item in items:
        path = Path(str(item.path))
        if not path.is_relative_to(REPO_ROOT):
            continue
        parts = path.relative_to(REPO_ROOT).parts
        if len(parts) > 1 and parts[0] == "tests" and parts[1] in TIER_MARKERS:
            item.add_marker(TIER_MARKERS[parts[1]])


@pytest.fixture(scope="session")
def local_env() -> dict[str, str]:
    """The local stack's settings: local/defaults.env, each value overridden by the environment."""
    return local_settings()
