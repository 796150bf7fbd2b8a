"""Contract tests of the Bytemark simulator (contract §2) over HTTP: paging, envelope variants, auth, data,
admin, faults. The hostile faults (bombs, drips, huge answers …) are in test_bytemark_simulator_hostile.py.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

import bytemark_simulator
from bytemark_simulator import (
    ENVELOPE_STYLES,
    FAULT_KINDS,
    AdminClient,
    SimulatorAdminError,
    SimulatorServer,
)

pytestmark = pytest.mark.integration

TOKEN = "tok-user-42"
OTHER_TOKEN = "tok-user-43"
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z$")
CONTRACT_FIELDS = (
    "uuid",
    "status",
    "first_use",
    "expiration",
    "time_created",
    "time_modified",
    "product_uuid",
    "label_name",
)


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    """One simulator for the module; each test starts from a reset state."""
    with SimulatorServer(host="127.0.0.1", port=0, seed=1) as sim:
        yield sim


@pytest.fixture
def sim(server: SimulatorServer) -> SimulatorServer:
    """The module's simulator, reset (no users, faults or counts)."""
    server.admin.reset()
    return server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A session that never goes through an environment proxy."""
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


def get(
    http: requests.Session, sim: SimulatorServer, path: str, token: str | None = TOKEN, timeout: Any = 5
) -> requests.Response:
    """GET a simulator path with a bearer token."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return http.get(f"{sim.url}{path}", headers=headers, timeout=timeout)


def walk(
    http: requests.Session, sim: SimulatorServer, base: str, per_page: int, token: str = TOKEN
) -> list[Any]:
    """Follow every page of one list, checking contract §2 paging on each; returns the passes."""
    passes: list[Any] = []
    page = 1
    while True:
        response = get(http, sim, f"{base}per_page={per_page}&page={page}", token)
        assert response.status_code == 200
        body = response.json()
        assert body["errors"] == []
        assert ISO_UTC.match(body["server_time"])
        data = body["data"]
        assert data["page_count"] == len(data["passes"])
        assert len(data["passes"]) <= per_page
        pagination = data["pagination"]
        more = (page - 1) * per_page + data["page_count"] < data["total_count"]
        if pagination:
            assert pagination["page"] == page
            assert pagination["per_page"] == per_page
            assert bool(pagination["next"]) == more
        else:
            assert not more
        passes.extend(data["passes"])
        if not more:
            assert pagination.get("next") is None
            assert len(passes) == data["total_count"]
            return passes
        assert pagination["next"] == f"{base}page={page + 1}&per_page={per_page}"
        page += 1
        assert page < 1000


# ------------------------------------------------------------------------------------------------- paging


@pytest.mark.parametrize("per_page", [1, 2, 3, 5, 7, 8, 50])
def test_v1_pages_cover_the_current_list_in_order(
    sim: SimulatorServer, http: requests.Session, per_page: int
) -> None:
    """Walking the v1 list page by page yields exactly the simulator's current passes, in order."""
    sim.admin.seed_user(42, TOKEN, current=7, expired=0)
    passes = walk(http, sim, "/passes?", per_page)
    assert [p["uuid"] for p in passes] == [p["uuid"] for p in sim.admin.passes(42)["current"]]
    assert len(passes) == 7


@pytest.mark.parametrize("per_page", [1, 4, 6, 100])
def test_v4_pages_cover_the_expired_history(
    sim: SimulatorServer, http: requests.Session, per_page: int
) -> None:
    """Walking the v4 EXPIRED history yields exactly the simulator's expired passes, newest first."""
    sim.admin.seed_user(42, TOKEN, current=1, expired=6)
    passes = walk(http, sim, "/v4.0/passes?status=EXPIRED&", per_page)
    assert [p["uuid"] for p in passes] == [p["uuid"] for p in sim.admin.passes(42)["expired"]]
    assert {p["status"] for p in passes} == {"EXPIRED"}
    modified = [p["time_modified"] for p in passes]
    assert modified == sorted(modified, reverse=True)


def test_last_page_has_null_next_and_pages_beyond_are_empty(
    sim: SimulatorServer, http: requests.Session
) -> None:
    """The last page says next: null; a page past the end is empty with the true total."""
    sim.admin.seed_user(42, TOKEN, current=5, expired=0)
    last = get(http, sim, "/passes?per_page=2&page=3").json()["data"]
    assert last["page_count"] == 1
    assert last["pagination"] == {"page": 3, "per_page": 2, "next": None}
    beyond = get(http, sim, "/passes?per_page=2&page=9").json()["data"]
    assert beyond == {
        "passes": [],
        "page_count": 0,
        "total_count": 5,
        "pagination": {"page": 9, "per_page": 2, "next": None},
    }


def test_empty_account_answers_an_empty_first_page(sim: SimulatorServer, http: requests.Session) -> None:
    """A user without passes gets an empty list on both endpoints."""
    sim.admin.seed_user(42, TOKEN, current=0, expired=0)
    for path in ("/passes?per_page=10&page=1", "/v4.0/passes?status=EXPIRED&per_page=10&page=1"):
        data = get(http, sim, path).json()["data"]
        assert data["passes"] == []
        assert data["page_count"] == 0
        assert data["total_count"] == 0
        assert data["pagination"]["next"] is None


def test_object_pagination_style_sends_empty_pagination_on_a_single_page(
    sim: SimulatorServer, http: requests.Session
) -> None:
    """With empty_pagination_style "object", a single page carries "pagination": {} (also when empty)."""
    sim.admin.seed_user(42, TOKEN, current=3, expired=0, empty_pagination_style="object")
    single = get(http, sim, "/passes?per_page=10&page=1").json()["data"]
    assert single["pagination"] == {}
    assert single["page_count"] == 3
    empty = get(http, sim, "/v4.0/passes?status=EXPIRED&per_page=10&page=1").json()["data"]
    assert empty == {"passes": [], "page_count": 0, "total_count": 0, "pagination": {}}
    # Several pages still link onwards, and the walk stays consistent.
    first = get(http, sim, "/passes?per_page=2&page=1").json()["data"]
    assert first["pagination"]["next"] == "/passes?page=2&per_page=2"
    assert len(walk(http, sim, "/passes?", 2)) == 3
    assert sim.admin.set_user_options(42, empty_pagination_style="null")["empty_pagination_style"] == "null"
    assert get(http, sim, "/passes?per_page=10&page=1").json()["data"]["pagination"]["next"] is None


