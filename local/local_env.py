"""The local stack's settings: ``local/defaults.env`` (each value overridden by an exported variable), and
what the built template says about each function (``template_settings``).

One reader for the stack, the demo, the benchmarks, the emulator and the tests. The template decides what
must behave as deployed - timeouts, per-function variables (retries, Bytemark budget, service name), the SQS
batch and redrive, the schedules; ``defaults.env`` says where the local servers are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULTS_FILE = Path(__file__).resolve().parent / "defaults.env"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments and blank lines ignored), parsed, never executed."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        if not separator or not key.strip().isidentifier():
            raise ValueError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        values[key.strip()] = value.strip()
    return values


def local_settings(path: Path = DEFAULTS_FILE, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The settings of an env file (the embedded defaults unless told), exported variables winning."""
    return {key: environ.get(key, value) for key, value in read_env_file(path).items()}


# ---------------------------------------------------------------- the built template

BUILT_TEMPLATE = DEFAULTS_FILE.parent.parent / ".aws-sam" / "build" / "template.yaml"
"""What ``sam build`` wrote: the template the deployed stack is made from (long-form intrinsics)."""

SAM_DEFAULT_TIMEOUT = 3
SAM_DEFAULT_MEMORY_MB = 128
SQS_DEFAULT_BATCH_SIZE = 10
SQS_DEFAULT_VISIBILITY_TIMEOUT = 30


class CloudFormationLoader(yaml.SafeLoader):
    """SafeLoader that reads CloudFormation's short-form tags (``!Ref``, ``!Sub`` …) as their long form.

    ``sam build`` writes the long form already; the source template.yaml uses the short one. Both read alike.
    """


def _intrinsic(tag: str) -> Callable[[yaml.SafeLoader, yaml.Node], dict[str, Any]]:
    key = tag if tag in ("Ref", "Condition") else f"Fn::{tag}"

    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        value: Any
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if tag == "GetAtt":
                value = str(value).split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        return {key: value}

    return construct


for _tag in (
    "Ref", "Condition", "Sub", "GetAtt", "If", "Equals", "Not", "And", "Or", "Join", "Select", "Split",
    "FindInMap", "ImportValue", "Base64", "Cidr", "GetAZs", "Transform", "ToJsonString", "Length",
):  # fmt: skip
    CloudFormationLoader.add_constructor(f"!{_tag}", _intrinsic(_tag))


def load_template(path: Path = BUILT_TEMPLATE) -> dict[str, Any]:
    """A SAM/CloudFormation template as a dict, intrinsic functions in long form."""
    # A SafeLoader subclass: constructs plain data only (the tags above become dicts).
    document: dict[str, Any] = yaml.load(path.read_text(encoding="utf-8"), Loader=CloudFormationLoader)  # noqa: S506
    return document


@dataclass(frozen=True)
class FunctionSettings:
    """What the template says about one function, as the local stack uses it."""

    logical_id: str
    timeout_seconds: int
    memory_mb: int
    environment: dict[str, str]
    """The function's own variables whose value is known without deploying: literals, and ``Ref``s to a
    parameter with a default (references to resources, such as ``UPDATE_DLQ_URL``, are the stack's to set)."""
    own_variables: frozenset[str]
    """Every variable of the function's own ``Environment`` (known value or not)."""

    @property
    def service_name(self) -> str | None:
        """``POWERTOOLS_SERVICE_NAME``: the ``service`` dimension of the function's metrics."""
        return self.environment.get("POWERTOOLS_SERVICE_NAME")


@dataclass(frozen=True)
class SqsSourceSettings:
    """A function's SQS event and the queue behind it."""

    queue_logical_id: str
    batch_size: int
    batching_window_seconds: int
    visibility_timeout_seconds: int
    max_receive_count: int | None


