"""The reliability suites' view of a real stack: settings and services on shared adapters, snapshots of what
is stored, the cache a sync must make from Bytemark's lists, change-log replay, and Lambda events.

The expectation here is written from the contract (docs/contract.md §4, §6), not from the planner: a user's
cache is Bytemark's current list (minus what is expired or also in the history) and the history (the v4
list, the EXPIRED passes of the v1 list, and what the history held before unless current again), each oldest
``time_created`` first, every payload stored exactly as served.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database

from bytemark_cache.adapters.mongo_runs import MongoBackfillRunStore
from bytemark_cache.adapters.mongo_store import MongoCacheStore
from bytemark_cache.adapters.sqs_queue import SqsRedelivery, SqsUpdateQueue
from bytemark_cache.bootstrap import Services, build_services
from bytemark_cache.config import Settings
from bytemark_cache.domain.hashing import payload_hash
from bytemark_cache.ports import Clock, PassSource, TokenStore
from tests.lambda_harness import FakeLambdaContext, load_event, load_function

SIM_NOW = "2024-06-15T04:30:00Z"
"""The simulator's frozen clock in the suites that freeze it (the events' requestTime, too)."""
SIM_EPOCH = 1_718_425_800.0
"""SIM_NOW as unix seconds: where the suites' FakeClocks start."""

API = load_function("on_demand_check")
UPDATES = load_function("user_updates")
BACKFILL = load_function("scheduled_backfill")

HANDLER_LOCK = threading.RLock()
"""One handler invocation at a time per process, as on Lambda: the handlers' Powertools resolver, batch
processor and metrics are module-level singletons (a batch still syncs its records on its own threads)."""

Pass = dict[str, Any]
Key = tuple[str, str]
"""(list, uuid): one pass in one array of the cache."""


# -- settings and services --------------------------------------------------------------------------


def settings_for(env: Mapping[str, str], *, database: str, suffix: str, **overrides: str) -> Settings:
    """``Settings.from_env`` of ``env`` aimed at ``database`` with collections named after ``suffix``."""
    return Settings.from_env(
        {
            **env,
            "MONGODB_DATABASE": database,
            "CACHE_COLLECTION": f"cache_{suffix}",
            "LOG_COLLECTION": f"log_{suffix}",
            "CLAIM_COLLECTION": f"claims_{suffix}",
            "BACKFILL_RUN_COLLECTION": f"runs_{suffix}",
            **overrides,
        }
    )


def with_collections(settings: Settings, suffix: str, **changes: Any) -> Settings:
    """The same settings on the collections of ``suffix`` (and any other field changed)."""
    return replace(
        settings,
        cache_collection=f"cache_{suffix}",
        log_collection=f"log_{suffix}",
        claim_collection=f"claims_{suffix}",
        backfill_run_collection=f"runs_{suffix}",
        **changes,
    )


def services_on(
    settings: Settings,
    *,
    database: Database[dict[str, Any]],
    clock: Clock,
    tokens: TokenStore | None = None,
    source: PassSource | None = None,
    sqs: Any = None,
) -> Services:
    """``build_services`` with the cache and run stores on ``database`` (its client shared: building is cheap)
    and, when given, a shared token store, Bytemark client and boto3 SQS client (a warm container's)."""
    cache = MongoCacheStore(
        database, settings.cache_collection, settings.log_collection, settings.claim_collection
    )
    runs = MongoBackfillRunStore(database, settings.backfill_run_collection)
    queue = redelivery = None
    if settings.update_queue_url:
        queue = SqsUpdateQueue(settings.update_queue_url, client=sqs, endpoint_url=settings.aws_endpoint_url)
        redelivery = SqsRedelivery(
            settings.update_queue_url,
            settings.update_dlq_url,
            client=sqs,
            endpoint_url=settings.aws_endpoint_url,
        )
    return build_services(
        settings,
        tokens=tokens,
        source=source,
        cache=cache,
        runs=runs,
        queue=queue,
        redelivery=redelivery,
        clock=clock,
        check_indexes=False,
    )


# -- what is stored ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A user's stored state: the raw document (``_id``, ``log_pending`` and all), its log entries, and the
    live claims of the stored revision (what would make the next sync wait)."""

    document: dict[str, Any] | None
    log: list[dict[str, Any]]
    live_claims: list[dict[str, Any]] = field(default_factory=list)


def snapshot(database: Database[dict[str, Any]], settings: Settings, user_id: int, now: float) -> Snapshot:
    """What MongoDB holds for ``user_id`` now (claims count as live while ``expires_at`` > ``now``)."""
    documents = list(database[settings.cache_collection].find({"user_id": {"$in": [user_id, str(user_id)]}}))
    assert len(documents) <= 1, f"user {user_id} has {len(documents)} cache documents"
    document = documents[0] if documents else None
    log = sorted(database[settings.log_collection].find({"user_id": user_id}), key=entry_order)
    # Only a claim of the stored revision blocks anyone (older revisions can never be claimed again).
    revision = int((document or {}).get("sync_revision") or 0)
    claims = list(
        database[settings.claim_collection].find(
            {"user_id": user_id, "revision": revision, "expires_at": {"$gt": now}}, {"_id": 1}
        )
    )
    return Snapshot(document, log, claims)


def document_of(
    database: Database[dict[str, Any]], settings: Settings, user_id: int
) -> dict[str, Any] | None:
    """The user's raw cache document (None when there is none)."""
    return database[settings.cache_collection].find_one({"user_id": user_id})


