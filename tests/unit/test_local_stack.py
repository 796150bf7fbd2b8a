"""The local stack's own logic, without sockets: reading the template, the function environments, the
gateway's events, the SQS poller's batches and the schedules (local/local_env.py, stack.py, gateway.py,
sqs_poller.py, scheduler.py)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from gateway import (
    DEV_IDENTITY_HEADER,
    cognito_claims,
    local_sub,
    proxy_event,
    request_event,
)
from local_env import TemplateSettings, load_template, local_settings, template_settings
from scheduler import interval_seconds, schedule_input
from sqs_poller import SqsPoller
from stack import (
    FUNCTIONS,
    ensure_max_receive_count,
    function_env,
    receive_visibility,
    schedule_intervals,
    update_source,
)

ROOT = Path(__file__).resolve().parents[2]
SOURCE_TEMPLATE = ROOT / "template.yaml"

MINIMAL_TEMPLATE = """\
Transform: AWS::Serverless-2016-10-31
Parameters:
  Claim:
    Type: String
    Default: custom:uid
  Days:
    Type: Number
    Default: 30
  NoDefault:
    Type: String
Globals:
  Function:
    Timeout: 20
    Environment:
      Variables:
        SHARED: !Ref NoDefault
Resources:
  Api:
    Type: AWS::Serverless::Function
    Properties:
      MemorySize: 256
      Environment:
        Variables:
          CLAIM: !Ref Claim
          RETRIES: 1
          ENABLED: true
          NAME: api
          SECRET: !Ref NoDefault
          QUEUE: !Ref Queue
          NAMESPACE: !Sub ns/${AWS::StackName}
  Worker:
    Type: AWS::Serverless::Function
    Properties:
      Timeout: 40
      Environment:
        Variables:
          DAYS: !Ref Days
      Events:
        Messages:
          Type: SQS
          Properties:
            Queue: !GetAtt Queue.Arn
            BatchSize: 5
        Tick:
          Type: ScheduleV2
          Properties:
            ScheduleExpression: rate(2 minutes)
            Input: '{"mode": "tick", "cursor": null}'
  Plain:
    Type: AWS::Serverless::Function
    Properties:
      Events:
        Other:
          Type: SQS
          Properties:
            Queue: !GetAtt Bare.Arn
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 240
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt Dlq.Arn
        maxReceiveCount: 7
  Bare:
    Type: AWS::SQS::Queue
  Dlq:
    Type: AWS::SQS::Queue
"""


@pytest.fixture(scope="module")
def deployed() -> TemplateSettings:
    """What the project's template says (the built one is this template after `sam build`)."""
    return template_settings(SOURCE_TEMPLATE)


@pytest.fixture
def minimal(tmp_path: Path) -> TemplateSettings:
    path = tmp_path / "template.yaml"
    path.write_text(MINIMAL_TEMPLATE)
    return template_settings(path)


@pytest.fixture
def env() -> dict[str, str]:
    """The embedded local settings, whatever the developer exported."""
    return local_settings(environ={})


# ---------------------------------------------------------------- reading the template


def test_template_settings_apply_globals_and_sam_defaults(minimal: TemplateSettings) -> None:
    api, worker, plain = (minimal.function(name) for name in ("Api", "Worker", "Plain"))
    assert (api.timeout_seconds, api.memory_mb) == (20, 256)  # Globals' timeout, own memory
    assert (worker.timeout_seconds, worker.memory_mb) == (40, 128)  # own timeout, SAM's default memory
    assert plain.timeout_seconds == 20
    assert minimal.global_variables == {"SHARED"}


def test_only_values_known_before_deploying_are_read(minimal: TemplateSettings) -> None:
    api = minimal.function("Api")
    # Literals as Lambda sees them (strings), and a Ref to a parameter with a default.
    assert api.environment == {"CLAIM": "custom:uid", "RETRIES": "1", "ENABLED": "true", "NAME": "api"}
    # Refs to resources, Subs and parameters without a default are the stack's to fill (or absent).
    assert api.own_variables == {"CLAIM", "RETRIES", "ENABLED", "NAME", "SECRET", "QUEUE", "NAMESPACE"}
    assert minimal.function("Worker").environment == {"DAYS": "30"}


