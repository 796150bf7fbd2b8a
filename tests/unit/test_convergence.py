"""``domain.convergence``: each legacy shape converged to the contract's, nothing else touched, idempotent."""

from __future__ import annotations

import ast
import copy
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bson.int64 import Int64
from hypothesis import given, settings
from hypothesis import strategies as st

from bytemark_cache.domain import convergence
from bytemark_cache.domain.bounds import MONGODB_DOCUMENT_LIMIT
from bytemark_cache.domain.convergence import (
    ELEMENTS_REORDERED,
    LIST_NOT_ARRAY,
    TOO_LARGE,
    UNREADABLE_USER_ID,
    check_size,
    converge,
    convergence_plan,
    split_duplicates,
)
from bytemark_cache.domain.document import read_cache
from bytemark_cache.domain.hashing import payload_hash
from bytemark_cache.domain.model import REVISION_FIELD, LogEntry
from bytemark_cache.domain.plan import apply_plan
from tests.fakes import make_pass

pytestmark = pytest.mark.disable_socket

NOW = 1_718_425_800.0
SYNC = 1_718_400_000
"""2024-06-14T21:20:00Z."""


def element(uuid: str, created: str, **fields: Any) -> dict[str, Any]:
    """A contract-shaped element (override or drop fields with ``fields``; None drops)."""
    payload = make_pass(uuid, time_created=created)
    shaped: dict[str, Any] = {
        "pass_uuid": uuid,
        "timestamp": SYNC,
        "status": payload["status"],
        "free_ticket_status": 0,
        "payload": payload,
        "payload_hash": payload_hash(payload),
    }
    shaped.update(fields)
    return {key: value for key, value in shaped.items() if value is not None}


def document(**fields: Any) -> dict[str, Any]:
    """A contract-shaped document, oldest first (override or drop fields with ``fields``; None drops)."""
    shaped: dict[str, Any] = {
        "_id": "oid-1",
        "user_id": 42,
        "timestamp": SYNC,
        "passes": [element("a", "2024-06-01T00:00:00Z"), element("b", "2024-06-02T00:00:00Z")],
        "passes4": [element("old", "2024-01-01T00:00:00Z", status="EXPIRED")],
    }
    shaped.update(fields)
    return {key: value for key, value in shaped.items() if value is not None}


def converged(stored_document: dict[str, Any]) -> dict[str, Any]:
    """The document after the convergence's write."""
    found = converge(stored_document, NOW)
    stored = read_cache([stored_document], found.user_id or 0, NOW)
    assert stored is not None
    return apply_plan(stored_document, convergence_plan(stored, found))


def test_a_contract_shaped_document_needs_nothing() -> None:
    found = converge(document(), NOW)

    assert found.actions == ()
    assert found.problem is None
    assert not found.changed


@pytest.mark.parametrize(
    ("stored", "action", "expected"),
    [
        (Int64(SYNC * 1000), "timestamp_milliseconds", SYNC),
        (float(SYNC * 1000), "timestamp_milliseconds", SYNC),
        (SYNC + 0.75, "timestamp_double", SYNC),
        (float(SYNC), "timestamp_double", SYNC),
        (datetime.fromtimestamp(SYNC, UTC).replace(tzinfo=None), "timestamp_date", SYNC),
        ("2024-06-14T21:20:00.000Z", "timestamp_string", SYNC),
        (str(SYNC), "timestamp_string", SYNC),
        (None, "timestamp_missing", 0),
        ("soon", "timestamp_string", 0),
        ((SYNC + 86400) * 1000, "timestamp_milliseconds", 0),
        ([SYNC], "timestamp_unreadable", 0),
    ],
)
def test_the_sync_time_is_converted_to_seconds_never_now(stored: Any, action: str, expected: int) -> None:
    found = converge(document(timestamp=stored), NOW)

    assert found.actions == (action,)
    assert found.fields == {"timestamp": expected}
    assert type(found.fields["timestamp"]) is int
    assert found.changes == {"timestamp": {"from": stored, "to": expected}}


def test_seconds_stored_as_int64_stay_as_they_are() -> None:
    assert converge(document(timestamp=Int64(SYNC)), NOW).actions == ()


@pytest.mark.parametrize(("stored", "action"), [("42", "user_id_string"), (42.0, "user_id_double")])
def test_a_user_id_becomes_a_number(stored: Any, action: str) -> None:
    found = converge(document(user_id=stored), NOW)

    assert found.user_id == 42
    assert found.actions == (action,)
    assert found.fields == {"user_id": 42}
    assert type(found.fields["user_id"]) is int


