"""Smoke: each built function answers its trigger's event through the Lambda emulator, from the artifacts.

Only the shape of each answer is pinned (the trigger's contract), so these stay valid as the handlers grow;
an unhandled exception in a handler fails the test (the emulator's error answer raises FunctionError).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from .lambda_emulator import EVENTS_DIR, FUNCTION_IDS, REPO_ROOT, EmulatorPool, built_template_settings

pytestmark = pytest.mark.e2e


def load_event(name: str) -> dict[str, Any]:
    """One of the shared ``events/`` files."""
    event: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text())
    return event


def test_api_get_tickets_answers_a_proxy_response(pool: EmulatorPool) -> None:
    answer = pool.invoke("OnDemandCheckFunction", load_event("apigw_get_tickets.json"))
    assert isinstance(answer["statusCode"], int)
    # 500 is the handler's "misconfigured / unexpected" answer: never acceptable from a built artifact.
    assert 200 <= answer["statusCode"] < 600
    assert answer["statusCode"] != 500, answer
    if answer["statusCode"] != 304:
        assert isinstance(json.loads(answer["body"]), dict)


def test_api_without_identity_is_refused(pool: EmulatorPool) -> None:
    answer = pool.invoke("OnDemandCheckFunction", load_event("apigw_no_identity.json"))
    assert answer["statusCode"] == 401


def test_sqs_batch_answers_partial_batch_failures(pool: EmulatorPool) -> None:
    answer = pool.invoke("UserUpdatesFunction", load_event("sqs_purchase.json"))
    assert isinstance(answer["batchItemFailures"], list)
    for failure in answer["batchItemFailures"]:
        assert isinstance(failure["itemIdentifier"], str)


def test_schedule_answers_a_backfill_summary(pool: EmulatorPool) -> None:
    answer = pool.invoke("ScheduledBackfillFunction", load_event("schedule_missing.json"))
    assert isinstance(answer, dict)
    # docs/contract.md §7: the back-fill returns {"mode", "scanned", "enqueued", "cursor"}.
    assert answer["mode"] == "missing"
    assert isinstance(answer["enqueued"], int)
    assert isinstance(answer["scanned"], int)
    assert "cursor" in answer


@pytest.mark.parametrize("function_id", FUNCTION_IDS)
def test_code_layer_and_environment_come_from_the_build(
    function_id: str, artifacts: EmulatorPool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    built = artifacts.built(function_id)
    report = artifacts.probe_imports(
        function_id,
        ["app", "bytemark_cache", "bytemark_cache.bootstrap", "pymongo", "aws_lambda_powertools"],
        tmp_path_factory.mktemp("probe"),
    )
    files = {name: Path(path) for name, path in report["files"].items()}
    assert files["app"] == built.code_dir / "app.py"
    for module in ("bytemark_cache", "bytemark_cache.bootstrap", "pymongo", "aws_lambda_powertools"):
        assert files[module].is_relative_to(built.layer_python_dir), (module, files[module])
    # Nothing of the repository's sources is importable: only the build folders and the runtime's own
    # interpreter (the project venv, which may live in the checkout, providing awslambdaric) are on the path.
    allowed = [(REPO_ROOT / ".aws-sam").resolve(), Path(sys.prefix).resolve()]
    for entry in report["sys_path"]:
        path = Path(entry).resolve() if entry else built.code_dir  # "" is the runtime's working directory
        assert not path.is_relative_to(REPO_ROOT) or any(path.is_relative_to(a) for a in allowed), entry
    # The environment is the template's for this function: its own variables with the template's values
    # (those only the stack can know, such as UPDATE_DLQ_URL, from the settings), none that the template
    # gives only to another function, and none of the local stack's own knobs.
    template = built_template_settings(artifacts.build_dir)
    environ: dict[str, str] = report["environ"]
    for name, value in template.function(function_id).environment.items():
        assert environ.get(name) == value, (name, environ.get(name), value)
    for name in template.function(function_id).own_variables:
        assert environ.get(name), f"{name} is missing from {function_id}'s environment"
    assert not template.variables_owned_elsewhere(function_id) & set(environ)
    assert not [name for name in environ if name.startswith("LOCAL_")]
