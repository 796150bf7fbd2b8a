"""Session fixtures for the end-to-end tests: the build, the emulator, the local services.

Anything missing is a failure with the command that fixes it, never a skip: an e2e run that silently
tested nothing would look green.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from emulator import EmulatorError, find_rie

from .lambda_emulator import (
    BUILD_DIR,
    EmulatorPool,
    find_sam,
    local_settings,
    missing_artifacts,
    run_sam_build,
    unreachable_services,
)


@pytest.fixture(scope="session")
def build_dir() -> Path:
    """``.aws-sam/build``, produced by ``sam build`` once if it is not there (the Makefile builds first)."""
    if missing_artifacts():
        sam = find_sam()
        if sam is None:
            pytest.fail(
                "no SAM build in .aws-sam/build and no SAM CLI to make one: run `make build` "
                "(or install aws-sam-cli in .sam-venv, or point $SAM_CLI at a `sam` executable)",
                pytrace=False,
            )
        result = run_sam_build(sam)
        if result.returncode != 0:
            pytest.fail(
                f"`sam build` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}", pytrace=False
            )
    if missing := missing_artifacts():
        pytest.fail(f"the SAM build is incomplete, missing: {', '.join(map(str, missing))}", pytrace=False)
    return BUILD_DIR


@pytest.fixture(scope="session")
def rie_available() -> Path:
    """The Lambda runtime interface emulator binary."""
    try:
        return find_rie()
    except EmulatorError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def artifacts(build_dir: Path, rie_available: Path) -> Iterator[EmulatorPool]:
    """One emulator per built function for the whole session (stopped at the end); no service check."""
    emulators = EmulatorPool(local_settings(), build_dir)
    try:
        yield emulators
    finally:
        emulators.close()


@pytest.fixture(scope="session")
def pool(artifacts: EmulatorPool) -> EmulatorPool:
    """The emulators, once the local services they talk to accept connections."""
    if down := unreachable_services(artifacts.settings):
        pytest.fail(
            "local services are not running: " + "; ".join(down) + " — start them with `make up`",
            pytrace=False,
        )
    return artifacts
