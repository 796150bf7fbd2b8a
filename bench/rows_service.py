"""Sections through the real services: a cache hit against a sync through Bytemark, the MongoDB commands of
one sync, and an SQS batch through the user_updates handler with and without its thread pool.

Everything runs on the bench's own resources (``LocalResources``): a MySQL database, an SQS queue pair in
moto, the in-process Bytemark simulator, and a MongoDB database per section, all removed afterwards.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.rows_common import (
    SIMULATOR_NOW,
    CommandRecorder,
    bench_settings,
    command_summary,
    median_ms,
    mongo_indexes,
    mysql_database,
    ratio,
    seed_tokens,
    table,
    unique_name,
)
from bytemark_cache.adapters.mongo_store import MongoCacheStore, connect
from bytemark_cache.bootstrap import Services, build_services, indexed_collections
from bytemark_cache.domain.deadline import Deadline
from bytemark_simulator import SimulatorServer

CHECK_ROUNDS = 3
CHECK_REPEATS = 5
BATCH_SIZE = 10
BATCH_LATENCY_MS = 200
BATCH_ROUNDS = 3


@dataclass
class LocalResources:
    """The bench's MySQL database, SQS queue pair and Bytemark simulator."""

    env: dict[str, str]
    mysql: str
    queue_url: str
    dlq_url: str
    simulator: SimulatorServer

    def settings_env(self, mongo_database: str) -> dict[str, str]:
        """The application's environment aimed at these resources and ``mongo_database``."""
        return {
            **self.env,
            "MONGODB_DATABASE": mongo_database,
            "MYSQL_DATABASE": self.mysql,
            "BYTEMARK_API_URL": self.simulator.url,
            "UPDATE_QUEUE_URL": self.queue_url,
            "UPDATE_DLQ_URL": self.dlq_url,
        }


