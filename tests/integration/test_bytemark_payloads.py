"""Payloads as they arrive over HTTP: the hash vector, Node's hashes of real answers, day passes around DST.

The Bytemark simulator serves the bytes; the real HTTP client parses them; the domain hashes and judges them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import requests

from bytemark_cache.adapters.bytemark_http import BytemarkHttpSource
from bytemark_cache.domain.expiry import effective_status
from bytemark_cache.domain.hashing import payload_hash
from bytemark_cache.domain.plan import plan_sync, prepare_fresh
from bytemark_simulator import SimulatorServer

pytestmark = pytest.mark.integration

CONTRACT_VECTOR_TEXT = (
    '{"uuid":"p-1","status":"USABLE","first_use":null,"expiration":null,"price":2.0,'
    '"label_name":"Local Day Pass \u2013 Adult \u00e9","time_created":"2024-03-10T05:30:00.000Z",'
    '"n":{"b":1,"a":[1,2.50]}}'
)
CONTRACT_VECTOR_HASH = "fa6c6c27a16aeaec93c851d050164211"
NODE_HASHES = """
const crypto = require("crypto");
const answer = JSON.parse(require("fs").readFileSync(0, "utf8"));
for (const p of answer.data.passes) {
  console.log(crypto.createHash("md5").update(JSON.stringify(p), "utf8").digest("hex"));
}
"""


@pytest.fixture(scope="module")
def bytemark() -> Iterator[SimulatorServer]:
    with SimulatorServer(port=0, seed=21, now="2024-06-15T04:30:00Z") as server:
        yield server


@pytest.fixture
def client(bytemark: SimulatorServer) -> BytemarkHttpSource:
    bytemark.admin.reset()
    return BytemarkHttpSource(bytemark.url, timeout_seconds=5, page_size=50, max_pages=10, max_retries=0)


def test_spec_vector_served_over_http_hashes_like_node(
    bytemark: SimulatorServer, client: BytemarkHttpSource
) -> None:
    bytemark.admin.seed_user(1, "tok-1", current=0, expired=0)
    bytemark.admin.put_pass(1, CONTRACT_VECTOR_TEXT, "current")  # served byte for byte: 2.0, 2.50, UTF-8

    fetched = client.fetch_passes("tok-1", 10.0)
    plan = plan_sync(1, None, prepare_fresh(fetched), 1_718_425_800, history_limit=10, write_id="w")

    assert [element["payload_hash"] for element in plan.passes.final] == [CONTRACT_VECTOR_HASH]


def test_stored_hashes_of_realistic_answers_equal_nodes(
    bytemark: SimulatorServer, client: BytemarkHttpSource
) -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed for the Node differential (it is on these machines)"
    bytemark.admin.seed_user(2, "tok-2", current=12, expired=0, seed=99)
    raw = requests.get(
        f"{bytemark.url}/passes?per_page=50&page=1", headers={"Authorization": "Bearer tok-2"}, timeout=5
    ).content
    node_hashes = (
        subprocess.run([node, "-e", NODE_HASHES], input=raw, capture_output=True, check=True, timeout=30)
        .stdout.decode()
        .split()
    )

    fetched = client.fetch_passes("tok-2", 10.0)
    ours = {pass_["uuid"]: payload_hash(pass_) for pass_ in fetched.current}
    served_order = [pass_["uuid"] for pass_ in json.loads(raw)["data"]["passes"]]

    assert [ours[uuid] for uuid in served_order] == node_hashes


@pytest.mark.parametrize(
    ("activated_at", "local_midnight_utc"),
    [
        ("2024-06-15T04:30:00Z", "2024-06-15T05:00:00Z"),  # 23:30 CDT the evening before: ends at once
        ("2024-03-10T08:00:00Z", "2024-03-11T05:00:00Z"),  # spring forward: a 23-hour local day
        ("2024-11-03T04:30:00Z", "2024-11-03T05:00:00Z"),  # fall back: the day before ends in CDT
        ("2024-11-03T12:00:00Z", "2024-11-04T06:00:00Z"),  # fall back: a 25-hour local day, CST after
    ],
)
def test_day_pass_activated_at_bytemark_expires_at_local_midnight(
    bytemark: SimulatorServer, client: BytemarkHttpSource, activated_at: str, local_midnight_utc: str
) -> None:
    bytemark.admin.seed_user(3, "tok-3", current=0, expired=0)
    bytemark.admin.set_time(activated_at)
    day_pass = bytemark.admin.purchase(3, "Local Day Pass")
    bytemark.admin.activate(3, day_pass["uuid"], at=activated_at)

    fetched = client.fetch_passes("tok-3", 10.0)
    element = plan_sync(3, None, prepare_fresh(fetched), 0, history_limit=10, write_id="w").passes.final[0]
    midnight = datetime.fromisoformat(local_midnight_utc.replace("Z", "+00:00"))

    assert effective_status(element, midnight - timedelta(seconds=2)) == "USING"
    assert effective_status(element, midnight + timedelta(seconds=1)) == "EXPIRED"
    assert element["payload"]["first_use"] is not None
