"""payload_hash against Node.js itself: random JSON texts hashed by both sides must agree (contract §5).

The JSON *text* is generated first (as Bytemark would send it); Python parses it with json.loads and Node
with JSON.parse, so both sides hash the same wire data the way each service would receive it.
"""

# The en dash and typographic quotes are deliberate: non-ASCII text Bytemark really sends.
# ruff: noqa: RUF001

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
import subprocess

import pytest

from bytemark_cache import payload_hash
from bytemark_cache.domain import hashing
from bytemark_cache.domain.hashing import js_stringify

CONTRACT_VECTOR = (
    '{"uuid":"p-1","status":"USABLE","first_use":null,"expiration":null,"price":2.0,'
    '"label_name":"Local Day Pass – Adult é","time_created":"2024-03-10T05:30:00.000Z",'
    '"n":{"b":1,"a":[1,2.50]}}'
)

# Node prints, per input line, md5(JSON.stringify(JSON.parse(line))) and the stringified text itself
# (as a JSON string, so a mismatch can be shown character by character).
NODE_SCRIPT = r"""
const crypto = require("crypto");
let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const out = [];
  for (const line of input.split("\n")) {
    if (line === "") continue;
    const text = JSON.stringify(JSON.parse(line));
    out.push(crypto.createHash("md5").update(text, "utf8").digest("hex") + "\t" + JSON.stringify(text));
  }
  process.stdout.write(out.join("\n") + "\n");
});
"""

NUMBER_LITERALS = [
    "0", "-0", "-0.0", "0.0", "2.0", "2.50", "-2.0", "100.0", "1E2", "1e2", "1.5e1",
    "1e21", "1E21", "1e+21", "-1e21", "1.5e300", "1e308", "1.7976931348623157e308", "1e400", "-1e400",
    "1e-7", "1.2345e-7", "-1e-7", "0.000001", "0.0000001", "0.00001", "0.0001", "0.001", "1e-5",
    "5e-324", "-5e-324", "2.2250738585072014e-308", "4.9406564584124654e-324",
    "0.1", "0.2", "0.30000000000000004", "123.456", "1e16", "1e15", "9007199254740991",
    "9007199254740992", "9007199254740993", "-9007199254740993", "123456789012345680000",
    "12345678901234567890", "100000000000000000000", "999999999999999999999", "1000000000000000000000",
    "100000000000000000000000", "18446744073709551616", "1" + "0" * 308, "1" + "0" * 309,
]  # fmt: skip

KEY_POOL = [
    "uuid", "status", "a", "b", "price", "label_name", "", " ", "é", "ключ", "日本", "😀",
    "0", "1", "2", "7", "10", "01", "00", "-1", "1.5", "1e3", "4294967294", "4294967295",
    "9999999999", "42abc", "__proto__", "constructor", "toString", "a\"b", "tab\tkey",
]  # fmt: skip

RAW_CHARS = (
    "abcXYZ019 _-/:.,;!?@#$%^&*()[]{}<>~`'|+="
    "éüßñçøÅ€£¥©®°±µ¶·–—‘’“”…"  # Latin-1 and general punctuation
    "\u007f\u0080\u009f\u00a0\u00ad\u2028\u2029\ufeff\ufffd\uffff"  # DEL, C1, separators, BOM, specials
    "ΩЖש٣中文日本語한국어"  # Greek, Cyrillic, Hebrew, Arabic-Indic digit, CJK
    "😀🎟🚌🇺🇸👩‍👩‍👧𝄞"  # astral plane, ZWJ sequences, flags
)
ESCAPES = [
    "\\n", "\\r", "\\t", "\\b", "\\f", "\\/", '\\"', "\\\\", "\\u0000", "\\u0001", "\\u001f", "\\u007f",
    "\\u00e9", "\\u2028", "\\ud83d\\ude00", "\\ud800", "\\udbff", "\\udc00", "\\udfff", "\\ud800x",
    "\\udc00\\ud800", "\\uD83D\\uDE80", "\\uFFFF", "\\u0041",
]  # fmt: skip


def _random_double_text(rng: random.Random) -> str:
    """Any finite double, written the several ways a JSON producer might."""
    while True:
        (value,) = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if value == value and value not in (float("inf"), float("-inf")):
            break
    style = rng.randrange(3)
    if style == 0:
        return repr(value)
    if style == 1:
        return f"{value:.17g}"
    return f"{value:.{rng.randrange(1, 8)}e}"