def walk_style(
    http: requests.Session, sim: SimulatorServer, base: str, per_page: int, style: str
) -> list[dict[str, Any]]:
    """Follow one list the way a client of ``style`` must (next links, or short pages); returns each data."""
    pages: list[dict[str, Any]] = []
    url = f"{sim.url}{base}per_page={per_page}&page=1"
    while len(pages) < 100:
        response = http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert response.status_code == 200
        data = response.json()["data"]
        pages.append(data)
        if style == "short_page":
            if len(data["passes"]) < per_page:
                return pages
            url = f"{sim.url}{base}per_page={per_page}&page={len(pages) + 1}"
            continue
        next_link = data["pagination"].get("next")
        if not next_link:
            return pages
        url = next_link if style == "absolute_next" else f"{sim.url}{next_link}"
    raise AssertionError("the list never ended")


@pytest.mark.parametrize("style", ENVELOPE_STYLES)
@pytest.mark.parametrize(
    ("base", "list_name"), [("/passes?", "current"), ("/v4.0/passes?status=EXPIRED&", "expired")]
)
def test_every_envelope_style_serves_the_whole_list_its_own_way(
    sim: SimulatorServer, http: requests.Session, style: str, base: str, list_name: str
) -> None:
    """Each style pages through 7 current (3+3+1) and 6 expired (3+3) passes with its own envelope fields."""
    seeded = sim.admin.seed_user(42, TOKEN, current=7, expired=6)
    sim.admin.set_envelope(style)
    pages = walk_style(http, sim, base, 3, style)
    expected = seeded[list_name]
    assert [p["uuid"] for data in pages for p in data["passes"]] == [p["uuid"] for p in expected]
    sizes = [len(data["passes"]) for data in pages]
    path = base.rstrip("&?")
    if style == "short_page":
        # A full last page is followed by an empty one: only a short page ends the list.
        assert sizes == ([3, 3, 1] if list_name == "current" else [3, 3, 0])
        assert all(set(data) == {"passes", "page_count"} for data in pages)
        assert [data["page_count"] for data in pages] == sizes
        return
    assert sizes == ([3, 3, 1] if list_name == "current" else [3, 3])
    for number, data in enumerate(pages, start=1):
        pagination = data["pagination"]
        assert (pagination["page"], pagination["per_page"]) == (number, 3)
        last = number == len(pages)
        if style == "next_only":
            assert "total_count" not in data
            assert data["page_count"] == len(data["passes"])
            assert "next" not in pagination if last else pagination["next"]
            continue
        assert data["total_count"] == len(expected)
        if style == "page_count_pages":
            assert data["page_count"] == math.ceil(len(expected) / 3)
        else:
            assert data["page_count"] == len(data["passes"])
        relative = None if last else f"{path}{'&' if '?' in path else '?'}page={number + 1}&per_page=3"
        if style == "absolute_next" and relative is not None:
            assert pagination["next"] == f"{sim.url}{relative}"
        else:
            assert pagination["next"] == relative


def test_page_count_pages_counts_pages_not_items(sim: SimulatorServer, http: requests.Session) -> None:
    """page_count_pages says 4 on every page of 7 passes at 2 a page (none holds 4), 0 for an empty list."""
    sim.admin.seed_user(42, TOKEN, current=7, expired=0)
    sim.admin.set_envelope("page_count_pages")
    pages = [get(http, sim, f"/passes?per_page=2&page={n}").json()["data"] for n in range(1, 6)]
    assert [data["page_count"] for data in pages] == [4] * 5
    assert [len(data["passes"]) for data in pages] == [2, 2, 2, 1, 0]
    assert get(http, sim, "/v4.0/passes?status=EXPIRED&per_page=3&page=1").json()["data"]["page_count"] == 0


def test_absolute_next_is_built_from_the_host_header(sim: SimulatorServer, http: requests.Session) -> None:
    """absolute_next names the host the client asked for, so a proxy-style Host comes back in the link."""
    sim.admin.seed_user(42, TOKEN, current=3, expired=0, envelope_style="absolute_next")
    response = http.get(
        f"{sim.url}/passes?per_page=1&page=1",
        headers={"Authorization": f"Bearer {TOKEN}", "Host": "bytemark.example:8443"},
        timeout=5,
    )
    assert (
        response.json()["data"]["pagination"]["next"]
        == "http://bytemark.example:8443/passes?page=2&per_page=1"
    )


def test_next_links_keep_the_other_query_parameters(sim: SimulatorServer, http: requests.Session) -> None:
    """next sets status (v4), page and per_page and carries any other parameter verbatim, in every style."""
    sim.admin.seed_user(42, TOKEN, current=3, expired=3)
    v4 = get(http, sim, "/v4.0/passes?per_page=1&expand=order%20item&page=1&status=EXPIRED&lang=es").json()
    assert v4["data"]["pagination"]["next"] == (
        "/v4.0/passes?status=EXPIRED&page=2&per_page=1&expand=order%20item&lang=es"
    )
    # Without status the v4 link still names it; v1 links never do.
    assert get(http, sim, "/v4.0/passes?per_page=1").json()["data"]["pagination"]["next"] == (
        "/v4.0/passes?status=EXPIRED&page=2&per_page=1"
    )
    assert get(http, sim, "/passes?page=2&status=ANY&per_page=1&x=1").json()["data"]["pagination"][
        "next"
    ] == ("/passes?page=3&per_page=1&status=ANY&x=1")
    sim.admin.set_envelope("absolute_next")
    assert get(http, sim, "/passes?per_page=1&x=1").json()["data"]["pagination"]["next"] == (
        f"{sim.url}/passes?page=2&per_page=1&x=1"
    )