@pytest.mark.parametrize("stored", ["jane", "", None, True, -3, 0, "4.2", 4.5])
def test_an_unreadable_user_id_is_a_problem_and_nothing_is_written(stored: Any) -> None:
    found = converge(document(user_id=stored), NOW)

    assert found.problem == UNREADABLE_USER_ID
    assert not found.changed


def test_elements_are_normalised_and_keep_their_unknown_fields() -> None:
    legacy = {
        "_id": "sub-1",
        "uuid": "a",
        "timestamp": float(SYNC * 1000),
        "payload": make_pass("a", status="USING", time_created="2024-06-01T00:00:00Z"),
    }
    stored = document(passes=[legacy, element("b", "2024-06-02T00:00:00Z")])

    found = converge(stored, NOW)

    assert found.actions == (
        "element_free_ticket_status_missing",
        "element_payload_hash_missing",
        "element_status_missing",
        "element_timestamp_milliseconds",
        "element_uuid_key",
    )
    first = found.passes[0]
    assert first == {
        "_id": "sub-1",
        "timestamp": SYNC,
        "payload": legacy["payload"],
        "pass_uuid": "a",
        "status": "USING",
        "free_ticket_status": 0,
        "payload_hash": payload_hash(legacy["payload"]),
    }
    # The renamed key goes last, as a sync writes it (FerretDB skips a rename in place).
    assert list(first)[:2] == ["_id", "timestamp"]
    assert found.passes[1] is stored["passes"][1]
    assert legacy["uuid"] == "a"  # the stored document is not modified


def test_an_element_without_a_timestamp_gets_0_not_now() -> None:
    found = converge(document(passes=[element("a", "2024-06-01T00:00:00Z", timestamp=None)]), NOW)

    assert found.actions == ("element_timestamp_missing",)
    assert found.passes[0]["timestamp"] == 0


def test_a_payload_json_could_not_have_produced_is_left_without_a_hash() -> None:
    odd = element("a", "2024-06-01T00:00:00Z", payload_hash=None)
    odd["payload"]["when"] = datetime(2024, 6, 1, tzinfo=UTC)

    found = converge(document(passes=[odd]), NOW)

    assert found.actions == ()
    assert not found.changed


def test_the_order_alone_is_no_reason_to_write() -> None:
    newest_first = document(
        passes=[element("b", "2024-06-02T00:00:00Z"), element("a", "2024-06-01T00:00:00Z")]
    )

    assert converge(newest_first, NOW).actions == ()


def test_a_written_document_is_oldest_first_with_malformed_elements_leading() -> None:
    newest_first = document(
        timestamp=SYNC * 1000,
        passes=[element("b", "2024-06-02T00:00:00Z"), "garbage", element("a", "2024-06-01T00:00:00Z")],
    )

    found = converge(newest_first, NOW)

    assert found.actions == ("timestamp_milliseconds", ELEMENTS_REORDERED)
    assert found.passes[0] == "garbage"
    assert [item["pass_uuid"] for item in found.passes[1:]] == ["a", "b"]


def test_a_missing_array_is_added_empty_and_a_non_array_is_a_problem() -> None:
    assert converge(document(passes4=None), NOW).actions == ("list_missing",)
    assert converge(document(passes4=None), NOW).history == []
    assert converge(document(passes={"0": "x"}), NOW).problem == LIST_NOT_ARRAY


def test_the_plan_is_the_services_write_guarded_by_what_was_read() -> None:
    pending = LogEntry("42:3:w:0", 42, SYNC, "a", "USABLE", "created", "passes", "h", None)
    stored_document = document(
        user_id="42", timestamp=SYNC * 1000, sync_revision=3, log_pending=[pending.to_document()], __v=2
    )
    stored = read_cache([stored_document], 42, NOW)
    assert stored is not None

    plan = convergence_plan(stored, converge(stored_document, NOW))

    assert plan.guard == stored.guard
    assert plan.guard.fields == {REVISION_FIELD: 3, "timestamp": SYNC * 1000}
    assert plan.revision == 4
    assert plan.passes.rewrite
    assert plan.history.rewrite
    assert plan.fields == {"user_id": 42, "timestamp": SYNC}
    assert plan.log == []
    assert plan.carried_log == [pending]
    written = apply_plan(stored_document, plan)
    assert written["__v"] == 2
    assert read_cache([written], 42, NOW).legacy == ()  # type: ignore[union-attr]