@dataclass(frozen=True)
class TemplateSettings:
    """The settings of the built template that local runs must share with deployed ones."""

    functions: dict[str, FunctionSettings]
    """By logical id."""
    global_variables: frozenset[str]
    """Variables of ``Globals.Function.Environment`` (every function gets them)."""
    sqs_sources: dict[str, SqsSourceSettings]
    """By the logical id of the function the queue feeds."""
    schedules: dict[str, dict[str, str]]
    """Function logical id → back-fill mode → schedule expression (``rate(5 minutes)``, ``cron(…)``)."""

    def function(self, logical_id: str) -> FunctionSettings:
        """One function's settings; KeyError naming the template's functions when it has no such one."""
        try:
            return self.functions[logical_id]
        except KeyError:
            known = sorted(self.functions)
            raise KeyError(f"{logical_id} is not in the template (functions: {known})") from None

    def variables_owned_elsewhere(self, logical_id: str) -> frozenset[str]:
        """Variables other functions set for themselves and this one does not get in AWS."""
        others = set().union(*(fn.own_variables for name, fn in self.functions.items() if name != logical_id))
        return frozenset(others - self.function(logical_id).own_variables - self.global_variables)


def _known_value(value: Any, parameters: Mapping[str, Any]) -> str | None:
    """The string Lambda would see for ``value`` when knowable offline: a literal or a defaulted parameter."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, dict) and set(value) == {"Ref"}:
        parameter = parameters.get(str(value["Ref"]))
        if isinstance(parameter, dict) and "Default" in parameter:
            return _known_value(parameter["Default"], {})
    return None


def _ref_target(value: Any) -> str | None:
    if isinstance(value, dict):
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            return str(target[0] if isinstance(target, list) else str(target).split(".", 1)[0])
    return None


def template_settings(path: Path = BUILT_TEMPLATE) -> TemplateSettings:
    """Timeouts, environments, SQS sources and schedules of the functions of the template at ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `make build` first")
    template = load_template(path)
    resources: dict[str, Any] = template.get("Resources") or {}
    parameters: dict[str, Any] = template.get("Parameters") or {}
    globals_function: dict[str, Any] = (template.get("Globals") or {}).get("Function") or {}
    global_variables = (globals_function.get("Environment") or {}).get("Variables") or {}

    functions: dict[str, FunctionSettings] = {}
    sqs_sources: dict[str, SqsSourceSettings] = {}
    schedules: dict[str, dict[str, str]] = {}
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        properties: dict[str, Any] = resource.get("Properties") or {}
        variables: dict[str, Any] = (properties.get("Environment") or {}).get("Variables") or {}
        known = {name: _known_value(value, parameters) for name, value in variables.items()}

        def setting(name: str, default: int, properties: dict[str, Any] = properties) -> Any:
            # As SAM does: the function's own value, else Globals', else SAM's default.
            return properties.get(name, globals_function.get(name, default))

        functions[logical_id] = FunctionSettings(
            logical_id=logical_id,
            timeout_seconds=int(setting("Timeout", SAM_DEFAULT_TIMEOUT)),
            memory_mb=int(setting("MemorySize", SAM_DEFAULT_MEMORY_MB)),
            environment={name: value for name, value in known.items() if value is not None},
            own_variables=frozenset(variables),
        )
        for event in (properties.get("Events") or {}).values():
            event_properties: dict[str, Any] = event.get("Properties") or {}
            if event.get("Type") == "SQS":
                queue_id = _ref_target(event_properties.get("Queue")) or ""
                queue: dict[str, Any] = (resources.get(queue_id) or {}).get("Properties") or {}
                redrive: dict[str, Any] = queue.get("RedrivePolicy") or {}
                sqs_sources[logical_id] = SqsSourceSettings(
                    queue_logical_id=queue_id,
                    batch_size=int(event_properties.get("BatchSize", SQS_DEFAULT_BATCH_SIZE)),
                    batching_window_seconds=int(event_properties.get("MaximumBatchingWindowInSeconds", 0)),
                    visibility_timeout_seconds=int(
                        queue.get("VisibilityTimeout", SQS_DEFAULT_VISIBILITY_TIMEOUT)
                    ),
                    max_receive_count=(
                        int(redrive["maxReceiveCount"]) if "maxReceiveCount" in redrive else None
                    ),
                )
            elif event.get("Type") in ("Schedule", "ScheduleV2"):
                payload = json.loads(event_properties.get("Input") or "{}")
                expression = event_properties.get("ScheduleExpression") or event_properties.get("Schedule")
                if isinstance(payload, dict) and "mode" in payload and isinstance(expression, str):
                    schedules.setdefault(logical_id, {})[str(payload["mode"])] = expression
    return TemplateSettings(
        functions=functions,
        global_variables=frozenset(global_variables),
        sqs_sources=sqs_sources,
        schedules=schedules,
    )
