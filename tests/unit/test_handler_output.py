"""Everything the three handlers write, on their failure paths: JSON only, no secret, no stack to a caller.

Each test captures the process's whole stdout and stderr (the handler's logs, the layer's logs routed through
them, the EMF metrics, any stray print or warning) while a handler fails in a realistic way, then checks
every line. The fakes hold a token, a MySQL password, a credentialed MongoDB URI and a rider's e-mail, so
a leak of any of them would show.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import pytest

from bytemark_cache.errors import DeadlineExceeded, StoreError, TokenRevoked, UpstreamError
from tests.fakes import FakeWorld, make_pass
from tests.lambda_harness import FakeLambdaContext, load_event, load_function

TOKEN = "tok-SECRET-8d1f2c"
PASSWORD = "mysql-SECRET-pw"
MONGODB_URI = "mongodb://cache_user:mongo-SECRET-pw@127.0.0.1:1/"
EMAIL = "rider.name@example.com"

SECRETS = (TOKEN, PASSWORD, "mongo-SECRET-pw", EMAIL)
EMAIL_PATTERN = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
CREDENTIALED_URI = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@")
STACK_MARKERS = ("Traceback", 'File "')

api = load_function("on_demand_check")
updates = load_function("user_updates")
backfill = load_function("scheduled_backfill")


class CurrentStdout:
    """A stream that writes wherever ``sys.stdout`` points at the moment (pytest swaps it per test phase)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