def test_sqs_sources_read_the_event_and_its_queue(minimal: TemplateSettings) -> None:
    worker = minimal.sqs_sources["Worker"]
    assert worker.queue_logical_id == "Queue"
    assert (worker.batch_size, worker.batching_window_seconds) == (5, 0)
    assert (worker.visibility_timeout_seconds, worker.max_receive_count) == (240, 7)
    plain = minimal.sqs_sources["Plain"]
    # SQS's and Lambda's defaults when the template says nothing; no redrive at all.
    assert (plain.batch_size, plain.visibility_timeout_seconds, plain.max_receive_count) == (10, 30, None)
    assert minimal.schedules == {"Worker": {"tick": "rate(2 minutes)"}}


def test_variables_owned_by_another_function_are_not_passed(minimal: TemplateSettings) -> None:
    assert minimal.variables_owned_elsewhere("Worker") == {
        "CLAIM", "RETRIES", "ENABLED", "NAME", "SECRET", "QUEUE", "NAMESPACE"
    }  # fmt: skip
    assert minimal.variables_owned_elsewhere("Api") == {"DAYS"}
    with pytest.raises(KeyError, match="Nope"):
        minimal.function("Nope")


def test_a_missing_build_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make build"):
        template_settings(tmp_path / "template.yaml")


def test_short_and_long_form_templates_read_alike(tmp_path: Path) -> None:
    # `sam build` writes the long form; the loader reads both to the same thing.
    long_form = tmp_path / "long.yaml"
    long_form.write_text(
        "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n"
        "      Role:\n        Fn::GetAtt: [R, Arn]\n      Queue:\n        Ref: Q\n"
    )
    short_form = tmp_path / "short.yaml"
    short_form.write_text(
        "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n"
        "      Role: !GetAtt R.Arn\n      Queue: !Ref Q\n"
    )
    assert load_template(long_form) == load_template(short_form)


def test_the_projects_template_gives_the_deployed_settings(deployed: TemplateSettings) -> None:
    on_demand = deployed.function(FUNCTIONS["on_demand_check"])
    assert on_demand.timeout_seconds == 15
    assert on_demand.environment["BYTEMARK_MAX_RETRIES"] == "1"
    assert on_demand.environment["BYTEMARK_TIMEOUT_SECONDS"] == "5"
    assert on_demand.environment["IDENTITY_CLAIM"] == "custom:user_id"
    assert {name: deployed.function(logical).service_name for name, logical in FUNCTIONS.items()} == {
        "on_demand_check": "on-demand-check",
        "user_updates": "user-updates",
        "scheduled_backfill": "scheduled-backfill",
    }
    backfill = deployed.function(FUNCTIONS["scheduled_backfill"])
    assert backfill.environment["CHANGE_LOG_RETENTION_DAYS"] == "400"
    source = update_source(deployed)
    assert (source.batch_size, source.batching_window_seconds, source.max_receive_count) == (10, 1, 10)
    assert source.visibility_timeout_seconds == 360
    assert deployed.schedules[FUNCTIONS["scheduled_backfill"]]["due"] == "rate(5 minutes)"


# ---------------------------------------------------------------- the functions' environments


def test_on_demand_check_gets_its_template_settings_and_nothing_of_the_others(
    deployed: TemplateSettings, env: dict[str, str]
) -> None:
    local = {**env, "BYTEMARK_TIMEOUT_SECONDS": "9", "BYTEMARK_MAX_RETRIES": "7"}
    settings = function_env("on_demand_check", local, deployed)
    # The template's per-function values win over the local defaults: local runs behave like deployed ones.
    assert settings["BYTEMARK_TIMEOUT_SECONDS"] == "5"
    assert settings["BYTEMARK_MAX_RETRIES"] == "1"
    assert settings["IDENTITY_CLAIM"] == "custom:user_id"
    assert settings["POWERTOOLS_SERVICE_NAME"] == "on-demand-check"
    # Owned by other functions in the template: not given here, as in AWS.
    assert not {"UPDATE_DLQ_URL", "CHANGE_LOG_RETENTION_DAYS", "REDELIVERY_BASE_SECONDS"} & set(settings)
    # Secrets come from Secrets Manager (moto); local knobs are the stack's own.
    assert not {"MONGODB_URI", "MYSQL_PASSWORD", "MYSQL_USER"} & set(settings)
    assert not [key for key in settings if key.startswith("LOCAL_")]
    assert settings["MONGODB_SECRET_ARN"] == env["MONGODB_SECRET_NAME"]
    assert settings["AWS_LAMBDA_FUNCTION_NAME"] == "on_demand_check"