def clear_collections(database: Database[dict[str, Any]], settings: Settings) -> None:
    """Empty the cache, log, claim and run collections (kept, with their indexes)."""
    for name in (
        settings.cache_collection,
        settings.log_collection,
        settings.claim_collection,
        settings.backfill_run_collection,
    ):
        database[name].delete_many({})


# -- the cache a sync must make ---------------------------------------------------------------------


def _created(pass_: Mapping[str, Any]) -> tuple[int, datetime, str]:
    """Oldest first by ``time_created``; passes without a readable time first; ties by uuid."""
    text = pass_.get("time_created")
    moment = None
    if isinstance(text, str) and text.strip():
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            moment = None
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    uuid_text = str(pass_.get("uuid", ""))
    if moment is None:
        return (0, datetime.min.replace(tzinfo=UTC), uuid_text)
    return (1, moment.astimezone(UTC), uuid_text)


def expected_lists(
    bytemark: Mapping[str, Sequence[Pass]], kept_history: Iterable[Pass] = ()
) -> tuple[list[Pass], list[Pass]]:
    """``(passes, passes4)`` payloads a sync of ``bytemark`` (``{"current", "expired"}``) must store.

    ``kept_history``: what the cache's history held before (gone from Bytemark, still kept unless current).
    """
    expired_uuids = {p["uuid"] for p in bytemark["expired"]}
    history = {p["uuid"]: p for p in bytemark["expired"]}
    current: dict[str, Pass] = {}
    for pass_ in bytemark["current"]:
        if pass_["uuid"] in expired_uuids:
            continue
        if pass_.get("status") == "EXPIRED":
            history.setdefault(pass_["uuid"], pass_)
        else:
            current[pass_["uuid"]] = pass_
    for pass_ in kept_history:
        if pass_["uuid"] not in history and pass_["uuid"] not in current:
            history[pass_["uuid"]] = pass_
    return sorted(current.values(), key=_created), sorted(history.values(), key=_created)


def stored_lists(document: Mapping[str, Any]) -> tuple[list[Pass], list[Pass]]:
    """The payloads of the document's two arrays, in stored order."""
    return (
        [element["payload"] for element in document.get("passes") or []],
        [element["payload"] for element in document.get("passes4") or []],
    )


def assert_cache_matches(
    document: Mapping[str, Any] | None,
    bytemark: Mapping[str, Sequence[Pass]],
    kept_history: Iterable[Pass] = (),
) -> None:
    """The document is the cache a sync of ``bytemark`` makes: payloads as served, in order, each uuid once,
    every wrapper consistent with its payload (status, Node's payload hash)."""
    assert document is not None, "no cache document"
    passes, history = stored_lists(document)
    uuids = [p["uuid"] for p in (*passes, *history)]
    assert len(uuids) == len(set(uuids)), f"a pass is stored twice: {sorted(uuids)}"
    want_passes, want_history = expected_lists(bytemark, kept_history)
    assert [p["uuid"] for p in passes] == [p["uuid"] for p in want_passes]
    assert [p["uuid"] for p in history] == [p["uuid"] for p in want_history]
    assert passes == want_passes
    assert history == want_history
    for name in ("passes", "passes4"):
        for element in document.get(name) or []:
            assert element["pass_uuid"] == element["payload"]["uuid"]
            assert element["status"] == element["payload"]["status"], element["pass_uuid"]
            assert element["payload_hash"] == payload_hash(element["payload"]), element["pass_uuid"]


# -- the change log ---------------------------------------------------------------------------------


def entry_order(entry: Mapping[str, Any]) -> tuple[int, str, int]:
    """Log entries in write order: ids are ``<user>:<revision>:<write id>:<number>``."""
    _user, revision, write_id, number = str(entry["_id"]).split(":")
    return int(revision), write_id, int(number)


def document_state(document: Mapping[str, Any] | None) -> dict[Key, str]:
    """``(list, uuid) -> payload_hash`` of every element of the document."""
    if document is None:
        return {}
    return {
        (name, element["pass_uuid"]): element["payload_hash"]
        for name in ("passes", "passes4")
        for element in document.get(name) or []
    }


