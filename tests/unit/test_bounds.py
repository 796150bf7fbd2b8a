"""BSON size and storability bounds: ``bson_document_size`` against pymongo's ``bson.encode`` (used in this
test only; the domain does not import a driver), and each refusal of ``check_storable``."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime
from typing import Any

import bson
import pytest
from bson import Decimal128, Int64, ObjectId, Timestamp

from bytemark_cache.domain.bounds import (
    MAX_PASS_DEPTH,
    MAX_PASSES_PER_LIST,
    NotStorable,
    bson_document_size,
    check_storable,
)
from bytemark_cache.domain.model import FetchedPasses
from bytemark_cache.domain.plan import apply_plan, plan_sync, prepare_fresh
from tests.unit.test_plan import T0, USER, make_pass


def nested(depth: int, leaf: Any = 1, *, in_list: bool = False) -> Any:
    """A value ``depth`` containers deep (objects, or arrays)."""
    value = leaf
    for _ in range(depth):
        value = [value] if in_list else {"k": value}
    return value


def realistic_document() -> dict[str, Any]:
    fetched = FetchedPasses(
        current=[
            make_pass("a", 1, label_name="Pase de día — Zone ①", order_item={"price": 250, "tax": 0.0825}),
            make_pass("b", 2, status="USING", first_use="2024-06-15T12:00:00Z", uses=[1, 2.5, None, True]),
        ],
        expired=[make_pass("x", 1, status="EXPIRED", fare={"amount": 5.0, "currency": "USD"})],
    )
    plan = plan_sync(USER, None, prepare_fresh(fetched), T0, history_limit=10, write_id="w")
    document = apply_plan(None, plan)
    document["_id"] = "0123456789abcdef01234567"
    document["passesLog"] = [{"uuid": "a", "at": datetime(2024, 6, 1, tzinfo=UTC), "raw": b"\x00\x01"}]
    return document


SIZED = [
    pytest.param({}, id="empty"),
    pytest.param({"a": 1}, id="int32"),
    pytest.param({"a": 2**31 - 1, "b": -(2**31)}, id="int32 bounds"),
    pytest.param({"a": 2**31, "b": -(2**31) - 1}, id="int64 just outside int32"),
    pytest.param({"a": 2**63 - 1, "b": -(2**63)}, id="int64 bounds"),
    pytest.param({"a": Int64(5), "b": Int64(T0 * 1000)}, id="bson Int64, small and large"),
    pytest.param({"a": 1.5, "b": math.nan, "c": math.inf, "d": -0.0}, id="doubles"),
    pytest.param({"a": "", "b": "ascii", "c": "día ①", "d": "😀 emoji", "e": "nul\x00inside"}, id="strings"),
    pytest.param({"ключ": "значение", "鍵": 1}, id="unicode keys"),
    pytest.param({"a": None, "b": True, "c": False}, id="null and booleans"),
    pytest.param({"a": {"b": {"c": [1, {"d": "e"}]}}}, id="nested objects"),
    pytest.param({"a": [], "b": [[], [[]]], "c": list(range(12))}, id="arrays, two-digit indexes"),
    pytest.param({"a": list(range(105))}, id="three-digit indexes"),
    pytest.param({"a": (1, "two", 3.0)}, id="tuple as array"),
    pytest.param({"a": datetime(2024, 6, 15, 4, 30), "b": datetime(2024, 6, 15, tzinfo=UTC)}, id="dates"),
    pytest.param({"a": b"", "b": b"\x00\xff" * 10}, id="binary"),
    pytest.param({"a.b": 1, "c": {"d.e": 2}}, id="dotted keys (stored documents may hold them)"),
    pytest.param(json.loads('{"x": [1, 1.0, 1e300, -5, "s", null, true, {"y": []}]}'), id="json.loads"),
    pytest.param(realistic_document(), id="a cache document"),
]


@pytest.mark.parametrize("document", SIZED)
def test_bson_document_size_is_exact(document: dict[str, Any]) -> None:
    assert bson_document_size(document) == len(bson.encode(document))


def test_check_storable_returns_the_exact_size_of_a_pass() -> None:
    pass_ = make_pass("a", 1, nested=nested(MAX_PASS_DEPTH), text="día ①", big=2**63 - 1)
    assert check_storable(pass_) == len(bson.encode(pass_))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(ObjectId(), id="ObjectId"),
        pytest.param(Decimal128("1.5"), id="Decimal128"),
        pytest.param(Timestamp(1, 2), id="Timestamp"),
    ],
)
def test_bson_document_size_never_underestimates_other_bson_types(value: Any) -> None:
    document = {"a": value, "b": [value]}
    assert bson_document_size(document) >= len(bson.encode(document))


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        pytest.param({"a": 2**63}, "outside 64 bits", id="int above int64"),
        pytest.param({"a": -(2**63) - 1}, "outside 64 bits", id="int below int64"),
        pytest.param({"a\x00b": 1}, "NUL", id="NUL in key"),
        pytest.param({"$set": 1}, "starts with '\\$'", id="$ key"),
        pytest.param({1: "x"}, "not a string", id="int key"),
        pytest.param({"a\ud800": 1}, "lone surrogate", id="surrogate key"),
        pytest.param({"a": "x\udfff"}, "lone surrogate", id="surrogate text"),
        pytest.param({"a": [{"$x": 1}]}, "starts with", id="$ key deep in an array"),
    ],
)
def test_bson_document_size_refuses_what_bson_cannot_hold(document: dict[Any, Any], complaint: str) -> None:
    with pytest.raises(NotStorable, match=complaint):
        bson_document_size(document)


# --- check_storable: each refusal ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        pytest.param({"n": 2**63}, "integer outside 64 bits", id="int above int64"),
        pytest.param({"n": -(2**63) - 1}, "integer outside 64 bits", id="int below int64"),
        pytest.param({"deep": {"list": [1, 2, 2**64]}}, r"pass\.'deep'\.'list'\[2\]: integer", id="where"),
        pytest.param({"a\x00b": 1}, "contains NUL", id="NUL in key"),
        pytest.param({"$where": 1}, "starts with '\\$'", id="$ key"),
        pytest.param({"$": 1}, "starts with '\\$'", id="lone $ key"),
        pytest.param({"a.b": 1}, "holds a '.'", id="dotted key"),
        pytest.param({".": 1}, "holds a '.'", id="lone dot key"),
        pytest.param({"nested": {"a.b": 1}}, "holds a '.'", id="dotted key nested"),
        pytest.param({"list": [{"$x": 1}]}, "starts with '\\$'", id="$ key in an array"),
        pytest.param({"k\udc80": 1}, "lone surrogate", id="surrogate in key"),
        pytest.param({"text": "\ud83d"}, "lone surrogate", id="high surrogate alone"),
        pytest.param({"text": "a\udc00b"}, "lone surrogate", id="low surrogate alone"),
        pytest.param({"deep": nested(MAX_PASS_DEPTH + 1)}, "deeper than", id="objects too deep"),
        pytest.param({"deep": nested(MAX_PASS_DEPTH + 1, in_list=True)}, "deeper than", id="arrays too deep"),
        pytest.param({"deep": nested(1000)}, "deeper than", id="far too deep (no recursion error)"),
        pytest.param({1: "x"}, "not a string", id="int key"),
        pytest.param({"at": datetime(2024, 6, 15)}, "not a JSON value", id="datetime"),
        pytest.param({"raw": b"x"}, "not a JSON value", id="bytes"),
        pytest.param({"set": {1, 2}}, "not a JSON value", id="set"),
        pytest.param({"oid": ObjectId()}, "not a JSON value", id="ObjectId"),
        pytest.param({"obj": object()}, "not a JSON value", id="object"),
    ],
)
def test_check_storable_refuses(extra: dict[Any, Any], complaint: str) -> None:
    pass_ = {**make_pass("a", 1), **extra}
    with pytest.raises(NotStorable, match=complaint):
        check_storable(pass_)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"n": 2**63 - 1, "m": -(2**63)}, id="int64 bounds"),
        pytest.param({"a$": 1, "b$c": 2}, id="$ not first"),
        pytest.param({"": 1}, id="empty key"),
        pytest.param({"día ①": "😀"}, id="unicode"),
        pytest.param({"x": math.nan, "y": math.inf}, id="NaN and Infinity (json.loads accepts them)"),
        pytest.param({"deep": nested(MAX_PASS_DEPTH)}, id="objects at the depth bound"),
        pytest.param({"deep": nested(MAX_PASS_DEPTH, in_list=True)}, id="arrays at the depth bound"),
        pytest.param(
            json.loads('{"text": "\\ud83d\\ude00"}'), id="an escaped surrogate pair is one character"
        ),
    ],
)
def test_check_storable_accepts(extra: dict[str, Any]) -> None:
    pass_ = {**make_pass("a", 1), **extra}
    snapshot = copy.deepcopy(pass_)
    size = check_storable(pass_)
    assert size > 0
    assert pass_ == snapshot or math.nan in extra.values()
    assert size == len(bson.encode(pass_))


def test_depth_bound_counts_containers_below_the_pass() -> None:
    # MAX_PASS_DEPTH containers inside the pass is the limit; one more is refused.
    check_storable({"uuid": "a", "deep": nested(MAX_PASS_DEPTH)})
    check_storable({"uuid": "a", "deep": nested(MAX_PASS_DEPTH, in_list=True)})
    with pytest.raises(NotStorable):
        check_storable({"uuid": "a", "deep": nested(MAX_PASS_DEPTH + 1)})
    with pytest.raises(NotStorable):
        check_storable({"uuid": "a", "deep": nested(MAX_PASS_DEPTH, leaf={"one": "more"}, in_list=True)})
    # MongoDB's own limit (100 levels) is far: the pass sits 4 levels down in the cache document.
    assert MAX_PASS_DEPTH + 4 < 100


def test_the_bound_on_passes_per_list_is_generous() -> None:
    # Ten years of a daily commuter (~3,650 expired passes) fit well inside it.
    assert MAX_PASSES_PER_LIST > 3_650 * 2
