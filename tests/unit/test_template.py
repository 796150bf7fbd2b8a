"""template.yaml and samconfig.toml: the deployment rules a platform team relies on, checked offline.

The template is read by ``local_env.load_template``: a SafeLoader that understands CloudFormation's short-form
tags (``!Ref``, ``!Sub``, ``!GetAtt``, ``!If`` …) and turns them into their long form, as CloudFormation does.
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_env import load_template

from bytemark_cache.domain.expiry import DEFAULT_DAY_PASS_LABEL

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
SAMCONFIG = ROOT / "samconfig.toml"
OPERATIONS = ROOT / "docs" / "operations.md"

CONTRACT_SETTINGS = {
    "MONGODB_DATABASE",
    "CACHE_COLLECTION",
    "LOG_COLLECTION",
    "MYSQL_HOST",
    "MYSQL_PORT",
    "MYSQL_DATABASE",
    "BYTEMARK_API_URL",
    "BYTEMARK_TIMEOUT_SECONDS",
    "BYTEMARK_PAGE_SIZE",
    "CACHE_TTL_SECONDS",
    "UPDATE_QUEUE_URL",
    "AGENCY_TIMEZONE",
    "DAY_PASS_LABEL",
    "PASSES4_LIMIT",
    "MONGODB_SECRET_ARN",
    "MYSQL_SECRET_ARN",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
}
# Each function's Powertools service: the "service" dimension of its metrics (one series per function).
SERVICES = {
    "OnDemandCheckFunction": "on-demand-check",
    "UserUpdatesFunction": "user-updates",
    "ScheduledBackfillFunction": "scheduled-backfill",
}
# The metrics the code emits, per service (docs/operations.md lists them; alarms and the dashboard use them).
METRICS = {
    "on-demand-check": {
        "TicketsFromCache",
        "TicketsRefreshQueued",
        "TicketsSynced",
        "TicketsBuilt",
        "TicketsFromSharedSync",
        "TicketsServedStale",
        "UpstreamFailure",
        "BytemarkTokenRevoked",
        "ForcedSyncRateLimited",
        "UnauthenticatedRequests",
        "NoBytemarkAccount",
        "RouteNotFound",
        "InvalidEvent",
        "StoreUnavailable",
        "ChangedPasses",
        "BytemarkRequests",
        "SyncLatency",
    },
    "user-updates": {
        "UsersSynced",
        "ChangedPasses",
        "ActivationsMarked",
        "MessagesRetried",
        "MessagesDeadLettered",
        "BytemarkTokenRevoked",
        "NoBytemarkAccount",
        "BytemarkRequests",
    },
    "scheduled-backfill": {"BackfillScanned", "BackfillEnqueued", "InvalidBackfillInput", "ChangeLogPruned"},
}
METRICS_NAMESPACE = {"Fn::Sub": "BytemarkTicketCache/${AWS::StackName}"}
ALARM_ACTION = {"Fn::If": ["HasAlarmTopic", {"Ref": "AlarmTopicArn"}, {"Ref": "AlarmTopic"}]}
# AWS managed policies a role may attach: each lists its actions explicitly (no wildcard actions).
ALLOWED_MANAGED_POLICIES = {"service-role/AWSLambdaVPCAccessExecutionRole"}
# SAM policy templates whose expansion is scoped to the resource passed in.
ALLOWED_POLICY_TEMPLATES = {
    "SQSSendMessagePolicy",
    "AWSSecretsManagerGetSecretValuePolicy",
    "SQSPollerPolicy",
}
NO_VALUE = {"Ref": "AWS::NoValue"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def samconfig() -> dict[str, Any]:
    return tomllib.loads(SAMCONFIG.read_text())


# ---------------------------------------------------------------- helpers


def resources_of(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == resource_type}


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = resources_of(template, "AWS::Serverless::Function")
    assert found, "the template defines no AWS::Serverless::Function"
    return found


def function_setting(template: dict[str, Any], function: dict[str, Any], name: str) -> Any:
    """A function property, falling back to Globals.Function as SAM does."""
    properties = function.get("Properties", {})
    if name in properties:
        return properties[name]
    return template.get("Globals", {}).get("Function", {}).get(name)


def branches(value: Any) -> Iterator[Any]:
    """Every value an ``Fn::If`` may produce (recursively), without ``AWS::NoValue``."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        for branch in value["Fn::If"][1:]:
            yield from branches(branch)
    elif value != NO_VALUE:
        yield value


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of every mapping in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def strings(node: Any) -> Iterator[str]:
    """Every string leaf in ``node``."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def policy_statements(template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every IAM statement in the template (inline role policies, policy resources, SAM statements)."""
    for key, value in walk(template["Resources"]):
        if key == "Statement":
            items = value if isinstance(value, list) else [value]
            for item in items:
                for statement in branches(item):
                    assert isinstance(statement, dict), f"unexpected statement {statement!r}"
                    yield statement


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def ref_target(value: Any) -> str | None:
    """The logical id named by ``Ref`` or ``Fn::GetAtt``, else None."""
    if isinstance(value, dict):
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            return str(value["Fn::GetAtt"][0])
    return None