def test_envelope_style_per_user_overrides_the_server_wide_one(
    sim: SimulatorServer, http: requests.Session
) -> None:
    """A user's own style wins; None follows the server's again; reset() restores the start style."""
    sim.admin.seed_user(42, TOKEN, current=3, expired=0)
    sim.admin.seed_user(43, OTHER_TOKEN, current=3, expired=0, envelope_style="spec")
    assert sim.admin.set_envelope("next_only") == {"envelope_style": "next_only", "compress_answers": False}

    def keys(token: str) -> set[str]:
        return set(get(http, sim, "/passes?per_page=2&page=1", token).json()["data"])

    assert keys(TOKEN) == {"passes", "page_count", "pagination"}
    assert "total_count" in keys(OTHER_TOKEN)
    assert sim.admin.set_envelope("short_page", user_id=42)["envelope_style"] == "short_page"
    assert keys(TOKEN) == {"passes", "page_count"}
    assert sim.admin.set_envelope(None, user_id=42)["envelope_style"] is None
    assert keys(TOKEN) == {"passes", "page_count", "pagination"}
    # set_user_options leaves what it is not given alone.
    assert sim.admin.set_user_options(43, empty_pagination_style="object")["envelope_style"] == "spec"
    sim.admin.reset()
    assert sim.admin.options() == {"envelope_style": "spec", "compress_answers": False}


@pytest.mark.parametrize(
    "call",
    [
        lambda admin: admin.set_envelope("fancy"),
        lambda admin: admin.set_envelope("fancy", user_id=42),
        lambda admin: admin.seed_user(44, "tok-44", envelope_style="fancy"),
        lambda admin: admin.set_user_options(42, compress_answers="yes"),
        lambda admin: admin._call("PATCH", "/options", {"colour": "red"}),
        lambda admin: admin._call("PATCH", "/users/42", {"colour": "red"}),
    ],
    ids=[
        "server-style",
        "user-style",
        "seed-style",
        "user-compress",
        "unknown-option",
        "unknown-user-option",
    ],
)
def test_invalid_envelope_options_are_refused(sim: SimulatorServer, call: Any) -> None:
    """Unknown styles, non-boolean switches and unknown option names get HTTP 400."""
    sim.admin.seed_user(42, TOKEN)
    with pytest.raises(SimulatorAdminError) as excinfo:
        call(sim.admin)
    assert excinfo.value.status == 400
    assert sim.admin.options()["envelope_style"] == "spec"
    assert sim.admin.user(42)["envelope_style"] is None


def test_compress_answers_gzips_pages_for_clients_that_accept_it(
    sim: SimulatorServer, http: requests.Session
) -> None:
    """With compress_answers a gzip-accepting client gets a gzip body (decoded by requests); others plain."""
    seeded = sim.admin.seed_user(42, TOKEN, current=5, expired=0)
    sim.admin.set_time("2024-06-15T04:30:00Z")
    path = f"{sim.url}/passes?per_page=10&page=1"
    plain = get(http, sim, "/passes?per_page=10&page=1")
    assert "Content-Encoding" not in plain.headers
    assert sim.admin.set_compression(True)["compress_answers"] is True
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept-Encoding": "gzip"}
    with http.get(path, headers=headers, timeout=5, stream=True) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.headers["Vary"] == "Accept-Encoding"
        raw = response.raw.read(decode_content=False)
    assert int(response.headers["Content-Length"]) == len(raw) < len(plain.content)
    assert gzip.decompress(raw) == plain.content
    decoded = get(http, sim, "/passes?per_page=10&page=1")
    assert decoded.headers["Content-Encoding"] == "gzip"
    assert decoded.json()["data"]["passes"] == seeded["current"]
    for refusing in ("identity", "gzip;q=0", "br"):
        headers["Accept-Encoding"] = refusing
        answer = http.get(path, headers=headers, timeout=5)
        assert "Content-Encoding" not in answer.headers
        assert answer.content == plain.content
    # Per user: off for 42 although on server-wide; None follows the server again.
    sim.admin.set_compression(False, user_id=42)
    assert "Content-Encoding" not in get(http, sim, "/passes?per_page=10&page=1").headers
    sim.admin.set_compression(None, user_id=42)
    assert get(http, sim, "/passes?per_page=10&page=1").headers["Content-Encoding"] == "gzip"
    # Errors are never compressed.
    assert "Content-Encoding" not in get(http, sim, "/passes?per_page=0").headers


@pytest.mark.parametrize(
    "path",
    [
        "/passes?per_page=0&page=1",
        "/passes?per_page=-1&page=1",
        "/passes?per_page=abc&page=1",
        "/passes?per_page=501&page=1",
        "/passes?per_page=5&page=0",
        "/passes?per_page=5&page=1.5",
        "/passes?per_page=5&page=",
        "/passes?per_page=5&per_page=6&page=1",
        "/v4.0/passes?status=USABLE&per_page=5&page=1",
    ],
)
def test_invalid_paging_parameters_are_refused(
    sim: SimulatorServer, http: requests.Session, path: str
) -> None:
    """Bad per_page / page / status values get HTTP 400 with an errors envelope."""
    sim.admin.seed_user(42, TOKEN)
    response = get(http, sim, path)
    assert response.status_code == 400
    body = response.json()
    assert body["data"] is None
    assert body["errors"][0]["code"] == 40000
    assert body["errors"][0]["message"]


def test_unknown_route_is_404(sim: SimulatorServer, http: requests.Session) -> None:
    """Only the two pass endpoints exist."""
    sim.admin.seed_user(42, TOKEN)
    response = get(http, sim, "/v4.0/orders")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == 40400


