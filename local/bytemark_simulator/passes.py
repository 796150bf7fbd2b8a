"""Realistic Bytemark passes, generated deterministically, and the pass life-cycle (activate, expire).

A generated pass carries the full field set a real Bytemark pass has (order item with prices in cents and a
few floats, customer PII, pass events, expiration rule, barcode material …) because the service must keep
all of it untouched and hash it Node-compatibly: floats such as ``0.0825`` and ``2.0`` and non-ASCII text
are always present.
"""

from __future__ import annotations

import base64
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

Pass = dict[str, Any]

CURRENT_STATUSES = ("USABLE", "USING", "USES_GONE")
ORGANIZATION_UUID = "6f1c2a9e-3b1d-4c55-9a57-0c3f8e5d2b10"
TAX_RATE = 0.0825


@dataclass(frozen=True)
class Product:
    """One fare product of the simulated agency."""

    label_name: str
    product_uuid: str
    price_cents: int
    fare_type: str
    # None = valid until the end of the local service day of first use (a day pass).
    duration_seconds: int | None
    total_uses: int | None
    label_color: str
    weight: int

    @property
    def is_day_pass(self) -> bool:
        """True when activation makes the pass valid until the end of the local day."""
        return self.duration_seconds is None


_PRODUCT_PREFIX = "2b7e3f4a-8c1d-4e6f-9a0b-1c2d3e4f5a"
PRODUCTS: tuple[Product, ...] = (
    Product("Local Day Pass", f"{_PRODUCT_PREFIX}01", 500, "ADULT", None, None, "#0055A4", 5),
    Product("Local Single Ride", f"{_PRODUCT_PREFIX}02", 200, "ADULT", 5400, 1, "#E4002B", 4),
    Product("Regional 7-Day Pass", f"{_PRODUCT_PREFIX}03", 3000, "ADULT", 7 * 86400, None, "#00843D", 2),
    Product("Reduced Fare Day Pass", f"{_PRODUCT_PREFIX}04", 250, "REDUCED", None, None, "#7A5AA6", 2),
    # Non-ASCII label on purpose (the payload hash keeps UTF-8 as is).
    Product("Pase de día – Niño", f"{_PRODUCT_PREFIX}05", 100, "YOUTH", None, None, "#F2A900", 2),  # noqa: RUF001
)
PRODUCTS_BY_LABEL = {product.label_name: product for product in PRODUCTS}

_FIRST_NAMES = ("José", "Zoë", "François", "Maria", "James", "Aiyana", "Nguyễn", "Olivia", "Jürgen", "Priya")
_LAST_NAMES = ("Núñez", "O'Brien", "Smith", "Çelik", "Washington", "Kowalski", "García", "Lee", "Møller")


def now_utc() -> datetime:
    """The real current time in UTC (the simulator's clock may override it)."""
    return datetime.now(UTC)


