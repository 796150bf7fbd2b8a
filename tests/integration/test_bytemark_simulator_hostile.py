"""The simulator's hostile faults over real HTTP: each does what it says, and none costs the test much.

Bombs and huge bodies are read only a bounded amount at their default sizes (and read whole at small sizes);
slow_drip is measured with socket deadlines, never with sleeps.
"""

from __future__ import annotations

import http.client
import json
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from bytemark_simulator import UNSTORABLE_PASS_VARIANTS, SimulatorServer

pytestmark = pytest.mark.integration

TOKEN = "tok-hostile-42"
USER = 42
MIB = 1 << 20
FROZEN = "2024-06-15T04:30:00Z"
V1 = "/passes?per_page=10&page=1"
V4 = "/v4.0/passes?status=EXPIRED&per_page=10&page=1"


@pytest.fixture
def sim(simulator: SimulatorServer) -> SimulatorServer:
    """The session's simulator, reset, with user 42 (3 current, 2 expired passes) and a frozen clock."""
    simulator.admin.seed_user(USER, TOKEN, current=3, expired=2)
    # Frozen so server_time, and with it every envelope's length, is the same from one answer to the next.
    simulator.admin.set_time(FROZEN)
    return simulator


@pytest.fixture
def client() -> Iterator[requests.Session]:
    """A session that never goes through an environment proxy."""
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


def get(client: requests.Session, sim: SimulatorServer, path: str = V1, **kwargs: Any) -> requests.Response:
    """GET with user 42's token."""
    headers = {"Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
    return client.get(f"{sim.url}{path}", headers=headers, timeout=kwargs.pop("timeout", 5), **kwargs)


def open_raw(sim: SimulatorServer, path: str = V1, timeout: float = 5) -> http.client.HTTPConnection:
    """An http.client connection (no decoding, no retries) with the request for path already sent."""
    connection = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=timeout)
    connection.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    return connection


def wait_for(condition: Callable[[], bool], deadline_seconds: float = 3.0) -> None:
    """Poll condition() until true or fail at the deadline."""
    deadline = time.monotonic() + deadline_seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)


@pytest.fixture
def own_server() -> Iterator[SimulatorServer]:
    """A simulator of the test alone (its open connections are the test's own), user 42 seeded."""
    server = SimulatorServer(port=0, seed=1).start()
    try:
        server.admin.seed_user(USER, TOKEN)
        yield server
    finally:
        server.stop()


@pytest.fixture
def plain(sim: SimulatorServer, client: requests.Session) -> bytes:
    """The normal v1 page of user 42, byte for byte (taken before any fault is set)."""
    return get(client, sim).content


# ------------------------------------------------------------------------------------------------ slow_drip


def test_slow_drip_sends_headers_at_once_then_trickles_the_body(sim: SimulatorServer, plain: bytes) -> None:
    """Headers (with the true length) arrive at once; every read returns fast, the body stays incomplete."""
    sim.admin.set_fault("slow_drip", count=1, drip_bytes=4, drip_interval_ms=20)
    connection = open_raw(sim, timeout=1)
    try:
        started = time.monotonic()
        response = connection.getresponse()
        assert time.monotonic() - started < 0.5
        assert response.status == 200
        assert int(response.headers["Content-Length"]) == len(plain)
        received = b""
        slowest = 0.0
        deadline = started + 0.3
        while time.monotonic() < deadline:
            before = time.monotonic()
            received += response.read1(65536)
            slowest = max(slowest, time.monotonic() - before)
        # Each read came back within a couple of drip intervals, yet 0.3 s gave only a sliver of the body.
        assert slowest < 0.2
        assert 8 <= len(received) < 400 < len(plain)
        assert plain.startswith(received)
    finally:
        connection.close()