def test_user_updates_gets_the_dlq_and_the_local_redelivery_delays(
    deployed: TemplateSettings, env: dict[str, str]
) -> None:
    dlq = "http://127.0.0.1:5117/000000000000/the-dlq"
    settings = function_env("user_updates", env, deployed, {"UPDATE_DLQ_URL": dlq})
    assert settings["UPDATE_DLQ_URL"] == dlq
    assert settings["POWERTOOLS_SERVICE_NAME"] == "user-updates"
    assert (settings["REDELIVERY_BASE_SECONDS"], settings["REDELIVERY_CAP_SECONDS"]) == (
        env["LOCAL_REDELIVERY_BASE_SECONDS"],
        env["LOCAL_REDELIVERY_CAP_SECONDS"],
    )
    # BYTEMARK_MAX_RETRIES is on_demand_check's: user_updates keeps the code's default, as deployed.
    assert "BYTEMARK_MAX_RETRIES" not in settings
    emptied = {**env, "LOCAL_REDELIVERY_BASE_SECONDS": "", "LOCAL_REDELIVERY_CAP_SECONDS": ""}
    settings = function_env("user_updates", emptied, deployed)
    assert (settings["REDELIVERY_BASE_SECONDS"], settings["REDELIVERY_CAP_SECONDS"]) == ("60", "7200")


def test_the_backfill_gets_the_retention_and_its_service(
    deployed: TemplateSettings, env: dict[str, str]
) -> None:
    settings = function_env("scheduled_backfill", env, deployed)
    assert settings["CHANGE_LOG_RETENTION_DAYS"] == "400"
    assert settings["POWERTOOLS_SERVICE_NAME"] == "scheduled-backfill"
    assert "IDENTITY_CLAIM" not in settings
    # The knob replaces only variables the function's template sets.
    assert "REDELIVERY_BASE_SECONDS" not in settings


def test_receive_visibility_is_short_unless_told(env: dict[str, str]) -> None:
    assert receive_visibility({}) == 2
    assert receive_visibility({"LOCAL_SQS_VISIBILITY_TIMEOUT_SECONDS": "360"}) == 360
    assert receive_visibility(env) == int(env["LOCAL_SQS_VISIBILITY_TIMEOUT_SECONDS"])


# ---------------------------------------------------------------- schedules


def test_schedules_come_from_the_template_with_local_overrides(deployed: TemplateSettings) -> None:
    assert schedule_intervals(deployed, {}) == {"due": 300.0, "missing": 86400.0, "prune": 86400.0}
    assert schedule_intervals(deployed, {"LOCAL_SCHEDULE_DUE_SECONDS": "0"})["due"] == 0.0


def test_schedule_expressions_become_periods() -> None:
    assert interval_seconds("rate(5 minutes)") == 300
    assert interval_seconds("rate(1 hour)") == 3600
    assert interval_seconds("rate(2 days)") == 172800
    assert interval_seconds("cron(15 8 * * ? *)") == 86400
    with pytest.raises(ValueError, match="unsupported"):
        interval_seconds("cron(0/5 * * * ? *)")


def test_a_firing_carries_the_deployed_input() -> None:
    at = datetime(2025, 6, 1, 8, 15, tzinfo=UTC)
    assert schedule_input("due", at) == {"mode": "due", "cursor": None, "run_id": "due:2025-06-01T08:15:00Z"}


# ---------------------------------------------------------------- the gateway's events


