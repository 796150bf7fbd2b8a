"""Shared test wiring: the tier markers and the local configuration every tier can read.

The tier of a test follows from its folder, so ``pytest -m integration`` or ``-m "not e2e"`` select
exactly what ``make test-integration`` / ``make test-unit`` run, whether or not a module marks itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = REPO_ROOT / "local" / "defaults.env"
TIER_MARKERS = {"integration": pytest.mark.integration, "e2e": pytest.mark.e2e}
# Settings of the local stack that are not in defaults.env but may be exported (local/services.sh
# uses the same defaults).
EXTRA_SETTINGS = {
    "MYSQL_SECRET_NAME": "bytemark-cache/local/mysql",
    "MONGODB_SECRET_NAME": "bytemark-cache/local/mongodb",
}


def read_defaults(path: Path = DEFAULTS_FILE) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments and blank lines ignored), parsed, never executed."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, separator, value = line.partition("=")
        if not separator or not name.strip().isidentifier():
            raise ValueError(f"{path}:{number}: not a KEY=VALUE line: {raw!r}")
        values[name.strip()] = value.strip()
    return values


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
    defaults = {**read_defaults(), **EXTRA_SETTINGS}
    return {name: os.environ.get(name, value) for name, value in defaults.items()}