def format_iso(moment: datetime, *, millis: bool = True) -> str:
    """ISO-8601 UTC with a ``Z`` suffix, with or without milliseconds (Bytemark sends both)."""
    moment = moment.astimezone(UTC)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    """Parse an ISO-8601 instant (``Z`` or an offset; naive means UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def end_of_local_day(first_use: datetime, timezone: str) -> datetime:
    """23:59:59 of first_use's calendar day in the agency's time zone, as UTC."""
    zone = ZoneInfo(timezone)
    local_day = first_use.astimezone(zone).date()
    return datetime.combine(local_day, time(23, 59, 59), tzinfo=zone).astimezone(UTC)


def expiration_for(product: Product, first_use: datetime, timezone: str) -> datetime:
    """When a pass of this product activated at first_use stops being valid."""
    if product.duration_seconds is None:
        return end_of_local_day(first_use, timezone)
    return first_use + timedelta(seconds=product.duration_seconds)


def product_for_pass(pass_: Pass) -> Product | None:
    """The catalogue product of a pass (by product_uuid, then label), or None for a foreign pass."""
    for product in PRODUCTS:
        if pass_.get("product_uuid") == product.product_uuid or pass_.get("label_name") == product.label_name:
            return product
    return None


class PassFactory:
    """Generates one user's passes from a seeded random stream; same seed + user + anchor → same passes."""

    def __init__(self, user_id: int, seed: int | str, timezone: str) -> None:
        self._rng = random.Random(f"bytemark-simulator:{seed}:{user_id}")
        self._timezone = timezone
        self._user_id = user_id
        rng = self._rng
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        self._customer: dict[str, Any] = {
            "uuid": self._uuid(),
            "first_name": first,
            "last_name": last,
            "full_name": f"{first} {last}",
            "email": f"rider{user_id}@example.com",
            "phone": f"+1312555{rng.randrange(10000):04d}",
            "locale": rng.choice(("en-US", "es-US")),
            "reduced_fare_eligible": rng.random() < 0.3,
        }
        self._device_uuid = self._uuid()
        self._installation_uuid = self._uuid()

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _product(self, label_name: str | None) -> Product:
        if label_name is not None:
            return PRODUCTS_BY_LABEL[label_name]
        return self._rng.choices(PRODUCTS, weights=[product.weight for product in PRODUCTS])[0]

    def _stamp(self, moment: datetime, millis: bool) -> str:
        # Bytemark mixes "…:00.000Z", "…:00.417Z" and "…:00Z"; a pass keeps one style for its own stamps.
        if millis:
            moment = moment.replace(microsecond=self._rng.choice((0, 0, self._rng.randrange(1000))) * 1000)
        return format_iso(moment, millis=millis)

    def current_pass(
        self, anchor: datetime, *, label_name: str | None = None, status: str | None = None
    ) -> Pass:
        """A pass of the v1 list (USABLE, USING or USES_GONE) created before anchor."""
        rng = self._rng
        product = self._product(label_name)
        if status is None:
            status = rng.choices(CURRENT_STATUSES, weights=(6, 3, 1 if product.total_uses else 0))[0]
        created = anchor - timedelta(seconds=rng.randrange(3600, 20 * 86400))
        first_use: datetime | None = None
        expiration: datetime | None = None
        if status in ("USING", "USES_GONE"):
            # Activated recently, so a USING day pass is usually still valid "today".
            recent = anchor - timedelta(seconds=rng.randrange(60, 3000))
            first_use = max(created + timedelta(seconds=60), recent)
            expiration = expiration_for(product, first_use, self._timezone)
        modified = first_use or created
        return self._build(product, status, created, modified, first_use, expiration)

    def expired_pass(self, anchor: datetime) -> Pass:
        """A pass of the v4 history (EXPIRED) that was used and expired well before anchor."""
        rng = self._rng
        product = self._product(None)
        created = anchor - timedelta(seconds=rng.randrange(10 * 86400, 180 * 86400))
        first_use = created + timedelta(seconds=rng.randrange(300, 2 * 86400))
        expiration = expiration_for(product, first_use, self._timezone)
        modified = expiration + timedelta(seconds=rng.randrange(1, 900))
        return self._build(product, "EXPIRED", created, modified, first_use, expiration)

    def purchased_pass(self, now: datetime, label_name: str) -> Pass:
        """A freshly bought, never activated pass."""
        return self._build(PRODUCTS_BY_LABEL[label_name], "USABLE", now, now, None, None)

    def _build(
        self,
        product: Product,
        status: str,
        created: datetime,
        modified: datetime,
        first_use: datetime | None,
        expiration: datetime | None,
    ) -> Pass:
        rng = self._rng
        millis = rng.random() < 0.6
        pass_uuid = self._uuid()
        order_uuid = self._uuid()
        activations = 0 if first_use is None else 1
        if product.total_uses is None:
            remaining_uses: int | None = None
        else:
            remaining_uses = product.total_uses - activations
        if expiration is not None:
            expiration_text: str | None = self._stamp(expiration, millis)
        else:
            # An unactivated pass has no expiration: Bytemark sends null or an empty string.
            expiration_text = rng.choice((None, ""))
        tax_cents = round(product.price_cents * TAX_RATE)
        events: list[dict[str, Any]] = [
            self._event("PURCHASED", created, millis),
            self._event("DELIVERED", created + timedelta(seconds=rng.randrange(1, 30)), millis),
        ]
        if first_use is not None:
            events.append(self._event("ACTIVATED", first_use, millis))
        if status == "EXPIRED" and expiration is not None:
            events.append(self._event("EXPIRED", modified, millis))
        barcode_bytes = rng.randbytes(189)
        return {
            "uuid": pass_uuid,
            "status": status,
            "first_use": None if first_use is None else self._stamp(first_use, millis),
            "expiration": expiration_text,
            "time_created": self._stamp(created, millis),
            "time_modified": self._stamp(modified, millis),
            "product_uuid": product.product_uuid,
            "label_name": product.label_name,
            "label_color": product.label_color,
            "label_description": "Válido hasta el fin del día de servicio"
            if product.is_day_pass
            else "Valid for the ride and its transfers",
            "pass_type": "TIME_BASED" if product.total_uses is None else "RIDE_BASED",
            "fare_type": product.fare_type,
            "activation_count": activations,
            "total_uses": product.total_uses,
            "remaining_uses": remaining_uses,
            "max_activations": product.total_uses,
            "activation_duration_seconds": product.duration_seconds,
            "lock_to_device": rng.random() < 0.5,
            "device_uuid": self._device_uuid,
            "device_app_installation_uuid": self._installation_uuid,
            "cloud_pass": True,
            "transferable": False,
            "refundable": status == "USABLE",
            "is_test": False,
            "organization_uuid": ORGANIZATION_UUID,
            "organization_name": "Metro Transit",
            "organization_display_name": "Metro Transit – Área Metropolitana",  # noqa: RUF001
            "agency_time_zone": self._timezone,
            "zones": rng.choice((["A"], ["A", "B"], ["A", "B", "C"])),
            "origin": None,
            "destination": None,
            "order_uuid": order_uuid,
            "order_item": {
                "uuid": self._uuid(),
                "order_uuid": order_uuid,
                "product_uuid": product.product_uuid,
                "name": product.label_name,
                "quantity": 1,
                "unit_price": product.price_cents,
                "sale_price": product.price_cents,
                "tax": tax_cents,
                "total_price": product.price_cents + tax_cents,
                "tax_rate": TAX_RATE,
                # Integral floats on purpose: Node writes 2.0 as "2", which the payload hash must match.
                "price": product.price_cents / 100,
                "discount": 0.0,
                "currency": "USD",
                "payment_method": {"type": "CARD", "card_type": rng.choice(("VISA", "MASTERCARD", "AMEX"))},
                "last_four": f"{rng.randrange(10000):04d}",
            },
            "customer": dict(self._customer),
            "pass_events": events,
            "expiration_rule": {
                "type": "END_OF_SERVICE_DAY" if product.is_day_pass else "DURATION",
                "duration_seconds": product.duration_seconds,
                "time_zone": self._timezone,
                "service_day_end": "23:59:59",
                "activation_window_days": 90,
            },
            "barcode": {
                "format": "AZTEC",
                "payload": base64.b64encode(barcode_bytes).decode("ascii"),
                "signature": rng.randbytes(32).hex(),
                "key_id": f"k-{rng.randrange(1, 9)}",
                "rotation_seconds": 30,
                "version": 2,
            },
            "visual_validation": {
                "colors": [product.label_color, rng.choice(("#FFFFFF", "#000000"))],
                "animation": rng.choice(("PULSE", "SLIDE")),
                "speed": rng.choice((1.0, 1.5)),
            },
            "display_priority": rng.randrange(100),
            "version": activations + 1,
        }

    def _event(self, event_type: str, moment: datetime, millis: bool) -> dict[str, Any]:
        rng = self._rng
        return {
            "uuid": self._uuid(),
            "event_type": event_type,
            "time": self._stamp(moment, millis),
            "device_uuid": self._device_uuid,
            "latitude": round(41.88 + rng.uniform(-0.2, 0.2), 6),
            "longitude": round(-87.63 + rng.uniform(-0.2, 0.2), 6),
        }


