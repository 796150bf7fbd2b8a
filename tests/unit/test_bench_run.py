"""The pure pieces of bench/run.py's sections: formatting, the change-rate arithmetic, the report splice,
the command summary and the timing wrapper (the sections themselves need the real servers)."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from bench.rows_backfill import Timed, minimal_cache, port_shares
from bench.rows_common import (
    changed_positions,
    changes_for,
    command_summary,
    duration,
    fraction,
    megabytes,
    ratio,
    splice_section,
    table,
    top_entries,
    with_changes,
)
from bench.rows_service import sqs_event
from bytemark_cache.domain.messages import parse_update_message


def test_ratio_and_fraction() -> None:
    assert ratio(1, 4) == "0.25x"
    assert ratio(1, 3, 4) == "0.3333x"
    assert ratio(1, 0) == "n/a"
    assert fraction(30, 100) == "0.30x"
    assert fraction(1, 4_800) == "1/4,800"
    assert fraction(0, 10) == "n/a"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.04, "0.0 s"), (42.04, "42.0 s"), (187, "3m 07s"), (3599.4, "59m 59s"), (27_600, "7h 40m")],
)
def test_duration(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


def test_table_aligns_the_numeric_columns_right() -> None:
    assert table(["a", "b", "c"], [[1, "x", 2.5]], right=(0, 2)) == [
        "| a | b | c |",
        "| ---: | --- | ---: |",
        "| 1 | x | 2.5 |",
    ]


def test_splice_replaces_only_between_the_markers() -> None:
    document = (
        "# T\n\nintro\n<!-- s -->\nold\n<!-- e -->\nnotes\n"
        "<!-- bench-day:start -->\nday\n<!-- bench-day:end -->\n"
    )

    spliced = splice_section(document, "<!-- s -->", "<!-- e -->", "<!-- s -->\nnew\n<!-- e -->")

    assert spliced == document.replace("old", "new")


def test_splice_appends_when_the_markers_are_missing() -> None:
    assert splice_section("# T\n\n", "<s>", "<e>", "<s>x<e>") == "# T\n\n<s>x<e>\n"


def test_command_summary_names_each_command_and_its_collection() -> None:
    commands = [("find", "C", 90), ("insert", "K", 200), ("update", "C", 300), ("endSessions", "", 50)]

    assert command_summary(commands, {"C": "cache", "K": "claim"}) == (
        "find cache, insert claim, update cache, endSessions"
    )


@pytest.mark.parametrize(
    ("rate", "total", "count"),
    [(0.0, 10, 0), (0.01, 10, 1), (0.10, 10, 1), (1.0, 10, 10), (0.01, 1000, 10), (0.10, 100, 10)],
)
def test_changes_for_touches_at_least_one_pass_for_any_rate(rate: float, total: int, count: int) -> None:
    assert changes_for(rate, total) == count


def test_changed_positions_are_spread_and_nest_as_the_rate_grows() -> None:
    assert changed_positions(10, 1000) == list(range(0, 1000, 100))
    assert changed_positions(3, 3) == [0, 1, 2]
    assert changed_positions(0, 5) == []
    assert changed_positions(9, 3) == [0, 1, 2]
    assert set(changed_positions(10, 1000)) <= set(changed_positions(100, 1000))


def test_with_changes_modifies_a_copy_at_the_positions_only() -> None:
    passes = [{"uuid": str(index), "time_modified": "t0"} for index in range(4)]

    changed = with_changes(passes, [1, 3], "t1")

    assert [p["time_modified"] for p in changed] == ["t0", "t1", "t0", "t1"]
    assert all(p["time_modified"] == "t0" for p in passes)


def test_top_entries_and_megabytes() -> None:
    assert top_entries({"a": 1, "b": 3, "c": 3, "d": 2}, 3) == [("b", 3), ("c", 3), ("d", 2)]
    assert megabytes(35_123_456) == "35.1 MB"


def test_timed_delegates_and_adds_up_each_method() -> None:
    class Store:
        size = 3

        def get(self, value: int) -> int:
            return value * 2

        def fail(self) -> None:
            raise ValueError("no")

    spent: defaultdict[str, float] = defaultdict(float)
    timed = Timed(Store(), spent, "S")

    assert timed.get(21) == 42
    assert timed.size == 3
    with pytest.raises(ValueError, match="no"):
        timed.fail()
    assert set(spent) == {"S.get", "S.fail"}


def test_port_shares_largest_first() -> None:
    assert port_shares({"a": 1.0, "b": 3.0}, 4.0) == {"b": 0.75, "a": 0.25}
    assert port_shares({"a": 1.0}, 0.0) == {}


def test_minimal_cache_is_due_and_stale() -> None:
    document = minimal_cache(7, now=10_000)

    assert document["next_sync_at"] < 10_000
    assert document["timestamp"] <= 10_000 - 3600
    assert document["passes"] == document["passes4"] == []


def test_sqs_event_bodies_are_update_messages() -> None:
    event = sqs_event([5, 6])

    assert [record["messageId"] for record in event["Records"]] == ["bench-0", "bench-1"]
    assert [parse_update_message(record["body"]).user_id for record in event["Records"]] == [5, 6]
    assert json.loads(event["Records"][0]["body"])["reason"] == "purchase"