def test_slow_drip_stops_when_the_client_disconnects(own_server: SimulatorServer) -> None:
    """A client hanging up mid-drip frees the handler within a few drip intervals."""
    own_server.admin.set_fault("slow_drip", drip_bytes=1, drip_interval_ms=10)
    connection = open_raw(own_server)
    response = connection.getresponse()
    assert response.read1(1)
    assert own_server.open_connections >= 1
    connection.close()
    wait_for(lambda: own_server.open_connections == 0, deadline_seconds=2)


def test_stop_returns_promptly_with_a_slow_drip_in_flight(own_server: SimulatorServer) -> None:
    """stop() cuts a dripping answer: it returns within a second and the client sees the body end short."""
    own_server.admin.set_fault("slow_drip", drip_interval_ms=1000)
    connection = open_raw(own_server)
    try:
        response = connection.getresponse()
        assert response.read1(4)
        started = time.monotonic()
        own_server.stop()
        assert time.monotonic() - started < 1.0
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            response.read()
    finally:
        connection.close()


# ----------------------------------------------------------------------------------------- compression bombs


@pytest.mark.parametrize(
    ("kind", "encoding", "wbits"), [("gzip_bomb", "gzip", 31), ("deflate_bomb", "deflate", 15)]
)
def test_bomb_at_default_size_is_small_on_the_wire_and_inflates_to_whitespace(
    sim: SimulatorServer, client: requests.Session, kind: str, encoding: str, wbits: int
) -> None:
    """The 1 GiB default bomb is about 1 MB compressed; its first 64 KiB inflate to 1 MiB of spaces."""
    sim.admin.set_fault(kind, count=1)
    with get(client, sim, stream=True) as response:
        assert response.status_code == 200
        assert response.headers["Content-Encoding"] == encoding
        assert 900_000 < int(response.headers["Content-Length"]) < 1_200_000
        compressed = response.raw.read(64 * 1024, decode_content=False)
    inflater = zlib.decompressobj(wbits)
    inflated = inflater.decompress(compressed, MIB)
    assert inflated == b" " * MIB


@pytest.mark.parametrize(("kind", "wbits"), [("gzip_bomb", 31), ("deflate_bomb", 15)])
def test_small_bomb_inflates_to_exactly_inflated_bytes_of_a_valid_envelope(
    sim: SimulatorServer, client: requests.Session, plain: bytes, kind: str, wbits: int
) -> None:
    """inflated_bytes is exact: whitespace, then the normal envelope (valid JSON); requests decodes it."""
    inflated_bytes = 3 * MIB + 12_345
    sim.admin.set_fault(kind, count=2, inflated_bytes=inflated_bytes)
    with get(client, sim, stream=True) as response:
        compressed = response.raw.read(decode_content=False)
    # Three 1 MiB members of about 1 KiB each, the rest of a MiB and the compressed envelope.
    assert len(compressed) == int(response.headers["Content-Length"]) < 10_000
    if wbits == 31:
        # Concatenated members: inflate member after member, as gzip readers do.
        inflated, rest = b"", compressed
        while rest:
            inflater = zlib.decompressobj(wbits)
            inflated += inflater.decompress(rest)
            rest = inflater.unused_data
    else:
        inflater = zlib.decompressobj(wbits)
        inflated = inflater.decompress(compressed)
        assert inflater.eof
        assert not inflater.unused_data
    assert len(inflated) == inflated_bytes
    assert inflated.lstrip(b" ") == plain
    assert get(client, sim).json() == json.loads(plain)


# --------------------------------------------------------------------------------------------- big answers


def test_huge_body_at_default_size_declares_64_mib_of_plain_json(
    sim: SimulatorServer, client: requests.Session
) -> None:
    """huge_body's default answer is 64 MiB, uncompressed, starting like a normal envelope."""
    sim.admin.set_fault("huge_body", count=1)
    with get(client, sim, stream=True) as response:
        assert int(response.headers["Content-Length"]) == 64 * MIB
        assert "Content-Encoding" not in response.headers
        head = response.raw.read(256 * 1024)
    assert head.startswith(b'{"server_time":"2024-06-15T04:30:00.000Z","data":{"passes":[{"uuid":')
    assert b'"padding":"' + b"x" * 100_000 in head