def test_v1_order_is_not_by_time_created(sim: SimulatorServer, http: requests.Session) -> None:
    """The legacy list comes in uuid order, so a client has to sort by time_created itself."""
    sim.admin.seed_user(42, TOKEN, current=12, expired=0)
    passes = walk(http, sim, "/passes?", 50)
    uuids = [p["uuid"] for p in passes]
    assert uuids == sorted(uuids)
    created = [p["time_created"] for p in passes]
    assert created != sorted(created)


# --------------------------------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer nope"},
    ],
    ids=["no-header", "wrong-scheme", "empty-token", "unknown-token"],
)
def test_requests_without_a_valid_token_get_401_50020(
    sim: SimulatorServer, http: requests.Session, headers: dict[str, str]
) -> None:
    """Missing, malformed or unknown tokens are refused with 401 and code 50020 on both endpoints."""
    sim.admin.seed_user(42, TOKEN)
    for path in ("/passes?per_page=5&page=1", "/v4.0/passes?status=EXPIRED&per_page=5&page=1"):
        response = http.get(f"{sim.url}{path}", headers=headers, timeout=5)
        assert response.status_code == 401
        body = response.json()
        assert body["data"] is None
        assert body["errors"][0]["code"] == 50020


def test_revoked_token_gets_401_and_other_users_are_unaffected(
    sim: SimulatorServer, http: requests.Session
) -> None:
    """revoke() turns one user's token into 401/50020; set_token() gives the user a working token again."""
    sim.admin.seed_user(42, TOKEN)
    sim.admin.seed_user(43, OTHER_TOKEN)
    assert get(http, sim, "/passes?per_page=5&page=1").status_code == 200
    sim.admin.revoke(42)
    revoked = get(http, sim, "/passes?per_page=5&page=1")
    assert revoked.status_code == 401
    assert revoked.json()["errors"][0]["code"] == 50020
    assert get(http, sim, "/passes?per_page=5&page=1", OTHER_TOKEN).status_code == 200
    assert sim.admin.user(42)["revoked"] is True
    sim.admin.set_token(42, "tok-user-42-new")
    assert get(http, sim, "/passes?per_page=5&page=1", "tok-user-42-new").status_code == 200
    assert get(http, sim, "/passes?per_page=5&page=1").status_code == 401


def test_reset_drops_users_and_their_tokens(sim: SimulatorServer, http: requests.Session) -> None:
    """After reset() a formerly valid token is unknown."""
    sim.admin.seed_user(42, TOKEN)
    assert get(http, sim, "/passes?per_page=5&page=1").status_code == 200
    sim.admin.reset()
    assert get(http, sim, "/passes?per_page=5&page=1").status_code == 401
    with pytest.raises(SimulatorAdminError) as excinfo:
        sim.admin.passes(42)
    assert excinfo.value.status == 404


# ------------------------------------------------------------------------------------- data & determinism


def test_same_seed_gives_the_same_passes_on_another_server() -> None:
    """Two simulators with one seed and one clock generate identical users; another seed differs."""
    instant = "2024-06-15T12:00:00.000Z"
    with (
        SimulatorServer(port=0, seed=1, now=instant) as one,
        SimulatorServer(port=0, seed=1, now=instant) as two,
    ):
        first = one.admin.seed_user(42, TOKEN, current=5, expired=4)
        assert two.admin.seed_user(42, TOKEN, current=5, expired=4) == first
        assert one.admin.seed_user(42, TOKEN, current=5, expired=4, seed=1) == first
        other = two.admin.seed_user(42, TOKEN, current=5, expired=4, seed=2)
        assert {p["uuid"] for p in other["current"]}.isdisjoint(p["uuid"] for p in first["current"])
        assert first["user_id"] == 42
        assert first["token"] == TOKEN


def test_generated_passes_carry_the_full_field_set(sim: SimulatorServer, http: requests.Session) -> None:
    """Passes carry the contract's fields, ~60 in all, ISO stamps in both styles, floats and non-ASCII."""
    sim.admin.seed_user(42, TOKEN, current=30, expired=30)
    response = get(http, sim, "/passes?per_page=50&page=1")
    history = get(http, sim, "/v4.0/passes?status=EXPIRED&per_page=50&page=1")
    passes = response.json()["data"]["passes"] + history.json()["data"]["passes"]
    assert len(passes) == 60

    def count_fields(value: Any) -> int:
        if isinstance(value, dict):
            return sum(1 + count_fields(child) for child in value.values())
        if isinstance(value, list) and value:
            return count_fields(value[0])
        return 0

    for pass_ in passes:
        assert all(field in pass_ for field in CONTRACT_FIELDS)
        assert count_fields(pass_) >= 60
        assert pass_["status"] in {"USABLE", "USING", "EXPIRED", "USES_GONE"}
        for stamp in ("time_created", "time_modified"):
            assert ISO_UTC.match(pass_[stamp])
        if pass_["status"] == "USABLE":
            assert pass_["first_use"] is None
            assert pass_["expiration"] in (None, "")
        else:
            assert ISO_UTC.match(pass_["first_use"])
            assert ISO_UTC.match(pass_["expiration"])
        order_item = pass_["order_item"]
        assert isinstance(order_item["unit_price"], int)
        assert order_item["tax_rate"] == 0.0825
        assert isinstance(order_item["price"], float)
        assert order_item["price"] == order_item["unit_price"] / 100
        assert pass_["customer"]["email"]
        assert pass_["customer"]["full_name"]
        assert pass_["pass_events"]
        assert pass_["expiration_rule"]["time_zone"] == "America/Chicago"
        assert len(pass_["barcode"]["payload"]) >= 200

    stamps = [p["time_created"] for p in passes]
    assert any("." in stamp for stamp in stamps)
    assert any("." not in stamp for stamp in stamps)
    statuses = {p["status"] for p in passes}
    assert {"USABLE", "USING", "EXPIRED"} <= statuses
    labels = {p["label_name"] for p in passes}
    assert {"Local Day Pass", "Local Single Ride", "Pase de día – Niño"} <= labels  # noqa: RUF001
    # Integral floats and non-ASCII go over the wire as such (UTF-8, not \u escapes).
    assert '"tax_rate":0.0825' in response.text
    assert re.search(r'"price":\d+\.0,', response.text)
    assert "Área Metropolitana".encode() in response.content
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"