def test_the_function_gets_cognito_claims_never_the_local_header() -> None:
    headers = {"Accept": "application/json", "x-local-user-id": "1001"}
    event = request_event("GET", "/tickets?x=1", headers, b"", dev_identity=True)
    assert event is not None
    claims = event["requestContext"]["authorizer"]["claims"]
    assert claims["custom:user_id"] == "1001"
    assert uuid.UUID(claims["sub"]).version == 5  # a UUID, never the user id
    assert claims["sub"] != "1001"
    assert claims["token_use"] == "id"
    assert all(isinstance(value, str) for value in claims.values())
    assert set(event["requestContext"]["authorizer"]) == {"claims"}
    assert DEV_IDENTITY_HEADER.lower() not in {name.lower() for name in event["headers"]}
    assert DEV_IDENTITY_HEADER.lower() not in {name.lower() for name in event["multiValueHeaders"]}
    assert (event["httpMethod"], event["path"], event["resource"]) == ("GET", "/tickets", "/tickets")
    assert event["queryStringParameters"] == {"x": "1"}
    assert event["requestContext"]["stage"] == "local"


def test_the_sub_is_stable_per_user_and_distinct_between_users() -> None:
    assert local_sub("1001") == local_sub("1001")
    assert local_sub("1001") != local_sub("1002")
    first = request_event("GET", "/tickets", {DEV_IDENTITY_HEADER: "1001"}, b"", dev_identity=True)
    second = request_event("POST", "/tickets/sync", {DEV_IDENTITY_HEADER: "1001"}, b"", dev_identity=True)
    assert first is not None
    assert second is not None
    assert first["requestContext"]["authorizer"]["claims"]["sub"] == local_sub("1001")
    assert second["requestContext"]["authorizer"]["claims"]["sub"] == local_sub("1001")


def test_no_identity_or_no_dev_identity_means_the_authorizer_refuses() -> None:
    assert request_event("GET", "/tickets", {"Accept": "*/*"}, b"", dev_identity=True) is None
    assert request_event("GET", "/tickets", {DEV_IDENTITY_HEADER: " "}, b"", dev_identity=True) is None
    assert request_event("GET", "/tickets", {DEV_IDENTITY_HEADER: "1001"}, b"", dev_identity=False) is None


def test_the_claim_name_follows_the_template_and_is_never_sub() -> None:
    headers = {DEV_IDENTITY_HEADER: "42"}
    event = request_event(
        "GET", "/tickets", headers, b"", dev_identity=True, identity_claim="custom:portal_id"
    )
    assert event is not None
    claims = event["requestContext"]["authorizer"]["claims"]
    assert claims["custom:portal_id"] == "42"
    assert "custom:user_id" not in claims
    with pytest.raises(ValueError, match="sub"):
        cognito_claims("42", "sub")


def test_a_lambda_authorizer_context_carries_user_id() -> None:
    event = proxy_event("GET", "/tickets", {}, b"", "7", authorizer_type="LAMBDA")
    assert event["requestContext"]["authorizer"] == {"user_id": "7", "principalId": "local|7"}


def test_a_body_is_passed_as_text() -> None:
    event = request_event("POST", "/tickets/sync", {DEV_IDENTITY_HEADER: "1"}, b'{"a": 1}', dev_identity=True)
    assert event is not None
    assert (event["body"], event["isBase64Encoded"]) == ('{"a": 1}', False)


# ---------------------------------------------------------------- the SQS poller


class FakeSqs:
    """receive/delete/change-visibility calls recorded; receive hands out the queued messages in turns."""

    def __init__(self, *turns: list[dict[str, Any]]) -> None:
        self.turns = list(turns)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.redrive: dict[str, Any] | None = None

    def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("get_queue_attributes", kwargs))
        attributes = {"QueueArn": "arn:aws:sqs:us-east-1:123456789012:updates"}
        if self.redrive is not None:
            attributes["RedrivePolicy"] = json.dumps(self.redrive)
        return {"Attributes": attributes}

    def set_queue_attributes(self, **kwargs: Any) -> None:
        self.calls.append(("set_queue_attributes", kwargs))

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("receive_message", kwargs))
        if not self.turns:
            return {}
        turn = self.turns.pop(0)
        limit = kwargs["MaxNumberOfMessages"]
        if turn[limit:]:
            self.turns.insert(0, turn[limit:])
        return {"Messages": turn[:limit]}

    def delete_message_batch(self, **kwargs: Any) -> None:
        self.calls.append(("delete_message_batch", kwargs))

    def change_message_visibility(self, **kwargs: Any) -> None:  # pragma: no cover - must never be called
        self.calls.append(("change_message_visibility", kwargs))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def message(number: int) -> dict[str, Any]:
    return {"MessageId": f"m{number}", "ReceiptHandle": f"r{number}", "Body": json.dumps({"user_id": number})}


