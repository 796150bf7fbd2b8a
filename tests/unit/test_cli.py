"""The operator CLI on fake services: every command, every exit code, --json, progress and no PII."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from bytemark_cache.bootstrap import Services, build_services
from bytemark_cache.domain.model import CacheDocument, UpdateMessage
from bytemark_cache.errors import (
    BytemarkCacheError,
    ConcurrentModification,
    InvalidInput,
    NoBytemarkAccount,
    StoreError,
    SyncInProgress,
    TokenRevoked,
    UpstreamError,
)
from bytemark_cache_ops.cli import describe_error, main
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


def run(argv: Sequence[str], services: Services | None, *, tty: bool = False) -> Run:
    stdout = io.StringIO()
    stderr: io.StringIO = TtyStream() if tty else io.StringIO()
    code = main(list(argv), services=services, stdout=stdout, stderr=stderr)
    return Run(code, stdout.getvalue(), stderr.getvalue())


def built(world: FakeWorld, user_id: int = 42) -> FakeWorld:
    world.services.tickets.sync(user_id)
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
    for command in ("show", "sync", "log", "backfill"):
        assert command in result.stdout
    assert "exit codes" in result.stdout


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
    assert world.cache.documents[42]["user_id"] == 42
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
    assert 42 not in world.cache.documents


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
    assert 42 not in world.cache.documents


def test_sync_while_another_sync_holds_the_lease_exits_1(world: FakeWorld) -> None:
    world.cache.leases[42] = ("someone-else", world.clock.now() + 600)

    result = run(["sync", "42"], world.services)

    assert result.code == 1
    assert_one_error_line(result, "in progress")
    assert world.source.fetches == []


# -- log -------------------------------------------------------------------------------------------


def test_log_prints_the_newest_entries_first(world: FakeWorld) -> None:
    built(world)
    world.clock.advance(120)
    world.source.set_passes(TOKEN, [customer_pass("single-1", time_created="2024-06-02T10:00:00Z")], [])
    world.services.tickets.sync(42)

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
    stored = {
        element["pass_uuid"]: element["payload_hash"] for element in world.cache.documents[42]["passes"]
    }
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
        world.services.tickets.sync(uid)

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

    assert refused.code == 5
    assert_one_error_line(refused, "UPDATE_QUEUE_URL")
    assert dry.code == 0
    assert dry.json()["enqueued"] == 2


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

    def load(self, user_id: int) -> CacheDocument | None:
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

    assert [output.code for output in outputs] == [0, 0, 0, 0, 4, 4]
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
        (BytemarkCacheError("something else"), 1, "something else"),
    ],
)
def test_every_project_error_has_a_message_and_an_exit_code(
    error: BytemarkCacheError, code: int, fragment: str
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