def test_server_time_follows_the_settable_clock(sim: SimulatorServer, http: requests.Session) -> None:
    """set_time() freezes the clock that server_time reports."""
    sim.admin.seed_user(42, TOKEN)
    assert sim.admin.set_time("2024-06-15T04:30:00Z")["now"] == "2024-06-15T04:30:00.000Z"
    assert get(http, sim, "/passes?per_page=5&page=1").json()["server_time"] == "2024-06-15T04:30:00.000Z"
    assert sim.admin.now() == "2024-06-15T04:30:00.000Z"
    sim.admin.set_time(None)
    assert sim.admin.now()[:4] != "2024"


# ------------------------------------------------------------------------------------------ admin changes


@pytest.mark.parametrize(
    ("first_use", "expected_expiration"),
    [
        ("2024-06-15T04:30:00Z", "2024-06-15T04:59:59.000Z"),
        ("2024-03-10T08:00:00Z", "2024-03-11T04:59:59.000Z"),
        ("2024-11-03T04:30:00Z", "2024-11-03T04:59:59.000Z"),
    ],
)
def test_activating_a_day_pass_expires_it_at_the_end_of_the_chicago_day(
    sim: SimulatorServer, http: requests.Session, first_use: str, expected_expiration: str
) -> None:
    """activate() sets USING, first_use, the end of the local day (contract §6), a new time_modified."""
    sim.admin.seed_user(42, TOKEN, current=0, expired=0)
    sim.admin.set_time("2024-03-01T00:00:00Z")
    bought = sim.admin.purchase(42, "Local Day Pass")
    sim.admin.set_time("2024-12-01T10:00:00Z")
    activated = sim.admin.activate(42, bought["uuid"], at=first_use)
    assert activated["status"] == "USING"
    assert activated["first_use"] == first_use.replace("Z", ".000Z")
    assert activated["expiration"] == expected_expiration
    assert activated["time_modified"] == "2024-12-01T10:00:00.000Z"
    assert activated["pass_events"][-1]["event_type"] == "ACTIVATED"
    served = get(http, sim, "/passes?per_page=5&page=1").json()["data"]["passes"]
    assert served == [activated]


def test_activating_a_duration_pass_adds_its_duration_and_uses_the_clock(sim: SimulatorServer) -> None:
    """Without `at` first_use is the clock's now; a 7-day pass lasts 7 days; a single ride is used up."""
    sim.admin.seed_user(42, TOKEN, current=0, expired=0)
    sim.admin.set_time("2024-06-15T04:30:00Z")
    weekly = sim.admin.purchase(42, "Regional 7-Day Pass")
    ride = sim.admin.purchase(42, "Local Single Ride")
    activated = sim.admin.activate(42, weekly["uuid"])
    assert activated["first_use"] == "2024-06-15T04:30:00.000Z"
    assert activated["expiration"] == "2024-06-22T04:30:00.000Z"
    ridden = sim.admin.activate(42, ride["uuid"])
    assert ridden["remaining_uses"] == ride["remaining_uses"] - 1 == 0
    assert ridden["expiration"] == "2024-06-15T06:00:00.000Z"
    with pytest.raises(SimulatorAdminError) as excinfo:
        sim.admin.activate(42, weekly["uuid"])
    assert excinfo.value.status == 409
    with pytest.raises(SimulatorAdminError) as missing:
        sim.admin.activate(42, "no-such-pass")
    assert missing.value.status == 404


def test_expire_moves_a_pass_from_v1_to_the_front_of_v4(sim: SimulatorServer, http: requests.Session) -> None:
    """expire() marks the pass EXPIRED, removes it from v1 and puts it first in the v4 history."""
    seeded = sim.admin.seed_user(42, TOKEN, current=3, expired=2)
    target = seeded["current"][1]["uuid"]
    sim.admin.set_time("2031-05-06T07:08:09Z")
    expired = sim.admin.expire(42, target)
    assert expired["status"] == "EXPIRED"
    assert expired["expiration"]
    assert expired["time_modified"] == "2031-05-06T07:08:09.000Z"
    assert expired["pass_events"][-1]["event_type"] == "EXPIRED"
    current = walk(http, sim, "/passes?", 2)
    history = walk(http, sim, "/v4.0/passes?status=EXPIRED&", 2)
    assert target not in [p["uuid"] for p in current]
    assert len(current) == 2
    assert [p["uuid"] for p in history] == [target] + [p["uuid"] for p in seeded["expired"]]
    assert history[0] == expired
    with pytest.raises(SimulatorAdminError) as excinfo:
        sim.admin.expire(42, target)
    assert excinfo.value.status == 409


def test_purchase_appends_a_new_usable_pass(sim: SimulatorServer, http: requests.Session) -> None:
    """purchase() appends a fresh USABLE pass of the named product to the end of v1."""
    seeded = sim.admin.seed_user(42, TOKEN, current=2, expired=0)
    sim.admin.set_time("2030-01-02T03:04:05Z")
    bought = sim.admin.purchase(42, "Pase de día – Niño")  # noqa: RUF001
    assert bought["status"] == "USABLE"
    assert bought["first_use"] is None
    assert bought["label_name"] == "Pase de día – Niño"  # noqa: RUF001
    assert bought["time_created"].startswith("2030-01-02T03:04:05")
    assert bought["uuid"] not in {p["uuid"] for p in seeded["current"]}
    current = walk(http, sim, "/passes?", 50)
    assert [p["uuid"] for p in current] == [p["uuid"] for p in seeded["current"]] + [bought["uuid"]]
    assert sim.admin.purchase(42)["label_name"] == "Local Day Pass"
    with pytest.raises(SimulatorAdminError) as excinfo:
        sim.admin.purchase(42, "Gold Pass")
    assert excinfo.value.status == 400