def test_small_huge_body_is_a_valid_envelope_with_one_padded_pass(
    sim: SimulatorServer, client: requests.Session, plain: bytes
) -> None:
    """At body_bytes = 300 KiB the body is exactly that long; the first pass only gained a padding field."""
    sim.admin.set_fault("huge_body", count=1, body_bytes=300 * 1024)
    response = get(client, sim)
    assert len(response.content) == 300 * 1024
    data, normal = response.json()["data"], json.loads(plain)["data"]
    padding = data["passes"][0].pop("padding")
    assert set(padding) == {"x"}
    assert data == normal


def test_huge_list_serves_pass_count_small_passes_with_matching_counts(
    sim: SimulatorServer, client: requests.Session
) -> None:
    """huge_list's default page holds 100000 distinct small passes, as page_count and total_count say."""
    sim.admin.set_fault("huge_list", count=1)
    response = get(client, sim)
    assert int(response.headers["Content-Length"]) == len(response.content)
    data = response.json()["data"]
    assert len(data["passes"]) == data["page_count"] == data["total_count"] == 100_000
    assert len({p["uuid"] for p in data["passes"]}) == 100_000
    assert data["passes"][0]["status"] == "USABLE"
    assert data["pagination"] == {"page": 1, "per_page": 10, "next": None}
    sim.admin.set_fault("huge_list", count=1, pass_count=0)
    assert get(client, sim).json()["data"]["passes"] == []


def test_pagination_loop_serves_full_pages_of_new_passes_forever(
    sim: SimulatorServer, client: requests.Session
) -> None:
    """Every page is full, links onwards and claims a total nobody reaches; no pass repeats."""
    sim.admin.set_fault("pagination_loop", endpoint="v4")
    seen: set[str] = set()
    path = "/v4.0/passes?status=EXPIRED&per_page=5&page=1"
    for number in range(1, 6):
        data = get(client, sim, path).json()["data"]
        assert len(data["passes"]) == data["page_count"] == 5
        assert data["total_count"] == 2**53 - 1
        assert data["pagination"]["page"] == number
        seen |= {p["uuid"] for p in data["passes"]}
        path = data["pagination"]["next"]
        assert path == f"/v4.0/passes?status=EXPIRED&page={number + 1}&per_page=5"
    assert len(seen) == 25
    far = get(client, sim, "/v4.0/passes?status=EXPIRED&per_page=500&page=1000000").json()["data"]
    assert len(far["passes"]) == 500
    assert far["pagination"]["next"]
    # The other endpoint is untouched.
    assert get(client, sim).json()["data"]["total_count"] == 3


# ---------------------------------------------------------------------------------------- unstorable passes


def nesting_depth(value: Any) -> int:
    """How many objects deep value goes."""
    depth = 0
    while isinstance(value, dict):
        (value,) = value.values()
        depth += 1
    return depth


UNSTORABLE_CHECKS: dict[str, tuple[bytes, Callable[[str, Any], bool]]] = {
    "int_overflow": (b"1180591620717411303424", lambda key, value: value == 2**70),
    "nul_key": (b"\\u0000", lambda key, value: "\x00" in key),
    "dollar_key": (b'"$', lambda key, value: key.startswith("$")),
    "lone_surrogate": (b"\\ud800", lambda key, value: "\ud800" in value),
    "deep_nesting": (b'{"level":' * 500, lambda key, value: nesting_depth(value) == 500),
    "dotted_key": (b"fare.zone", lambda key, value: "." in key),
}


