"""The local stack: the built bundle running on this machine the way AWS runs it.

    python local/stack.py up        start services, the Bytemark simulator and the stack daemon
    python local/stack.py status    what is running where
    python local/stack.py fire MODE run one back-fill now (due | missing | prune | stale)
    python local/stack.py down      stop everything the stack started

The daemon (``serve``) runs each function built by ``sam build`` under the Lambda runtime emulator, a
REST API gateway on 127.0.0.1:3000, an SQS poller feeding ``user_updates`` from the update queue, the
back-fill schedules, and Lambda's Invoke API for the back-fill's continuation.

Settings come from the built template (``.aws-sam/build/template.yaml``), so local runs behave like
deployed ones: each function's Timeout and MemorySize (the emulator enforces them), its own environment
variables with a literal value or a defaulted parameter (``BYTEMARK_MAX_RETRIES``, ``IDENTITY_CLAIM``,
``POWERTOOLS_SERVICE_NAME`` …; a variable another function owns is not passed), the SQS event's BatchSize
and MaximumBatchingWindowInSeconds, the queue's maxReceiveCount (applied to moto's queue) and the back-fill
schedules. ``local/defaults.env`` only says where the local servers are. Local-only knobs (environment):

    LOCAL_SQS_VISIBILITY_TIMEOUT_SECONDS   receive visibility: when a whole batch fails (function error)
                                           it is back after this (default 2; the deployed queue: 360)
    LOCAL_REDELIVERY_BASE_SECONDS,         user_updates' redelivery delays for transient failures instead
    LOCAL_REDELIVERY_CAP_SECONDS           of the template's 60 s / 2 h, so retries show up in a demo
                                           (default 2 / 30; empty = the template's values)
    LOCAL_SCHEDULE_<MODE>_SECONDS          period of a schedule (DUE, MISSING, PRUNE; 0 = only by `fire`)
    LOCAL_GATEWAY_PORT, LOCAL_LAMBDA_API_PORT
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from local_env import SqsSourceSettings, TemplateSettings, local_settings, template_settings
from scheduler import interval_seconds

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".local-data" / "stack"
BUILD = ROOT / ".aws-sam" / "build"
BUILT_TEMPLATE = BUILD / "template.yaml"
FUNCTIONS = {
    "on_demand_check": "OnDemandCheckFunction",
    "user_updates": "UserUpdatesFunction",
    "scheduled_backfill": "ScheduledBackfillFunction",
}
BACKFILL_MODES = ("due", "missing", "prune", "stale")
"""What ``fire`` accepts; the template schedules all but ``stale`` (manual runs only)."""
GATEWAY_PORT = int(os.environ.get("LOCAL_GATEWAY_PORT", "3000"))
LAMBDA_API_PORT = int(os.environ.get("LOCAL_LAMBDA_API_PORT", "3009"))
DEFAULT_LOCAL_VISIBILITY_SECONDS = 2
LOCAL_KNOB_PREFIX = "LOCAL_"
"""Settings of the local stack itself; never passed to a function."""
LOCAL_VARIABLE_OVERRIDES = {
    "LOCAL_REDELIVERY_BASE_SECONDS": "REDELIVERY_BASE_SECONDS",
    "LOCAL_REDELIVERY_CAP_SECONDS": "REDELIVERY_CAP_SECONDS",
}
"""Local knob → the template variable it replaces (only in a function whose template sets that variable)."""
HIDDEN = frozenset(
    {"MONGODB_URI", "MYSQL_USER", "MYSQL_PASSWORD", "MYSQL_SECRET_NAME", "MONGODB_SECRET_NAME"}
)
"""As in AWS: the MongoDB URI and the MySQL credentials come from Secrets Manager (moto), not the env."""

log = logging.getLogger("local.stack")


def function_env(
    name: str,
    env: Mapping[str, str],
    template: TemplateSettings,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment a function gets, as in AWS: the local settings (where the servers are), minus the
    variables other functions own in the template, plus this function's template variables (which win),
    the local knobs' replacements, what Lambda itself sets, and ``extra`` (values only the stack knows)."""
    function = template.function(FUNCTIONS[name])
    elsewhere = template.variables_owned_elsewhere(function.logical_id)
    settings = {
        key: value
        for key, value in env.items()
        if key not in HIDDEN and key not in elsewhere and not key.startswith(LOCAL_KNOB_PREFIX)
    }
    settings.update(function.environment)
    for knob, variable in LOCAL_VARIABLE_OVERRIDES.items():
        if variable in function.environment and env.get(knob, "").strip():
            settings[variable] = env[knob].strip()
    settings.update(
        {
            "MONGODB_SECRET_ARN": env["MONGODB_SECRET_NAME"],
            "MYSQL_SECRET_ARN": env["MYSQL_SECRET_NAME"],
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_ENDPOINT_URL_LAMBDA": f"http://127.0.0.1:{LAMBDA_API_PORT}",
        }
    )
    settings.update(extra or {})
    return settings


