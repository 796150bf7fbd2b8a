"""The operator CLI on fake services: every command, every exit code, --json, progress and no PII.

``doctor``, ``migrate`` and ``ensure-indexes`` run over ``InMemoryMaintenance`` (below), a maintenance store
over the fake cache store's documents; the real one is exercised in tests/integration/test_doctor_migrate.py.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import pytest

from bytemark_cache.adapters.mongo_indexes import REQUIRED_INDEXES, IndexFinding
from bytemark_cache.bootstrap import Services, build_services
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.document import interpret_user_id, read_cache
from bytemark_cache.domain.model import CacheDocument, SyncPlan, UpdateMessage, WriteGuard
from bytemark_cache.errors import (
    BytemarkCacheError,
    ConcurrentModification,
    ConfigError,
    DeadlineExceeded,
    InvalidInput,
    NoBytemarkAccount,
    RateLimited,
    StoreError,
    SyncInProgress,
    TokenRevoked,
    UpstreamError,
)
from bytemark_cache_ops.cli import describe_error, main
from bytemark_cache_ops.exits import ERRORS, Interrupted, NotFound, ProblemsFound
from tests.fakes import FakeWorld, InMemoryCacheStore, InMemoryUpdateQueue, make_pass

pytestmark = pytest.mark.disable_socket

TOKEN = "tok-SECRET-42-abcdef"
EMAIL = "jane.doe@example.com"
PII = (TOKEN, EMAIL, "Jane", "Doe", "4111", "barcode-material-xyz")


def customer_pass(uuid: str, **fields: Any) -> dict[str, Any]:
    """A pass carrying the customer PII and barcode material real payloads have."""
    return make_pass(
        uuid,
        customer={"email": EMAIL, "first_name": "Jane", "last_name": "Doe", "card_last4": "4111"},
        barcode={"secret": "barcode-material-xyz"},
        **fields,
    )


@pytest.fixture
def world() -> FakeWorld:
    world = FakeWorld(users={42: TOKEN, 7: "tok-7", 9: None})
    world.source.set_passes(
        TOKEN,
        [
            customer_pass(
                "day-1",
                label_name="Local Day Pass",
                first_use="2024-06-15T02:00:00Z",
                time_created="2024-06-01T10:00:00Z",
            ),
            customer_pass("single-1", time_created="2024-06-02T10:00:00Z"),
        ],
        [
            customer_pass(f"old-{day}", status="EXPIRED", time_created=f"2024-01-{day:02d}T00:00:00Z")
            for day in range(1, 9)
        ],
    )
    world.source.set_passes("tok-7", [make_pass("seven-1")])
    return world


class Run:
    """One CLI invocation's exit code and captured output."""

    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code = code
        self.stdout = stdout
        self.stderr = stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