def events_of(function: dict[str, Any], *types: str) -> dict[str, dict[str, Any]]:
    events = function.get("Properties", {}).get("Events", {}) or {}
    return {name: event for name, event in events.items() if event["Type"] in types}


def timeout_of(template: dict[str, Any], function: dict[str, Any]) -> int:
    timeout = function_setting(template, function, "Timeout")
    assert isinstance(timeout, int), "function timeouts must be literal integers to be checkable"
    return timeout


def environment_of(template: dict[str, Any], function: dict[str, Any]) -> dict[str, Any]:
    """The function's environment as SAM merges it: Globals' variables, the function's own winning."""
    merged = dict(template["Globals"]["Function"].get("Environment", {}).get("Variables", {}))
    merged.update(function["Properties"].get("Environment", {}).get("Variables", {}))
    return merged


def alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Alarm logical id → its Properties."""
    return {name: res["Properties"] for name, res in resources_of(template, "AWS::CloudWatch::Alarm").items()}


def alarm_metrics(alarm: dict[str, Any]) -> list[dict[str, Any]]:
    """Every metric an alarm reads ({Namespace, MetricName, Dimensions}), single-metric or metric math."""
    if "MetricName" in alarm:
        return [{key: alarm.get(key) for key in ("Namespace", "MetricName", "Dimensions")}]
    return [query["MetricStat"]["Metric"] for query in alarm["Metrics"] if "MetricStat" in query]


def dimensions(metric: dict[str, Any]) -> dict[str, Any]:
    return {item["Name"]: item["Value"] for item in metric.get("Dimensions") or []}


def alias_dimensions(service: str) -> dict[str, Any]:
    """FunctionName + Resource of the function's "live" alias, as the template writes them."""
    return {
        "FunctionName": {"Fn::Sub": f"${{AWS::StackName}}-{service}"},
        "Resource": {"Fn::Sub": f"${{AWS::StackName}}-{service}:live"},
    }


def alarm_named(template: dict[str, Any], suffix: str) -> tuple[str, dict[str, Any]]:
    """The alarm whose AlarmName is ``${AWS::StackName}-<suffix>``."""
    found = [
        (name, alarm)
        for name, alarm in alarms(template).items()
        if alarm["AlarmName"] == {"Fn::Sub": f"${{AWS::StackName}}-{suffix}"}
    ]
    assert len(found) == 1, f"no single alarm named <stack>-{suffix}: {found}"
    return found[0]


# ---------------------------------------------------------------- architecture and layer


def test_every_function_and_the_layer_share_one_architecture(template: dict[str, Any]) -> None:
    architectures: dict[str, tuple[str, ...]] = {}
    for name, function in functions(template).items():
        value = function_setting(template, function, "Architectures")
        assert value, f"{name} has no Architectures (neither its own nor in Globals)"
        architectures[name] = tuple(value)
    for name, layer in resources_of(template, "AWS::Serverless::LayerVersion").items():
        architectures[name] = tuple(layer["Properties"]["CompatibleArchitectures"])
        architectures[f"{name} BuildArchitecture"] = (layer["Metadata"]["BuildArchitecture"],)
    assert all(len(value) == 1 for value in architectures.values()), architectures
    assert len(set(architectures.values())) == 1, f"mixed architectures: {architectures}"


def test_the_shared_layer_is_built_by_sam_from_an_unnested_package(template: dict[str, Any]) -> None:
    layer = template["Resources"]["SharedLayer"]
    runtime = template["Globals"]["Function"]["Runtime"]
    assert layer["Metadata"]["BuildMethod"] == runtime == "python3.13"
    assert runtime in layer["Properties"]["CompatibleRuntimes"]
    source = ROOT / layer["Properties"]["ContentUri"]
    assert (source / "requirements.txt").is_file()
    assert (source / "bytemark_cache" / "__init__.py").is_file()
    # SAM adds python/ itself; a nested one would end up as python/python/ and break every import.
    assert not (source / "python").exists()


def test_every_function_runs_with_the_shared_layer(template: dict[str, Any]) -> None:
    for name, function in functions(template).items():
        layers = function_setting(template, function, "Layers") or []
        assert {"Ref": "SharedLayer"} in layers, f"{name} does not use SharedLayer"
        assert function_setting(template, function, "Runtime") == "python3.13", name