def test_only_records_that_did_not_fail_are_deleted_and_visibility_is_left_alone() -> None:
    sqs = FakeSqs([message(1), message(2), message(3)])
    events: list[dict[str, Any]] = []

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        events.append(event)
        return {"batchItemFailures": [{"itemIdentifier": "m2"}]}

    poller = SqsPoller(sqs, "http://sqs/updates", invoke, batch_size=10)
    assert poller.poll_once() == 3

    [event] = events
    assert [record["messageId"] for record in event["Records"]] == ["m1", "m2", "m3"]
    assert event["Records"][0]["eventSourceARN"] == "arn:aws:sqs:us-east-1:123456789012:updates"
    [(_, deleted)] = [call for call in sqs.calls if call[0] == "delete_message_batch"]
    assert [entry["ReceiptHandle"] for entry in deleted["Entries"]] == ["r1", "r3"]
    # The handler set m2's redelivery delay itself; the poller must not override it.
    assert "change_message_visibility" not in sqs.names()
    assert (poller.stats.succeeded, poller.stats.failed, poller.stats.failure_ids) == (2, 1, ["m2"])


def test_a_function_error_leaves_the_whole_batch() -> None:
    sqs = FakeSqs([message(1), message(2)])

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("Task timed out")

    poller = SqsPoller(sqs, "http://sqs/updates", invoke)
    assert poller.poll_once() == 2
    assert "delete_message_batch" not in sqs.names()
    assert "change_message_visibility" not in sqs.names()
    assert poller.stats.function_errors == 1


def test_a_batch_fills_up_to_the_batch_size_within_the_window() -> None:
    sqs = FakeSqs([message(1), message(2)], [message(3)], [message(4), message(5)])
    batches: list[int] = []

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        batches.append(len(event["Records"]))
        return {"batchItemFailures": []}

    poller = SqsPoller(
        sqs, "http://sqs/updates", invoke, batch_size=4, batching_window_seconds=5, visibility_timeout=2
    )
    assert poller.poll_once() == 4
    assert batches == [4]  # filled until the batch size, the fifth message waits for the next batch
    receives = [kwargs for name, kwargs in sqs.calls if name == "receive_message"]
    assert [call["MaxNumberOfMessages"] for call in receives] == [4, 2, 1]
    # The first waits for a message; the rest only gather what is there. Visibility outlasts the window.
    assert [call["WaitTimeSeconds"] for call in receives] == [1, 0, 0]
    assert all(call["VisibilityTimeout"] == 6 for call in receives)


def test_without_a_window_one_receive_is_one_batch() -> None:
    sqs = FakeSqs([message(1)], [message(2)])
    poller = SqsPoller(sqs, "http://sqs/updates", lambda event: {"batchItemFailures": []}, batch_size=10)
    assert poller.poll_once() == 1
    assert sqs.names().count("receive_message") == 1


def test_nothing_received_invokes_nothing() -> None:
    sqs = FakeSqs()
    poller = SqsPoller(sqs, "http://sqs/updates", lambda event: pytest.fail("invoked"))
    assert poller.poll_once() == 0


def test_the_queue_gets_the_templates_max_receive_count() -> None:
    sqs = FakeSqs()
    sqs.redrive = {"deadLetterTargetArn": "arn:aws:sqs:us-east-1:123456789012:dlq", "maxReceiveCount": "3"}
    ensure_max_receive_count(sqs, "http://sqs/updates", 10)
    [(_, kwargs)] = [call for call in sqs.calls if call[0] == "set_queue_attributes"]
    assert json.loads(kwargs["Attributes"]["RedrivePolicy"]) == {
        "deadLetterTargetArn": "arn:aws:sqs:us-east-1:123456789012:dlq",
        "maxReceiveCount": 10,
    }
    sqs.calls.clear()
    sqs.redrive = {"deadLetterTargetArn": "arn:aws:sqs:us-east-1:123456789012:dlq", "maxReceiveCount": 10}
    ensure_max_receive_count(sqs, "http://sqs/updates", 10)
    assert "set_queue_attributes" not in sqs.names()