def sqs_client(env: dict[str, str]) -> Any:
    """A boto3 SQS client of the local endpoint (moto)."""
    import boto3

    return boto3.client(
        "sqs",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


@contextlib.contextmanager
def local_resources(env: dict[str, str]) -> Iterator[LocalResources]:
    """Create the resources, yield them, remove them (also on failure)."""
    client = sqs_client(env)
    name = unique_name("btc-bench").replace("_", "-")
    with contextlib.ExitStack() as cleanup:
        mysql = cleanup.enter_context(mysql_database(env))
        dlq_url = client.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        cleanup.callback(client.delete_queue, QueueUrl=dlq_url)
        queue_url = client.create_queue(QueueName=f"{name}-updates")["QueueUrl"]
        cleanup.callback(client.delete_queue, QueueUrl=queue_url)
        simulator = cleanup.enter_context(SimulatorServer(port=0, seed=5, now=SIMULATOR_NOW))
        yield LocalResources(env, mysql, queue_url, dlq_url, simulator)


@contextlib.contextmanager
def real_services(
    resources: LocalResources, recorder: CommandRecorder | None = None
) -> Iterator[tuple[Services, Any]]:
    """``build_services`` with every real adapter on a fresh MongoDB database (indexes made, the deploy
    step), and that database; ``recorder`` hears every command of the cache store's client."""
    settings = bench_settings(resources.settings_env(unique_name()))
    database = connect(
        settings.mongodb_uri, settings.mongodb_database, event_listeners=[recorder] if recorder else []
    )
    try:
        mongo_indexes(database, indexed_collections(settings))
        cache = MongoCacheStore(
            database, settings.cache_collection, settings.log_collection, settings.claim_collection
        )
        yield build_services(settings, cache=cache, check_indexes=False), database
    finally:
        database.client.drop_database(database.name)
        database.client.close()


def deadline(services: Services, seconds: float = 25.0) -> Deadline:
    return Deadline.after(services.tickets.now(), seconds)


# -- a cache hit against a sync through Bytemark ---------------------------------------------------------


def bench_check(resources: LocalResources) -> list[str]:
    """``check_with_ttl`` served from MongoDB against ``check`` (a sync through the simulator, no change)."""
    user = 900_001
    admin = resources.simulator.admin
    admin.seed_user(user, "tok-check", current=10, expired=5, seed=5)
    seed_tokens(resources.env, resources.mysql, [user], lambda _uid: "tok-check")
    with real_services(resources) as (services, _database):
        tickets = services.tickets
        assert tickets.check(user, deadline=deadline(services)).source == "built"

        def hit() -> None:
            assert tickets.check_with_ttl(user, deadline=deadline(services)).source == "cache"

        def sync() -> None:
            assert tickets.check(user, deadline=deadline(services)).source == "synced"

        hits, syncs, requests = [], [], {"hit": 0, "sync": 0}
        for _ in range(CHECK_ROUNDS):  # interleaved, so both see the same noise
            for label, action, samples in (("hit", hit, hits), ("sync", sync, syncs)):
                before = admin.request_counts()["total"]
                samples.append(median_ms(action, CHECK_REPEATS))
                requests[label] += admin.request_counts()["total"] - before
    calls = CHECK_ROUNDS * CHECK_REPEATS
    hit_ms, sync_ms = statistics.median(hits), statistics.median(syncs)
    return [
        "### A rider's read: cache hit against a sync through Bytemark",
        "",
        "One user with 10 passes + 5 history; Bytemark = the local simulator, no added latency. "
        f"Median of {calls} calls each, interleaved.",
        "",
        *table(
            ["path", "median ms", "Bytemark requests per call", "ratio"],
            [
                ["`check_with_ttl`, cache fresh (served from MongoDB)", f"{hit_ms:.1f}",
                 f"{requests['hit'] / calls:.0f}", ratio(hit_ms, sync_ms)],
                ["baseline: `check`, a sync through Bytemark (no change)", f"{sync_ms:.1f}",
                 f"{requests['sync'] / calls:.0f}", "1x"],
            ],
            right=(1, 2, 3),
        ),
    ]  # fmt: skip


# -- MongoDB commands per sync ---------------------------------------------------------------------------


def bench_commands(resources: LocalResources) -> list[str]:
    """Every command the cache store's client sends for one service-level ``check`` of a 100-pass user."""
    user = 900_002
    admin = resources.simulator.admin
    held = admin.seed_user(user, "tok-commands", current=100, expired=20, seed=7)
    seed_tokens(resources.env, resources.mysql, [user], lambda _uid: "tok-commands")
    recorder = CommandRecorder()
    rows: list[list[str]] = []
    with real_services(resources, recorder) as (services, database):

        def sync(label: str, expected: str) -> tuple[str, list[tuple[str, str, int]]]:
            recorder.clear()
            result = services.tickets.check(user, deadline=deadline(services))
            assert result.source == expected, (label, result.source)
            return label, list(recorder.commands)

        entries = len(held["current"]) + len(held["expired"])
        steps = [
            sync("build (no cache yet)", "built"),
            sync(f"no change, right after the build (its {entries} pending log entries checked)", "synced"),
            sync("no change", "synced"),
        ]
        usable = next(pass_ for pass_ in held["current"] if pass_["status"] == "USABLE")
        admin.activate(user, usable["uuid"])
        steps.append(sync("one pass changed (activated at Bytemark)", "synced"))
        steps.append(sync("no change, right after that (its 1 pending log entry checked)", "synced"))
        # The baseline: rewriting the whole document as it is now (one update command).
        settings = services.settings
        collection = database[settings.cache_collection]
        document = collection.find_one({"user_id": user})
        assert document is not None
        recorder.clear()
        collection.replace_one({"_id": document["_id"]}, document)
        whole = recorder.sent("update")
    roles = {
        settings.cache_collection: "cache",
        settings.log_collection: "log",
        settings.claim_collection: "claim",
    }
    for label, commands in steps:
        sent = sum(size for _, _, size in commands)
        summary = command_summary(commands, roles)
        rows.append([label, str(len(commands)), summary, f"{sent:,}", ratio(sent, whole, 4)])
    return [
        "### MongoDB commands per sync",
        "",
        "A service-level `check` of a user with 100 passes + 20 history (Bytemark = the simulator); every "
        "command the cache store's client sends, counted by a CommandListener.",
        "",
        *table(
            ["sync", "commands", "which", "bytes sent", "bytes vs whole-document replace"],
            [*rows, ["baseline: replace the whole document", "1", "update", f"{whole:,}", "1x"]],
            right=(1, 3, 4),
        ),
    ]


# -- an SQS batch: the handler's thread pool against one record at a time --------------------------------


def sqs_event(user_ids: list[int]) -> dict[str, Any]:
    """An SQS batch of one purchase message per user."""
    records = []
    for index, user_id in enumerate(user_ids):
        records.append(
            {
                "messageId": f"bench-{index}",
                "receiptHandle": f"rh-bench-{index}",
                "body": json.dumps({"user_id": user_id, "reason": "purchase"}),
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1718425800000"},
                "messageAttributes": {},
                "md5OfBody": "0" * 32,
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bytemark-user-updates",
                "awsRegion": "us-east-1",
            }
        )
    return {"Records": records}


def bench_batch(resources: LocalResources) -> list[str]:
    """A batch of 10 records with 200 ms per Bytemark request: the handler's pool of
    MAX_CONCURRENT_SYNCS against the same handler with a pool of one."""
    # The handler's JSON log lines and metrics would mix with the report.
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    from tests.lambda_harness import FakeLambdaContext, load_function

    handler = load_function("user_updates")
    pool = handler.MAX_CONCURRENT_SYNCS
    admin = resources.simulator.admin
    users = list(range(910_001, 910_001 + BATCH_SIZE))
    for user in users:
        admin.seed_user(user, f"tok-{user}", current=3, expired=2, seed=user)
    seed_tokens(resources.env, resources.mysql, users, lambda uid: f"tok-{uid}")
    event = sqs_event(users)
    timings: dict[int, list[float]] = {pool: [], 1: []}
    requests: dict[int, int] = {pool: 0, 1: 0}
    with real_services(resources) as (services, _database):

        def invoke(workers: int) -> float:
            handler.MAX_CONCURRENT_SYNCS = workers
            before = admin.request_counts()["total"]
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                response = handler.lambda_handler(event, FakeLambdaContext(), services=services)
            took = time.perf_counter() - started
            assert response == {"batchItemFailures": []}, response
            requests[workers] = admin.request_counts()["total"] - before
            return took

        try:
            invoke(pool)  # builds the caches; every measured batch is then a sync
            admin.set_fault("latency", latency_ms=BATCH_LATENCY_MS)
            for _ in range(BATCH_ROUNDS):  # alternated, so both see the same noise
                for workers in (pool, 1):
                    timings[workers].append(invoke(workers))
        finally:
            handler.MAX_CONCURRENT_SYNCS = pool
            admin.clear_faults()
    concurrent, sequential = statistics.median(timings[pool]), statistics.median(timings[1])
    return [
        f"### An SQS batch of {BATCH_SIZE} records, Bytemark answering after {BATCH_LATENCY_MS} ms",
        "",
        "The user_updates handler (`lambda_handler`, real services, the simulator's `latency` fault on "
        "every request); each record is a sync of its own user (3 + 2 passes, caches built beforehand). "
        f"Median of {BATCH_ROUNDS} batches each, alternated.",
        "",
        *table(
            ["handler", "Bytemark requests", "batch wall time", "ratio"],
            [
                [f"`ConcurrentBatchProcessor`, MAX_CONCURRENT_SYNCS={pool}", str(requests[pool]),
                 f"{concurrent:.2f} s", ratio(concurrent, sequential)],
                ["baseline: the same handler, pool forced to 1 (one record at a time)", str(requests[1]),
                 f"{sequential:.2f} s", "1x"],
            ],
            right=(1, 2, 3),
        ),
    ]  # fmt: skip