def replay_log(entries: Iterable[Mapping[str, Any]]) -> dict[Key, str]:
    """Apply the log from nothing: created adds, updated and removed must find the hash they replace.

    Raises AssertionError at the first entry that does not follow from the ones before it (a duplicate, a
    lost entry, or two writes of one revision).
    """
    state: dict[Key, str] = {}
    writers: dict[int, str] = {}
    for entry in sorted(entries, key=entry_order):
        revision, write_id, _number = entry_order(entry)
        assert writers.setdefault(revision, write_id) == write_id, f"two writes of revision {revision}"
        key = (entry["list"], entry["uuid"])
        action = entry["action"]
        if action == "created":
            assert key not in state, f"{key} created twice ({entry['_id']})"
            state[key] = entry["payload_hash"]
        elif action == "updated":
            assert key in state, f"{key} updated before it was created ({entry['_id']})"
            assert state[key] == entry["previous_hash"], f"{key}: an update is missing before {entry['_id']}"
            assert entry["payload_hash"] != entry["previous_hash"], f"{key}: logged an update that is none"
            state[key] = entry["payload_hash"]
        elif action == "removed":
            assert key in state, f"{key} removed before it was created ({entry['_id']})"
            assert state[key] == entry["previous_hash"], f"{key}: an update is missing before {entry['_id']}"
            del state[key]
        else:
            raise AssertionError(f"unknown action {action!r}")
    return state


def assert_log_replays(document: Mapping[str, Any] | None, entries: Iterable[Mapping[str, Any]]) -> None:
    """Replaying the change log from nothing gives exactly the document's passes and hashes."""
    assert replay_log(entries) == document_state(document)


def log_actions(entries: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """``(uuid, action, list)`` of each entry, sorted."""
    return sorted((entry["uuid"], entry["action"], entry["list"]) for entry in entries)


# -- Lambda events --------------------------------------------------------------------------------------


def context(remaining_ms: int) -> FakeLambdaContext:
    """A Lambda context with ``remaining_ms`` left on every read."""
    return FakeLambdaContext(remaining_ms=[remaining_ms])


def api_event(
    method: str = "GET",
    path: str = "/tickets",
    *,
    user: Any = "42",
    authorizer: Any = None,
    headers: Mapping[str, Any] | None = None,
    body: Any = None,
    query: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A REST proxy event of ``method path`` from a Cognito caller whose ``custom:user_id`` is ``user``
    (``authorizer`` given: that authorizer object as is)."""
    event = load_event("apigw_get_tickets.json")
    event["httpMethod"] = method
    event["path"] = path
    event["resource"] = path
    event["requestContext"]["httpMethod"] = method
    event["requestContext"]["resourcePath"] = path
    event["requestContext"]["path"] = f"/prod{path}"
    if authorizer is not None:
        event["requestContext"]["authorizer"] = authorizer
    else:
        event["requestContext"]["authorizer"]["claims"]["custom:user_id"] = user
    if headers is not None:
        event["headers"] = dict(headers)
        event["multiValueHeaders"] = {name: [value] for name, value in headers.items()}
    event["body"] = body
    event["queryStringParameters"] = dict(query) if query is not None else None
    event["multiValueQueryStringParameters"] = (
        {name: [value] for name, value in query.items()} if query is not None else None
    )
    return event


def call_api(services: Services, event: Any, remaining_ms: int = 30_000) -> dict[str, Any]:
    """``on_demand_check`` in-process with ``services``."""
    with HANDLER_LOCK:
        response: dict[str, Any] = API.lambda_handler(event, context(remaining_ms), services=services)
    return response


def header(response: Mapping[str, Any], name: str) -> str | None:
    """A response header (Powertools answers a REST event in ``multiValueHeaders``), case-insensitive."""
    for key, value in (response.get("headers") or {}).items():
        if key.lower() == name.lower():
            return str(value)
    for key, values in (response.get("multiValueHeaders") or {}).items():
        if key.lower() == name.lower() and values:
            return ", ".join(str(value) for value in values)
    return None


def call_updates(services: Services, event: Any, remaining_ms: int = 60_000) -> dict[str, Any]:
    """``user_updates`` in-process with ``services``."""
    with HANDLER_LOCK:
        response: dict[str, Any] = UPDATES.lambda_handler(event, context(remaining_ms), services=services)
    return response


class NoContinuation:
    """A Continuation that records instead of invoking Lambda."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def continue_backfill(self, request: dict[str, Any]) -> None:
        self.requests.append(request)


def call_backfill(services: Services, event: Any, remaining_ms: int = 600_000) -> dict[str, Any]:
    """``scheduled_backfill`` in-process with ``services`` (continuations recorded, not invoked)."""
    with HANDLER_LOCK:
        response: dict[str, Any] = BACKFILL.lambda_handler(
            event, context(remaining_ms), services=services, continuation=NoContinuation()
        )
    return response


def sqs_record(
    body: str,
    *,
    message_id: str | None = None,
    receipt_handle: str | None = None,
    receive_count: int = 1,
    queue_arn: str = "arn:aws:sqs:us-east-1:123456789012:bytemark-user-updates",
) -> dict[str, Any]:
    """One SQS record as Lambda hands it over."""
    message_id = message_id or str(uuid.uuid4())
    now_ms = str(int(time.time() * 1000))
    return {
        "messageId": message_id,
        "receiptHandle": receipt_handle or f"rh-{message_id}",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": now_ms,
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": now_ms,
        },
        "messageAttributes": {},
        "md5OfBody": "0" * 32,
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": "us-east-1",
    }


def record_of(message: Mapping[str, Any], queue_arn: str) -> dict[str, Any]:
    """The Lambda record of a message ``ReceiveMessage`` returned (its real receipt handle)."""
    attributes = message.get("Attributes", {})
    return sqs_record(
        message["Body"],
        message_id=message["MessageId"],
        receipt_handle=message["ReceiptHandle"],
        receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
        queue_arn=queue_arn,
    )


def receive(sqs: Any, url: str, *, max_messages: int = 10, wait: int = 0) -> list[dict[str, Any]]:
    """Up to ``max_messages`` messages with their attributes (receive counts)."""
    messages: list[dict[str, Any]] = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=max_messages,
        WaitTimeSeconds=wait,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
    ).get("Messages", [])
    return messages