class TtyStream(io.StringIO):
    """A captured stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def run(argv: Sequence[str], services: Services | None, *, tty: bool = False, **parts: Any) -> Run:
    stdout = io.StringIO()
    stderr: io.StringIO = TtyStream() if tty else io.StringIO()
    code = main(list(argv), services=services, stdout=stdout, stderr=stderr, **parts)
    return Run(code, stdout.getvalue(), stderr.getvalue())


def built(world: FakeWorld, user_id: int = 42) -> FakeWorld:
    world.services.tickets.sync(user_id, deadline=Deadline.never())
    return world


def assert_one_error_line(result: Run, *fragments: str) -> None:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bytemark-cache: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr


# -- usage -----------------------------------------------------------------------------------------


def test_help_lists_every_command_and_needs_no_services() -> None:
    result = run(["--help"], services=None)

    assert result.code == 0
    for command in ("show", "sync", "log", "backfill", "doctor", "migrate", "ensure-indexes"):
        assert command in result.stdout
    assert "exit codes" in result.stdout
    assert "7    problems found" in result.stdout


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["show"],
        ["show", "forty-two"],
        ["log", "42", "--limit", "0"],
        ["backfill"],
        ["backfill", "--mode", "everyone"],
        ["backfill", "--mode", "missing", "--max-users", "-3"],
        ["sync", "42", "--timeout", "0"],
        ["doctor", "--batch-size", "0"],
        ["doctor", "--token-scan-limit", "-1"],
        ["migrate", "--max-documents", "many"],
    ],
)
def test_usage_errors_exit_2_without_touching_services(world: FakeWorld, argv: list[str]) -> None:
    result = run(argv, world.services)

    assert result.code == 2
    assert "usage:" in result.stderr
    assert result.stdout == ""
    assert world.source.fetches == []
    assert world.queue.messages == []


def test_json_flag_is_accepted_before_and_after_the_command(world: FakeWorld) -> None:
    built(world)

    before = run(["--json", "show", "42"], world.services)
    after = run(["show", "42", "--json"], world.services)

    assert before.code == after.code == 0
    assert before.json() == after.json()


# -- show ------------------------------------------------------------------------------------------


def test_show_without_cache_exits_3_and_names_the_fix(world: FakeWorld) -> None:
    result = run(["show", "42"], world.services)

    assert result.code == 3
    assert result.stdout == ""
    assert_one_error_line(result, "user 42 has no cache", "sync 42")


def test_show_prints_tables_with_effective_status_and_makes_no_upstream_call(world: FakeWorld) -> None:
    built(world)
    world.clock.advance(90)
    fetches = len(world.source.fetches)

    result = run(["show", "42"], world.services)

    assert result.code == 0
    assert len(world.source.fetches) == fetches
    assert "1m 30s ago" in result.stdout
    assert "passes4: 8" in result.stdout
    day_line = next(line for line in result.stdout.splitlines() if "day-1" in line)
    # Bytemark says USABLE; first_use is set and the local day has not ended → USING.
    assert day_line.split()[-3:] == ["USABLE", "USING", "2024-06-01T10:00:00Z"]
    assert "Local Day Pass" in day_line
    assert "PASSES4 (8, newest 5 shown)" in result.stdout
    history = [line.split()[0] for line in result.stdout.split("PASSES4")[1].splitlines() if "old-" in line]
    assert history == ["old-8", "old-7", "old-6", "old-5", "old-4"]


def test_show_json_has_only_the_listed_fields(world: FakeWorld) -> None:
    built(world)
    world.clock.advance(3600)

    result = run(["show", "42", "--json", "--passes4", "2"], world.services)

    assert result.code == 0
    shown = result.json()
    assert shown["user_id"] == 42
    assert shown["synced_at"] == "2024-06-15T04:30:00Z"
    assert shown["age_seconds"] == 3600
    assert shown["stale"] is True
    assert shown["counts"] == {"passes": 2, "passes4": 8, "by_effective_status": {"EXPIRED": 1, "USABLE": 1}}
    fields = {"uuid", "label_name", "status", "effective_status", "time_created"}
    assert all(set(row) == fields for row in shown["passes"])
    assert [row["uuid"] for row in shown["passes"]] == ["day-1", "single-1"]
    # 05:30Z is past 23:59:59 Chicago time of the first-use day (04:59:59Z): the day pass has expired.
    assert shown["passes"][0]["effective_status"] == "EXPIRED"
    assert shown["passes4"]["count"] == 8
    assert [row["uuid"] for row in shown["passes4"]["newest"]] == ["old-8", "old-7"]


def test_show_fresh_cache_is_not_stale(world: FakeWorld) -> None:
    built(world)

    shown = run(["show", "42", "--json"], world.services).json()

    assert shown["age_seconds"] == 0
    assert shown["stale"] is False


def test_show_neutralises_terminal_control_characters_from_payloads(world: FakeWorld) -> None:
    world.source.set_passes("tok-7", [make_pass("evil-1", label_name="Ride\x1b[2J\x07 Pass")])
    built(world, 7)

    result = run(["show", "7"], world.services)

    assert result.code == 0
    assert "\x1b" not in result.stdout
    assert "\x07" not in result.stdout
    assert "Ride?[2J? Pass" in result.stdout


# -- sync ------------------------------------------------------------------------------------------


def test_sync_builds_a_missing_cache_and_lists_the_created_passes(world: FakeWorld) -> None:
    result = run(["sync", "42"], world.services)

    assert result.code == 0
    assert world.cache.document_of(42)["user_id"] == 42
    assert "cache built, 10 passes written" in result.stdout
    created = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("created")]
    assert ["created", "passes", "day-1", "USABLE"] in created
    assert len(created) == 10
    assert "now: 2 in passes, 8 in passes4" in result.stdout


def test_sync_reports_only_what_changed(world: FakeWorld) -> None:
    built(world)
    world.clock.advance(60)
    world.source.set_passes(
        TOKEN,
        [customer_pass("single-1", time_created="2024-06-02T10:00:00Z", status="USES_GONE")],
        [],
    )

    result = run(["sync", "42", "--json"], world.services)

    assert result.code == 0
    synced = result.json()
    assert synced["source"] == "synced"
    assert synced["changed_passes"] == 2
    assert sorted((c["action"], c["uuid"], c["status"]) for c in synced["changes"]) == [
        ("removed", "day-1", "USABLE"),
        ("updated", "single-1", "USES_GONE"),
    ]
    assert synced["counts"]["passes"] == 1


def test_sync_without_changes_says_so(world: FakeWorld) -> None:
    built(world)
    world.clock.advance(60)

    result = run(["sync", "42"], world.services)

    assert result.code == 0
    assert "cache synced, nothing changed" in result.stdout
    assert "CHANGES" not in result.stdout


def test_sync_without_bytemark_account_exits_3(world: FakeWorld) -> None:
    world.tokens.tokens[42] = None

    result = run(["sync", "42"], world.services)

    assert result.code == 3
    assert_one_error_line(result, "user 42 has no Bytemark account")
    assert world.cache.document_of(42) is None


def test_sync_with_bytemark_down_exits_4_and_keeps_the_cache(world: FakeWorld) -> None:
    built(world)
    before = world.cache.load(42)
    world.source.fail_next(
        TOKEN, UpstreamError("Bytemark /passes: HTTP 503 (gave up after 3 attempts)", retry_after=30)
    )

    result = run(["sync", "42"], world.services)

    assert result.code == 4
    assert_one_error_line(result, "Bytemark is unavailable", "HTTP 503", "transient", "retry after 30 s")
    assert world.cache.load(42) == before


def test_sync_with_revoked_token_exits_4_and_says_revoked(world: FakeWorld) -> None:
    world.source.fail_next(TOKEN, TokenRevoked())

    result = run(["sync", "42"], world.services)

    assert result.code == 4
    assert_one_error_line(result, "expired or revoked (50020)")
    assert "unavailable" not in result.stderr
    assert world.cache.document_of(42) is None


def test_sync_while_another_sync_holds_the_claim_exits_1(world: FakeWorld) -> None:
    assert world.cache.claim(42, 0, "someone-else", world.clock.now(), 600)

    result = run(["sync", "42"], world.services)

    assert result.code == 1
    assert_one_error_line(result, "in progress", "try again")
    assert world.source.fetches == []


def test_sync_has_no_deadline_unless_a_timeout_is_given(world: FakeWorld) -> None:
    assert run(["sync", "42"], world.services).code == 0
    world.clock.advance(60)
    assert run(["sync", "42", "--timeout", "2.5"], world.services).code == 0

    assert math.isinf(world.source.budgets[0])
    assert world.source.budgets[1] == pytest.approx(2.5)


def test_sync_converges_a_legacy_document_and_reports_the_changes(world: FakeWorld) -> None:
    world.cache.put(legacy_document(42, passes=[legacy_element("day-1")]))

    result = run(["sync", "42", "--json"], world.services)

    assert result.code == 0
    assert result.json()["source"] == "synced"
    stored = world.cache.document_of(42)
    assert stored is not None
    assert stored["user_id"] == 42
    assert all("uuid" not in element for element in stored["passes"])


# -- log -------------------------------------------------------------------------------------------


def test_log_prints_the_newest_entries_first(world: FakeWorld) -> None:
    built(world)
    world.clock.advance(120)
    world.source.set_passes(TOKEN, [customer_pass("single-1", time_created="2024-06-02T10:00:00Z")], [])
    built(world)

    result = run(["log", "42", "--limit", "3"], world.services)

    assert result.code == 0
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert len(rows) == 3
    assert rows[0][:4] == ["2024-06-15T04:32:00Z", "removed", "passes", "day-1"]
    assert rows[2][0] == "2024-06-15T04:30:00Z"


def test_log_json_parses_and_carries_full_hashes(world: FakeWorld) -> None:
    built(world)

    result = run(["log", "42", "--json"], world.services)

    assert result.code == 0
    entries = result.json()["entries"]
    assert len(entries) == 10
    assert {entry["action"] for entry in entries} == {"created"}
    document = world.cache.document_of(42)
    assert document is not None
    stored = {element["pass_uuid"]: element["payload_hash"] for element in document["passes"]}
    by_uuid = {entry["uuid"]: entry for entry in entries}
    assert by_uuid["day-1"]["payload_hash"] == stored["day-1"]
    assert by_uuid["day-1"]["previous_hash"] is None
    assert set(by_uuid["day-1"]) == {
        "timestamp",
        "at",
        "action",
        "list",
        "uuid",
        "status",
        "payload_hash",
        "previous_hash",
    }


def test_log_of_an_unknown_user_exits_3(world: FakeWorld) -> None:
    result = run(["log", "5"], world.services)

    assert result.code == 3
    assert_one_error_line(result, "user 5 has no cache")


# -- backfill --------------------------------------------------------------------------------------


def many_users(count: int) -> FakeWorld:
    return FakeWorld(users={uid: f"tok-{uid}" for uid in range(1, count + 1)})


def test_backfill_enqueues_missing_users_with_plain_progress_lines() -> None:
    world = many_users(5)
    for uid in (2, 4):
        world.source.set_passes(f"tok-{uid}", [make_pass(f"p-{uid}")])
        built(world, uid)

    result = run(["backfill", "--mode", "missing", "--page-size", "2"], world.services)

    assert result.code == 0
    assert [message["user_id"] for message in world.queue.messages] == [1, 3, 5]
    assert {message["reason"] for message in world.queue.messages} == {"backfill"}
    assert result.stderr.splitlines() == [
        "back-fill: scanned 2 users, enqueued 1, cursor 2",
        "back-fill: scanned 4 users, enqueued 2, cursor 4",
        "back-fill: scanned 5 users, enqueued 3, cursor 5",
    ]
    assert "\r" not in result.stderr
    assert "back-fill (missing): scanned 5 users, enqueued 3" in result.stdout
    assert "finished" in result.stdout


def test_backfill_on_a_terminal_redraws_one_progress_bar() -> None:
    world = many_users(6)

    result = run(
        ["backfill", "--mode", "missing", "--page-size", "2", "--max-users", "4"], world.services, tty=True
    )

    assert result.code == 0
    assert result.stderr.count("\r") == 2
    assert result.stderr.endswith("\n")
    assert result.stderr.count("\n") == 1
    last = result.stderr.rstrip("\n").split("\r")[-1]
    assert last.startswith("[" + "#" * 24 + "] 100%")
    assert "scanned 4 users" in last
    first = result.stderr.split("\r")[1]
    assert first.startswith("[" + "#" * 12 + "-" * 12 + "]  50%")


def test_backfill_stopped_by_max_users_prints_the_resume_cursor() -> None:
    world = many_users(5)

    first = run(
        ["backfill", "--mode", "missing", "--page-size", "2", "--max-users", "2", "--json"], world.services
    )
    resumed = run(["backfill", "--mode", "missing", "--cursor", "2", "--json"], world.services)

    assert first.code == resumed.code == 0
    assert first.json() == {"mode": "missing", "scanned": 2, "enqueued": 2, "cursor": 2, "dry_run": False}
    assert resumed.json()["cursor"] is None
    assert resumed.json()["scanned"] == 3
    assert [message["user_id"] for message in world.queue.messages] == [1, 2, 3, 4, 5]


def test_backfill_human_summary_names_the_resume_cursor() -> None:
    world = many_users(5)

    result = run(
        ["backfill", "--mode", "missing", "--page-size", "2", "--max-users", "2", "-q"], world.services
    )

    assert result.code == 0
    assert result.stderr == ""
    assert "resume with --cursor 2" in result.stdout


def test_backfill_dry_run_counts_but_enqueues_nothing(world: FakeWorld) -> None:
    built(world)
    world.clock.advance(3600)

    result = run(["backfill", "--mode", "stale", "--dry-run", "--json"], world.services)

    assert result.code == 0
    assert result.json() == {"mode": "stale", "scanned": 2, "enqueued": 1, "cursor": None, "dry_run": True}
    assert world.queue.messages == []


def test_backfill_without_a_queue_is_a_configuration_error(world: FakeWorld) -> None:
    services = build_services(
        FakeWorld(env={"UPDATE_QUEUE_URL": ""}).settings,
        tokens=world.tokens,
        source=world.source,
        cache=world.cache,
        clock=world.clock,
        runs=world.runs,
    )
    assert services.queue is None

    refused = run(["backfill", "--mode", "missing"], services)
    dry = run(["backfill", "--mode", "missing", "--dry-run", "--json"], services)

    assert services.backfill is None
    for result in (refused, dry):
        assert result.code == 5
        assert_one_error_line(result, "configuration error: UPDATE_QUEUE_URL is required")


def test_backfill_with_the_queue_down_exits_6(world: FakeWorld) -> None:
    world.queue.fail_after = 0

    result = run(["backfill", "--mode", "missing", "-q"], world.services)

    assert result.code == 6
    assert_one_error_line(result, "store unavailable", "queue unavailable")


class InterruptingQueue(InMemoryUpdateQueue):
    """Takes one batch, then the operator presses Ctrl-C."""

    def enqueue(self, messages: Sequence[UpdateMessage]) -> None:
        if self.messages:
            raise KeyboardInterrupt
        super().enqueue(messages)


def test_backfill_interrupted_exits_130_with_the_resume_cursor() -> None:
    world = many_users(6)
    queue = InterruptingQueue()
    services = build_services(
        world.settings,
        tokens=world.tokens,
        source=world.source,
        cache=world.cache,
        queue=queue,
        clock=world.clock,
        runs=world.runs,
    )

    result = run(["backfill", "--mode", "missing", "--page-size", "2"], services, tty=True)

    assert result.code == 130
    assert result.stderr.endswith("error: back-fill interrupted after 2 users; resume with --cursor 2\n")
    assert [message["user_id"] for message in queue.messages] == [1, 2]


# -- store and configuration errors ----------------------------------------------------------------


class UnavailableCacheStore(InMemoryCacheStore):
    """MongoDB is down: every read fails the way the adapter reports it."""

    def load(self, user_id: int) -> list[CacheDocument]:
        raise StoreError("MongoDB load failed: ServerSelectionTimeoutError")

    def read_log(self, user_id: int, limit: int) -> list[dict[str, Any]]:
        raise StoreError("MongoDB read_log failed: ServerSelectionTimeoutError")


@pytest.mark.parametrize("argv", [["show", "42"], ["sync", "42"], ["log", "42"]])
def test_store_unavailable_exits_6(world: FakeWorld, argv: list[str]) -> None:
    services = build_services(
        world.settings,
        tokens=world.tokens,
        source=world.source,
        cache=UnavailableCacheStore(),
        queue=world.queue,
        clock=world.clock,
        runs=world.runs,
    )

    result = run(argv, services)

    assert result.code == 6
    assert_one_error_line(result, "store unavailable", "ServerSelectionTimeoutError")


def test_configuration_error_exits_5_naming_every_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MONGODB_URI", "MYSQL_HOST", "BYTEMARK_API_URL", "MONGODB_SECRET_ARN", "MYSQL_SECRET_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MYSQL_USER", "app")
    monkeypatch.setenv("CACHE_TTL_SECONDS", "soon")

    result = run(["show", "42"], services=None)

    assert result.code == 5
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert all(line.startswith("bytemark-cache: error: configuration error: ") for line in lines)
    for name in ("MONGODB_URI", "MYSQL_HOST", "BYTEMARK_API_URL", "CACHE_TTL_SECONDS"):
        assert sum(name in line for line in lines) == 1, name
    assert "Traceback" not in result.stderr


# -- no secrets, no PII ----------------------------------------------------------------------------


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_no_token_or_customer_field_is_ever_printed(world: FakeWorld, json_flag: list[str]) -> None:
    outputs = [
        run(["sync", "42", *json_flag], world.services),
        run(["show", "42", *json_flag], world.services),
        run(["log", "42", *json_flag], world.services),
        run(["backfill", "--mode", "stale", "--dry-run", *json_flag], world.services),
    ]
    world.source.fail_next(TOKEN, UpstreamError("Bytemark /passes: HTTP 500"))
    outputs.append(run(["sync", "42", *json_flag], world.services))
    world.source.fail_next(TOKEN, TokenRevoked())
    outputs.append(run(["sync", "42", *json_flag], world.services))
    world.cache.put(legacy_document(42, passes=[legacy_element("x", customer={"email": EMAIL})]))
    store = InMemoryMaintenance(world.cache)
    for argv in (["doctor"], ["migrate"], ["migrate", "--apply"], ["ensure-indexes"]):
        outputs.append(run([*argv, *json_flag], world.services, maintenance=store, tokens=world.tokens))

    assert [output.code for output in outputs] == [0, 0, 0, 0, 4, 4, 7, 0, 0, 0]
    printed = "".join(output.stdout + output.stderr for output in outputs)
    for secret in PII:
        assert secret not in printed, secret


@pytest.mark.parametrize(
    ("error", "code", "fragment"),
    [
        (NoBytemarkAccount(42), 3, "user 42 has no Bytemark account"),
        (TokenRevoked(), 4, "revoked"),
        (UpstreamError("Bytemark /passes: bad JSON", transient=False), 4, "not transient"),
        (StoreError("MySQL 127.0.0.1:3317/portal failed: OperationalError (2003)"), 6, "MySQL"),
        (ConcurrentModification("cache of user 42 kept changing"), 6, "kept changing"),
        (InvalidInput("unknown back-fill mode"), 2, "invalid input"),
        (SyncInProgress("a sync of user 42 is in progress"), 1, "try again"),
        (DeadlineExceeded(), 4, "transient"),
        (RateLimited(30), 1, "retry after 30 s"),
        (ConfigError(["MONGODB_URI is required", "MYSQL_HOST is required"]), 5, "MYSQL_HOST"),
        (NotFound("user 5 has no cache"), 3, "user 5 has no cache"),
        (ProblemsFound("doctor found 2 problems"), 7, "2 problems"),
        (Interrupted("migrate interrupted; resume with --after x"), 130, "--after x"),
        (KeyboardInterrupt(), 130, "interrupted"),
        (BytemarkCacheError("something else"), 1, "something else"),
    ],
)
def test_every_project_error_has_a_message_and_an_exit_code(
    error: BaseException, code: int, fragment: str
) -> None:
    message, exit_code = describe_error(error)

    assert exit_code == code
    assert fragment in message
    assert "\n" not in message


def test_error_messages_hide_credentials_a_driver_might_echo() -> None:
    message, code = describe_error(
        StoreError(
            "cannot reach mongodb://btc_app:hunter2@db.internal:27017/cache\nAuthorization: Bearer abc.def"
        )
    )

    assert code == 6
    assert "hunter2" not in message
    assert "abc.def" not in message
    assert "mongodb://***@db.internal:27017/cache" in message
    assert "\n" not in message


def test_package_warnings_go_to_the_given_stderr_only_while_the_command_runs(world: FakeWorld) -> None:
    adapter_logger = logging.getLogger("bytemark_cache.adapters.bytemark_http")
    world.source.before_fetch = lambda token: adapter_logger.warning("bytemark retry after HTTP 503")
    handlers_before = list(logging.getLogger("bytemark_cache").handlers)

    result = run(["sync", "42"], world.services)

    assert result.code == 0
    assert "WARNING: bytemark retry after HTTP 503\n" in result.stderr
    assert logging.getLogger("bytemark_cache").handlers == handlers_before


def test_the_error_table_has_the_documented_exit_codes_and_is_looked_up_by_subclass() -> None:
    # Every exit code of the table's rules is one the epilog documents, and a subclass finds its parent.
    assert {rule.code for rule in ERRORS.values()} == {1, 2, 3, 4, 5, 6, 7, 130}
    assert describe_error(ConcurrentModification("x"))[1] == describe_error(StoreError("x"))[1]
    with pytest.raises(TypeError):
        describe_error(ValueError("a bug, not an answer"))


def test_a_bug_keeps_its_traceback(world: FakeWorld) -> None:
    class BrokenCacheStore(InMemoryCacheStore):
        def load(self, user_id: int) -> list[CacheDocument]:
            raise ValueError("a bug")

    services = build_services(
        world.settings,
        tokens=world.tokens,
        source=world.source,
        cache=BrokenCacheStore(),
        clock=world.clock,
        runs=world.runs,
    )

    with pytest.raises(ValueError, match="a bug"):
        run(["show", "42"], services)


# -- legacy documents --------------------------------------------------------------------------------

MS = 1000
NODE_SYNC = 1_718_400_000
"""2024-06-14T21:20:00Z, 7h 10m before the fake clock's start."""