def _random_number_text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.25:
        return rng.choice(NUMBER_LITERALS)
    if roll < 0.45:
        return str(rng.randint(-1000, 100000))
    if roll < 0.55:
        return str(rng.randint(-(10**30), 10**30))
    if roll < 0.7:
        # Decimal fractions of every magnitude, including the 1e-7..1e-4 and 1e16..1e21 bands.
        return repr(rng.uniform(-10, 10) * 10.0 ** rng.randint(-12, 25))
    if roll < 0.8:
        return f"{rng.randint(0, 10**6)}.0"
    return _random_double_text(rng)


def _random_string_text(rng: random.Random) -> str:
    parts = ['"']
    for _ in range(rng.randrange(0, 12)):
        if rng.random() < 0.3:
            parts.append(rng.choice(ESCAPES))
        else:
            parts.append(rng.choice(RAW_CHARS))
    parts.append('"')
    return "".join(parts)


def _random_key_text(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return json.dumps(rng.choice(KEY_POOL), ensure_ascii=rng.random() < 0.3)
    return _random_string_text(rng)


def _random_value_text(rng: random.Random, depth: int) -> str:
    roll = rng.random()
    if depth < 4 and roll < 0.15:
        return _random_object_text(rng, depth + 1)
    if depth < 4 and roll < 0.25:
        items = [_random_value_text(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
        return "[" + ",".join(items) + "]"
    if roll < 0.55:
        return _random_number_text(rng)
    if roll < 0.85:
        return _random_string_text(rng)
    return rng.choice(["true", "false", "null"])


def _random_object_text(rng: random.Random, depth: int) -> str:
    keys = [_random_key_text(rng) for _ in range(rng.randrange(0, 9))]
    if keys and rng.random() < 0.1:
        # A repeated key: both sides keep the first position and the last value.
        keys.append(keys[0])
    members = [key + rng.choice([":", " : "]) + _random_value_text(rng, depth) for key in keys]
    return "{" + rng.choice([",", ", "]).join(members) + "}"


def _payload_texts() -> list[str]:
    rng = random.Random(20240615)
    texts = [CONTRACT_VECTOR]
    texts += ['{"n":' + literal + "}" for literal in NUMBER_LITERALS]
    texts += ['{"s":' + json.dumps(escape_free) + "}" for escape_free in ["", "plain", RAW_CHARS]]
    texts += ['{"s":"' + escape + '"}' for escape in ESCAPES]
    texts += [_random_object_text(rng, 0) for _ in range(400)]
    return texts


def _node_results(texts: list[str]) -> list[tuple[str, str]]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js (`node`) is not on PATH: the differential test needs it; install nodejs")
    completed = subprocess.run(
        [node, "-e", NODE_SCRIPT],
        input="\n".join(texts).encode("utf-8"),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode("utf-8", "replace")
    # split("\n"), not splitlines(): the quoted texts may hold raw U+2028/U+0085, which splitlines breaks on.
    lines = completed.stdout.decode("utf-8").rstrip("\n").split("\n")
    assert len(lines) == len(texts), "node answered a different number of lines"
    results = []
    for line in lines:
        digest, _, quoted = line.partition("\t")
        results.append((digest, json.loads(quoted)))
    return results


def test_payload_hash_equals_node_for_random_json_texts() -> None:
    texts = _payload_texts()
    node = _node_results(texts)
    mismatches = []
    for text, (node_digest, node_text) in zip(texts, node, strict=True):
        parsed = json.loads(text)
        if payload_hash(parsed) != node_digest:
            mismatches.append(f"input {text!r}\n  node   {node_text!r}\n  python {js_stringify(parsed)!r}")
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ:\n" + "\n".join(mismatches[:5])
    assert node[0][0] == "fa6c6c27a16aeaec93c851d050164211"


def test_token_encoder_equals_node_for_every_text() -> None:
    # js_stringify takes the token encoder only for some floats; check it on all inputs, so both
    # encoders are proven against Node and not just the one each payload happened to use.
    texts = _payload_texts()
    node = _node_results(texts)
    for text, (node_digest, _) in zip(texts, node, strict=True):
        tokens = hashing._fix_surrogates("".join(hashing._tokens(json.loads(text))))
        assert hashlib.md5(tokens.encode("utf-8")).hexdigest() == node_digest, text


def test_generated_texts_cover_the_edge_cases() -> None:
    # Guards the generator itself: without these the differential tests would prove little.
    texts = _payload_texts()
    joined = "\n".join(texts)
    for needle in ["1e21", "1e-7", "5e-324", "-0.0", "\\ud800", "😀", "\\u0001", "\u2028", '"01"', '"1"']:
        assert needle in joined, needle
    parsed = [json.loads(text) for text in texts]
    token_path = 0
    for value in parsed:
        try:
            hashing._javascript_view(value)
        except hashing._NeedsTokenEncoderError:
            token_path += 1
    assert 20 < token_path < len(parsed) - 100, token_path
