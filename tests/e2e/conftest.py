"""Session fixtures for the end-to-end tests: the build, the emulator, the local services.

Anything missing is a failure with the command that fixes it, never a skip: an e2e run that silently
tested nothing would look green.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from emulator import EmulatorError, find_rie
from local_env import local_settings

from bytemark_simulator import SimulatorServer

from .lambda_emulator import (
    BUILD_DIR,
    Accounts,
    CacheDatabase,
    E2eStores,
    EmulatorPool,
    TokenTable,
    UpdateQueues,
    built_template_settings,
    create_update_queues,
    delete_update_queues,
    find_sam,
    missing_artifacts,
    run_sam_build,
    sqs_client,
    unique_name,
    unreachable_services,
)

SIMULATOR_SEED = 20240615
"""Fixed, so a session's generated passes are reproducible."""


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
    """One emulator per built function with the local settings (stopped at the end); no service check."""
    emulators = EmulatorPool(local_settings(), build_dir)
    try:
        yield emulators
    finally:
        emulators.close()


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorServer]:
    """This session's Bytemark simulator, in-process on a free port (tests seed their own users)."""
    with SimulatorServer(port=0, seed=SIMULATOR_SEED) as server:
        yield server


@pytest.fixture(scope="session")
def stores(build_dir: Path, simulator: SimulatorServer) -> Iterator[E2eStores]:
    """The session's settings and stores, once the local services accept connections.

    Databases, the update queue and its DLQ are this session's own; the queue is made with the template's
    redrive (maxReceiveCount) and visibility timeout.
    """
    settings = {**local_settings(), "BYTEMARK_API_URL": simulator.url}
    if down := unreachable_services(settings):
        pytest.fail(
            "local services are not running: " + "; ".join(down) + " — start them with `make up`",
            pytrace=False,
        )
    # btc_test_* is the prefix the application user may create (local/services/mariadb.sh grants it).
    settings["MYSQL_DATABASE"] = unique_name("btc_test_e2e_")
    settings["MONGODB_DATABASE"] = unique_name("btc_e2e_")
    try:
        tokens = TokenTable(settings, settings["MYSQL_DATABASE"])
    except Exception as exc:
        pytest.fail(
            f"cannot create the MySQL database {settings['MYSQL_DATABASE']} as {settings['MYSQL_USER']}: "
            f"{exc} (the user needs GRANT ALL ON `btc\\_test\\_%`.*; `make up` grants it)",
            pytrace=False,
        )
    mongo = CacheDatabase(settings)
    sqs = sqs_client(settings)
    source = built_template_settings(build_dir).sqs_sources["UserUpdatesFunction"]
    queues: UpdateQueues | None = None
    try:
        queues = create_update_queues(
            sqs,
            "btc-e2e-updates-",
            max_receive_count=source.max_receive_count or 10,
            visibility_timeout_seconds=source.visibility_timeout_seconds,
        )
        # What the stack gives the functions: the queue (every function), the DLQ (user_updates only, by
        # the template), as SQS spells their URLs.
        settings["UPDATE_QUEUE_URL"] = queues.url
        settings["UPDATE_DLQ_URL"] = queues.dlq_url
        yield E2eStores(settings, tokens, mongo, sqs, queues)
    finally:
        if queues is not None:
            delete_update_queues(sqs, queues)
        tokens.drop_database()
        tokens.close()
        mongo.drop()
        mongo.close()


@pytest.fixture(scope="session")
def pool(build_dir: Path, rie_available: Path, stores: E2eStores) -> Iterator[EmulatorPool]:
    """One emulator per built function with the session's settings (simulator, databases, queue)."""
    emulators = EmulatorPool(stores.settings, build_dir)
    try:
        yield emulators
    finally:
        emulators.close()


@pytest.fixture
def accounts(stores: E2eStores, simulator: SimulatorServer) -> Iterator[Accounts]:
    """Users for one test, cleaned up after it (faults injected into the simulator are cleared too)."""
    handed_out = Accounts(stores, simulator)
    try:
        yield handed_out
    finally:
        handed_out.cleanup()