def test_put_pass_replaces_in_place_or_inserts_duplicates(
    sim: SimulatorServer, http: requests.Session
) -> None:
    """put_pass() replaces a pass with the same uuid, or with replace=False duplicates it across pages."""
    seeded = sim.admin.seed_user(42, TOKEN, current=3, expired=1)
    changed = dict(seeded["current"][0], status="USING", time_modified="2024-06-15T04:30:00+00:00")
    sim.admin.put_pass(42, changed)
    current = sim.admin.passes(42)["current"]
    assert current[0] == changed
    assert len(current) == 3
    sim.admin.put_pass(42, seeded["current"][2], replace=False, position=0)
    uuids = [p["uuid"] for p in walk(http, sim, "/passes?", 2)]
    assert uuids.count(seeded["current"][2]["uuid"]) == 2
    assert uuids[0] == uuids[3] == seeded["current"][2]["uuid"]
    odd = {
        "uuid": "odd-1",
        "status": "EXPIRED",
        "big": 1e21,
        "tiny": 5e-7,
        "time_created": "2024-06-15 04:30",
    }
    sim.admin.put_pass(42, odd, "expired")
    history = get(http, sim, "/v4.0/passes?status=EXPIRED&per_page=10&page=1")
    assert history.json()["data"]["passes"][-1] == odd
    assert '"big":1e+21' in history.text
    sim.admin.remove_pass(42, "odd-1")
    assert [p["uuid"] for p in sim.admin.passes(42)["expired"]] == [seeded["expired"][0]["uuid"]]


def test_put_pass_as_json_text_is_served_byte_for_byte(sim: SimulatorServer, http: requests.Session) -> None:
    """A pass given as JSON text keeps its exact number spelling and key order on the wire."""
    sim.admin.seed_user(42, TOKEN, current=0, expired=0)
    raw = (
        '{"uuid":"p-1","status":"USABLE","first_use":null,"expiration":null,"price":2.0,'
        '"label_name":"Local Day Pass – Adult é","time_created":"2024-03-10T05:30:00.000Z",'  # noqa: RUF001
        '"n":{"b":1,"a":[1,2.50]},"huge":1E21}'
    )
    returned = sim.admin.put_pass(42, raw)
    assert returned["uuid"] == "p-1"
    response = get(http, sim, "/passes?per_page=5&page=1")
    assert raw.encode("utf-8") in response.content
    with pytest.raises(SimulatorAdminError) as excinfo:
        sim.admin.put_pass(42, '{"uuid": "broken"')
    assert excinfo.value.status == 400


# ------------------------------------------------------------------------------------------------- faults


def test_latency_fault_still_answers_correctly(sim: SimulatorServer, http: requests.Session) -> None:
    """A latency fault delays but does not change the answer."""
    seeded = sim.admin.seed_user(42, TOKEN, current=3, expired=0)
    sim.admin.set_fault("latency", latency_ms=50)
    response = get(http, sim, "/passes?per_page=10&page=1")
    assert response.status_code == 200
    assert response.json()["data"]["passes"] == seeded["current"]
    assert sim.admin.faults()[0]["fired"] == 1


@pytest.mark.parametrize(("kind", "status"), [("http_500", 500), ("http_503", 503)])
def test_server_error_faults(sim: SimulatorServer, http: requests.Session, kind: str, status: int) -> None:
    """http_500 / http_503 answer that status with an errors envelope."""
    sim.admin.seed_user(42, TOKEN)
    sim.admin.set_fault(kind)
    response = get(http, sim, "/passes?per_page=10&page=1")
    assert response.status_code == status
    assert response.json()["errors"][0]["code"] == status * 100
    sim.admin.clear_faults()
    assert get(http, sim, "/passes?per_page=10&page=1").status_code == 200


def test_timeout_fault_outlasts_a_client_read_timeout(sim: SimulatorServer, http: requests.Session) -> None:
    """A timeout fault holds the answer, so a client with a 0.5 s read timeout raises ReadTimeout."""
    sim.admin.seed_user(42, TOKEN)
    fault = sim.admin.set_fault("timeout", count=1)
    assert fault["latency_ms"] == 30_000
    with pytest.raises(requests.ReadTimeout):
        get(http, sim, "/passes?per_page=10&page=1", timeout=(3, 0.5))
    assert get(http, sim, "/passes?per_page=10&page=1").status_code == 200


def test_reset_fault_resets_the_connection(sim: SimulatorServer, http: requests.Session) -> None:
    """A reset fault drops the socket without an answer: the client sees a connection error."""
    sim.admin.seed_user(42, TOKEN)
    sim.admin.set_fault("reset", count=1)
    with pytest.raises(requests.ConnectionError) as excinfo:
        get(http, sim, "/passes?per_page=10&page=1")
    # A reset (RST), not a polite close: SO_LINGER 0 on the server side.
    assert "ConnectionResetError" in repr(excinfo.value)
    assert get(http, sim, "/passes?per_page=10&page=1").status_code == 200


def test_rate_limit_fault_sends_429_with_retry_after(sim: SimulatorServer, http: requests.Session) -> None:
    """rate_limit answers 429 with the configured Retry-After and an errors envelope."""
    sim.admin.seed_user(42, TOKEN)
    sim.admin.set_fault("rate_limit", retry_after=7)
    response = get(http, sim, "/v4.0/passes?status=EXPIRED&per_page=10&page=1")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["errors"][0]["code"] == 42900


