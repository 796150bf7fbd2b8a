"""The freshness policy, pure: when a user's cache is synced again, and whether a read may skip waiting.

Every rule and constant lives here, with its reason. Purchases and activations arrive through the update
queue at once; this policy decides everything else:

- ``next_sync_at`` (after each sync): the earliest of
  * the next known transition of a current pass (its expiration, a day pass's end of local day), a little
    after it, so what Bytemark does at that moment (moving the pass to the history) reaches the cache;
  * a short interval while a ride ticket is in use: rides consume it at the validators, not in the app;
  * a day while the rider is active (opened the app or bought within the last day);
  * two days for everyone else: changes made outside the app (web purchases, refunds) arrive within it.
- ``read_action`` (on ``GET /tickets``): a cache younger than the TTL is served as is; an older one is
  served at once with a refresh queued behind the rider, unless a ride ticket is in use: its uses may have
  gone at a validator since the cache was written, which only Bytemark knows, so the read syncs first. A
  known transition that passed since the sync needs no wait: the clock alone derives it (``effective_status``
  shows the pass EXPIRED), and the refresh queued behind the rider moves it to the history.

A "ride ticket" is a pass that riding consumes: valid for at most ``RIDE_TICKET_VALIDITY_SECONDS`` after its
first use (a single ride and its transfer window), or with no validity end known. A day pass or a pass valid
for days rides without limit until it expires: riding changes nothing Bytemark lists, so its rider is not
synced every half hour for its whole validity (measured: that was 80 % of the due syncs of a simulated day,
``docs/benchmarks.md``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from bytemark_cache.domain.expiry import day_pass_expiration, effective_status, is_day_pass
from bytemark_cache.domain.passes import USING, time_or_none

ReadAction = Literal["serve", "refresh_behind", "sync_inline"]

TRANSITION_GRACE_SECONDS: Final = 120
"""Sync this long after a known transition: Bytemark applies time-driven changes on its own schedule."""

RIDING_INTERVAL_SECONDS: Final = 30 * 60
"""While a ride ticket is in use its uses and transfers go at the validators, which the app never hears of."""

RIDE_TICKET_VALIDITY_SECONDS: Final = 6 * 3600
"""A pass valid at most this long after its first use is a ride ticket (single rides live 90 minutes, transfer
windows a few hours); a longer one (a 7-day, a monthly pass) is a period pass whose rides consume nothing."""

ACTIVE_WINDOW_SECONDS: Final = 24 * 3600
"""A rider who opened the app or bought within this window is likely to open it again soon."""

ACTIVE_INTERVAL_SECONDS: Final = 24 * 3600
"""An active rider's cache is synced at least this often, so tomorrow's first open finds what changed outside
the app overnight. Not shorter: between these syncs purchases and activations arrive through the queue, and
each open of a cache older than the TTL queues a refresh anyway. Measured on the simulated day
(docs/benchmarks.md): 4 h cost 1.8x the Bytemark requests of the whole policy for 0.9 points fewer stale
opens, each corrected seconds later by the refresh that open queued."""

DORMANT_FLOOR_SECONDS: Final = 48 * 3600
"""Everyone is synced at least this often: what changes outside the app (web purchases, refunds, support
edits) reaches the cache within two days even for riders who never open it, and the first open of an older
cache queues a refresh at once. The Node service synced everyone every hour: this floor and the daily
active interval are what bring a user-day under a tenth of its Bytemark requests."""

REVOKED_RECHECK_SECONDS: Final = 24 * 3600
"""A user whose token Bytemark refused is tried again after this long (the portal replaces tokens)."""

REFRESH_QUEUED_SECONDS: Final = 5 * 60
"""After a read queued a refresh, more reads of the same old cache queue none for this long: the refresh is
on its way (seconds, normally), and each one would cost Bytemark a sync."""

FAILED_SYNC_RETRY_SECONDS: Final = 15 * 60
"""A due user taken by the back-fill is held this long: its sync is queued; if it fails it is due again."""


@dataclass(frozen=True)
class FreshnessPolicy:
    """The policy with the settings it depends on (the read TTL and the agency's day-pass rule)."""

    ttl_seconds: int
    day_pass_label: str
    timezone: str

    def next_sync_at(self, passes: Iterable[Mapping[str, Any]], *, now: int, active_at: int | None) -> int:
        """When to sync this user next, from the current passes just written and the rider's activity."""
        moment = _utc(now)
        elements = list(passes)  # read twice below: an iterator would be empty the second time
        candidates = [now + DORMANT_FLOOR_SECONDS]
        # A transition within the last grace period counts too: Bytemark may not have applied it yet.
        transition = self.next_transition(elements, now - TRANSITION_GRACE_SECONDS)
        if transition is not None:
            candidates.append(transition + TRANSITION_GRACE_SECONDS)
        if any(self._ride_ticket_in_use(element, moment) for element in elements):
            candidates.append(now + RIDING_INTERVAL_SECONDS)
        if active_at is not None and now - active_at < ACTIVE_WINDOW_SECONDS:
            candidates.append(now + ACTIVE_INTERVAL_SECONDS)
        return min(candidates)

    def read_action(
        self, passes: Iterable[Mapping[str, Any]], *, synced_at: int | None, now: int
    ) -> ReadAction:
        """What ``GET /tickets`` does with a cache synced at ``synced_at`` (None: unknown, so stale)."""
        if synced_at is not None and now - synced_at < self.ttl_seconds:
            return "serve"
        if synced_at is None:
            return "sync_inline"
        moment = _utc(now)
        if any(self._ride_ticket_in_use(element, moment) for element in passes):
            return "sync_inline"
        return "refresh_behind"

    def next_transition(self, passes: Iterable[Mapping[str, Any]], after: int) -> int | None:
        """The earliest instant after ``after`` at which a pass changes state by the clock alone."""
        instants = [
            instant for element in passes for instant in self._transitions(element) if instant > after
        ]
        return min(instants) if instants else None

    def _transitions(self, element: Mapping[str, Any]) -> list[int]:
        payload = element.get("payload")
        pass_: Mapping[str, Any] = payload if isinstance(payload, Mapping) else element
        instants: list[int] = []
        expiration = time_or_none(pass_.get("expiration"))
        if expiration is not None:
            instants.append(int(expiration.timestamp()))
        first_use = time_or_none(pass_.get("first_use"))
        if first_use is not None and is_day_pass(pass_, self.day_pass_label):
            instants.append(int(day_pass_expiration(first_use, self.timezone).timestamp()))
        return instants

    def _ride_ticket_in_use(self, element: Mapping[str, Any], moment: datetime) -> bool:
        """True for a pass in use (by Bytemark or a local activation) whose rides consume it."""
        status = effective_status(element, moment, day_pass_label=self.day_pass_label, tz=self.timezone)
        if status != USING:
            return False
        payload = element.get("payload")
        pass_: Mapping[str, Any] = payload if isinstance(payload, Mapping) else element
        if is_day_pass(pass_, self.day_pass_label):
            return False
        first_use = time_or_none(pass_.get("first_use"))
        expiration = time_or_none(pass_.get("expiration"))
        if first_use is None or expiration is None:
            return True  # activated here and not yet confirmed, or no end known: it may be consumed
        return (expiration - first_use).total_seconds() <= RIDE_TICKET_VALIDITY_SECONDS


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