@pytest.mark.parametrize("variant", UNSTORABLE_PASS_VARIANTS)
def test_unstorable_pass_adds_one_bad_field_to_an_otherwise_normal_page(
    sim: SimulatorServer, client: requests.Session, plain: bytes, variant: str
) -> None:
    """Only the first pass changes, by one extra field written as the variant says; the rest is byte-equal."""
    assert set(UNSTORABLE_CHECKS) == set(UNSTORABLE_PASS_VARIANTS)
    sim.admin.set_fault("unstorable_pass", count=1, variant=variant)
    response = get(client, sim)
    wire, check = UNSTORABLE_CHECKS[variant]
    assert wire in response.content
    data, normal = response.json()["data"], json.loads(plain)["data"]
    first = data["passes"][0]
    added = [key for key in first if key not in normal["passes"][0]]
    assert len(added) == 1
    assert check(added[0], first.pop(added[0]))
    assert data == normal
    # Spliced into the pass's own text: the bytes around the new field are the normal page's.
    first_raw = json.dumps(normal["passes"][0], ensure_ascii=False, separators=(",", ":")).encode()
    end_of_first = plain.index(first_raw) + len(first_raw) - 1
    assert response.content.startswith(plain[:end_of_first] + b",")
    assert response.content.endswith(plain[end_of_first:])


def test_unstorable_pass_leaves_an_empty_page_alone(sim: SimulatorServer, client: requests.Session) -> None:
    """With no pass on the page there is nothing to spoil: the empty page is served as it is."""
    sim.admin.set_fault("unstorable_pass", variant="nul_key")
    assert get(client, sim, "/passes?per_page=10&page=9").json()["data"]["passes"] == []


# --------------------------------------------------------------------------------------- framing and labels


def test_wrong_content_encoding_labels_plain_json_as_brotli(sim: SimulatorServer, plain: bytes) -> None:
    """Content-Encoding says br, but the bytes are the plain envelope."""
    sim.admin.set_fault("wrong_content_encoding", count=1)
    connection = open_raw(sim)
    try:
        response = connection.getresponse()
        assert response.headers["Content-Encoding"] == "br"
        assert response.read() == plain
    finally:
        connection.close()


def test_truncated_body_declares_more_than_it_sends_then_closes(sim: SimulatorServer, plain: bytes) -> None:
    """Content-Length promises the whole envelope; half arrives, then the server closes the connection."""
    sim.admin.set_fault("truncated_body", count=1)
    connection = open_raw(sim)
    try:
        response = connection.getresponse()
        assert int(response.headers["Content-Length"]) == len(plain)
        with pytest.raises(http.client.IncompleteRead) as excinfo:
            response.read()
        assert excinfo.value.partial == plain[: len(plain) // 2]
    finally:
        connection.close()


def test_truncated_body_is_an_error_for_requests(sim: SimulatorServer, client: requests.Session) -> None:
    """requests refuses a short body instead of handing over half an envelope."""
    sim.admin.set_fault("truncated_body", count=1)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(client, sim)
    assert get(client, sim).status_code == 200


def test_hostile_faults_keep_their_scope(sim: SimulatorServer, client: requests.Session) -> None:
    """A hostile fault for one user and endpoint leaves the other endpoint and other users alone."""
    sim.admin.seed_user(43, "tok-hostile-43", current=2, expired=0)
    sim.admin.set_fault("gzip_bomb", user_id=USER, endpoint="v4", inflated_bytes=MIB)
    assert "Content-Encoding" not in get(client, sim).headers
    assert get(client, sim, V4).headers["Content-Encoding"] == "gzip"
    other = client.get(f"{sim.url}{V4}", headers={"Authorization": "Bearer tok-hostile-43"}, timeout=5)
    assert "Content-Encoding" not in other.headers
    assert sim.admin.faults()[0]["fired"] == 1


def test_many_slow_drips_do_not_hold_up_other_clients(sim: SimulatorServer, client: requests.Session) -> None:
    """Several dripping answers in flight leave the simulator free to answer a normal request at once."""
    sim.admin.set_fault("slow_drip", endpoint="v4", drip_interval_ms=50)
    connections = [open_raw(sim, V4) for _ in range(4)]
    try:
        responses = [connection.getresponse() for connection in connections]
        assert all(response.read1(4) for response in responses)
        started = time.monotonic()
        assert get(client, sim).status_code == 200
        assert time.monotonic() - started < 0.2
    finally:
        for connection in connections:
            connection.close()