def update_source(template: TemplateSettings) -> SqsSourceSettings:
    """The SQS event of user_updates (batch, window) and its queue (redrive, visibility)."""
    try:
        return template.sqs_sources[FUNCTIONS["user_updates"]]
    except KeyError:
        raise SystemExit(f"the built template has no SQS event on {FUNCTIONS['user_updates']}") from None


def receive_visibility(env: Mapping[str, str]) -> int:
    """The poller's receive visibility: ``LOCAL_SQS_VISIBILITY_TIMEOUT_SECONDS`` or a short default."""
    raw = env.get("LOCAL_SQS_VISIBILITY_TIMEOUT_SECONDS", "").strip()
    return int(raw) if raw else DEFAULT_LOCAL_VISIBILITY_SECONDS


def schedule_intervals(template: TemplateSettings, environ: Mapping[str, str]) -> dict[str, float]:
    """Back-fill mode → local period in seconds: the template's schedules, each overridable by
    ``LOCAL_SCHEDULE_<MODE>_SECONDS`` (0 = fire by hand only)."""
    schedules = template.schedules.get(FUNCTIONS["scheduled_backfill"], {})
    intervals = {}
    for mode, expression in schedules.items():
        override = environ.get(f"LOCAL_SCHEDULE_{mode.upper()}_SECONDS", "").strip()
        intervals[mode] = float(override) if override else interval_seconds(expression)
    return intervals


