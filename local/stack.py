"""The local stack: the built bundle running on this machine the way AWS runs it.

    python local/stack.py up        start services, the Bytemark simulator and the stack daemon
    python local/stack.py status    what is running where
    python local/stack.py fire MODE run one scheduled back-fill now (missing | stale)
    python local/stack.py down      stop everything the stack started

The daemon (``serve``) runs each function built by ``sam build`` under the Lambda runtime emulator, a
REST API gateway on 127.0.0.1:3000, an SQS poller feeding ``user_updates`` from the update queue, the
back-fill schedules, and Lambda's Invoke API for the back-fill's continuation.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from local_env import local_settings

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".local-data" / "stack"
BUILD = ROOT / ".aws-sam" / "build"
FUNCTIONS = {
    "on_demand_check": "OnDemandCheckFunction",
    "user_updates": "UserUpdatesFunction",
    "scheduled_backfill": "ScheduledBackfillFunction",
}
FUNCTION_TIMEOUTS = {"on_demand_check": 30, "user_updates": 60, "scheduled_backfill": 300}
"""As in template.yaml: the emulator enforces them and the back-fill reads its remaining time from them."""
GATEWAY_PORT = int(os.environ.get("LOCAL_GATEWAY_PORT", "3000"))
LAMBDA_API_PORT = int(os.environ.get("LOCAL_LAMBDA_API_PORT", "3009"))

log = logging.getLogger("local.stack")


def function_env(name: str, env: dict[str, str]) -> dict[str, str]:
    """The environment a function gets: the stack's settings plus what Lambda itself sets."""
    # As in AWS: the MongoDB URI and the MySQL credentials come from Secrets Manager (moto), not the env.
    hidden = {"MONGODB_URI", "MYSQL_USER", "MYSQL_PASSWORD", "MYSQL_SECRET_NAME", "MONGODB_SECRET_NAME"}
    settings = {key: value for key, value in env.items() if key not in hidden}
    settings.update(
        {
            "MONGODB_SECRET_ARN": env["MONGODB_SECRET_NAME"],
            "MYSQL_SECRET_ARN": env["MYSQL_SECRET_NAME"],
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "POWERTOOLS_SERVICE_NAME": f"bytemark-ticket-cache-{name}",
            "AWS_ENDPOINT_URL_LAMBDA": f"http://127.0.0.1:{LAMBDA_API_PORT}",
        }
    )
    return settings


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
    subprocess.run([str(ROOT / "local" / "services.sh"), "up"], check=True)
    for function, logical_id in FUNCTIONS.items():
        if not (BUILD / logical_id / "app.py").exists():
            raise SystemExit(
                f"{function} is not built: run `make build` first ({BUILD / logical_id} missing)"
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
    from gateway import LocalApiGateway, LocalLambdaApi
    from scheduler import LocalScheduler
    from sqs_poller import SqsPoller

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    env = local_settings()
    # One emulator per function, like one warm execution environment each (invocations queue up).
    emulators = {
        name: LambdaEmulator(
            BuiltFunction.from_build(logical_id, build_dir=BUILD),
            function_env(name, env),
            function_name=name,
            timeout_seconds=FUNCTION_TIMEOUTS[name],
            log_path=DATA / f"{name}.log",
        )
        for name, logical_id in FUNCTIONS.items()
    }

    def invoker(name: str) -> Any:
        return emulators[name].invoke

    for emulator in emulators.values():
        emulator.start()
    scheduler = LocalScheduler(
        invoker("scheduled_backfill"),
        {
            "stale": float(os.environ.get("LOCAL_SCHEDULE_STALE_SECONDS", "3600")),
            "missing": float(os.environ.get("LOCAL_SCHEDULE_MISSING_SECONDS", "86400")),
        },
    )
    gateway = LocalApiGateway(invoker("on_demand_check"), port=GATEWAY_PORT, dev_identity=True)
    gateway.add_local_route(
        "POST", "/__local/schedule/", lambda path: scheduler.fire(path.rsplit("/", 1)[-1])
    )
    lambda_api = LocalLambdaApi({"scheduled_backfill": invoker("scheduled_backfill")}, port=LAMBDA_API_PORT)
    sqs = boto3.client("sqs", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"])
    poller = SqsPoller(sqs, env["UPDATE_QUEUE_URL"], invoker("user_updates"))
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
    parser.add_argument("mode", nargs="?", choices=["missing", "stale"])
    args = parser.parse_args(argv)
    if args.command == "fire":
        if args.mode is None:
            parser.error("fire needs a mode: missing or stale")
        fire(args.mode)
    else:
        {"up": up, "down": down, "status": status, "serve": serve}[args.command]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