def legacy_element(uuid: str, *, created: str = "2024-06-01T10:00:00Z", **extra: Any) -> dict[str, Any]:
    """An element as Node wrote it: keyed ``uuid``, a millisecond timestamp, no hash."""
    payload = make_pass(uuid, time_created=created)
    return {
        "uuid": uuid,
        "timestamp": NODE_SYNC * MS,
        "status": payload["status"],
        "payload": payload,
        **extra,
    }


def legacy_document(user_id: int | str, **fields: Any) -> dict[str, Any]:
    """A cache document as Node wrote it (millisecond timestamp, uuid-keyed elements, Mongoose extras)."""
    document: dict[str, Any] = {
        "user_id": user_id,
        "timestamp": NODE_SYNC * MS,
        "passes": [legacy_element("b", created="2024-06-02T10:00:00Z"), legacy_element("a")],
        "passes4": [],
        "__v": 0,
    }
    document.update(fields)
    return document


def test_show_names_the_legacy_shapes_and_the_duplicates(world: FakeWorld) -> None:
    world.cache.put(legacy_document(42))
    world.cache.put(legacy_document("42", timestamp=(NODE_SYNC - 60) * MS))

    human = run(["show", "42"], world.services)
    shown = run(["show", "42", "--json"], world.services).json()

    assert human.code == 0
    assert "cache synced 2024-06-14T21:20:00Z (7h 10m ago" in human.stdout
    assert "legacy shapes: duplicate_documents, timestamp_milliseconds, element_free_ticket" in human.stdout
    assert "2 documents stored for this user" in human.stdout
    assert shown["legacy"][:2] == ["duplicate_documents", "timestamp_milliseconds"]
    assert "element_uuid_key" in shown["legacy"]
    assert shown["duplicates"] == 1
    assert shown["revision"] == 0
    assert [row["uuid"] for row in shown["passes"]] == ["b", "a"]