def ensure_max_receive_count(sqs: Any, queue_url: str, max_receive_count: int) -> None:
    """Give the local update queue the template's maxReceiveCount (moto does the redrive to the DLQ)."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])["Attributes"]
    policy = json.loads(attributes.get("RedrivePolicy") or "{}")
    if not policy.get("deadLetterTargetArn"):
        log.warning("%s has no redrive policy: failed messages never reach the DLQ", queue_url)
        return
    if int(policy.get("maxReceiveCount", 0)) == max_receive_count:
        return
    log.info(
        "update queue: maxReceiveCount %s -> %s (template)", policy.get("maxReceiveCount"), max_receive_count
    )
    policy["maxReceiveCount"] = max_receive_count
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"RedrivePolicy": json.dumps(policy)})


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 — loopback only
            return int(answer.status)
    except (urllib.error.URLError, OSError):
        return 0


def _wait_until(check: Any, what: str, deadline_seconds: float, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = ""
    if log_file is not None and log_file.exists():
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
    raise SystemExit(f"{what} did not become ready within {deadline_seconds:.0f} s\n{tail}")


def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _spawn(name: str, argv: list[str], env: dict[str, str]) -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    log_file = DATA / f"{name}.log"
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    (DATA / f"{name}.pid").write_text(str(process.pid))


def _stop(name: str) -> bool:
    pid = _pid_alive(DATA / f"{name}.pid")
    if pid is None:
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _pid_alive(DATA / f"{name}.pid"):
        time.sleep(0.1)
    if _pid_alive(DATA / f"{name}.pid"):
        os.killpg(pid, signal.SIGKILL)
    (DATA / f"{name}.pid").unlink(missing_ok=True)
    return True


def up() -> None:
    """Start everything (idempotent) and wait until the gateway answers."""
    env = local_settings()
    for function, logical_id in FUNCTIONS.items():
        if not (BUILD / logical_id / "app.py").exists():
            raise SystemExit(
                f"{function} is not built: run `make build` first ({BUILD / logical_id} missing)"
            )
    source = update_source(template_settings(BUILT_TEMPLATE))
    # moto's queue is provisioned by services.sh: with the template's redrive and visibility, unless exported.
    provisioning = {
        "UPDATE_QUEUE_VISIBILITY_TIMEOUT": str(source.visibility_timeout_seconds),
        **({"UPDATE_MAX_RECEIVE_COUNT": str(source.max_receive_count)} if source.max_receive_count else {}),
        **os.environ,
    }
    subprocess.run([str(ROOT / "local" / "services.sh"), "up"], check=True, env=provisioning)
    # The deploy step a real deployment runs before the functions (they never create indexes).
    subprocess.run(
        [str(Path(sys.executable).parent / "bytemark-cache"), "--json", "ensure-indexes"],
        check=True,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
    )
    child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT / "local")}
    simulator_port = env["BYTEMARK_API_URL"].rsplit(":", 1)[-1]
    if _get(f"{env['BYTEMARK_API_URL']}/__admin/health") != 200:
        _spawn(
            "simulator",
            [
                sys.executable,
                "-m",
                "bytemark_simulator",
                "--host",
                "127.0.0.1",
                "--port",
                simulator_port,
                "--quiet",
            ],
            child_env,
        )
        _wait_until(
            lambda: _get(f"{env['BYTEMARK_API_URL']}/__admin/health") == 200,
            "Bytemark simulator",
            20,
            DATA / "simulator.log",
        )
    if _get(f"http://127.0.0.1:{GATEWAY_PORT}/__local/health") != 200:
        _spawn("stack", [sys.executable, str(Path(__file__).resolve()), "serve"], child_env)
        _wait_until(
            lambda: _get(f"http://127.0.0.1:{GATEWAY_PORT}/__local/health") == 200,
            "local stack",
            90,
            DATA / "stack.log",
        )
    status()


def down() -> None:
    """Stop the daemon, the simulator and the services."""
    for name in ("stack", "simulator"):
        if _stop(name):
            print(f"stopped {name}")
    subprocess.run([str(ROOT / "local" / "services.sh"), "down"], check=False)


def status() -> None:
    """Print what runs where."""
    env = local_settings()
    rows = [
        (
            "API gateway",
            f"http://127.0.0.1:{GATEWAY_PORT}/tickets",
            f"http://127.0.0.1:{GATEWAY_PORT}/__local/health",
        ),
        ("Bytemark simulator", env["BYTEMARK_API_URL"], f"{env['BYTEMARK_API_URL']}/__admin/health"),
        ("Lambda invoke API", f"http://127.0.0.1:{LAMBDA_API_PORT}", None),
    ]
    for name, url, health in rows:
        state = "up" if health is None or _get(health) == 200 else "down"
        print(f"  {name:<20} {state:<5} {url}")
    print(f"  {'MongoDB (FerretDB)':<20} {'':<5} {env['MONGODB_URI']}")
    print(
        f"  {'MySQL (MariaDB)':<20} {'':<5} {env['MYSQL_HOST']}:{env['MYSQL_PORT']}/{env['MYSQL_DATABASE']}"
    )
    print(f"  {'SQS (moto)':<20} {'':<5} {env['UPDATE_QUEUE_URL']}")
    if BUILT_TEMPLATE.is_file():
        template = template_settings(BUILT_TEMPLATE)
        timeouts = ", ".join(
            f"{name} {template.function(logical_id).timeout_seconds} s"
            for name, logical_id in FUNCTIONS.items()
        )
        source = update_source(template)
        print(f"  from {BUILT_TEMPLATE.relative_to(ROOT)}: timeouts {timeouts}")
        schedules = schedule_intervals(template, os.environ)
        print(
            f"    SQS batch {source.batch_size}, window {source.batching_window_seconds} s, "
            f"maxReceiveCount {source.max_receive_count}; schedules (s) {schedules}"
        )
    print(f"  logs: {DATA}/*.log")


def fire(mode: str) -> None:
    """Ask the running daemon to fire one scheduled back-fill and print the summary."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{GATEWAY_PORT}/__local/schedule/{mode}", method="POST"
    )
    with urllib.request.urlopen(request, timeout=600) as answer:  # noqa: S310
        print(answer.read().decode())