def test_there_is_no_plan_for_nothing_or_for_a_problem() -> None:
    stored = read_cache([document()], 42, NOW)
    assert stored is not None

    with pytest.raises(ValueError, match="nothing to write"):
        convergence_plan(stored, converge(document(), NOW))


def test_a_document_too_large_to_write_back_is_a_problem() -> None:
    huge = document(timestamp=SYNC * 1000, passes4=None, padding="x" * MONGODB_DOCUMENT_LIMIT)
    stored = read_cache([huge], 42, NOW)
    assert stored is not None

    assert check_size(huge, convergence_plan(stored, converge(huge, NOW))) == TOO_LARGE
    assert check_size(document(timestamp=1), convergence_plan(stored, converge(huge, NOW))) is None


def test_of_duplicates_the_newest_sync_stays_and_the_others_are_named() -> None:
    newer = document(_id="n", user_id="42", timestamp=SYNC * 1000)
    older = document(_id="o", timestamp=SYNC - 600)
    someone_else = document(_id="x", user_id=7)

    found = split_duplicates([older, someone_else, newer], 42, NOW)

    assert found is not None
    kept, others = found
    assert kept.document is newer
    assert others == [older]
    assert split_duplicates([someone_else], 42, NOW) is None


# -- properties -----------------------------------------------------------------------------------

times = st.one_of(
    st.none(),
    st.integers(min_value=1_000_000_000, max_value=SYNC),
    st.integers(min_value=1_000_000_000, max_value=SYNC).map(lambda s: Int64(s * 1000)),
    st.integers(min_value=1_000_000_000, max_value=SYNC).map(lambda s: float(s * 1000)),
    st.floats(min_value=1e9, max_value=SYNC),
    st.integers(min_value=1_000_000_000, max_value=SYNC).map(str),
    st.integers(min_value=1_000_000_000, max_value=SYNC).map(lambda s: datetime.fromtimestamp(s, UTC)),
)


@st.composite
def legacy_elements(draw: st.DrawFn, uuid: str) -> Any:
    if draw(st.integers(0, 20)) == 0:
        return draw(st.sampled_from(["garbage", 7, {"no": "uuid"}]))
    day = draw(st.integers(1, 28))
    shaped = element(uuid, f"2024-05-{day:02d}T00:00:00Z", timestamp=draw(times))
    if draw(st.booleans()):
        shaped["uuid"] = shaped.pop("pass_uuid")
    for optional in ("status", "free_ticket_status", "payload_hash"):
        if draw(st.booleans()):
            shaped.pop(optional)
    if draw(st.booleans()):
        shaped = {"_id": f"sub-{uuid}", **shaped}
    return shaped


@st.composite
def legacy_documents(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(0, 6))
    items = [draw(legacy_elements(f"p{index}")) for index in range(count)]
    split = draw(st.integers(0, count))
    shaped: dict[str, Any] = {
        "_id": "oid-1",
        "user_id": draw(st.sampled_from([42, "42", 42.0, Int64(42)])),
        "timestamp": draw(times),
        "passes": items[:split],
        "passes4": items[split:],
    }
    if draw(st.booleans()):
        shaped["__v"] = 0
    return {key: value for key, value in shaped.items() if value is not None}


@settings(max_examples=200, deadline=None)
@given(legacy_documents())
def test_a_converged_document_converges_to_itself_and_reads_without_legacy_shapes(
    stored: dict[str, Any],
) -> None:
    original = copy.deepcopy(stored)
    found = converge(stored, NOW)
    assert stored == original
    if not found.changed:
        return
    written = converged(stored)

    assert converge(written, NOW).actions == ()
    read = read_cache([written], 42, NOW)
    assert read is not None
    assert set(read.legacy) <= {"element_malformed"}
    assert written.get("__v") == stored.get("__v")
    uuids = sorted(
        str(item.get("pass_uuid"))
        for name in ("passes", "passes4")
        for item in written[name]
        if isinstance(item, dict) and "pass_uuid" in item
    )
    stored_uuids = sorted(
        str(item.get("pass_uuid", item.get("uuid")))
        for name in ("passes", "passes4")
        for item in stored.get(name, [])
        if isinstance(item, dict) and ("pass_uuid" in item or "uuid" in item)
    )
    assert uuids == stored_uuids  # no pass lost or duplicated


def test_the_module_imports_only_the_standard_library_and_the_domain() -> None:
    tree = ast.parse(Path(convergence.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name if isinstance(node, ast.Import) else str(node.module)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    for name in imported:
        top = name.split(".")[0]
        assert (
            top in sys.stdlib_module_names or top == "__future__" or name.startswith("bytemark_cache.domain")
        ), name
