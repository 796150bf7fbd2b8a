"""payload_hash / js_stringify: the contract §5 vector and JavaScript's number and string formats."""

# The en dash and typographic quotes are deliberate: non-ASCII text Bytemark really sends.
# ruff: noqa: RUF001

from __future__ import annotations

import copy
import hashlib
import json
import math
from datetime import datetime
from typing import Any

import pytest

import bytemark_cache
from bytemark_cache.domain.hashing import js_number, js_stringify, payload_hash

CONTRACT_VECTOR = (
    '{"uuid":"p-1","status":"USABLE","first_use":null,"expiration":null,"price":2.0,'
    '"label_name":"Local Day Pass – Adult é","time_created":"2024-03-10T05:30:00.000Z",'
    '"n":{"b":1,"a":[1,2.50]}}'
)


def test_spec_vector_hashes_like_node() -> None:
    assert payload_hash(json.loads(CONTRACT_VECTOR)) == "fa6c6c27a16aeaec93c851d050164211"


def test_spec_vector_text_is_node_stringify() -> None:
    assert js_stringify(json.loads(CONTRACT_VECTOR)) == (
        '{"uuid":"p-1","status":"USABLE","first_use":null,"expiration":null,"price":2,'
        '"label_name":"Local Day Pass – Adult é","time_created":"2024-03-10T05:30:00.000Z",'
        '"n":{"b":1,"a":[1,2.5]}}'
    )


def test_payload_hash_is_the_public_api() -> None:
    assert bytemark_cache.payload_hash is payload_hash


def test_hash_is_md5_of_utf8_bytes() -> None:
    pass_ = {"label": "Día – 日本 😀"}
    expected = hashlib.md5('{"label":"Día – 日本 😀"}'.encode()).hexdigest()
    assert payload_hash(pass_) == expected


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (2.0, "2"),
        (-0.0, "0"),
        (0.0, "0"),
        (-2.0, "-2"),
        (2.5, "2.5"),
        (-1.5, "-1.5"),
        (0.1, "0.1"),
        (0.1 + 0.2, "0.30000000000000004"),
        (100.0, "100"),
        (0.0001, "0.0001"),
        (0.00001, "0.00001"),
        (0.000001, "0.000001"),
        (1e-7, "1e-7"),
        (-1e-7, "-1e-7"),
        (1.2345e-7, "1.2345e-7"),
        (5e-324, "5e-324"),
        (1e16, "10000000000000000"),
        (123456789012345680000.0, "123456789012345680000"),
        (1e21, "1e+21"),
        (1.5e300, "1.5e+300"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (math.nan, "null"),
        (math.inf, "null"),
        (-math.inf, "null"),
        (0, "0"),
        (-17, "-17"),
        (2**53, "9007199254740992"),
        (2**53 + 1, "9007199254740992"),
        (-(2**53) - 1, "-9007199254740992"),
        (12345678901234567890, "12345678901234567000"),
        (10**21, "1e+21"),
        (10**400, "null"),
    ],
)
def test_numbers_are_written_like_javascript(number: float, text: str) -> None:
    assert js_number(number) == text
    # Every position the encoders treat separately: top level, in an array, as an object value.
    assert js_stringify(number) == text
    assert js_stringify([number]) == f"[{text}]"
    assert js_stringify({"n": number, "s": "x"}) == f'{{"n":{text},"s":"x"}}'
    assert js_stringify({"deep": [{"n": number}]}) == f'{{"deep":[{{"n":{text}}}]}}'


def test_string_escaping_matches_javascript() -> None:
    value = '"\\\b\f\n\r\t\x00\x01\x1f\x7f\x80\u2028\u2029é😀/'
    assert js_stringify(value) == ('"\\"\\\\\\b\\f\\n\\r\\t\\u0000\\u0001\\u001f\x7f\x80\u2028\u2029é😀/"')


def test_lone_surrogates_are_escaped_lowercase() -> None:
    value = json.loads('{"s":"a\\ud800b\\udfff","pair":"\\ud83d\\ude00"}')
    assert js_stringify(value) == '{"s":"a\\ud800b\\udfff","pair":"😀"}'
    assert payload_hash(value) == hashlib.md5('{"s":"a\\ud800b\\udfff","pair":"😀"}'.encode()).hexdigest()


def test_surrogate_pair_code_points_are_one_character() -> None:
    # Two surrogate code points side by side are one UTF-16 character to JavaScript.
    assert js_stringify("\ud83d\ude00") == '"😀"'


def test_array_index_keys_come_first_in_numeric_order() -> None:
    value = {"b": 1, "2": 2, "10": 3, "1": 4, "01": 5, "-1": 6, "4294967295": 7, "4294967294": 8, "a": 9}
    assert js_stringify(value) == (
        '{"1":4,"2":2,"10":3,"4294967294":8,"b":1,"01":5,"-1":6,"4294967295":7,"a":9}'
    )


def test_insertion_order_and_compact_literals() -> None:
    value: dict[str, Any] = {"z": True, "a": False, "m": None, "l": [], "o": {}, "n": [1, "x", None]}
    assert js_stringify(value) == '{"z":true,"a":false,"m":null,"l":[],"o":{},"n":[1,"x",null]}'


def test_hashing_never_mutates_the_payload() -> None:
    value: dict[str, Any] = {"2": 1.0, "1": [1e-7, 2**60, {"b": math.nan}], "s": "\ud800"}
    before = copy.deepcopy(value)
    payload_hash(value)
    js_stringify(value)
    assert list(value) == list(before)
    assert repr(value) == repr(before)


@pytest.mark.parametrize("value", [{1, 2}, datetime(2024, 1, 1), {1: "int key"}, [object()]])
def test_non_json_values_are_rejected(value: object) -> None:
    with pytest.raises(TypeError):
        js_stringify(value)


def test_different_payloads_hash_differently() -> None:
    assert payload_hash({"status": "USABLE"}) != payload_hash({"status": "USING"})
    # Key order is part of the text, as in Node.
    assert payload_hash({"a": 1, "b": 2}) != payload_hash({"b": 2, "a": 1})
