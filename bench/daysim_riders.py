"""The riders of the simulated day (bench/day.py): who they are, what they do in the app, and what happens
to their passes at Bytemark, as pass timelines and app events.

Every rider is generated from its own random stream (``seed`` and ``user_id``), so a rider is the same
whichever subset of riders a process simulates. Times are unix seconds; the agency is in America/Chicago.

A rider's service days are walked from ``FIRST_WALK_DAY`` to day 0 (the measured day): the earlier days build
the passes and history a rider holds when the measured day starts (and the warm-up the policies need).
"""

from __future__ import annotations

import random
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

TIMEZONE: Final = "America/Chicago"
ZONE: Final = ZoneInfo(TIMEZONE)
DAY0: Final = date(2024, 6, 18)
"""The measured service day: a Tuesday in June (no DST change around it)."""
SERVICE_DAY_START_HOUR: Final = 3
"""A transit service day runs 03:00-03:00 local, so the late-night riders crossing midnight are inside it."""
FIRST_WALK_DAY: Final = -9
"""Days walked before the measured one: enough for 7-day passes to cycle and for a 48 h warm-up."""


def local_time(day: int, hours: float) -> int:
    """Unix seconds ``hours`` after local midnight of the date ``DAY0 + day`` (``hours`` may exceed 24)."""
    midnight = datetime.combine(DAY0 + timedelta(days=day), time(0), tzinfo=ZONE)
    return int(midnight.timestamp() + hours * 3600)


def end_of_local_day(moment: int) -> int:
    """23:59:59 local on the calendar day of ``moment`` (how this agency's day passes expire)."""
    local_day = datetime.fromtimestamp(moment, ZONE).date()
    return int(datetime.combine(local_day, time(23, 59, 59), tzinfo=ZONE).timestamp())


T0: Final = local_time(0, SERVICE_DAY_START_HOUR)
"""Start of the measured window (03:00 local on DAY0); it ends 24 h later."""
T_END: Final = T0 + 86400


@dataclass(frozen=True)
class Product:
    """A fare product; ``duration`` None = valid until the end of the local day of first use."""

    key: str
    label: str
    price_cents: int
    duration: int | None
    uses: int | None


SINGLE: Final = Product("single", "Local Single Ride", 250, 5400, 1)
DAYPASS: Final = Product("day", "Local Day Pass", 500, None, None)
WEEK: Final = Product("week", "Regional 7-Day Pass", 3000, 7 * 86400, None)
PRODUCTS: Final = {product.key: product for product in (SINGLE, DAYPASS, WEEK)}


@dataclass
class SimPass:
    """One pass's life at Bytemark. ``moved``: when Bytemark moved it (EXPIRED) to the v4 history, a little
    after ``expiration``; ``removed``: refunded (gone from both lists); ``corrections``: support edits that
    change the payload but not the state."""

    uuid: str
    product: Product
    created: int
    channel: str  # app | web | support | old
    first_use: int | None = None
    used_up: int | None = None
    expiration: int | None = None
    moved: int | None = None
    removed: int | None = None
    corrections: list[int] = field(default_factory=list)

    def status_at(self, t: float) -> str | None:
        """The pass's real state at ``t`` (None: not in either list). EXPIRED from its expiration on, even
        during the seconds Bytemark takes to move it to the history."""
        if t < self.created or (self.removed is not None and t >= self.removed):
            return None
        if self.first_use is None or t < self.first_use:
            return "USABLE"
        if self.expiration is not None and t > self.expiration:
            return "EXPIRED"
        if self.used_up is not None and t >= self.used_up:
            return "USES_GONE"
        return "USING"

    def change_times(self) -> list[int]:
        """Every instant the pass or its state changes (the truth's breakpoints)."""
        times = [self.created, *self.corrections]
        times += [t for t in (self.first_use, self.used_up, self.expiration, self.moved, self.removed) if t]
        return times


@dataclass(frozen=True)
class AppEvent:
    """Something the rider does in the app: ``open`` (GET /tickets), ``purchase`` / ``activation`` (the app
    puts a message on the update queue at once)."""

    t: float
    kind: str
    pass_uuid: str | None = None
    why: str = ""
    """For an open: trip, look, after purchase, after activation, first (right after linking)."""


@dataclass
class Rider:
    user_id: int
    segment: str  # commuter | occasional | dormant | new
    linked_at: int | None  # when the Bytemark account was linked (None: long ago)
    passes: list[SimPass] = field(default_factory=list)
    events: list[AppEvent] = field(default_factory=list)

    @property
    def token(self) -> str:
        return f"tok-{self.user_id}"

    def has_token(self, t: float) -> bool:
        """A rider has a Bytemark token from the moment the account was linked (long ago for most)."""
        return self.linked_at is None or t >= self.linked_at