def test_every_handler_file_exists_and_defines_its_handler(template: dict[str, Any]) -> None:
    for name, function in functions(template).items():
        properties = function["Properties"]
        module, _, attribute = properties["Handler"].rpartition(".")
        source = ROOT / properties["CodeUri"] / (module.replace(".", "/") + ".py")
        assert source.is_file(), f"{name}: {source} does not exist"
        tree = ast.parse(source.read_text(), filename=str(source))
        defined = {
            node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        assert attribute in defined, f"{name}: {source} defines no top-level {attribute}()"


def test_globals_carry_tracing_and_every_spec_setting(template: dict[str, Any]) -> None:
    globals_function = template["Globals"]["Function"]
    assert globals_function["Tracing"] == "Active"
    assert isinstance(globals_function["MemorySize"], int)
    variables = globals_function["Environment"]["Variables"]
    assert set(variables) >= CONTRACT_SETTINGS, f"missing: {sorted(CONTRACT_SETTINGS - set(variables))}"
    assert variables["UPDATE_QUEUE_URL"] == {"Ref": "UpdateQueue"}
    # The agency's day-pass rule is a deploy choice, its default the code's.
    assert variables["DAY_PASS_LABEL"] == {"Ref": "DayPassLabel"}
    assert template["Parameters"]["DayPassLabel"]["Default"] == DEFAULT_DAY_PASS_LABEL
    # One namespace per stack: dev and prod in one account never share a series.
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == METRICS_NAMESPACE
    # The service is per function (below), never a shared default.
    assert "POWERTOOLS_SERVICE_NAME" not in variables
    # Secrets never sit in the environment in clear: only their ARNs do.
    assert not {"MONGODB_URI", "MYSQL_PASSWORD", "MYSQL_USER"} & set(variables)


def test_function_timeouts_fit_their_triggers(template: dict[str, Any]) -> None:
    timeouts = {name: timeout_of(template, function) for name, function in functions(template).items()}
    assert timeouts["OnDemandCheckFunction"] <= 29, "API Gateway gives up after 29 s"
    assert timeouts["OnDemandCheckFunction"] == 15
    assert timeouts["UserUpdatesFunction"] >= 30
    assert timeouts["ScheduledBackfillFunction"] >= 120
    # Every function states its own timeout (the local stack reads them from the built template).
    assert all("Timeout" in function["Properties"] for function in functions(template).values())
    assert "Timeout" not in template["Globals"]["Function"]


def test_each_function_has_its_own_metrics_service(template: dict[str, Any]) -> None:
    services = {
        name: function["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
        for name, function in functions(template).items()
    }
    assert services == SERVICES


def test_on_demand_check_reads_the_identity_claim_and_a_short_bytemark_budget(
    template: dict[str, Any],
) -> None:
    function = template["Resources"]["OnDemandCheckFunction"]
    variables = function["Properties"]["Environment"]["Variables"]
    assert variables["IDENTITY_CLAIM"] == {"Ref": "IdentityClaim"}
    parameter = template["Parameters"]["IdentityClaim"]
    assert parameter["Default"] == "custom:user_id"
    assert re.fullmatch(parameter["AllowedPattern"], "custom:user_id")
    # Cognito's sub is a UUID, never the portal's user id: a deploy naming it is refused.
    assertions = template["Rules"]["IdentityClaimIsNotSub"]["Assertions"]
    assert assertions[0]["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "IdentityClaim"}, "sub"]}]}
    # Literal strings (the code parses them; the local stack copies them).
    assert variables["BYTEMARK_TIMEOUT_SECONDS"] == "5"
    assert variables["BYTEMARK_MAX_RETRIES"] == "1"
    attempts = int(variables["BYTEMARK_MAX_RETRIES"]) + 1
    assert attempts * float(variables["BYTEMARK_TIMEOUT_SECONDS"]) < timeout_of(template, function)


def test_user_updates_dead_letters_itself_and_delays_retries(template: dict[str, Any]) -> None:
    variables = template["Resources"]["UserUpdatesFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["UPDATE_DLQ_URL"] == {"Ref": "UpdateDeadLetterQueue"}
    assert (variables["REDELIVERY_BASE_SECONDS"], variables["REDELIVERY_CAP_SECONDS"]) == ("60", "7200")


def test_backfill_reads_the_change_log_retention(template: dict[str, Any]) -> None:
    variables = template["Resources"]["ScheduledBackfillFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["CHANGE_LOG_RETENTION_DAYS"] == {"Ref": "ChangeLogRetentionDays"}
    assert template["Parameters"]["ChangeLogRetentionDays"]["Default"] == 400


def test_only_the_functions_that_need_them_get_the_new_settings(template: dict[str, Any]) -> None:
    owners = {
        "IDENTITY_CLAIM": "OnDemandCheckFunction",
        "UPDATE_DLQ_URL": "UserUpdatesFunction",
        "CHANGE_LOG_RETENTION_DAYS": "ScheduledBackfillFunction",
    }
    for variable, owner in owners.items():
        having = {
            name
            for name, function in functions(template).items()
            if variable in environment_of(template, function)
        }
        assert having == {owner}, variable


# ---------------------------------------------------------------- deploys


def test_every_function_publishes_the_live_alias_on_any_change(template: dict[str, Any]) -> None:
    for name, function in functions(template).items():
        assert function_setting(template, function, "AutoPublishAlias") == "live", name
        # A configuration change (environment, timeout, layer) must publish a version too.
        assert function["Properties"]["AutoPublishAliasAllProperties"] is True, name


def test_deployment_preferences_shift_traffic_with_rollback_alarms(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    preferences = {
        name: function["Properties"]["DeploymentPreference"] for name, function in functions(template).items()
    }
    assert {name: pref["Type"] for name, pref in preferences.items()} == {
        "OnDemandCheckFunction": "Canary10Percent5Minutes",
        "UserUpdatesFunction": "Linear10PercentEvery1Minute",
        "ScheduledBackfillFunction": "AllAtOnce",
    }
    for name, preference in preferences.items():
        assert ref_target(preference["Role"]) == "DeploymentRole", name
        for alarm in preference.get("Alarms", []):
            assert resources[ref_target(alarm) or ""]["Type"] == "AWS::CloudWatch::Alarm", (name, alarm)

    api_rollback = {ref_target(alarm) for alarm in preferences["OnDemandCheckFunction"]["Alarms"]}
    errors, _ = alarm_named(template, "on-demand-check-errors")
    latency, latency_alarm = alarm_named(template, "api-latency-p99")
    server_errors, _ = alarm_named(template, "api-5xx")
    assert api_rollback == {errors, latency, server_errors}
    # Alias-level errors: the canary's own invocations, not $LATEST's.
    [metric] = alarm_metrics(alarms(template)[errors])
    assert (metric["Namespace"], metric["MetricName"]) == ("AWS/Lambda", "Errors")
    assert dimensions(metric) == alias_dimensions("on-demand-check")
    assert (latency_alarm["MetricName"], latency_alarm["ExtendedStatistic"]) == ("Latency", "p99")

    updates_rollback = {ref_target(alarm) for alarm in preferences["UserUpdatesFunction"]["Alarms"]}
    assert updates_rollback == {alarm_named(template, "user-updates-errors")[0]}


def test_the_deployment_role_only_shifts_this_stacks_aliases(template: dict[str, Any]) -> None:
    role = template["Resources"]["DeploymentRole"]["Properties"]
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "codedeploy.amazonaws.com"}
    assert "ManagedPolicyArns" not in role
    statements = [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]
    actions = {action for s in statements for action in strings(s["Action"])}
    assert actions == {
        "lambda:GetAlias",
        "lambda:UpdateAlias",
        "lambda:GetProvisionedConcurrencyConfig",
        "cloudwatch:DescribeAlarms",
    }
    resources = [text for s in statements for res in as_list(s["Resource"]) for text in strings(res)]
    assert all("${AWS::StackName}-" in text for text in resources), resources


def test_the_backfill_runs_one_invocation_at_a_time(template: dict[str, Any]) -> None:
    backfill = template["Resources"]["ScheduledBackfillFunction"]["Properties"]
    assert backfill["ReservedConcurrentExecutions"] == 1
    others = ("OnDemandCheckFunction", "UserUpdatesFunction")
    assert not [n for n in others if "ReservedConcurrentExecutions" in template["Resources"][n]["Properties"]]


# ---------------------------------------------------------------- SQS


def test_sqs_event_reports_batch_item_failures(template: dict[str, Any]) -> None:
    events = events_of(template["Resources"]["UserUpdatesFunction"], "SQS")
    assert len(events) == 1, events
    properties = next(iter(events.values()))["Properties"]
    assert ref_target(properties["Queue"]) == "UpdateQueue"
    assert "ReportBatchItemFailures" in properties["FunctionResponseTypes"]
    assert properties["BatchSize"] == 10
    assert "MaximumBatchingWindowInSeconds" in properties
    assert "MaximumConcurrency" in properties["ScalingConfig"]


def test_update_queue_redrives_to_the_dead_letter_queue(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    redrive = resources["UpdateQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["UpdateDeadLetterQueue", "Arn"]}
    assert redrive["maxReceiveCount"] == 10
    assert resources["UpdateDeadLetterQueue"]["Properties"]["MessageRetentionPeriod"] == 14 * 86400


def test_transient_failures_survive_a_six_hour_outage(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    queue = resources["UpdateQueue"]["Properties"]
    variables = resources["UserUpdatesFunction"]["Properties"]["Environment"]["Variables"]
    base, cap = int(variables["REDELIVERY_BASE_SECONDS"]), int(variables["REDELIVERY_CAP_SECONDS"])
    receives = queue["RedrivePolicy"]["maxReceiveCount"]
    # After each of the receives the handler delays the message by min(base x 2^(n-1), cap), equal jitter.
    ceilings = [min(base * 2 ** (receive - 1), cap) for receive in range(1, receives + 1)]
    assert sum(ceilings) * 0.75 >= 6 * 3600, "on average a message survives about 6 h of outage"
    assert sum(ceilings) * 0.5 >= 4 * 3600, "and never less than 4 h"
    assert queue["MessageRetentionPeriod"] >= 4 * 86400 > sum(ceilings)
    assert cap <= 12 * 3600, "SQS refuses visibility timeouts over 12 h"


def test_every_queue_is_encrypted(template: dict[str, Any]) -> None:
    queues = resources_of(template, "AWS::SQS::Queue")
    assert {"UpdateQueue", "UpdateDeadLetterQueue"} <= set(queues)
    for name, queue in queues.items():
        properties = queue["Properties"]
        assert properties.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in properties, name


def test_visibility_timeout_is_at_least_six_times_the_consumer_timeout(template: dict[str, Any]) -> None:
    checked = 0
    for function in functions(template).values():
        for event in events_of(function, "SQS").values():
            queue = template["Resources"][ref_target(event["Properties"]["Queue"]) or ""]
            visibility = queue["Properties"]["VisibilityTimeout"]
            assert visibility >= 6 * timeout_of(template, function)
            checked += 1
    assert checked == 1


# ---------------------------------------------------------------- IAM


def test_only_user_updates_may_write_to_the_dead_letter_queue(template: dict[str, Any]) -> None:
    writers = set()
    for name, role in resources_of(template, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            for item in policy["PolicyDocument"]["Statement"]:
                for statement in branches(item):
                    targets = {ref_target(res) for res in as_list(statement["Resource"])}
                    if "UpdateDeadLetterQueue" in targets:
                        assert set(strings(statement["Action"])) == {"sqs:SendMessage"}, name
                        writers.add(name)
    assert writers == {"UserUpdatesRole"}


def test_no_iam_action_uses_a_wildcard(template: dict[str, Any]) -> None:
    actions = [
        action for key, value in walk(template["Resources"]) if key == "Action" for action in strings(value)
    ]
    assert actions, "no IAM actions found at all"
    assert not [action for action in actions if "*" in action]
    assert not [key for key, _ in walk(template["Resources"]) if key == "NotAction"]


def test_roles_attach_only_explicit_managed_policies(template: dict[str, Any]) -> None:
    for name, role in resources_of(template, "AWS::IAM::Role").items():
        for arns in branches(role["Properties"].get("ManagedPolicyArns", [])):
            for arn in as_list(arns):
                text = " ".join(strings(arn))
                assert any(text.endswith(f":policy/{allowed}") for allowed in ALLOWED_MANAGED_POLICIES), (
                    name,
                    text,
                )


def test_functions_use_scoped_roles_or_scoped_policy_templates(template: dict[str, Any]) -> None:
    roles = resources_of(template, "AWS::IAM::Role")
    for name, function in functions(template).items():
        properties = function["Properties"]
        if "Role" in properties:
            assert ref_target(properties["Role"]) in roles, f"{name} uses a role from outside the template"
            assert "Policies" not in properties
            continue
        for policy in as_list(properties.get("Policies", [])):
            # A bare string is an AWS managed policy name, unscoped by definition.
            assert isinstance(policy, dict), f"{name}: {policy!r}"
            assert "Statement" in policy or set(policy) <= ALLOWED_POLICY_TEMPLATES, f"{name}: {policy!r}"


def test_secrets_are_read_only_by_their_arns(template: dict[str, Any]) -> None:
    secret_statements = [
        statement
        for statement in policy_statements(template)
        if any(action.startswith("secretsmanager:") for action in strings(statement["Action"]))
    ]
    assert len(secret_statements) == len(functions(template))
    for statement in secret_statements:
        assert set(strings(statement["Action"])) == {"secretsmanager:GetSecretValue"}
        assert as_list(statement["Resource"]) == [{"Ref": "MongoDbSecretArn"}, {"Ref": "MySqlSecretArn"}]


def test_backfill_may_fill_the_update_queue_and_continue_itself(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    backfill = resources["ScheduledBackfillFunction"]["Properties"]
    role = resources[ref_target(backfill["Role"]) or ""]
    statements = [
        statement
        for policy in role["Properties"]["Policies"]
        for item in policy["PolicyDocument"]["Statement"]
        for statement in branches(item)
    ]
    grants = [
        (set(strings(s["Action"])), resource) for s in statements for resource in as_list(s["Resource"])
    ]
    assert any("sqs:SendMessage" in actions and ref_target(res) == "UpdateQueue" for actions, res in grants)
    # The self-invocation grant names the function's own (fixed) name: a constructed ARN, no cycle.
    name = backfill["FunctionName"]["Fn::Sub"]
    invoke_resources = [res["Fn::Sub"] for actions, res in grants if "lambda:InvokeFunction" in actions]
    assert invoke_resources, "the back-fill cannot invoke itself"
    assert {arn.split(":function:", 1)[1] for arn in invoke_resources} <= {name, f"{name}:*"}
    destination = backfill["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"]
    assert any("sqs:SendMessage" in actions and res == destination for actions, res in grants)


# ---------------------------------------------------------------- API


def _security_schemes(api: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Scheme name → every form the scheme can take (one per Fn::If branch)."""
    definitions = api["Properties"]["DefinitionBody"].get("securityDefinitions", {})
    return {name: list(branches(value)) for name, value in definitions.items()}


def _operation_is_authorized(api: dict[str, Any], path: str, method: str) -> bool:
    body = api["Properties"].get("DefinitionBody")
    auth = api["Properties"].get("Auth") or {}
    default = auth.get("DefaultAuthorizer")
    if default and default != "NONE" and default in (auth.get("Authorizers") or {}):
        return True
    if not body:
        return False
    operation = body.get("paths", {}).get(path, {}).get(method.lower())
    if not operation or not operation.get("security"):
        return False
    schemes = _security_schemes(api)
    for requirement in operation["security"]:
        for name in requirement:
            forms = schemes.get(name, [])
            if not forms or not all("x-amazon-apigateway-authorizer" in form for form in forms):
                return False
    return True


def test_every_api_route_requires_the_authorizer(template: dict[str, Any]) -> None:
    apis = resources_of(template, "AWS::Serverless::Api")
    routes: set[tuple[str, str]] = set()
    for name, function in functions(template).items():
        for event_name, event in events_of(function, "Api", "HttpApi").items():
            properties = event["Properties"]
            api_id = ref_target(properties.get("RestApiId"))
            # An event without RestApiId lands on SAM's implicit API, which has no authorizer.
            assert api_id in apis, f"{name}.{event_name} is not on an explicit API"
            assert (properties.get("Auth") or {}).get("Authorizer") != "NONE", f"{name}.{event_name}"
            assert _operation_is_authorized(apis[api_id], properties["Path"], properties["Method"]), (
                f"{name}.{event_name}: {properties['Method']} {properties['Path']} has no authorizer"
            )
            routes.add((properties["Method"].upper(), properties["Path"]))
    assert routes == {("GET", "/tickets"), ("POST", "/tickets/sync")}
    for api_name, api in apis.items():
        body = api["Properties"].get("DefinitionBody") or {}
        if body:
            # SAM only merges the events' integrations into an inline definition with MergeDefinitions.
            assert api["Properties"].get("MergeDefinitions") is True, api_name
        for path, operations in body.get("paths", {}).items():
            for method in operations:
                assert _operation_is_authorized(api, path, method), f"{api_name}: {method} {path}"


def test_the_authorizer_is_cognito_or_lambda_by_parameter(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    assert parameters["AuthorizerType"]["AllowedValues"] == ["COGNITO", "LAMBDA"]
    forms = _security_schemes(template["Resources"]["TicketsApi"])["TicketsAuthorizer"]
    assert [form["x-amazon-apigateway-authtype"] for form in forms] == ["cognito_user_pools", "custom"]
    cognito, custom = (form["x-amazon-apigateway-authorizer"] for form in forms)
    assert cognito["type"] == "cognito_user_pools"
    assert cognito["providerARNs"] == [{"Ref": "UserPoolArn"}]
    assert set(branches(custom["type"])) == {"token", "request"}
    assert "${AuthorizerFunctionArn}" in custom["authorizerUri"]["Fn::Sub"]
    assert custom["identitySource"] == "method.request.header.Authorization"
    permission = template["Resources"]["AuthorizerInvokePermission"]
    assert permission["Condition"] == "UseLambdaAuthorizer"
    assert permission["Properties"]["FunctionName"] == {"Ref": "AuthorizerFunctionArn"}


# ---------------------------------------------------------------- schedules, alarms, outputs


def _is_daily(expression: str) -> bool:
    if expression == "rate(1 day)":
        return True
    # cron(minutes hours day-of-month month day-of-week year): one fixed time, every day.
    match = re.fullmatch(r"cron\((\d+) (\d+) ([*?]) \* ([*?]) \*\)", expression)
    return match is not None


def test_backfill_runs_due_every_5_minutes_and_missing_and_prune_daily(template: dict[str, Any]) -> None:
    function = template["Resources"]["ScheduledBackfillFunction"]
    schedules = {}
    for event in events_of(function, "Schedule", "ScheduleV2").values():
        properties = event["Properties"]
        payload = json.loads(properties["Input"])
        schedules[payload["mode"]] = (properties.get("Schedule") or properties["ScheduleExpression"], payload)
    # "stale" is for manual runs only.
    assert set(schedules) == {"due", "missing", "prune"}
    assert schedules["due"][0] == "rate(5 minutes)"
    assert _is_daily(schedules["missing"][0]), schedules["missing"][0]
    assert _is_daily(schedules["prune"][0]), schedules["prune"][0]
    # Not at the same time: reserved concurrency 1 would make one wait behind the other.
    assert schedules["missing"][0] != schedules["prune"][0]
    for event in events_of(function, "ScheduleV2").values():
        # Unique per account and region: two stacks (dev, prod) must not fight over one schedule name.
        assert event["Properties"]["Name"]["Fn::Sub"].startswith("${AWS::StackName}-"), event
    for mode, (_expression, payload) in schedules.items():
        # The run id is the same for every retry of one firing: that is what makes retries idempotent.
        assert payload == {"mode": mode, "cursor": None, "run_id": f"{mode}:<aws.scheduler.scheduled-time>"}


def test_backfill_async_failures_are_bounded_and_kept(template: dict[str, Any]) -> None:
    config = template["Resources"]["ScheduledBackfillFunction"]["Properties"]["EventInvokeConfig"]
    assert 0 <= config["MaximumRetryAttempts"] <= 2
    assert 60 <= config["MaximumEventAgeInSeconds"] <= 21600
    on_failure = config["DestinationConfig"]["OnFailure"]
    assert on_failure["Type"] == "SQS"
    assert template["Resources"][ref_target(on_failure["Destination"]) or ""]["Type"] == "AWS::SQS::Queue"


def test_a_non_empty_dead_letter_queue_raises_an_alarm(template: dict[str, Any]) -> None:
    found = [
        alarm
        for alarm in alarms(template).values()
        if alarm.get("MetricName") == "ApproximateNumberOfMessagesVisible"
        and {"Name": "QueueName", "Value": {"Fn::GetAtt": ["UpdateDeadLetterQueue", "QueueName"]}}
        in alarm["Dimensions"]
    ]
    assert len(found) == 1
    alarm = found[0]
    assert alarm["Namespace"] == "AWS/SQS"
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    assert alarm["AlarmActions"] == [ALARM_ACTION]


def test_every_alarm_notifies_the_alarm_topic(template: dict[str, Any]) -> None:
    found = alarms(template)
    assert len(found) >= 14
    for name, alarm in found.items():
        # ALARM and OK both notify: the given topic, else the stack's own - never no action at all.
        assert alarm["AlarmActions"] == [ALARM_ACTION], name
        assert alarm["OKActions"] == [ALARM_ACTION], name
        assert alarm["AlarmName"]["Fn::Sub"].startswith("${AWS::StackName}-"), name
    topic = template["Resources"]["AlarmTopic"]
    assert topic["Type"] == "AWS::SNS::Topic"
    conditions = template["Conditions"]
    assert topic["Condition"] == "CreateAlarmTopic"
    assert conditions["CreateAlarmTopic"] == {"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}
    assert conditions["HasAlarmTopic"] == {"Fn::Not": [conditions["CreateAlarmTopic"]]}
    subscription = template["Resources"]["AlarmEmailSubscription"]
    assert subscription["Condition"] == "SubscribeAlarmEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""


def test_the_alarms_cover_functions_api_bytemark_backfill_and_queues(template: dict[str, Any]) -> None:
    found = alarms(template)
    for service in SERVICES.values():
        [errors] = alarm_metrics(alarm_named(template, f"{service}-errors")[1])
        assert (errors["Namespace"], errors["MetricName"]) == ("AWS/Lambda", "Errors")
        assert dimensions(errors) == alias_dimensions(service)
        [throttles] = alarm_metrics(alarm_named(template, f"{service}-throttles")[1])
        assert (throttles["Namespace"], throttles["MetricName"]) == ("AWS/Lambda", "Throttles")
        assert dimensions(throttles)["FunctionName"] == {"Fn::Sub": f"${{AWS::StackName}}-{service}"}

    api = {"ApiName": {"Fn::Sub": "${AWS::StackName}-tickets"}, "Stage": {"Ref": "StageName"}}
    server_errors = alarm_named(template, "api-5xx")[1]
    assert {m["MetricName"] for m in alarm_metrics(server_errors)} == {"Count", "5XXError"}
    assert all(dimensions(m) == api for m in alarm_metrics(server_errors))
    latency = alarm_named(template, "api-latency-p99")[1]
    assert dimensions(alarm_metrics(latency)[0]) == api
    assert latency["Threshold"] == {"Ref": "ApiLatencyP99AlarmMs"}

    outage = alarm_named(template, "bytemark-outage")[1]
    answers = {m["MetricName"] for m in alarm_metrics(outage)}
    assert answers == {name for name in METRICS["on-demand-check"] if name.startswith("Tickets")} | {
        "UpstreamFailure"
    }
    [expression] = [q["Expression"] for q in outage["Metrics"] if q.get("ReturnData")]
    assert {"stale", "failed", "answers"} <= set(re.findall(r"[a-z]+", expression))
    assert outage["Threshold"] == {"Ref": "BytemarkOutageAlarmPercent"}

    heartbeat = alarm_named(template, "backfill-heartbeat")[1]
    assert heartbeat["MetricName"] == "BackfillScanned"
    assert heartbeat["TreatMissingData"] == "breaching"
    assert heartbeat["Period"] * heartbeat["EvaluationPeriods"] == 15 * 60

    saturated = alarm_named(template, "user-updates-saturated")[1]
    assert saturated["MetricName"] == "ConcurrentExecutions"
    assert saturated["Threshold"] == {"Ref": "UpdatesMaximumConcurrency"}
    assert saturated["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert saturated["EvaluationPeriods"] >= 3

    age = alarm_named(template, "update-queue-backlog")[1]
    assert age["MetricName"] == "ApproximateAgeOfOldestMessage"
    assert dimensions(age) == {"QueueName": {"Fn::GetAtt": ["UpdateQueue", "QueueName"]}}
    alarm_named(template, "update-dlq-not-empty")
    failures = alarm_named(template, "backfill-failures")[1]
    assert dimensions(failures) == {"QueueName": {"Fn::GetAtt": ["BackfillFailureQueue", "QueueName"]}}
    assert len(found) == 14


def test_custom_metric_alarms_read_metrics_the_code_emits(template: dict[str, Any]) -> None:
    checked = 0
    for name, alarm in alarms(template).items():
        for metric in alarm_metrics(alarm):
            if str(metric["Namespace"]).startswith("AWS/"):
                continue
            assert metric["Namespace"] == METRICS_NAMESPACE, name
            service = dimensions(metric)
            assert set(service) == {"service"}, name
            assert metric["MetricName"] in METRICS[service["service"]], (name, metric["MetricName"])
            checked += 1
    assert checked >= 8


def test_every_function_logs_json_to_a_group_with_retention(template: dict[str, Any]) -> None:
    groups = resources_of(template, "AWS::Logs::LogGroup")
    for name, function in functions(template).items():
        logging_config = function["Properties"]["LoggingConfig"]
        group = ref_target(logging_config["LogGroup"])
        assert group in groups, name
        assert groups[group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        # JSON for the runtime's own lines too (START/END/REPORT, platform errors), not only Powertools'.
        assert logging_config["LogFormat"] == "JSON", name


def test_the_dashboard_shows_every_function_queue_and_metric(template: dict[str, Any]) -> None:
    [dashboard] = resources_of(template, "AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    assert isinstance(body, str)
    # Valid JSON once CloudFormation has substituted (numbers for the numeric parameters).
    numeric = {"ApiLatencyP99AlarmMs", "BytemarkOutageAlarmPercent", "UpdatesMaximumConcurrency"}
    rendered = re.sub(r"\$\{([^}]+)\}", lambda match: "1" if match.group(1) in numeric else "x", body)
    widgets = json.loads(rendered)["widgets"]
    assert len(widgets) >= 10
    for service in SERVICES.values():
        assert f"${{AWS::StackName}}-{service}" in body, service
    for queue in ("UpdateQueue", "UpdateDeadLetterQueue", "BackfillFailureQueue"):
        assert f"${{{queue}.QueueName}}" in body, queue
    assert "BytemarkTicketCache/${AWS::StackName}" in body
    named = set(re.findall(r'"([0-9A-Z][A-Za-z0-9]+)"', body))
    emitted = set().union(*METRICS.values())
    assert emitted <= named, f"not on the dashboard: {sorted(emitted - named)}"
    for metric in ("5XXError", "Latency", "Errors", "Throttles", "ConcurrentExecutions"):
        assert metric in named, metric
    for metric in ("ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage"):
        assert metric in named, metric


def test_operations_doc_covers_every_alarm_and_metric(template: dict[str, Any]) -> None:
    text = OPERATIONS.read_text()
    for name, alarm in alarms(template).items():
        suffix = alarm["AlarmName"]["Fn::Sub"].removeprefix("${AWS::StackName}-")
        assert f"`{suffix}`" in text, f"docs/operations.md has no runbook entry for {name} ({suffix})"
    for metric in set().union(*METRICS.values()):
        assert f"`{metric}`" in text, f"docs/operations.md does not describe {metric}"


def test_outputs_name_the_api_queues_functions_and_layer(template: dict[str, Any]) -> None:
    expected = {"ApiUrl", "UpdateQueueUrl", "UpdateQueueArn", "UpdateDeadLetterQueueUrl", "SharedLayerArn"}
    expected |= {f"{name}Arn" for name in functions(template)}
    expected |= {"AlarmTopicArn", "DashboardUrl"}
    assert expected <= set(template["Outputs"])


def test_optional_vpc_is_applied_only_when_subnets_are_given(template: dict[str, Any]) -> None:
    assert template["Parameters"]["VpcSubnetIds"]["Type"] == "CommaDelimitedList"
    vpc = template["Globals"]["Function"]["VpcConfig"]
    assert vpc["Fn::If"][0] == "HasVpc"
    assert vpc["Fn::If"][2] == NO_VALUE
    assert template["Conditions"]["HasVpc"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "VpcSubnetIds"}]}, ""]}]
    }


# ---------------------------------------------------------------- samconfig.toml


def _overrides(value: str | list[str]) -> dict[str, str]:
    items = value if isinstance(value, list) else value.split()
    return dict(item.split("=", 1) for item in items)


@pytest.mark.parametrize("env", ["default", "dev", "prod"])
def test_samconfig_environment_is_complete(
    env: str, samconfig: dict[str, Any], template: dict[str, Any]
) -> None:
    assert samconfig["version"] == 0.1
    section = samconfig[env]
    assert section["validate"]["parameters"]["lint"] is True
    assert section["build"]["parameters"]["cached"] is True
    assert section["build"]["parameters"]["parallel"] is True
    deploy = section["deploy"]["parameters"]
    assert section["global"]["parameters"]["stack_name"]
    assert len(section["global"]["parameters"]["stack_name"]) <= 45  # function names stay <= 64
    assert "CAPABILITY_IAM" in deploy["capabilities"]
    assert isinstance(deploy["confirm_changeset"], bool)
    overrides = _overrides(deploy["parameter_overrides"])
    parameters = template["Parameters"]
    assert set(overrides) <= set(parameters), (
        f"unknown parameters: {sorted(set(overrides) - set(parameters))}"
    )
    required = {name for name, spec in parameters.items() if "Default" not in spec}
    assert required <= set(overrides), f"{env} would deploy without {sorted(required - set(overrides))}"
    for name, value in overrides.items():
        pattern = parameters[name].get("AllowedPattern")
        assert pattern is None or re.fullmatch(pattern, value), f"{env}: {name}={value}"
        allowed = parameters[name].get("AllowedValues")
        assert allowed is None or value in [str(item) for item in allowed], f"{env}: {name}={value}"


def test_prod_deploys_only_through_a_confirmed_change_set(samconfig: dict[str, Any]) -> None:
    assert samconfig["prod"]["deploy"]["parameters"]["confirm_changeset"] is True
    assert "sync" not in samconfig["prod"]