def test_malformed_json_fault_cannot_be_parsed(sim: SimulatorServer, http: requests.Session) -> None:
    """malformed_json answers 200 with a body that is not valid JSON."""
    sim.admin.seed_user(42, TOKEN)
    sim.admin.set_fault("malformed_json")
    response = get(http, sim, "/passes?per_page=10&page=1")
    assert response.status_code == 200
    assert response.text.startswith('{"server_time":')
    with pytest.raises(requests.JSONDecodeError):
        response.json()
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)


def test_error_200_50020_fault(sim: SimulatorServer, http: requests.Session) -> None:
    """error_200_50020 answers HTTP 200 carrying the 50020 error and no data."""
    sim.admin.seed_user(42, TOKEN)
    sim.admin.set_fault("error_200_50020")
    response = get(http, sim, "/passes?per_page=10&page=1")
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    assert body["errors"][0]["code"] == 50020


def test_schema_break_fault_variants(sim: SimulatorServer, http: requests.Session) -> None:
    """schema_break answers valid JSON of the wrong shape: passes not a list, pass without uuid, bad data."""
    sim.admin.seed_user(42, TOKEN, current=2)
    sim.admin.set_fault("schema_break", count=1)
    body = get(http, sim, "/passes?per_page=10&page=1").json()
    assert isinstance(body["data"]["passes"], dict)
    sim.admin.set_fault("schema_break", count=1, variant="pass_without_uuid")
    passes = get(http, sim, "/passes?per_page=10&page=1").json()["data"]["passes"]
    assert isinstance(passes, list)
    assert any("uuid" not in p for p in passes)
    sim.admin.set_fault("schema_break", count=1, variant="data_not_object")
    assert isinstance(get(http, sim, "/passes?per_page=10&page=1").json()["data"], list)
    assert get(http, sim, "/passes?per_page=10&page=1").json()["data"]["passes"][0]["uuid"]


def test_per_user_and_per_endpoint_faults_hit_only_their_target(
    sim: SimulatorServer, http: requests.Session
) -> None:
    """A fault for one user (or one endpoint) leaves other users (and the other endpoint) alone."""
    sim.admin.seed_user(42, TOKEN)
    sim.admin.seed_user(43, OTHER_TOKEN)
    sim.admin.set_fault("http_503", user_id=42)
    sim.admin.set_fault("http_500", user_id=43, endpoint="v4")
    v1, v4 = "/passes?per_page=10&page=1", "/v4.0/passes?status=EXPIRED&per_page=10&page=1"
    assert get(http, sim, v1).status_code == 503
    assert get(http, sim, v4).status_code == 503
    assert get(http, sim, v1, OTHER_TOKEN).status_code == 200
    assert get(http, sim, v4, OTHER_TOKEN).status_code == 500


def test_counted_fault_stops_after_count(sim: SimulatorServer, http: requests.Session) -> None:
    """A fault with count=2 fires twice, then disappears."""
    sim.admin.seed_user(42, TOKEN)
    sim.admin.set_fault("http_503", count=2)
    statuses = [get(http, sim, "/passes?per_page=10&page=1").status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert sim.admin.faults() == []


def test_fault_rate_is_partial_and_deterministic(sim: SimulatorServer, http: requests.Session) -> None:
    """A rate=0.5 fault hits some requests, and the same pattern repeats after a reset."""

    def pattern() -> list[int]:
        sim.admin.reset()
        sim.admin.seed_user(42, TOKEN)
        sim.admin.set_fault("http_500", rate=0.5)
        return [get(http, sim, "/passes?per_page=10&page=1").status_code for _ in range(30)]

    first = pattern()
    assert 0 < first.count(500) < 30
    assert set(first) == {200, 500}
    assert pattern() == first


@pytest.mark.parametrize(
    "arguments",
    [
        {"kind": "meteor"},
        {"kind": "http_500", "endpoint": "v2"},
        {"kind": "http_500", "count": 0},
        {"kind": "http_500", "rate": 1.5},
        {"kind": "schema_break", "variant": "nope"},
        {"kind": "unstorable_pass", "variant": "passes_not_list"},
        {"kind": "slow_drip", "drip_bytes": 0},
        {"kind": "slow_drip", "drip_interval_ms": -1},
        {"kind": "gzip_bomb", "inflated_bytes": -1},
        {"kind": "huge_body", "body_bytes": -1},
        {"kind": "huge_list", "pass_count": -5},
    ],
)
def test_invalid_faults_are_refused(sim: SimulatorServer, arguments: dict[str, Any]) -> None:
    """set_fault() validates its arguments."""
    kind = arguments.pop("kind")
    with pytest.raises(SimulatorAdminError) as excinfo:
        sim.admin.set_fault(kind, **arguments)
    assert excinfo.value.status == 400
    assert sim.admin.faults() == []


def test_every_documented_fault_kind_is_accepted(sim: SimulatorServer) -> None:
    """The brief's fault kinds are all known to the simulator."""
    assert set(FAULT_KINDS) == {
        "latency",
        "http_500",
        "http_503",
        "timeout",
        "reset",
        "rate_limit",
        "malformed_json",
        "error_200_50020",
        "schema_break",
        "slow_drip",
        "gzip_bomb",
        "deflate_bomb",
        "huge_body",
        "huge_list",
        "pagination_loop",
        "unstorable_pass",
        "wrong_content_encoding",
        "truncated_body",
    }
    for kind in FAULT_KINDS:
        assert sim.admin.set_fault(kind, user_id=999)["kind"] == kind
    assert len(sim.admin.faults()) == len(FAULT_KINDS)
    described = {fault["kind"]: fault for fault in sim.admin.faults()}
    assert described["unstorable_pass"]["variant"] == "int_overflow"
    assert (described["slow_drip"]["drip_bytes"], described["slow_drip"]["drip_interval_ms"]) == (4, 100)
    assert described["gzip_bomb"]["inflated_bytes"] == 1 << 30
    assert described["huge_body"]["body_bytes"] == 64 << 20
    assert described["huge_list"]["pass_count"] == 100_000


# ----------------------------------------------------------------------------------- counts & concurrency


def test_request_counts_by_endpoint_and_user_without_tokens(
    sim: SimulatorServer, http: requests.Session
) -> None:
    """request_counts() counts API calls per endpoint and per user id, and never shows a token."""
    sim.admin.seed_user(42, TOKEN)
    sim.admin.seed_user(43, OTHER_TOKEN)
    v1, v4 = "/passes?per_page=10&page=1", "/v4.0/passes?status=EXPIRED&per_page=10&page=1"
    for path, token in [(v1, TOKEN), (v1, TOKEN), (v4, TOKEN), (v4, OTHER_TOKEN), (v1, "unknown")]:
        get(http, sim, path, token)
    sim.admin.set_fault("http_503", count=1)
    get(http, sim, v4, OTHER_TOKEN)
    counts = sim.admin.request_counts()
    assert counts == {
        "total": 6,
        "by_endpoint": {"v1": 3, "v4": 3},
        "by_user": {"42": {"v1": 2, "v4": 1}, "43": {"v1": 0, "v4": 2}},
    }
    assert TOKEN not in json.dumps(counts)
    sim.admin.reset()
    assert sim.admin.request_counts() == {"total": 0, "by_endpoint": {"v1": 0, "v4": 0}, "by_user": {}}


def test_concurrent_clients_all_get_correct_pages(sim: SimulatorServer) -> None:
    """Eight threads paging at once each get complete, correct lists."""
    users = {100 + n: f"tok-concurrent-{n}" for n in range(8)}
    expected = {
        user_id: sim.admin.seed_user(user_id, token, current=9)["current"] for user_id, token in users.items()
    }
    sim.admin.set_fault("latency", latency_ms=20)

    def fetch_all(user_id: int) -> list[Any]:
        with requests.Session() as session:
            session.trust_env = False
            collected: list[Any] = []
            for _ in range(3):
                collected = walk(session, sim, "/passes?", 4, users[user_id])
            return collected

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(zip(users, pool.map(fetch_all, users), strict=True))
    assert results == expected
    assert sim.admin.request_counts()["by_endpoint"]["v1"] == 8 * 3 * 3


def test_a_held_request_does_not_block_other_clients(sim: SimulatorServer, http: requests.Session) -> None:
    """While one user's request is held by a timeout fault, another user is served."""
    sim.admin.seed_user(42, TOKEN)
    sim.admin.seed_user(43, OTHER_TOKEN)
    sim.admin.set_fault("timeout", user_id=42, latency_ms=1500)
    outcome: dict[str, Any] = {}

    def held() -> None:
        with requests.Session() as session:
            session.trust_env = False
            outcome["status"] = get(session, sim, "/passes?per_page=10&page=1", timeout=10).status_code

    worker = threading.Thread(target=held)
    worker.start()
    wait_for(lambda: sim.admin.request_counts()["by_user"].get("42", {}).get("v1") == 1)
    assert get(http, sim, "/passes?per_page=10&page=1", OTHER_TOKEN).status_code == 200
    assert worker.is_alive()
    worker.join(timeout=10)
    assert outcome["status"] == 200


def wait_for(condition: Any, deadline_seconds: float = 5.0) -> None:
    """Poll condition() until true or fail at the deadline."""
    deadline = time.monotonic() + deadline_seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)