def activate_pass(pass_: Pass, first_use: datetime, now: datetime, timezone: str) -> None:
    """Turn a USABLE pass into a USING one in place, the way Bytemark records an activation."""
    product = product_for_pass(pass_)
    if product is not None:
        expiration = expiration_for(product, first_use, timezone)
    else:
        duration = pass_.get("activation_duration_seconds")
        if isinstance(duration, int) and duration > 0:
            expiration = first_use + timedelta(seconds=duration)
        else:
            expiration = end_of_local_day(first_use, timezone)
    pass_["status"] = "USING"
    pass_["first_use"] = format_iso(first_use)
    pass_["expiration"] = format_iso(expiration)
    pass_["time_modified"] = format_iso(now)
    if isinstance(pass_.get("activation_count"), int):
        pass_["activation_count"] += 1
    if isinstance(pass_.get("remaining_uses"), int) and pass_["remaining_uses"] > 0:
        pass_["remaining_uses"] -= 1
    if isinstance(pass_.get("version"), int):
        pass_["version"] += 1
    pass_["refundable"] = False
    _append_event(pass_, "ACTIVATED", first_use)


def expire_pass(pass_: Pass, now: datetime) -> None:
    """Mark a pass EXPIRED in place (what Bytemark does before moving it to the history)."""
    pass_["status"] = "EXPIRED"
    if not pass_.get("expiration"):
        pass_["expiration"] = format_iso(now)
    pass_["time_modified"] = format_iso(now)
    if isinstance(pass_.get("version"), int):
        pass_["version"] += 1
    pass_["refundable"] = False
    _append_event(pass_, "EXPIRED", now)


def _append_event(pass_: Pass, event_type: str, moment: datetime) -> None:
    events = pass_.get("pass_events")
    if isinstance(events, list):
        # uuid5 keeps the event id deterministic for a given pass and moment.
        event_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"{pass_.get('uuid')}/{event_type}/{moment.isoformat()}")
        events.append(
            {
                "uuid": str(event_uuid),
                "event_type": event_type,
                "time": format_iso(moment),
                "device_uuid": pass_.get("device_uuid"),
                "latitude": 41.8781,
                "longitude": -87.6298,
            }
        )