SEGMENTS: Final = (("new", 0.005), ("commuter", 0.25), ("occasional", 0.30), ("dormant", 0.445))
RIDE_PROBABILITY: Final = {"commuter": (0.85, 0.20), "occasional": (0.40, 0.35)}
"""Chance to ride on a (weekday, weekend) day."""
REFUND_RATE: Final = 0.003
SUPPORT_RATE: Final = 0.002
DORMANT_WEB_PURCHASE_RATE: Final = 0.004
LOOK_RATE: Final = {"commuter": 0.25, "occasional": 0.10, "dormant": 0.03, "new": 0.10}
"""Chance per day of an open that is not for a trip (checking the wallet)."""


def make_rider(seed: int, user_id: int) -> Rider:
    """The rider ``user_id`` of the world ``seed``, with its whole timeline."""
    rng = random.Random(f"bench-day:{seed}:{user_id}")
    roll, segment = rng.random(), "dormant"
    for name, share in SEGMENTS:
        if roll < share:
            segment = name
            break
        roll -= share
    linked_at = local_time(0, rng.uniform(8, 20)) if segment == "new" else None
    rider = Rider(user_id, segment, linked_at)
    _Walk(rng, rider).run()
    rider.events.sort(key=lambda event: event.t)
    return rider


class _Walk:
    """Walks one rider's days, buying, activating and riding as the rider's segment does."""

    def __init__(self, rng: random.Random, rider: Rider) -> None:
        self.rng = rng
        self.rider = rider
        self.last_activity = local_time(FIRST_WALK_DAY, 0)
        self.preference = self._preference()
        self.web_share = {"commuter": 0.12, "occasional": 0.10}.get(rider.segment, 0.0)

    # -- set-up --------------------------------------------------------------------------------------

    def _preference(self) -> Product:
        roll = self.rng.random()
        if self.rider.segment == "commuter":
            return WEEK if roll < 0.45 else DAYPASS if roll < 0.80 else SINGLE
        return SINGLE if roll < 0.6 else DAYPASS

    def run(self) -> None:
        if self.rider.segment != "new":
            self._old_history()
        for day in range(FIRST_WALK_DAY, 1):
            self._day(day)

    def _uuid(self) -> str:
        return str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))

    def _old_history(self) -> None:
        """Passes from before the walk: expired history, and unused passes bought long ago."""
        rng, start = self.rng, local_time(FIRST_WALK_DAY, 0)
        mean = {"commuter": 25, "occasional": 9, "dormant": 4}[self.rider.segment]
        for _ in range(min(150, int(rng.expovariate(1 / mean)))):
            product = PRODUCTS[rng.choice(("single", "single", "day", "week"))]
            created = start - rng.randrange(10 * 86400, 200 * 86400)
            p = SimPass(self._uuid(), product, created, "old")
            self._activate(p, created + rng.randrange(300, 3 * 86400))
            self.rider.passes.append(p)
        hold = {"commuter": 0.2, "occasional": 0.3, "dormant": 0.25}[self.rider.segment]
        if rng.random() < hold:
            for _ in range(rng.choice((1, 1, 2, 3))):
                product = PRODUCTS[rng.choice(("single", "single", "day"))]
                self.rider.passes.append(
                    SimPass(self._uuid(), product, start - rng.randrange(86400, 120 * 86400), "old")
                )

    # -- Bytemark's side -----------------------------------------------------------------------------

    def _activate(self, p: SimPass, t: int) -> None:
        p.first_use = t
        if p.product.duration is None:
            p.expiration = end_of_local_day(t)
        else:
            p.expiration = t + p.product.duration
        if p.product.uses == 1:
            p.used_up = t + self.rng.randrange(10 * 60, 50 * 60)  # the ride, at the validators
        p.moved = p.expiration + self.rng.randrange(5, 90)

    def _buy(self, t: int, product: Product, channel: str, count: int = 1) -> list[SimPass]:
        bought = [SimPass(self._uuid(), product, t, channel) for _ in range(count)]
        self.rider.passes.extend(bought)
        return bought

    def _usable(self, t: float, product: Product | None = None) -> SimPass | None:
        candidates = [
            p
            for p in self.rider.passes
            if p.status_at(t) == "USABLE" and (product is None or p.product == product)
        ]
        return min(candidates, key=lambda p: p.created) if candidates else None

    def _valid(self, t: float) -> SimPass | None:
        """A time-based pass in use that covers a trip starting at ``t``."""
        for p in self.rider.passes:
            if p.product.uses is None and p.status_at(t) == "USING" and (p.expiration or 0) > t + 600:
                return p
        return None

    # -- the rider's side ----------------------------------------------------------------------------

    def _event(self, t: float, kind: str, pass_uuid: str | None = None, why: str = "") -> None:
        self.rider.events.append(AppEvent(round(t, 3), kind, pass_uuid, why))
        self.last_activity = max(self.last_activity, int(t))

    def _day(self, day: int) -> None:
        rng, segment = self.rng, self.rider.segment
        start = local_time(day, SERVICE_DAY_START_HOUR)
        trips: list[float] = []
        if segment == "new":
            if day == 0 and self.rider.linked_at is not None:
                link = self.rider.linked_at
                self._event(link + rng.uniform(5, 60), "open", why="first")
                trips.append(link + rng.uniform(300, 1800))
                if rng.random() < 0.5:
                    trips.append(trips[0] + rng.uniform(1.5, 6) * 3600)
        elif segment in RIDE_PROBABILITY:
            weekday = (DAY0 + timedelta(days=day)).weekday() < 5
            chance = RIDE_PROBABILITY[segment][0 if weekday else 1]
            if rng.random() < chance:
                trips = self._commute(day) if segment == "commuter" else self._outing(day)
        for trip in sorted(trips):
            self._trip(trip)
        if (segment != "new" or day == 0) and rng.random() < LOOK_RATE[segment]:
            t = start + rng.uniform(6, 19) * 3600
            if self.rider.linked_at is None or t > self.rider.linked_at:
                self._event(t, "open", why="look")
        self._outside_changes(day, start)

    def _commute(self, day: int) -> list[float]:
        rng = self.rng
        morning = local_time(day, min(10.5, max(5.5, rng.gauss(7.75, 0.6))))
        evening = local_time(day, min(21.0, max(14.5, rng.gauss(17.25, 0.8))))
        trips: list[float] = [morning, evening]
        if rng.random() < 0.15:  # an evening out; the ride home may be after midnight
            out = local_time(day, rng.uniform(19.0, 22.5))
            trips += [max(out, evening + 1800), out + rng.uniform(2, 4) * 3600]
        return trips

    def _outing(self, day: int) -> list[float]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.3:
            hours = min(10.5, max(5.5, rng.gauss(8.0, 1.0)))
        elif roll < 0.7:
            hours = rng.uniform(10.0, 16.0)
        elif roll < 0.9:
            hours = min(20.0, max(15.0, rng.gauss(17.0, 1.0)))
        else:
            hours = rng.uniform(20.5, 23.5)  # night out: the ride back crosses local midnight
        first = local_time(day, hours)
        if rng.random() < 0.35:
            return [first]
        return [first, first + rng.uniform(1.5, 6.0) * 3600]

    def _trip(self, start: float) -> None:
        """Open the app at the stop; ride on a valid pass, activate an unused one, or buy one first."""
        rng = self.rng
        before = self.last_activity
        opened = max(start - rng.uniform(60, 600), before + 30)
        self._event(opened, "open", why="trip")
        if self._valid(opened + 120) is not None:
            return
        pass_ = self._usable(opened, self.preference) or self._usable(opened)
        act_at = int(opened + rng.uniform(10, 90))
        if pass_ is None:
            if self.rider.segment != "new" and rng.random() < self.web_share:
                # Bought on the website a while before, which nobody announces to the cache.
                bought_at = max(int(opened - rng.uniform(1, 14) * 3600), before + 60)
                bought_at = min(bought_at, int(opened) - 30)
                pass_ = self._buy(bought_at, self.preference, "web")[0]
            else:
                count = rng.choice((1, 1, 1, 2, 5)) if self.preference == SINGLE else 1
                bought_at = int(opened + rng.uniform(20, 120))
                pass_ = self._buy(bought_at, self.preference, "app", count)[0]
                self._event(bought_at, "purchase", pass_.uuid)
                # The app reloads the wallet after the purchase, and shows the pass after its activation.
                self._event(bought_at + rng.uniform(3, 20), "open", why="after purchase")
                act_at = int(bought_at + rng.uniform(25, 60))
        self._activate(pass_, act_at)
        self._event(act_at, "activation", pass_.uuid)
        self._event(act_at + rng.uniform(3, 20), "open", why="after activation")

    def _outside_changes(self, day: int, start: int) -> None:
        """Changes at Bytemark nobody announces: refunds, support edits, web purchases by dormant riders."""
        rng = self.rng
        if self.rider.linked_at is not None and day < 0:
            return
        office = start + int(rng.uniform(6, 14) * 3600)  # 09:00-17:00 local
        if rng.random() < REFUND_RATE:
            pass_ = self._usable(office)
            if pass_ is not None:
                pass_.removed = office
        if rng.random() < SUPPORT_RATE:
            if rng.random() < 0.5:
                self._buy(office, SINGLE, "support")  # a ride re-issued as compensation
            else:
                current = [p for p in self.rider.passes if p.status_at(office) not in (None, "EXPIRED")]
                if current:
                    rng.choice(current).corrections.append(office)  # a field corrected, state unchanged
        if self.rider.segment == "dormant" and rng.random() < DORMANT_WEB_PURCHASE_RATE:
            self._buy(office, rng.choice((SINGLE, DAYPASS)), "web")