def serve() -> None:
    """The daemon: emulators, gateway, poller, scheduler, Lambda API; until SIGTERM."""
    import boto3
    from emulator import BuiltFunction, LambdaEmulator
    from gateway import DEFAULT_IDENTITY_CLAIM, LocalApiGateway, LocalLambdaApi
    from scheduler import LocalScheduler
    from sqs_poller import SqsPoller

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    env = local_settings()
    DATA.mkdir(parents=True, exist_ok=True)
    template = template_settings(BUILT_TEMPLATE)
    source = update_source(template)
    sqs = boto3.client(
        "sqs",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    if source.max_receive_count:
        ensure_max_receive_count(sqs, env["UPDATE_QUEUE_URL"], source.max_receive_count)
    # user_updates dead-letters permanent failures itself: it gets moto's DLQ, as AWS gives it the real one.
    dlq_url = sqs.get_queue_url(QueueName=env["UPDATE_DLQ_NAME"])["QueueUrl"]
    environments = {
        name: function_env(
            name, env, template, {"UPDATE_DLQ_URL": dlq_url} if name == "user_updates" else None
        )
        for name in FUNCTIONS
    }
    # One emulator per function, like one warm execution environment each (invocations queue up).
    emulators = {
        name: LambdaEmulator(
            BuiltFunction.from_build(logical_id, build_dir=BUILD),
            environments[name],
            function_name=name,
            timeout_seconds=template.function(logical_id).timeout_seconds,
            memory_mb=template.function(logical_id).memory_mb,
            log_path=DATA / f"{name}.log",
        )
        for name, logical_id in FUNCTIONS.items()
    }

    def invoker(name: str) -> Any:
        return emulators[name].invoke

    for emulator in emulators.values():
        emulator.start()
    scheduler = LocalScheduler(invoker("scheduled_backfill"), schedule_intervals(template, os.environ))
    # The gateway hands the function Cognito claims under the claim name the function reads.
    gateway = LocalApiGateway(
        invoker("on_demand_check"),
        port=GATEWAY_PORT,
        dev_identity=True,
        identity_claim=environments["on_demand_check"].get("IDENTITY_CLAIM", DEFAULT_IDENTITY_CLAIM),
    )
    gateway.add_local_route(
        "POST", "/__local/schedule/", lambda path: scheduler.fire(path.rsplit("/", 1)[-1])
    )
    lambda_api = LocalLambdaApi({"scheduled_backfill": invoker("scheduled_backfill")}, port=LAMBDA_API_PORT)
    poller = SqsPoller(
        sqs,
        env["UPDATE_QUEUE_URL"],
        invoker("user_updates"),
        batch_size=source.batch_size,
        batching_window_seconds=source.batching_window_seconds,
        visibility_timeout=receive_visibility(env),
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    for part in (lambda_api, poller, scheduler, gateway):
        part.start()
    log.info("local stack ready on %s", gateway.url)
    stopped.wait()
    for part in (gateway, scheduler, poller, lambda_api):
        part.stop()
    for emulator in emulators.values():
        emulator.stop()
    log.info("local stack stopped")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status", "serve", "fire"])
    parser.add_argument("mode", nargs="?", choices=BACKFILL_MODES)
    args = parser.parse_args(argv)
    if args.command == "fire":
        if args.mode is None:
            parser.error(f"fire needs a mode: {' | '.join(BACKFILL_MODES)}")
        fire(args.mode)
    else:
        {"up": up, "down": down, "status": status, "serve": serve}[args.command]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