@pytest.fixture
def output(capsys: pytest.CaptureFixture[str]) -> pytest.CaptureFixture[str]:
    """Capture as Lambda would see it: the loggers' stream handlers were bound to the stdout of import time,
    so every one of them is pointed at the current stdout (and warnings are captured into logging)."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = CurrentStdout()  # type: ignore[assignment]
    return capsys


@pytest.fixture
def world() -> FakeWorld:
    world = FakeWorld(env={"MYSQL_PASSWORD": PASSWORD, "MONGODB_URI": MONGODB_URI}, users={42: TOKEN})
    world.source.set_passes(TOKEN, [make_pass("p-1", customer={"email": EMAIL, "name": "Rider Name"})])
    return world


def check_output(output: str) -> list[dict[str, Any]]:
    """Every line is JSON and holds no secret; the parsed log lines (not the EMF metric documents)."""
    logs: list[dict[str, Any]] = []
    for line in output.splitlines():
        if not line.strip():
            continue
        parsed = json.loads(line)  # fails the test on any line that is not JSON
        assert isinstance(parsed, dict), line
        for secret in SECRETS:
            assert secret not in line, f"secret in output: {line[:200]}"
        assert not EMAIL_PATTERN.search(line), line[:200]
        assert not CREDENTIALED_URI.search(line), line[:200]
        if "_aws" not in parsed:
            logs.append(parsed)
    return logs


def no_stack(answer: object) -> None:
    text = json.dumps(answer)
    assert not any(marker in text for marker in STACK_MARKERS), text[:300]
    for secret in SECRETS:
        assert secret not in text


def failing_fetch(world: FakeWorld, error: Exception) -> None:
    def fail(_token: str) -> None:
        raise error

    world.source.before_fetch = fail


API_FAILURES: list[tuple[str, Callable[[FakeWorld], None], str]] = [
    (
        "upstream down, no cache",
        lambda w: failing_fetch(w, UpstreamError("Bytemark /passes: HTTP 503")),
        "get",
    ),
    ("deadline", lambda w: failing_fetch(w, DeadlineExceeded()), "get"),
    ("revoked", lambda w: failing_fetch(w, TokenRevoked()), "get"),
    (
        "store down",
        lambda w: failing_fetch(w, StoreError("MongoDB load failed: ServerSelectionTimeoutError")),
        "get",
    ),
    ("a bug", lambda w: failing_fetch(w, RuntimeError("unexpected None")), "get"),
    ("no account", lambda w: w.tokens.tokens.update({42: None}), "get"),
    ("no identity", lambda w: None, "no_identity"),
    ("not an API event", lambda w: None, "garbage"),
]


@pytest.mark.parametrize(("case", "arrange", "kind"), API_FAILURES, ids=[case for case, _, _ in API_FAILURES])
def test_api_failure_paths_write_only_json_without_secrets(
    world: FakeWorld,
    output: pytest.CaptureFixture[str],
    case: str,
    arrange: Callable[[FakeWorld], None],
    kind: str,
) -> None:
    arrange(world)
    event: Any = {
        "get": load_event("apigw_get_tickets.json"),
        "no_identity": load_event("apigw_no_identity.json"),
        "garbage": {"Records": [{"body": TOKEN}]},
    }[kind]

    answer = api.lambda_handler(event, FakeLambdaContext(), services=world.services)

    logs = check_output("".join(output.readouterr()))
    no_stack(answer)
    assert answer["statusCode"] >= 400, case
    if answer["statusCode"] >= 500:
        assert logs, "a failure leaves a trace in the logs"
        assert all(log.get("correlation_id") for log in logs)
        assert all(log.get("user_id") == 42 for log in logs)


def test_the_layers_log_lines_carry_the_request_keys(
    world: FakeWorld, output: pytest.CaptureFixture[str]
) -> None:
    api.lambda_handler(load_event("apigw_get_tickets.json"), FakeLambdaContext(), services=world.services)
    world.clock.advance(20)
    world.source.fail_next(TOKEN, UpstreamError("Bytemark /passes: HTTP 503"))

    api.lambda_handler(load_event("apigw_sync.json"), FakeLambdaContext(), services=world.services)

    logs = check_output("".join(output.readouterr()))
    layer_lines = [log for log in logs if log.get("name", "").startswith("bytemark_cache")]
    assert [log["message"] for log in layer_lines] == ["bytemark failed, serving the cache"]
    assert layer_lines[0]["user_id"] == 42
    assert layer_lines[0]["correlation_id"]


def test_sqs_failure_paths_write_only_json_without_secrets(
    world: FakeWorld, output: pytest.CaptureFixture[str]
) -> None:
    world.tokens.tokens.update({43: TOKEN + "-43", 44: TOKEN + "-44"})
    world.source.fail_next(TOKEN + "-43", UpstreamError("Bytemark /passes: HTTP 503"))
    world.source.fail_next(TOKEN + "-44", TokenRevoked())
    template = load_event("sqs_purchase.json")["Records"][0]
    bodies = [
        json.dumps({"user_id": 42, "reason": "purchase"}),
        json.dumps({"user_id": 43, "reason": "purchase"}),
        json.dumps({"user_id": 44, "reason": "purchase"}),
        json.dumps({"user_id": EMAIL, "reason": "purchase"}),
        "{not json",
    ]
    event = {"Records": [{**template, "messageId": f"m-{i}", "body": body} for i, body in enumerate(bodies)]}

    answer = updates.lambda_handler(event, FakeLambdaContext(), services=world.services)

    logs = check_output("".join(output.readouterr()))
    no_stack(answer)
    assert [item["itemIdentifier"] for item in answer["batchItemFailures"]] == ["m-1"]
    per_record = [log for log in logs if log["message"] != "batch finished with failures"]
    assert all(log.get("message_id") for log in per_record)
    assert {log.get("user_id") for log in per_record if log.get("message_id") in ("m-0", "m-1", "m-2")} == {
        42,
        43,
        44,
    }


def test_backfill_failure_paths_write_only_json_without_secrets(
    world: FakeWorld, output: pytest.CaptureFixture[str]
) -> None:
    invalid = backfill.lambda_handler({"mode": TOKEN}, FakeLambdaContext(), services=world.services)
    world.queue.fail_after = 0
    with pytest.raises(backfill.BackfillFailed) as raised:
        backfill.lambda_handler(
            load_event("schedule_missing.json"), FakeLambdaContext(), services=world.services
        )

    check_output("".join(output.readouterr()))
    no_stack(invalid)
    assert TOKEN not in str(raised.value)
