"""Bodies of the hostile faults: compression bombs, huge bodies and lists, endless paging, unstorable passes.

Everything big is a ``Body``, a declared length plus a generator of chunks cut from small cached blocks, so
a 1 GiB bomb or a 64 MiB body costs the simulator a few MiB at most and is never built in memory.
"""

from __future__ import annotations

import functools
import gzip
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

MIB = 1 << 20
# Largest integer a JavaScript client still reads exactly: big enough that nobody pages to it.
LOOP_TOTAL_COUNT = 2**53 - 1
# One pass on the page gets this extra field (a JSON text fragment, escapes written as such).
UNSTORABLE_FIELDS = {
    "int_overflow": f'"ride_counter":{2**70}',
    "nul_key": '"fare\\u0000zone":"a key holding U+0000"',
    "dollar_key": '"$fare_zone":"a key starting with a dollar"',
    "lone_surrogate": '"rider_note":"half a surrogate pair: \\ud800 ends here"',
    "deep_nesting": '"nested":' + '{"level":' * 500 + "0" + "}" * 500,
    "dotted_key": '"fare.zone":"a key with a dot"',
}
# Built once, shared by every huge_body answer.
_FILLER = b"x" * MIB
_ADLER_BASE = 65521


@dataclass(frozen=True)
class Body:
    """An answer body streamed in chunks; ``length`` is what Content-Length declares."""

    length: int
    chunks: Iterator[bytes]


def with_extra_field(pass_raw: str, fragment: str) -> str:
    """The pass's JSON text with ``fragment`` (``"key":value``) as its last member, the rest verbatim."""
    body = pass_raw.rstrip()[:-1].rstrip()
    separator = "" if body.endswith("{") else ","
    return f"{body}{separator}{fragment}}}"


# ----------------------------------------------------------------------------------------- compression bombs


@functools.lru_cache(maxsize=8)
def _gzip_spaces(size: int) -> bytes:
    # mtime=0 keeps the member byte-identical between runs (and between cache misses).
    return gzip.compress(b" " * size, compresslevel=9, mtime=0)


@functools.lru_cache(maxsize=8)
def _deflate_spaces(size: int) -> bytes:
    # A full flush ends byte-aligned with no back-references, so copies of it can be laid end to end.
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(b" " * size) + compressor.flush(zlib.Z_FULL_FLUSH)


def _padding_blocks(padding: int) -> tuple[int, int]:
    """How many whole MiB of whitespace and the size of the rest."""
    return divmod(max(0, padding), MIB)


def gzip_bomb(envelope: bytes, inflated_bytes: int) -> Body:
    """A gzip body inflating to ``inflated_bytes``: leading whitespace, then the envelope (valid JSON).

    Concatenated gzip members are one valid gzip stream, so the whitespace is one cached 1 MiB member
    repeated; 1 GiB costs about 1 MB on the wire (deflate cannot beat ~1032:1).
    """
    full, rest = _padding_blocks(inflated_bytes - len(envelope))
    members = [_gzip_spaces(MIB)] * full
    if rest:
        members.append(_gzip_spaces(rest))
    members.append(gzip.compress(envelope, mtime=0))
    return Body(sum(len(member) for member in members), iter(members))


def _adler32_after_spaces(count: int, adler: int = 1) -> int:
    """zlib.adler32 of ``count`` spaces continued from ``adler``, in closed form (no 1 GiB loop)."""
    low, high = adler & 0xFFFF, adler >> 16
    high = (high + count * low + ord(" ") * count * (count + 1) // 2) % _ADLER_BASE
    low = (low + ord(" ") * count) % _ADLER_BASE
    return (high << 16) | low


def deflate_bomb(envelope: bytes, inflated_bytes: int) -> Body:
    """Like gzip_bomb as a single zlib stream (``Content-Encoding: deflate``), checksum included."""
    padding = max(0, inflated_bytes - len(envelope))
    full, rest = _padding_blocks(padding)
    # 0x78 0xDA: deflate, 32 KiB window, maximum compression, no preset dictionary.
    parts = [b"\x78\xda"] + [_deflate_spaces(MIB)] * full
    if rest:
        parts.append(_deflate_spaces(rest))
    final = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts.append(final.compress(envelope) + final.flush(zlib.Z_FINISH))
    parts.append(struct.pack(">I", zlib.adler32(envelope, _adler32_after_spaces(padding))))
    return Body(sum(len(part) for part in parts), iter(parts))


# ------------------------------------------------------------------------------------------ big answers


def huge_body(head: str, tail: str, body_bytes: int) -> Body:
    """``head`` + ``x`` filler + ``tail``: ``body_bytes`` in all (head + tail alone if those are longer)."""
    head_bytes, tail_bytes = head.encode("utf-8"), tail.encode("utf-8")
    filler = max(0, body_bytes - len(head_bytes) - len(tail_bytes))

    def chunks() -> Iterator[bytes]:
        yield head_bytes
        full, rest = divmod(filler, MIB)
        for _ in range(full):
            yield _FILLER
        if rest:
            yield _FILLER[:rest]
        yield tail_bytes

    return Body(len(head_bytes) + filler + len(tail_bytes), chunks())


def small_pass(group: int, index: int, stamp: str) -> str:
    """A minimal pass whose uuid is made of (group, index), fixed width so a list's length is computable."""
    group &= 0xFFFFFFFF
    return (
        f'{{"uuid":"{group:08x}-0000-4000-8000-{index:012x}","status":"USABLE",'
        f'"label_name":"Local Single Ride","first_use":null,"expiration":null,'
        f'"time_created":"{stamp}","time_modified":"{stamp}"}}'
    )


def small_passes(group: int, count: int, stamp: str) -> list[str]:
    """``count`` small passes of one group."""
    return [small_pass(group, index, stamp) for index in range(count)]


def huge_list(head: str, tail: str, pass_count: int, stamp: str, batch: int = 2000) -> Body:
    """``head`` + ``pass_count`` comma-separated small passes + ``tail``, generated batch by batch."""
    head_bytes, tail_bytes = head.encode("utf-8"), tail.encode("utf-8")
    one = len(small_pass(0, 0, stamp).encode("utf-8"))
    listed = pass_count * one + max(0, pass_count - 1)

    def chunks() -> Iterator[bytes]:
        yield head_bytes
        for start in range(0, pass_count, batch):
            stop = min(start + batch, pass_count)
            text = ",".join(small_pass(0, index, stamp) for index in range(start, stop))
            yield (text if start == 0 else "," + text).encode("utf-8")
        yield tail_bytes

    return Body(len(head_bytes) + listed + len(tail_bytes), chunks())