def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Receive and delete every visible message."""
    drained: list[dict[str, Any]] = []
    while True:
        messages = receive(sqs, url)
        if not messages:
            return drained
        drained.extend(messages)
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )


def queue_counts(sqs: Any, url: str) -> tuple[int, int]:
    """``(visible, in flight)`` messages of a queue."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


@dataclass(frozen=True)
class Queues:
    """An update queue and its dead-letter queue."""

    url: str
    arn: str
    dlq_url: str


def make_queues(sqs: Any, *, visibility: int = 30, max_receive_count: int = 3) -> Queues:
    """A fresh queue pair (the caller deletes it with ``delete_queues``)."""
    name = f"btc-test-rel-{uuid.uuid4().hex[:12]}"
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}
    url = sqs.create_queue(
        QueueName=f"{name}-updates",
        Attributes={"VisibilityTimeout": str(visibility), "RedrivePolicy": json.dumps(redrive)},
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return Queues(url=url, arn=arn, dlq_url=dlq_url)


def delete_queues(sqs: Any, queues: Queues) -> None:
    """Delete both queues of a pair."""
    for url in (queues.url, queues.dlq_url):
        sqs.delete_queue(QueueUrl=url)


def purchase_body(user_id: int, reason: str = "purchase", **extra: Any) -> str:
    """An update-queue body."""
    return json.dumps({"user_id": user_id, "reason": reason, **extra})


class SqsPump:
    """Lambda's SQS event source in miniature: receive a batch, invoke ``user_updates``, delete what the
    handler did not report as failed (the DLQ'd ones included: the handler acknowledged them)."""

    def __init__(self, sqs: Any, queues: Queues, services: Services, *, remaining_ms: int = 60_000) -> None:
        self.sqs = sqs
        self.queues = queues
        self.services = services
        self.remaining_ms = remaining_ms
        self.received = 0
        self.acknowledged = 0
        self.failed = 0
        self.escaped: list[BaseException] = []
        self.acknowledged_at: list[float] = []
        """``time.monotonic()`` of each acknowledgement (a recovery shows as the first one after it)."""
        self.in_batch = threading.Event()
        """Set while a batch is in the handler (its syncs are in flight)."""

    def pump(self, *, wait: int = 0) -> int:
        """One batch; how many messages it held."""
        messages = receive(self.sqs, self.queues.url, wait=wait)
        if not messages:
            return 0
        self.received += len(messages)
        event = {"Records": [record_of(message, self.queues.arn) for message in messages]}
        self.in_batch.set()
        try:
            response = call_updates(self.services, copy.deepcopy(event), self.remaining_ms)
        except Exception as exc:
            # The whole batch comes back after its visibility timeout, as on Lambda.
            self.escaped.append(exc)
            self.failed += len(messages)
            return len(messages)
        finally:
            self.in_batch.clear()
        failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        done = [message for message in messages if message["MessageId"] not in failed]
        self.failed += len(failed)
        self.acknowledged += len(done)
        self.acknowledged_at.extend([time.monotonic()] * len(done))
        for start in range(0, len(done), 10):
            chunk = done[start : start + 10]
            self.sqs.delete_message_batch(
                QueueUrl=self.queues.url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
        return len(messages)