def test_stop_returns_promptly_with_a_timeout_fault_in_flight() -> None:
    """stop() wakes a held request and returns within a second; the held client sees the connection drop."""
    sim = SimulatorServer(port=0, seed=1).start()
    sim.admin.seed_user(42, TOKEN)
    sim.admin.set_fault("timeout")
    url = sim.url
    outcome: dict[str, BaseException] = {}

    def held() -> None:
        try:
            with requests.Session() as session:
                session.trust_env = False
                session.get(f"{url}/passes", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20)
        except requests.RequestException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=held)
    worker.start()
    wait_for(lambda: sim.admin.request_counts()["total"] == 1)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 1.0
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert isinstance(outcome.get("error"), requests.ConnectionError)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/passes", timeout=2)


# ------------------------------------------------------------------------------------------ process mode


def test_command_line_mode_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`python -m bytemark_simulator --port 0` prints its URL, answers, logs token-free, exits on SIGTERM."""
    package_root = Path(bytemark_simulator.__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(package_root), PYTHONUNBUFFERED="1")
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bytemark_simulator",
                "--port",
                "0",
                "--seed",
                "1",
                "--user",
                f"7:{TOKEN}",
                "--envelope-style",
                "absolute_next",
                "--compress-answers",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            env=env,
        )
        try:
            assert process.stdout is not None
            selector = selectors.DefaultSelector()
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=15), "the simulator printed no URL in time"
            url = process.stdout.readline().decode().strip()
            assert re.match(r"^http://127\.0\.0\.1:\d+$", url)
            AdminClient(url).health()
            with requests.Session() as session:
                session.trust_env = False
                response = session.get(
                    f"{url}/passes?per_page=2&page=1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
                )
            assert response.status_code == 200
            assert response.json()["data"]["total_count"] == 3
            assert response.json()["data"]["pagination"]["next"] == f"{url}/passes?page=2&per_page=2"
            assert response.headers["Content-Encoding"] == "gzip"
            assert AdminClient(url).request_counts()["by_user"] == {"7": {"v1": 1, "v4": 0}}
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
    log = stderr_path.read_text()
    assert "GET /passes?per_page=2&page=1 user=7 status=200" in log
    assert TOKEN not in log
    assert "stopped" in log


def test_command_line_lists_every_fault_kind(capsys: pytest.CaptureFixture[str]) -> None:
    """`--list-faults` prints one line per fault kind, with the variants of those that have some."""
    from bytemark_simulator.__main__ import main

    assert main(["--list-faults"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(FAULT_KINDS)
    assert "lone_surrogate" in next(line for line in lines if line.startswith("unstorable_pass"))
