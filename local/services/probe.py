"""Readiness probes and AWS provisioning for local/services.sh (run with the project's .venv Python).

    probe.py wait mongo|mysql|moto [--timeout S] [--pid N]
        exit 0 ready, 1 not ready in time, 2 the process died, 3 a server answered but refused us
    probe.py provision-aws                                      queue + DLQ + secrets on moto, idempotently

Every endpoint and name comes from the environment, which local/services.sh fills from local/defaults.env.
Polling (not sleeping) keeps a start as short as the server allows; the pid check stops waiting at once
when the server process has already died.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

POLL_SECONDS = 0.2
EXIT_READY, EXIT_TIMEOUT, EXIT_DIED, EXIT_REFUSED = 0, 1, 2, 3
# MySQL errors that come from a live server rejecting the login: waiting longer cannot help.
MYSQL_LOGIN_ERRORS = frozenset({1044, 1045, 1049, 1130, 1698})


class Refused(Exception):
    """A server answered on the port but refused the request: it is up, just not usable as configured."""


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise SystemExit(f"probe: {name} is not set (local/services.sh exports it from local/defaults.env)")
    return value


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a child that exited, not yet reaped) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ping_mongo() -> None:
    """One MongoDB round trip: ``ping`` on the admin database."""
    import pymongo
    from pymongo.errors import OperationFailure

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        _env("MONGODB_URI"), serverSelectionTimeoutMS=500, connectTimeoutMS=500, socketTimeoutMS=2000
    )
    try:
        client.admin.command("ping")
    except OperationFailure as exc:
        raise Refused(f"MongoDB refused ping: {exc}") from exc
    finally:
        client.close()


def ping_mysql() -> None:
    """One MySQL round trip over TCP as the application user."""
    import pymysql

    try:
        connection = pymysql.connect(
            host=_env("MYSQL_HOST"),
            port=int(_env("MYSQL_PORT")),
            user=_env("MYSQL_USER"),
            password=os.environ.get("MYSQL_PASSWORD", ""),
            connect_timeout=2,
            read_timeout=2,
        )
    except pymysql.err.OperationalError as exc:
        if exc.args and exc.args[0] in MYSQL_LOGIN_ERRORS:
            raise Refused(f"MySQL refused {_env('MYSQL_USER')}: {exc.args[-1]}") from exc
        raise
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()


def _boto_client(service: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=_env("AWS_ENDPOINT_URL"),
        region_name=_env("AWS_DEFAULT_REGION"),
        aws_access_key_id=_env("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=_env("AWS_SECRET_ACCESS_KEY"),
        config=Config(connect_timeout=1, read_timeout=3, retries={"max_attempts": 1}),
    )


def ping_moto() -> None:
    """One SQS API round trip (moto answers ListQueues only once it is fully up)."""
    from botocore.exceptions import ClientError

    try:
        _boto_client("sqs").list_queues()
    except ClientError as exc:
        raise Refused(f"the endpoint answered ListQueues with an error: {exc}") from exc


PROBES: dict[str, Callable[[], None]] = {"mongo": ping_mongo, "mysql": ping_mysql, "moto": ping_moto}


def wait(kind: str, timeout: float, pid: int | None) -> int:
    """Poll ``kind`` until it answers, its process dies or ``timeout`` passes."""
    probe = PROBES[kind]
    deadline = time.monotonic() + timeout
    last_error = "no attempt made"
    while True:
        try:
            probe()
        except Refused as exc:
            print(f"probe: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        except Exception as exc:  # noqa: BLE001 — any failure means "not ready yet"; the last one is shown
            last_error = f"{type(exc).__name__}: {exc}"
        else:
            return EXIT_READY
        if not _alive(pid):
            print(f"probe: the {kind} process (pid {pid}) exited; last error: {last_error}", file=sys.stderr)
            return EXIT_DIED
        if time.monotonic() >= deadline:
            print(f"probe: {kind} not ready after {timeout:g}s; last error: {last_error}", file=sys.stderr)
            return EXIT_TIMEOUT
        time.sleep(POLL_SECONDS)


def provision_aws() -> None:
    """Create the update queue with its DLQ redrive and the two local secrets; safe to repeat."""
    sqs = _boto_client("sqs")
    dlq_url = sqs.create_queue(
        QueueName=_env("UPDATE_DLQ_NAME"), Attributes={"MessageRetentionPeriod": "1209600"}
    )["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    attributes = {
        "VisibilityTimeout": os.environ.get("UPDATE_QUEUE_VISIBILITY_TIMEOUT", "180"),
        "RedrivePolicy": json.dumps(
            {
                "deadLetterTargetArn": dlq_arn,
                "maxReceiveCount": os.environ.get("UPDATE_MAX_RECEIVE_COUNT", "10"),
            }
        ),
    }
    queue_url = sqs.create_queue(QueueName=_env("UPDATE_QUEUE_NAME"))["QueueUrl"]
    # set_queue_attributes, not create_queue(Attributes=…): SQS refuses to "create" an existing queue
    # with different attributes, and a changed setting must reach a queue made by an earlier run.
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes=attributes)

    mysql_secret = {
        "engine": "mysql",
        "host": _env("MYSQL_HOST"),
        "port": int(_env("MYSQL_PORT")),
        "username": _env("MYSQL_USER"),
        "password": os.environ.get("MYSQL_PASSWORD", ""),
        "dbname": _env("MYSQL_DATABASE"),
    }
    mongo_secret = {"uri": _env("MONGODB_URI")}
    secrets = _boto_client("secretsmanager")
    for name, value in (
        (_env("MYSQL_SECRET_NAME"), mysql_secret),
        (_env("MONGODB_SECRET_NAME"), mongo_secret),
    ):
        try:
            secrets.create_secret(Name=name, SecretString=json.dumps(value))
        except secrets.exceptions.ResourceExistsException:
            secrets.put_secret_value(SecretId=name, SecretString=json.dumps(value))
    print(
        f"queue {queue_url} (redrive to {dlq_arn}), secrets {_env('MYSQL_SECRET_NAME')}, "
        f"{_env('MONGODB_SECRET_NAME')}"
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    waiting = commands.add_parser("wait", help="poll a server until it answers")
    waiting.add_argument("kind", choices=sorted(PROBES))
    waiting.add_argument("--timeout", type=float, default=30.0)
    waiting.add_argument("--pid", type=int, default=None, help="stop waiting when this process dies")
    commands.add_parser("provision-aws", help="create the queues and secrets on the local AWS endpoint")
    args = parser.parse_args(argv)
    if args.command == "wait":
        return wait(args.kind, args.timeout, args.pid)
    provision_aws()
    return 0


if __name__ == "__main__":
    sys.exit(main())