def test_show_a_document_without_a_sync_time_is_stale(world: FakeWorld) -> None:
    document = legacy_document(42)
    del document["timestamp"]
    world.cache.put(document)

    human = run(["show", "42"], world.services)
    shown = run(["show", "42", "--json"], world.services).json()

    assert "sync time unknown" in human.stdout
    assert shown["synced_at"] is None
    assert shown["age_seconds"] is None
    assert shown["stale"] is True


# -- backfill modes ----------------------------------------------------------------------------------


def test_backfill_due_enqueues_the_due_users_and_a_dry_run_counts_them(world: FakeWorld) -> None:
    built(world)
    built(world, 7)
    world.clock.advance(30 * 86400)

    dry = run(["backfill", "--mode", "due", "--dry-run"], world.services)
    real = run(["backfill", "--mode", "due", "--json", "-q"], world.services)

    assert dry.code == real.code == 0
    assert "due now: 2 users" in dry.stdout
    assert real.json()["enqueued"] == 2
    assert sorted(message["user_id"] for message in world.queue.messages) == [7, 42]


def test_backfill_prune_deletes_old_change_log_entries(world: FakeWorld) -> None:
    built(world)
    world.clock.advance(500 * 86400)

    dry = run(["backfill", "--mode", "prune", "--dry-run"], world.services)
    entries = len(world.cache.log_entries())
    real = run(["backfill", "--mode", "prune"], world.services)

    assert dry.code == real.code == 0
    assert "none deleted" in dry.stdout
    assert entries == 10
    assert "deleted 10 change-log entries" in real.stdout
    assert world.cache.log_entries() == []


