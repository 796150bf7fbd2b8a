"""The main job, end to end on this machine: `make demo`.

Seeds the Bytemark simulator and MySQL with a few users, then walks the built bundle (running under the
Lambda emulator behind the local API gateway, SQS poller and scheduler of `local/stack.py`) through what
the app, the purchase flow and the scheduler do, and prints what happened at each step.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import boto3
import pymongo
import pymysql

# Run as `python local/demo.py`: local/ is on the path, so the stack's modules import directly.
from local_env import local_settings
from stack import GATEWAY_PORT

from bytemark_simulator import AdminClient

ALICE, BOB, CAROL, DAN = 1001, 1002, 1003, 1004
GATEWAY = f"http://127.0.0.1:{GATEWAY_PORT}"


def expect(condition: bool, *context: Any) -> None:
    """Stop the demo with what was seen when the bundle did not behave as the step says."""
    if not condition:
        raise SystemExit(f"demo: unexpected result: {context}")


class Demo:
    """The demo's connections and its report."""

    def __init__(self) -> None:
        self.env = local_settings()
        self.bytemark = AdminClient(self.env["BYTEMARK_API_URL"])
        self.mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.env["MONGODB_URI"], serverSelectionTimeoutMS=5000
        )
        self.cache = self.mongo[self.env["MONGODB_DATABASE"]][self.env["CACHE_COLLECTION"]]
        self.log = self.mongo[self.env["MONGODB_DATABASE"]][self.env["LOG_COLLECTION"]]
        self.mysql = pymysql.connect(
            host=self.env["MYSQL_HOST"],
            port=int(self.env["MYSQL_PORT"]),
            user=self.env["MYSQL_USER"],
            password=self.env["MYSQL_PASSWORD"],
            database=self.env["MYSQL_DATABASE"],
            autocommit=True,
        )
        self.sqs = boto3.client(
            "sqs",
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )
        self.rows: list[tuple[str, str, str]] = []

    # -- plumbing ------------------------------------------------------------------------------------

    def call(self, method: str, path: str, user_id: int | None, headers: dict[str, str] | None = None) -> Any:
        request = urllib.request.Request(f"{GATEWAY}{path}", method=method, headers=dict(headers or {}))  # noqa: S310
        if user_id is not None:
            request.add_header("X-Local-User-Id", str(user_id))
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 — loopback
                status, raw, answer_headers = answer.status, answer.read(), dict(answer.headers)
        except urllib.error.HTTPError as error:
            status, raw, answer_headers = error.code, error.read(), dict(error.headers)
        took = (time.perf_counter() - started) * 1000
        body = json.loads(raw) if raw else None
        return status, body, answer_headers, took

    def upstream_requests(self) -> int:
        return int(self.bytemark.request_counts()["total"])

    def wait_for(self, condition: Callable[[], bool], what: str, seconds: float = 60) -> float:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if condition():
                return time.monotonic() - started
            time.sleep(0.2)
        raise SystemExit(f"demo: timed out waiting for {what}")

    def step(self, title: str, outcome: str, detail: str) -> None:
        self.rows.append((title, outcome, detail))
        print(f"  ✔ {title:<52} {outcome}")
        if detail:
            print(f"      {detail}")

    # -- the story -----------------------------------------------------------------------------------

    def seed(self) -> None:
        self.bytemark.reset()
        for user_id in (ALICE, BOB, CAROL, DAN):
            self.bytemark.seed_user(user_id, f"demo-token-{user_id}", current=4, expired=3, seed=user_id)
        with self.mysql.cursor() as cursor:
            for user_id in (ALICE, BOB, CAROL, DAN):
                cursor.execute(
                    "INSERT INTO bytemark_tokens (user_id, email, token, status) "
                    "VALUES (%s, %s, %s, 'active') ON DUPLICATE KEY UPDATE token = VALUES(token)",
                    (user_id, f"user{user_id}@example.com", f"demo-token-{user_id}"),
                )
        self.cache.delete_many({"user_id": {"$in": [ALICE, BOB, CAROL, DAN]}})
        self.log.delete_many({"user_id": {"$in": [ALICE, BOB, CAROL, DAN]}})
        print(f"Seeded users {ALICE}-{DAN}: 4 current + 3 expired Bytemark passes each, tokens in MySQL.\n")

    def first_and_second_check(self) -> None:
        before = self.upstream_requests()
        status, body, headers, took = self.call("GET", "/tickets", ALICE)
        expect(status == 200, status, body)
        calls = self.upstream_requests() - before
        self.step(
            "1. first GET /tickets builds the cache",
            f"200 in {took:.0f} ms, {calls} Bytemark calls",
            f"{len(body['passes'])} passes, {len(body['passes4'])} in history; "
            f"statuses {sorted({p['effective_status'] for p in body['passes']})}",
        )
        before = self.upstream_requests()
        status, body, headers, took = self.call("GET", "/tickets", ALICE)
        calls = self.upstream_requests() - before
        expect(status == 200 and calls == 0, status, calls)
        self.step("2. second GET is served from MongoDB", f"200 in {took:.0f} ms, {calls} Bytemark calls", "")
        status, _, _, took = self.call("GET", "/tickets", ALICE, {"If-None-Match": headers["ETag"]})
        self.step("   same GET with If-None-Match", f"{status} Not Modified in {took:.0f} ms", "")

    def activation(self) -> None:
        document = self.cache.find_one({"user_id": ALICE})
        assert document is not None
        usable = next(e for e in document["passes"] if e["status"] == "USABLE")
        log_before = self.log.count_documents({"user_id": ALICE})
        self.bytemark.activate(ALICE, usable["pass_uuid"])
        status, body, _, took = self.call("POST", "/tickets/sync", ALICE)
        expect(status == 200, status, body)
        after = self.cache.find_one({"user_id": ALICE})
        assert after is not None
        hashes = {e["pass_uuid"]: e["payload_hash"] for e in document["passes"]}
        changed = [e for e in after["passes"] if hashes.get(e["pass_uuid"]) != e["payload_hash"]]
        new_log = self.log.count_documents({"user_id": ALICE}) - log_before
        shown = next(p for p in body["passes"] if p["pass_uuid"] == usable["pass_uuid"])
        self.step(
            "3. activation, then POST /tickets/sync",
            f"{len(changed)} element written, {new_log} log entry",
            f"{usable['payload']['label_name']}: {usable['status']} → {shown['effective_status']} "
            f"(synced in {took:.0f} ms)",
        )
        status, body, headers, _ = self.call("POST", "/tickets/sync", ALICE)
        self.step(
            "   an immediate second sync",
            f"{status} rate limited, Retry-After {headers.get('Retry-After')} s",
            "",
        )

    def purchase_through_sqs(self) -> None:
        bought = self.bytemark.purchase(ALICE, "Regional 7-Day Pass")
        started = time.monotonic()
        self.sqs.send_message(
            QueueUrl=self.env["UPDATE_QUEUE_URL"],
            MessageBody=json.dumps({"user_id": ALICE, "reason": "purchase"}),
        )
        self.wait_for(
            lambda: any(
                e["pass_uuid"] == bought["uuid"]
                for e in (self.cache.find_one({"user_id": ALICE}) or {})["passes"]
            ),
            "the purchased pass to reach the cache",
        )
        self.step(
            "4. purchase message on SQS → user_updates",
            f"new pass cached {(time.monotonic() - started) * 1000:.0f} ms after the message",
            f"{bought['label_name']} {bought['uuid'][:8]}… is in MongoDB",
        )

    def backfill(self) -> None:
        missing = [uid for uid in (BOB, CAROL, DAN) if self.cache.count_documents({"user_id": uid}) == 0]
        status, summary, _, _took = self.call("POST", "/__local/schedule/missing", None)
        expect(status == 200, status, summary)
        self.wait_for(
            lambda: all(self.cache.count_documents({"user_id": uid}) == 1 for uid in missing),
            "the back-filled caches",
        )
        others = summary["enqueued"] - len(missing)
        self.step(
            "5. scheduled back-fill (mode missing)",
            f"scanned {summary['scanned']}, enqueued {summary['enqueued']}",
            f"users {missing} had a token and no cache; all cached now via SQS"
            + (f" (+{others} left in MySQL by earlier runs)" if others > 0 else ""),
        )

    def outage(self) -> None:
        self.bytemark.set_fault("http_503", user_id=BOB)
        status, body, _, took = self.call("POST", "/tickets/sync", BOB)
        expect(status == 200 and body["stale"] is True, status, body)
        self.step(
            "6. Bytemark outage (503s) during a sync",
            f"200 with stale=true in {took:.0f} ms",
            f"{len(body['passes'])} cached passes served, age {body['age_seconds']} s, cache untouched",
        )
        self.bytemark.clear_faults()

    def revoked(self) -> None:
        self.bytemark.revoke(CAROL)
        status, body, _, _ = self.call("POST", "/tickets/sync", CAROL)
        expect(status == 200 and body.get("upstream_error") == "token_revoked", status, body)
        self.step("7. revoked Bytemark token", "200 stale, upstream_error=token_revoked", "the cache is kept")
        status, body, _, _ = self.call("GET", "/tickets", 999_999)
        self.step("   a user without a Bytemark account", f"{status} {body['error']}", "")
        status, body, _, _ = self.call("GET", "/tickets", None)
        self.step("   a request without identity", f"{status} (refused by the authorizer)", "")

    def summary(self) -> None:
        documents = self.cache.count_documents({"user_id": {"$in": [ALICE, BOB, CAROL, DAN]}})
        entries = self.log.count_documents({"user_id": {"$in": [ALICE, BOB, CAROL, DAN]}})
        counts = self.bytemark.request_counts()
        print(
            f"\nIn the end: {documents} cache documents, {entries} change-log entries, "
            f"{counts['total']} Bytemark requests (v1 {counts['by_endpoint']['v1']}, "
            f"v4 {counts['by_endpoint']['v4']})."
        )
        print(f"Try it yourself: curl -H 'X-Local-User-Id: {ALICE}' {GATEWAY}/tickets")
        print(f'Inspect a user:  make cli ARGS="show {ALICE}"   (also: sync, log, backfill --dry-run)')
        print("Stop everything: make down")


def main() -> int:
    """Run the demo against the running local stack."""
    demo = Demo()
    print("bytemark-ticket-cache demo — the built bundle on the local stack\n")
    demo.seed()
    demo.first_and_second_check()
    demo.activation()
    demo.purchase_through_sqs()
    demo.backfill()
    demo.outage()
    demo.revoked()
    demo.summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
