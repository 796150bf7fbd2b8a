"""A stateful model test of sync against a model of Bytemark, on the real servers (hypothesis).

The model is the rider's two Bytemark lists as this test knows them: every rule that changes Bytemark
(purchase, activate, edit, expire, refund a current pass, drop a history entry) goes through the simulator's
admin API and applies the pass it returns to the model, so the model never reads Bytemark back. Other rules
make the next fetch fail (transient, permanent, unstorable, revoked token), move time on (the service's
clock and the simulator's together), and sync (``sync``, or ``check`` which serves a stale cache).

Invariants, after every step: the cache is what the last successful sync made from the model (the
contract's cache of those lists: the history keeps what Bytemark dropped from it), a failed sync wrote
nothing (a revoked token moves ``next_sync_at`` only), no claim is left live, and the change log replays to
exactly the cache.

Reproduce a failure with the seed hypothesis prints; ``MODEL_EXAMPLES`` / ``MODEL_STEPS`` make it longer.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bytemark_cache.adapters.bytemark_http import BytemarkHttpSource
from bytemark_cache.adapters.mongo_indexes import ensure_indexes
from bytemark_cache.adapters.mysql_tokens import MySqlTokenStore
from bytemark_cache.bootstrap import indexed_collections
from bytemark_cache.config import Settings
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.freshness import REVOKED_RECHECK_SECONDS
from bytemark_cache.errors import TokenRevoked, UpstreamError
from bytemark_simulator import AdminClient, SimulatorServer
from tests.fakes import FakeClock
from tests.integration.conftest import MongoDatabase, SeedToken
from tests.reliability.rig import (
    SIM_EPOCH,
    SIM_NOW,
    assert_cache_matches,
    assert_log_replays,
    clear_collections,
    expected_lists,
    services_on,
    snapshot,
    stored_lists,
)

pytestmark = pytest.mark.integration

USER = 4242
TOKEN = "tok-model-4242"
EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "15"))
STEPS = int(os.environ.get("MODEL_STEPS", "25"))

FAILURES: dict[str, tuple[str, str | None, bool | None]] = {
    "http_500": ("http_500", None, True),
    "reset": ("reset", None, True),
    "malformed_json": ("malformed_json", None, False),
    "schema_break": ("schema_break", "pass_without_uuid", False),
    "unstorable_pass": ("unstorable_pass", "int_overflow", False),
    "revoked": ("error_200_50020", None, None),
}
"""Name → (fault kind, variant, transient); None: a revoked token (TokenRevoked)."""

CHANGES = ("purchase", "activate", "edit", "expire", "refund", "drop_history")
"""What the rider or Bytemark does to the lists: purchase, activate, edit a pass (uses, notes), expire one
(it moves to the history), refund one (it vanishes), drop one from the history (the cache keeps it)."""

Pass = dict[str, Any]


@pytest.fixture
def model_settings(
    integration_env: dict[str, str],
    collection_names: tuple[str, str, str],
    mongo_db: MongoDatabase,
    seed_token: SeedToken,
) -> Settings:
    cache, log, claims = collection_names
    settings = Settings.from_env(
        {
            **integration_env,
            "CACHE_COLLECTION": cache,
            "LOG_COLLECTION": log,
            "CLAIM_COLLECTION": claims,
            "BACKFILL_RUN_COLLECTION": f"runs_{cache}",
            "UPDATE_QUEUE_URL": "",
            "BYTEMARK_MAX_RETRIES": "0",
            "BYTEMARK_PAGE_SIZE": "2",
            "PASSES4_LIMIT": "1000",
        }
    )
    ensure_indexes(mongo_db, indexed_collections(settings))
    seed_token(USER, TOKEN)
    return settings


@pytest.fixture
def adapters(model_settings: Settings) -> Iterator[tuple[MySqlTokenStore, BytemarkHttpSource]]:
    tokens = MySqlTokenStore(
        model_settings.mysql_host,
        model_settings.mysql_port,
        model_settings.mysql_user,
        model_settings.mysql_password,
        model_settings.mysql_database,
    )
    source = BytemarkHttpSource(
        model_settings.bytemark_api_url,
        timeout_seconds=model_settings.bytemark_timeout_seconds,
        page_size=model_settings.bytemark_page_size,
        max_pages=model_settings.bytemark_max_pages,
        max_retries=0,
    )
    yield tokens, source
    tokens.close()
    source.close()


def test_sync_follows_a_model_of_bytemark(
    model_settings: Settings,
    mongo_db: MongoDatabase,
    simulator: SimulatorServer,
    adapters: tuple[MySqlTokenStore, BytemarkHttpSource],
) -> None:
    tokens, source = adapters
    admin: AdminClient = simulator.admin
    steps: Counter[str] = Counter()

    class SyncModel(RuleBasedStateMachine):
        """Bytemark (modelled), the rider's cache (real), and the rules that move either."""

        def __init__(self) -> None:
            super().__init__()
            clear_collections(mongo_db, model_settings)
            admin.reset()
            self.moment = datetime.fromisoformat(SIM_NOW)
            admin.set_time(SIM_NOW)
            self.clock = FakeClock(SIM_EPOCH)
            self.services = services_on(
                model_settings, database=mongo_db, clock=self.clock, tokens=tokens, source=source
            )
            self.current: list[Pass] = []
            self.expired: list[Pass] = []
            self.cached: tuple[list[Pass], list[Pass]] | None = None
            self.pending: str | None = None
            self.edits = 0
            self.failures_made = 0

        # -- Bytemark ---------------------------------------------------------------------------------

        @initialize(
            current=st.integers(0, 3),
            expired=st.integers(0, 2),
            seed=st.integers(1, 50),
            first_failure=st.integers(0, len(FAILURES) - 1),
        )
        def seed_rider(self, current: int, expired: int, seed: int, first_failure: int) -> None:
            self.failures_made = first_failure
            seeded = admin.seed_user(USER, TOKEN, current=current, expired=expired, seed=seed)
            self.current, self.expired = list(seeded["current"]), list(seeded["expired"])
            self.sync_now()

        @rule(kind=st.sampled_from(CHANGES), data=st.data())
        def change_bytemark(self, kind: str, data: st.DataObject) -> None:
            """One change at Bytemark (a purchase when the chosen kind has no pass to act on)."""
            usable = [p for p in self.current if p["status"] == "USABLE"]
            if kind == "activate" and usable:
                chosen = data.draw(st.sampled_from(usable))
                self._replace(admin.activate(USER, chosen["uuid"]))
            elif kind == "edit" and self.current:
                chosen = data.draw(st.sampled_from(self.current))
                self.edits += 1
                edited = {**chosen, "rider_note": f"edit {self.edits}", "remaining_uses": self.edits}
                self._replace(admin.put_pass(USER, edited, "current"))
            elif kind == "expire" and self.current:
                chosen = data.draw(st.sampled_from(self.current))
                expired = admin.expire(USER, chosen["uuid"])
                self.current = [p for p in self.current if p["uuid"] != chosen["uuid"]]
                self.expired.insert(0, expired)
            elif kind == "refund" and self.current:
                chosen = data.draw(st.sampled_from(self.current))
                admin.remove_pass(USER, chosen["uuid"])
                self.current = [p for p in self.current if p["uuid"] != chosen["uuid"]]
            elif kind == "drop_history" and self.expired:
                chosen = data.draw(st.sampled_from(self.expired))
                admin.remove_pass(USER, chosen["uuid"])
                self.expired = [p for p in self.expired if p["uuid"] != chosen["uuid"]]
            else:
                kind = "purchase"
                label = data.draw(
                    st.sampled_from(["Local Single Ride", "Local Day Pass", "Regional 7-Day Pass"])
                )
                self.current.append(admin.purchase(USER, label))
            steps[f"bytemark: {kind}"] += 1

        @precondition(lambda self: self.pending is None)
        @rule()
        def fail_next_fetch(self) -> None:
            """The next kind of failure in turn (each example starts elsewhere): every kind gets its turn."""
            names = sorted(FAILURES)
            name = names[self.failures_made % len(names)]
            self.failures_made += 1
            kind, variant, _transient = FAILURES[name]
            # Once; the unstorable field goes on the first pass of every page until the fetch was tried (an
            # empty page is served as it is: with both lists empty that fetch succeeds, see _failing).
            count = None if kind == "unstorable_pass" else 1
            admin.set_fault(kind, user_id=USER, count=count, variant=variant)
            self.pending = name
            steps[f"fault: {name}"] += 1

        @rule(seconds=st.sampled_from([1, 59, 600, 3600, 86_400]))
        def advance_time(self, seconds: int) -> None:
            self.clock.advance(seconds)
            self.moment += timedelta(seconds=seconds)
            admin.set_time(self.moment.astimezone(UTC).isoformat().replace("+00:00", "Z"))
            steps["time moved"] += 1

        # -- the service ------------------------------------------------------------------------------

        @rule()
        def sync(self) -> None:
            self.sync_now()

        @rule()
        def check_serving_stale(self) -> None:
            failing = self._failing()
            before = self.state()
            result = self.services.tickets.check(USER, deadline=Deadline.after(self.clock.now(), 10))
            if failing is None:
                assert result.source == "synced"
                self._synced()
                return
            self.pending = None
            admin.clear_faults()
            assert result.source == "stale"
            steps[f"stale check: {failing}"] += 1
            self._expect_error(result.upstream_error, failing)
            self._expect_unchanged(before, failing)

        def sync_now(self) -> None:
            steps["syncs"] += 1
            failing = self._failing()
            before = self.state()
            refused: UpstreamError | None = None
            try:
                result = self.services.tickets.sync(USER, deadline=Deadline.after(self.clock.now(), 10))
            except UpstreamError as exc:
                refused = exc
            if refused is not None:
                steps[f"failed sync: {failing}"] += 1
                assert failing is not None, f"sync failed with nothing injected: {refused!r}"
                self.pending = None
                admin.clear_faults()
                self._expect_error(refused, failing)
                self._expect_unchanged(before, failing)
                return
            assert failing is None, f"{failing} was injected, yet the sync succeeded"
            assert result.source in ("built", "synced")
            self._synced()

        # -- invariants -------------------------------------------------------------------------------

        @invariant()
        def the_cache_is_the_last_successful_sync(self) -> None:
            document = self.state().document
            if self.cached is None:
                assert document is None
                return
            assert document is not None
            assert stored_lists(document) == self.cached

        @invariant()
        def the_log_replays_to_the_cache_and_no_claim_is_left(self) -> None:
            state = self.state()
            assert_log_replays(state.document, state.log)
            assert state.live_claims == []

        # -- helpers ----------------------------------------------------------------------------------

        def teardown(self) -> None:
            steps["examples"] += 1

        def _failing(self) -> str | None:
            """The failure the next fetch meets (an unstorable field needs a pass to sit on)."""
            if self.pending == "unstorable_pass" and not self.current and not self.expired:
                self.pending = None
                admin.clear_faults()
            return self.pending

        def state(self) -> Any:
            return snapshot(mongo_db, model_settings, USER, self.clock.now())

        def _synced(self) -> None:
            kept = self.cached[1] if self.cached is not None else []
            self.cached = expected_lists({"current": self.current, "expired": self.expired}, kept)

        def _replace(self, pass_: Pass) -> None:
            self.current = [pass_ if p["uuid"] == pass_["uuid"] else p for p in self.current]

        def _expect_error(self, error: BaseException | None, failing: str) -> None:
            transient = FAILURES[failing][2]
            assert isinstance(error, UpstreamError), error
            if transient is None:
                assert isinstance(error, TokenRevoked)
            else:
                assert not isinstance(error, TokenRevoked)
                assert error.transient is transient

        def _expect_unchanged(self, before: Any, failing: str) -> None:
            after = self.state()
            assert after.log == before.log
            if before.document is None or after.document is None:
                assert after.document == before.document
                return
            if FAILURES[failing][2] is None:
                assert after.document.pop("next_sync_at") == int(self.clock.now()) + REVOKED_RECHECK_SECONDS
                before.document.pop("next_sync_at")
            assert after.document == before.document

    started = time.monotonic()
    run_state_machine_as_test(
        SyncModel,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    print(
        f"\n{sum(v for k, v in steps.items() if k != 'examples')} steps in {steps['examples']} examples, "
        f"{time.monotonic() - started:.1f}s: {dict(sorted(steps.items()))}"
    )
    # Every kind of failure was met by a sync (it failed) or a check (it served the cache stale) at least
    # once: a run whose rules never reached one proved nothing about it (raise MODEL_EXAMPLES if so).
    met = {name: steps[f"failed sync: {name}"] + steps[f"stale check: {name}"] for name in FAILURES}
    assert [name for name, count in met.items() if count == 0] == [], met


def test_an_activation_bytemark_never_confirms_is_undone_by_the_next_sync(
    model_settings: Settings,
    mongo_db: MongoDatabase,
    simulator: SimulatorServer,
    adapters: tuple[MySqlTokenStore, BytemarkHttpSource],
) -> None:
    tokens, source = adapters
    admin = simulator.admin
    admin.set_time(SIM_NOW)
    clock = FakeClock(SIM_EPOCH)
    services = services_on(model_settings, database=mongo_db, clock=clock, tokens=tokens, source=source)
    seeded = admin.seed_user(USER, TOKEN, current=3, expired=0, seed=3)
    usable = next(p for p in seeded["current"] if p["status"] == "USABLE")
    services.tickets.sync(USER, deadline=Deadline.never())

    # The app reports an activation Bytemark never performed; the message's own sync follows it.
    assert services.tickets.mark_activation(USER, usable["uuid"], deadline=Deadline.never())
    services.tickets.sync(USER, deadline=Deadline.never(), reason="activation")
    clock.advance(86_400)
    services.tickets.sync(USER, deadline=Deadline.never())

    document = snapshot(mongo_db, model_settings, USER, clock.now()).document
    assert document is not None
    assert_cache_matches(document, admin.passes(USER))