# -- doctor, migrate, ensure-indexes ------------------------------------------------------------------


class InMemoryMaintenance:
    """The maintenance store over an InMemoryCacheStore's documents (``_id`` order = string order)."""

    def __init__(self, cache: InMemoryCacheStore, present: Sequence[str] = ()) -> None:
        self.cache = cache
        self.collections: dict[Any, str] = {"cache": "cache", "log": "log", "claims": "claims"}
        self.duplicates_collection = "aside"
        self.migration_log_collection = "migrations"
        self.present = set(present)
        self.aside: dict[Any, dict[str, Any]] = {}
        self.migration_log: dict[str, dict[str, Any]] = {}
        self.interrupt_after: int | None = None
        self.scanned = 0

    @property
    def cache_collection(self) -> str:
        return "cache"

    def estimated_count(self) -> int:
        return len(self.cache.documents)

    def scan(self, after: Any, limit: int) -> list[CacheDocument]:
        ids = sorted(key for key in self.cache.documents if after is None or key > after)[:limit]
        if self.interrupt_after is not None and self.scanned >= self.interrupt_after:
            raise KeyboardInterrupt
        self.scanned += len(ids)
        return [copy.deepcopy(self.cache.documents[key]) for key in ids]

    def duplicate_user_ids(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for document in self.cache.documents.values():
            user_id = interpret_user_id(document.get("user_id"))
            if user_id is not None:
                counts[user_id] = counts.get(user_id, 0) + 1
        return {user_id: count for user_id, count in counts.items() if count > 1}

    def check_indexes(self) -> list[IndexFinding]:
        return [
            IndexFinding(
                spec, self.collections[spec.role], "present" if spec.name in self.present else "missing"
            )
            for spec in REQUIRED_INDEXES
        ]

    def ensure_indexes(self) -> list[IndexFinding]:
        findings = []
        for finding in self.check_indexes():
            if finding.status == "missing":
                if finding.spec.unique and self.duplicate_user_ids():
                    finding = IndexFinding(finding.spec, finding.collection, "failed", None, "E11000")
                else:
                    self.present.add(finding.spec.name)
                    finding = IndexFinding(finding.spec, finding.collection, "created", finding.spec.name)
            findings.append(finding)
        return findings

    def copy_aside(self, document: CacheDocument) -> None:
        self.aside[document["_id"]] = copy.deepcopy(document)

    def delete_guarded(self, guard: WriteGuard) -> bool:
        stored = self.cache.documents.get(guard.document_id)
        if stored is None:
            return False
        if any(stored.get(name) != value for name, value in guard.fields.items()):
            return False
        if any(name in stored for name in guard.missing):
            return False
        del self.cache.documents[guard.document_id]
        return True

    def record_migration(self, entry: dict[str, Any]) -> None:
        self.migration_log[entry["_id"]] = copy.deepcopy(entry)

    def forget_migration(self, entry_id: str) -> None:
        self.migration_log.pop(entry_id, None)


def legacy_world() -> tuple[FakeWorld, InMemoryMaintenance]:
    """Users 42 (a duplicate pair: number and string), 7 (string id, uuid keys), 8 (contract shape, built
    by the service) and 9 (no token, no cache); 5 has a token and no cache."""
    world = FakeWorld(users={42: TOKEN, 7: "tok-7", 8: "tok-8", 5: "tok-5", 9: None})
    world.source.set_passes("tok-8", [make_pass("eight-1")])
    built(world, 8)
    world.cache.put({**legacy_document(42), "_id": "a-42-newer"})
    world.cache.put({**legacy_document("42", timestamp=(NODE_SYNC - 600) * MS), "_id": "b-42-older"})
    world.cache.put({**legacy_document("7", timestamp="2024-06-14T21:20:00Z"), "_id": "c-7"})
    return world, InMemoryMaintenance(world.cache)


def snapshot(world: FakeWorld) -> Any:
    return copy.deepcopy((world.cache.documents, world.cache.log, world.cache.claims))


def test_doctor_counts_the_legacy_shapes_and_fails_on_duplicates() -> None:
    world, store = legacy_world()
    before = snapshot(world)

    result = run(["doctor", "--json"], world.services, maintenance=store, tokens=world.tokens)

    assert result.code == 7
    assert_one_error_line(result, "doctor found 2 problems that would break the service")
    report = result.json()
    assert report["documents"] == 4
    assert report["legacy"] == {
        "element_free_ticket_status_missing": 3,
        "element_payload_hash_missing": 3,
        "element_timestamp_milliseconds": 3,
        "element_uuid_key": 3,
        "timestamp_milliseconds": 2,
        "timestamp_string": 1,
        "user_id_string": 2,
    }
    assert report["legacy_documents"] == 3
    assert report["timestamp_kinds"] == {"milliseconds": 2, "seconds": 1, "string": 1}
    assert report["unknown_fields"] == {"__v": 3}
    assert report["duplicates"] == {"users": 1, "documents": 2, "examples": [42]}
    assert report["sync_times"]["newest"] == "2024-06-15T04:30:00Z"
    assert report["sync_times"]["oldest"] == "2024-06-14T21:10:00Z"
    assert report["tokens"] == {
        "scanned": 4,
        "limit": 10000,
        "complete": True,
        "without_cache": {"count": 1, "examples": ["5"]},
    }
    assert any("unique index" in error for error in report["errors"])
    assert any("user_id_unique" in error and "missing" in error for error in report["errors"])
    assert any("next_sync_at" in warning for warning in report["warnings"])
    assert snapshot(world) == before
    assert store.aside == store.migration_log == {}


def test_doctor_human_report_lists_shapes_indexes_and_verdicts() -> None:
    world, store = legacy_world()

    result = run(
        ["doctor", "--token-scan-limit", "2"], world.services, maintenance=store, tokens=world.tokens
    )

    assert result.code == 7
    lines = result.stdout.splitlines()
    assert lines[0] == "doctor: cache: 4 documents, 3 users"
    assert ["timestamp_milliseconds", "2"] in [line.split() for line in lines]
    assert any(line.split()[:3] == ["missing", "cache", "user_id_unique"] for line in lines)
    assert "tokens: 2 users with a token scanned (the first 2): 1 without a cache (e.g. 5)" in result.stdout
    assert "ERRORS (would break the service)" in result.stdout
    assert lines[-1] == "result: 2 errors, 6 warnings"


def test_doctor_on_a_clean_collection_exits_0_with_warnings_only(world: FakeWorld) -> None:
    built(world)
    store = InMemoryMaintenance(world.cache, present=[spec.name for spec in REQUIRED_INDEXES])

    result = run(
        ["doctor", "--max-bytes", "200", "--token-scan-limit", "0", "--json"],
        world.services,
        maintenance=store,
    )

    assert result.code == 0, result.stderr
    report = result.json()
    assert report["errors"] == []
    assert report["legacy"] == {}
    assert report["tokens"] is None
    assert report["sizes"]["over_max_bytes"]["count"] == 1
    assert report["warnings"] == [f"1 document over 200 B (_id {world.cache.document_of(42)['_id']})"]


def test_doctor_reports_unreadable_user_ids_as_errors(world: FakeWorld) -> None:
    world.cache.put({"_id": "x-1", "user_id": "jane", "timestamp": NODE_SYNC, "passes": [], "passes4": []})
    store = InMemoryMaintenance(world.cache, present=[spec.name for spec in REQUIRED_INDEXES])

    result = run(["doctor", "--token-scan-limit", "0"], world.services, maintenance=store)

    assert result.code == 7
    assert "1 document without a readable user_id (_id x-1)" in result.stdout


def test_doctor_draws_a_progress_bar_on_a_terminal_only() -> None:
    world, store = legacy_world()

    tty = run(
        ["doctor", "--batch-size", "2", "--token-scan-limit", "0"],
        world.services,
        tty=True,
        maintenance=store,
    )
    plain = run(["doctor", "--batch-size", "2", "--token-scan-limit", "0"], world.services, maintenance=store)

    assert tty.stderr.count("\r") == 2
    assert "[" + "#" * 24 + "] 100% 4 documents read" in tty.stderr
    assert plain.stderr.count("\n") == 1  # the verdict only


def migrated(world: FakeWorld, store: InMemoryMaintenance, *argv: str) -> Run:
    return run(["migrate", *argv], world.services, maintenance=store)


def test_migrate_dry_run_reports_and_writes_nothing() -> None:
    world, store = legacy_world()
    before = snapshot(world)

    result = migrated(world, store, "--json", "-q")

    assert result.code == 0, result.stderr
    report = result.json()
    assert report["apply"] is False
    assert (report["scanned"], report["converged"], report["moved"], report["unchanged"]) == (4, 2, 1, 1)
    assert report["actions"] == {
        "duplicate_moved": 1,
        "element_free_ticket_status_missing": 2,
        "element_payload_hash_missing": 2,
        "element_timestamp_milliseconds": 2,
        "element_uuid_key": 2,
        "elements_reordered": 2,
        "timestamp_milliseconds": 1,
        "timestamp_string": 1,
        "user_id_string": 1,
    }
    assert {index["status"] for index in report["indexes"]} == {"missing"}
    assert snapshot(world) == before
    assert store.aside == store.migration_log == {}


def test_migrate_apply_converges_moves_duplicates_aside_and_creates_the_indexes() -> None:
    world, store = legacy_world()
    original_older = copy.deepcopy(world.cache.documents["b-42-older"])
    changes_before = world.cache.log_entries()

    result = migrated(world, store, "--apply")

    assert result.code == 0, result.stderr
    assert "converged 2 documents; moved 1 duplicate to aside" in result.stdout
    assert set(world.cache.documents) == {"a-42-newer", "c-7", world.cache.document_of(8)["_id"]}
    for user_id in (42, 7):
        document = world.cache.document_of(user_id)
        assert document is not None
        assert type(document["user_id"]) is int
        assert type(document["timestamp"]) is int
        assert document["sync_revision"] == 1
        assert document["__v"] == 0
        stored = read_cache([document], user_id, world.clock.now())
        assert stored is not None
        assert stored.legacy == ()
        assert [element["pass_uuid"] for element in document["passes"]] == ["a", "b"]
    assert world.cache.document_of(42)["timestamp"] == NODE_SYNC
    assert store.aside == {"b-42-older": original_older}
    assert sorted(store.migration_log) == ["a-42-newer:0", "b-42-older:moved", "c-7:0"]
    assert store.migration_log["c-7:0"]["changes"] == {
        "user_id": {"from": "7", "to": 7},
        "timestamp": {"from": "2024-06-14T21:20:00Z", "to": NODE_SYNC},
    }
    assert store.migration_log["b-42-older:moved"]["kept_document_id"] == "a-42-newer"
    assert world.cache.log_entries() == changes_before  # nothing in the pass change log
    assert store.present == {spec.name for spec in REQUIRED_INDEXES}


def test_a_second_migrate_apply_changes_nothing() -> None:
    world, store = legacy_world()
    assert migrated(world, store, "--apply").code == 0
    before, writes, entries = snapshot(world)[0], len(world.cache.writes), dict(store.migration_log)

    again = migrated(world, store, "--apply", "--json")

    assert again.code == 0
    report = again.json()
    assert (report["converged"], report["moved"], report["unchanged"]) == (0, 0, 3)
    assert {index["status"] for index in report["indexes"]} == {"present"}
    assert snapshot(world)[0] == before
    assert len(world.cache.writes) == writes
    assert store.migration_log == entries


def test_migrate_carries_the_pending_change_log_of_the_service() -> None:
    world, store = legacy_world()
    document = world.cache.document_of(8)
    assert document is not None
    pending = {
        "_id": "8:1:w:0", "user_id": 8, "timestamp": NODE_SYNC, "uuid": "eight-1", "status": "USABLE",
        "action": "created", "list": "passes", "payload_hash": "h", "previous_hash": None,
    }  # fmt: skip
    world.cache.documents[document["_id"]].update(timestamp=NODE_SYNC * MS, log_pending=[pending])

    result = migrated(world, store, "--apply")

    assert result.code == 0
    converged = world.cache.document_of(8)
    assert converged is not None
    assert "log_pending" not in converged
    assert converged["timestamp"] == NODE_SYNC
    assert world.cache.log["8:1:w:0"] == pending


def test_migrate_leaves_a_user_whose_sync_holds_the_claim() -> None:
    world, store = legacy_world()
    assert world.cache.claim(7, 0, "a-running-sync", world.clock.now(), 600)
    before = copy.deepcopy(world.cache.documents["c-7"])

    result = migrated(world, store, "--apply", "-q")

    assert result.code == 7
    assert_one_error_line(result, "migrate left 1 document as they were")
    assert "1 busy" in result.stdout
    assert world.cache.documents["c-7"] == before
    assert "c-7:0" not in store.migration_log


class MovingCacheStore(InMemoryCacheStore):
    """Another writer (Node) changes the document just before each of our first ``moves`` writes."""

    def __init__(self, documents: dict[Any, CacheDocument], moves: int) -> None:
        super().__init__()
        self.documents = documents
        self.moves = moves

    def write(self, plan: SyncPlan) -> None:
        if plan.guard is not None and self.moves > 0:
            self.moves -= 1
            self.documents[plan.guard.document_id]["timestamp"] = NODE_SYNC * MS + 1 + self.moves
        super().write(plan)


def moving_world(moves: int) -> tuple[Services, MovingCacheStore, InMemoryMaintenance]:
    world, _store = legacy_world()
    cache = MovingCacheStore(world.cache.documents, moves)
    services = build_services(
        world.settings,
        tokens=world.tokens,
        source=world.source,
        cache=cache,
        clock=world.clock,
        runs=world.runs,
    )
    return services, cache, InMemoryMaintenance(cache)


def test_migrate_never_overwrites_a_document_that_keeps_changing() -> None:
    services, cache, store = moving_world(moves=100)

    result = run(["migrate", "--apply", "--json"], services, maintenance=store)

    assert result.code == 7
    report = result.json()
    assert report["changed_meanwhile"]["count"] == 2
    assert report["converged"] == 0
    assert cache.writes == []
    # The older duplicate went aside first (it does not depend on the kept document's write).
    assert report["moved"] == 1
    assert set(store.migration_log) == {"b-42-older:moved"}
    assert cache.claims
    assert all(claim["expires_at"] == 0 for claim in cache.claims.values())


def test_migrate_plans_again_on_what_another_writer_left() -> None:
    services, cache, store = moving_world(moves=1)

    result = run(["migrate", "--apply", "--json"], services, maintenance=store)

    assert result.code == 0, result.stderr
    assert result.json()["converged"] == 2
    first = cache.documents["a-42-newer"]
    assert first["timestamp"] == NODE_SYNC  # Node's newer millisecond time, converted
    assert store.migration_log["a-42-newer:0"]["changes"]["timestamp"]["from"] == NODE_SYNC * MS + 1


def test_migrate_resumes_after_the_printed_cursor() -> None:
    world, store = legacy_world()

    first = migrated(world, store, "--apply", "--max-documents", "2", "--batch-size", "1")
    cursor = first.stdout.rsplit("--after ", 1)[1].split()[0]
    second = migrated(world, store, "--apply", "--after", cursor, "--json", "-q")

    assert first.code == 0
    assert cursor == "c-7"  # a-42-newer, then c-7: b-42-older was moved aside with a-42-newer
    assert first.stderr.splitlines()[0].startswith("migrate: scanned 1 document, converged 1, moved 1")
    assert second.code == 0
    assert second.json()["finished"] is True
    for user_id in (42, 7):
        stored = read_cache(world.cache.load(user_id), user_id, world.clock.now())
        assert stored is not None
        assert stored.legacy == ()


def test_migrate_interrupted_names_the_resume_cursor() -> None:
    world, store = legacy_world()
    store.interrupt_after = 2

    result = migrated(world, store, "--apply", "--batch-size", "2", "-q")

    assert result.code == 130
    assert (
        result.stderr
        == "bytemark-cache: error: migrate interrupted after 2 documents; resume with --after b-42-older\n"
    )


def test_migrate_skips_what_it_cannot_converge() -> None:
    world, store = legacy_world()
    world.cache.put({"_id": "d-bad", "user_id": "jane", "timestamp": 1})
    world.cache.put({"_id": "e-odd", "user_id": 11, "timestamp": 1, "passes": "not a list", "passes4": []})

    result = migrated(world, store, "--apply", "-q")

    assert result.code == 7
    assert "unreadable_user_id  1" in result.stdout
    assert "list_not_array      1" in result.stdout
    assert world.cache.documents["e-odd"]["passes"] == "not a list"


def test_ensure_indexes_prints_each_index_status_the_store_reports_and_exits_0(world: FakeWorld) -> None:
    store = InMemoryMaintenance(world.cache, present=["user_id_unique"])

    result = run(["ensure-indexes"], world.services, maintenance=store)

    assert result.code == 0, result.stderr
    statuses = {line.split()[2]: line.split()[0] for line in result.stdout.splitlines()[2:]}
    assert statuses == {
        "user_id_unique": "present",
        "next_sync_at": "created",
        "user_id_timestamp": "created",
        "timestamp": "created",
        "user_id_revision": "created",
    }


def test_ensure_indexes_explains_a_failed_unique_index_by_the_duplicates_and_exits_7() -> None:
    world, store = legacy_world()

    result = run(["ensure-indexes", "--json"], world.services, maintenance=store)

    assert result.code == 7
    assert_one_error_line(result, "1 required index not in place: user_id_unique (failed)")
    unique = next(index for index in result.json()["indexes"] if index["name"] == "user_id_unique")
    assert (
        unique["detail"] == "1 user with more than one document: run `bytemark-cache migrate --apply` first"
    )


class UniqueUserIdCacheStore(InMemoryCacheStore):
    """A unique index on user_id, which (like MongoDB's) tells 42 from "42"."""

    def write(self, plan: SyncPlan) -> None:
        target = plan.fields.get("user_id")
        others = [
            key
            for key, stored in self.documents.items()
            if stored.get("user_id") == target and type(stored.get("user_id")) is type(target)
        ]
        if target is not None and any(plan.guard is None or key != plan.guard.document_id for key in others):
            raise StoreError("MongoDB cache update failed: DuplicateKeyError (code 11000)")
        super().write(plan)


def test_migrate_moves_a_numeric_duplicate_aside_before_converging_a_string_id() -> None:
    world = FakeWorld(users={42: TOKEN})
    cache = UniqueUserIdCacheStore()
    cache.put({**legacy_document("42"), "_id": "a-newer-string"})
    cache.put({**legacy_document(42, timestamp=(NODE_SYNC - 600) * MS), "_id": "b-older-number"})
    services = build_services(
        world.settings,
        tokens=world.tokens,
        source=world.source,
        cache=cache,
        clock=world.clock,
        runs=world.runs,
    )
    store = InMemoryMaintenance(cache)

    result = run(["migrate", "--apply", "-q"], services, maintenance=store)

    assert result.code == 0, result.stderr
    assert set(cache.documents) == {"a-newer-string"}
    assert cache.documents["a-newer-string"]["user_id"] == 42
    assert set(store.aside) == {"b-older-number"}


class FailingMaintenance(InMemoryMaintenance):
    """MongoDB goes away after the first batch."""

    def scan(self, after: Any, limit: int) -> list[CacheDocument]:
        if after is not None:
            raise StoreError("MongoDB scan failed: AutoReconnect")
        return super().scan(after, limit)


def test_migrate_stopped_by_the_store_names_where_to_resume() -> None:
    world, _store = legacy_world()

    result = run(
        ["migrate", "--apply", "--batch-size", "1", "-q"],
        world.services,
        maintenance=FailingMaintenance(world.cache),
    )

    assert result.code == 6
    assert_one_error_line(
        result,
        "store unavailable: MongoDB scan failed",
        "migrate stopped after 1 document; resume with --after a-42-newer",
    )
