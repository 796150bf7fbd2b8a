// Legacy BytemarkTicketsCache documents as the old Node.js (Mongoose) service wrote them, plus what
// Bytemark answers for the same users now ("truth"), for the Python service's tests.
//
//   node tests/legacy/make_fixtures.mjs <out_dir>
//
// writes <out_dir>/documents.json (an array of MongoDB Extended JSON v2 documents, canonical mode) and
// <out_dir>/manifest.json (plain JSON: which legacy shapes each user id carries, the Bytemark truth and the
// expected outcome of a sync). Plain Node 20, no packages. The output is deterministic: the same bytes on
// every run and machine (seeded PRNG, seeded ObjectId counter, fixed clock; nothing reads the real time).
//
// Typing follows what the Node driver (js-bson) stores for plain JavaScript values: an integral number in
// the int32 range becomes Int32, every other number a Double (so `Date.now()` is stored as a Double, not an
// Int64), a Date a BSON Date. Int64 appears only where the old code used `mongodb.Long` explicitly.
//
// Payload hashes are md5(JSON.stringify(pass)) of the pass as Node's JSON.parse read Bytemark's text, which
// is exactly what the Node service stored as payload_hash.

import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";

// -- typed BSON values ----------------------------------------------------------------------------------

/** A BSON Int64 (the old code's `mongodb.Long`). */
class Long {
  constructor(value) {
    this.value = BigInt(value);
  }
}

/** A BSON ObjectId (24 hex digits). */
class ObjectId {
  constructor(hex) {
    if (!/^[0-9a-f]{24}$/.test(hex)) throw new Error(`bad ObjectId ${hex}`);
    this.hex = hex;
  }
}

/** A number Bytemark writes with a fraction part on the wire ("5.0", "2.50"); JSON.parse reads a Number. */
class WireFloat {
  constructor(text) {
    this.text = text;
  }
}

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

/** Canonical EJSON v2 text of a double, as js-bson's Double.toExtendedJSON writes it. */
function doubleText(value) {
  if (Object.is(value, -0)) return "-0.0";
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "Infinity";
  if (value === -Infinity) return "-Infinity";
  return Number.isInteger(value) ? value.toFixed(1) : String(value);
}

/** The canonical Extended JSON v2 form of a value as the Node driver would have stored it. */
function toEjson(value) {
  if (value === null) return null;
  if (typeof value === "string" || typeof value === "boolean") return value;
  if (typeof value === "number") {
    if (Number.isInteger(value) && value >= INT32_MIN && value <= INT32_MAX && !Object.is(value, -0)) {
      return { $numberInt: String(value) };
    }
    return { $numberDouble: doubleText(value) };
  }
  if (value instanceof Long) return { $numberLong: value.value.toString() };
  if (value instanceof ObjectId) return { $oid: value.hex };
  if (value instanceof Date) return { $date: { $numberLong: String(value.getTime()) } };
  if (value instanceof WireFloat) throw new Error("a WireFloat reached storage: parse the wire text first");
  if (Array.isArray(value)) return value.map(toEjson);
  if (typeof value === "object") {
    const out = {};
    for (const [key, item] of Object.entries(value)) {
      if (item === undefined) continue; // js-bson with ignoreUndefined; the old code never stored undefined
      out[key] = toEjson(item);
    }
    return out;
  }
  throw new Error(`cannot store ${typeof value}`);
}

// -- determinism ----------------------------------------------------------------------------------------

/** mulberry32: a small seeded PRNG (32-bit state). */
function prng(seedText) {
  let state = crypto.createHash("sha256").update(seedText).digest().readUInt32LE(0);
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    float: next,
    int: (below) => Math.floor(next() * below),
    pick: (items) => items[Math.floor(next() * items.length)],
    bytes: (count) => Buffer.from(Array.from({ length: count }, () => Math.floor(next() * 256))),
  };
}

function uuid4(rng) {
  const b = rng.bytes(16);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// ObjectIds the way the driver builds them: 4-byte creation second, 5-byte process value, 3-byte counter.
const OID_PROCESS = "5e1d7a93c4";
let oidCounter = 0x3b9f10;
function objectId(atMs) {
  const seconds = Math.floor(atMs / 1000).toString(16).padStart(8, "0");
  const counter = (oidCounter++ & 0xffffff).toString(16).padStart(6, "0");
  return new ObjectId(seconds + OID_PROCESS + counter);
}

// -- time -----------------------------------------------------------------------------------------------

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
/** The moment the truth describes: what Bytemark answers "now". 2024-06-15T05:10:00Z. */
const TRUTH_AT = Date.UTC(2024, 5, 15, 5, 10, 0);
/** The legacy service's last sync of the first user; later users were synced a few minutes earlier. */
const LEGACY_SYNC_BASE = Date.UTC(2024, 5, 14, 22, 15, 0);
const TIME_ZONE = "America/Chicago";

const iso = (ms) => new Date(ms).toISOString();
const unix = (ms) => Math.floor(ms / 1000);

/** 23:59:59 of the Chicago calendar day of `ms` (CDT, UTC-5, is all these fixtures need), in UTC ms. */
function endOfChicagoDay(ms) {
  const local = new Date(ms - 5 * HOUR);
  return Date.UTC(local.getUTCFullYear(), local.getUTCMonth(), local.getUTCDate(), 23, 59, 59) + 5 * HOUR;
}

// -- Bytemark passes ------------------------------------------------------------------------------------

const ORGANIZATION_UUID = "6f1c2a9e-3b1d-4c55-9a57-0c3f8e5d2b10";
const PRODUCTS = {
  day: {
    label: "Local Day Pass", uuid: "2b7e3f4a-8c1d-4e6f-9a0b-1c2d3e4f5a01", cents: 500,
    duration: null, uses: null, color: "#0055A4", wireAmount: "5.0",
  },
  single: {
    label: "Local Single Ride", uuid: "2b7e3f4a-8c1d-4e6f-9a0b-1c2d3e4f5a02", cents: 250,
    duration: 5400, uses: 1, color: "#E4002B", wireAmount: "2.50",
  },
  regional: {
    label: "Regional 7-Day Pass", uuid: "2b7e3f4a-8c1d-4e6f-9a0b-1c2d3e4f5a03", cents: 3000,
    duration: 7 * 86400, uses: null, color: "#00843D", wireAmount: "30.0",
  },
  // Non-ASCII label on purpose: the hash must see UTF-8 exactly as Node did.
  pase: {
    label: "Pase Diario \u2013 Adulto \u00e9", uuid: "2b7e3f4a-8c1d-4e6f-9a0b-1c2d3e4f5a05", cents: 500,
    duration: null, uses: null, color: "#F2A900", wireAmount: "5.0",
  },
};
const FIRST_NAMES = ["Jos\u00e9", "Zo\u00eb", "Maria", "James", "Priya", "J\u00fcrgen"];
const LAST_NAMES = ["N\u00fa\u00f1ez", "O'Brien", "Smith", "Kowalski", "Garc\u00eda", "M\u00f8ller"];

function event(rng, type, ms, deviceUuid) {
  return {
    uuid: uuid4(rng),
    event_type: type,
    time: iso(ms),
    device_uuid: deviceUuid,
    latitude: Math.round((41.88 + (rng.float() - 0.5) * 0.4) * 1e6) / 1e6,
    longitude: Math.round((-87.63 + (rng.float() - 0.5) * 0.4) * 1e6) / 1e6,
  };
}

/** A freshly purchased (USABLE, never activated) pass, as Bytemark represents it (WireFloat markers in it). */
function purchasedPass(rng, customer, deviceUuid, product, createdMs) {
  const orderUuid = uuid4(rng);
  const tax = Math.round(product.cents * 0.0825);
  return {
    uuid: uuid4(rng),
    status: "USABLE",
    first_use: null,
    expiration: null,
    time_created: iso(createdMs),
    time_modified: iso(createdMs),
    product_uuid: product.uuid,
    label_name: product.label,
    label_color: product.color,
    pass_type: product.uses === null ? "TIME_BASED" : "RIDE_BASED",
    fare_type: "ADULT",
    activation_count: 0,
    total_uses: product.uses,
    remaining_uses: product.uses,
    activation_duration_seconds: product.duration,
    lock_to_device: rng.float() < 0.5,
    device_uuid: deviceUuid,
    cloud_pass: true,
    refundable: true,
    organization_uuid: ORGANIZATION_UUID,
    organization_name: "Metro Transit",
    agency_time_zone: TIME_ZONE,
    zones: rng.pick([["A"], ["A", "B"], ["A", "B", "C"]]),
    order_uuid: orderUuid,
    order_item: {
      uuid: uuid4(rng),
      order_uuid: orderUuid,
      product_uuid: product.uuid,
      name: product.label,
      quantity: 1,
      price: product.cents,
      sale_price: product.cents,
      tax,
      total_price: product.cents + tax,
      tax_rate: 0.0825,
      amount: new WireFloat(product.wireAmount),
      discount: new WireFloat("0.0"),
      currency: "USD",
      payment_method: { type: "CARD", card_type: rng.pick(["VISA", "MASTERCARD", "AMEX"]), last_four: String(1000 + rng.int(9000)) },
    },
    customer,
    pass_events: [
      event(rng, "PURCHASED", createdMs, deviceUuid),
      event(rng, "DELIVERED", createdMs + 4000 + rng.int(20000), deviceUuid),
    ],
    expiration_rule: {
      type: product.duration === null ? "END_OF_SERVICE_DAY" : "DURATION",
      duration_seconds: product.duration,
      time_zone: TIME_ZONE,
      service_day_end: "23:59:59",
    },
    barcode: {
      format: "AZTEC",
      payload: rng.bytes(96).toString("base64"),
      signature: rng.bytes(32).toString("hex"),
      key_id: `k-${1 + rng.int(8)}`,
      version: 2,
    },
    visual_validation: { colors: [product.color, "#FFFFFF"], animation: "PULSE", speed: new WireFloat("1.0") },
    display_priority: rng.int(100),
    version: 1,
  };
}

function deepClone(value) {
  if (value instanceof WireFloat) return new WireFloat(value.text);
  if (Array.isArray(value)) return value.map(deepClone);
  if (value !== null && typeof value === "object") {
    const out = {};
    for (const [key, item] of Object.entries(value)) out[key] = deepClone(item);
    return out;
  }
  return value;
}

function productOf(pass) {
  return Object.values(PRODUCTS).find((product) => product.uuid === pass.product_uuid);
}

/** The pass after its holder activated it at `atMs` (a new snapshot; fields change in place, order kept). */
function activated(rng, pass, atMs) {
  const next = deepClone(pass);
  const product = productOf(pass);
  next.status = "USING";
  next.first_use = iso(atMs);
  next.expiration = iso(product.duration === null ? endOfChicagoDay(atMs) : atMs + product.duration * 1000);
  next.time_modified = iso(atMs);
  next.activation_count += 1;
  if (next.remaining_uses !== null) next.remaining_uses -= 1;
  next.refundable = false;
  next.pass_events.push(event(rng, "ACTIVATED", atMs, pass.device_uuid));
  next.version += 1;
  return next;
}

/** The pass after it expired (Bytemark notices a little after its expiration). */
function expired(rng, pass) {
  const next = deepClone(pass);
  const atMs = Date.parse(pass.expiration) + 1000 * (30 + rng.int(600));
  next.status = "EXPIRED";
  next.time_modified = iso(atMs);
  next.pass_events.push(event(rng, "EXPIRED", atMs, pass.device_uuid));
  next.version += 1;
  return next;
}

/** Bytemark's JSON text of a pass: compact, floats written with their fraction ("5.0", "2.50"). */
function wireText(pass) {
  const text = JSON.stringify(pass, (key, value) => (value instanceof WireFloat ? `@@float:${value.text}@@` : value));
  return text.replace(/"@@float:([0-9.eE+-]+)@@"/g, "$1");
}

/** What the Node service held after reading a pass: JSON.parse of the wire text, and its payload_hash. */
function received(pass) {
  const wire = wireText(pass);
  const payload = JSON.parse(wire);
  const hash = crypto.createHash("md5").update(JSON.stringify(payload), "utf8").digest("hex");
  return { wire, payload, hash };
}

// -- one user's story -----------------------------------------------------------------------------------

/**
 * What a sync of a document holding `cached` ({pass} lists) against `truth` must do, per pass uuid.
 * `changed` means the same uuid with another payload hash.
 */
function expectation(cached, truth) {
  const stored = new Map(cached.map((item) => [item.pass.payload.uuid, item.pass.hash]));
  const fresh = new Map(truth.map((item) => [item.payload.uuid, item.hash]));
  const result = { unchanged: [], changed: [], gone: [], new: [] };
  for (const [uuid, hash] of stored) {
    if (!fresh.has(uuid)) result.gone.push(uuid);
    else if (fresh.get(uuid) === hash) result.unchanged.push(uuid);
    else result.changed.push(uuid);
  }
  for (const uuid of fresh.keys()) if (!stored.has(uuid)) result.new.push(uuid);
  return result;
}

/**
 * Every pass snapshot of one user. At the legacy sync (syncMs) the cache held:
 *   passes  = D (non-ASCII label, USABLE), A (day pass, USABLE), B (7-day, USABLE), C (single ride, USING)
 *   passes4 = E, F (EXPIRED)
 * and Bytemark now (TRUTH_AT) answers:
 *   current = D, A (both unchanged), B (changed: activated at 04:30Z), G (new: bought after the sync)
 *   expired = C (new to the history: it expired and left the v1 list, so it is gone from passes), E, F
 */
function story(userId, syncMs) {
  const rng = prng(`bytemark-legacy-fixtures:${userId}`);
  const first = rng.pick(FIRST_NAMES);
  const last = rng.pick(LAST_NAMES);
  const customer = {
    uuid: uuid4(rng),
    first_name: first,
    last_name: last,
    email: `rider${userId}@example.com`,
    locale: rng.pick(["en-US", "es-US"]),
  };
  const device = uuid4(rng);
  const buy = (product, ms) => purchasedPass(rng, customer, device, product, ms);

  const dBought = syncMs - 5 * DAY + 3 * HOUR;
  const aBought = syncMs - 3 * DAY + 7 * HOUR;
  const bBought = syncMs - 2 * DAY + 1 * HOUR;
  const cBought = syncMs - 1 * DAY + 2 * HOUR;
  const cUsed = syncMs - 20 * MINUTE;
  const bUsed = Date.UTC(2024, 5, 15, 4, 30, 0); // the contract's example first use
  const gBought = TRUTH_AT - 1 * HOUR;
  const eBought = Date.UTC(2024, 4, 18, 13, 5, 0);
  const fBought = Date.UTC(2024, 4, 2, 16, 40, 0);

  const D = buy(PRODUCTS.pase, dBought);
  const A = buy(PRODUCTS.day, aBought);
  const B0 = buy(PRODUCTS.regional, bBought);
  const C0 = buy(PRODUCTS.single, cBought);
  const C1 = activated(rng, C0, cUsed);
  const C2 = expired(rng, C1);
  const B1 = activated(rng, B0, bUsed);
  const G = buy(PRODUCTS.single, gBought);
  const E = expired(rng, activated(rng, buy(PRODUCTS.day, eBought), eBought + 2 * DAY + 5 * HOUR));
  const F = expired(rng, activated(rng, buy(PRODUCTS.single, fBought), fBought + 3 * HOUR));

  return {
    customer,
    // Each cached element: the pass as received, when its element last changed, its list.
    cached: {
      passes: [
        { pass: received(D), changedMs: dBought + 5 * MINUTE },
        { pass: received(A), changedMs: aBought + 5 * MINUTE },
        { pass: received(B0), changedMs: bBought + 5 * MINUTE },
        { pass: received(C1), changedMs: syncMs },
      ],
      passes4: [
        { pass: received(E), changedMs: Date.parse(E.time_modified) + 40 * MINUTE },
        { pass: received(F), changedMs: Date.parse(F.time_modified) + 40 * MINUTE },
      ],
    },
    // The same user one sync earlier: C not yet activated (for the duplicate-document shape).
    earlier: {
      passes: [
        { pass: received(D), changedMs: dBought + 5 * MINUTE },
        { pass: received(A), changedMs: aBought + 5 * MINUTE },
        { pass: received(B0), changedMs: bBought + 5 * MINUTE },
        { pass: received(C0), changedMs: cBought + 5 * MINUTE },
      ],
      passes4: [
        { pass: received(E), changedMs: Date.parse(E.time_modified) + 40 * MINUTE },
        { pass: received(F), changedMs: Date.parse(F.time_modified) + 40 * MINUTE },
      ],
    },
    truth: {
      current: [received(D), received(A), received(B1), received(G)],
      expired: [received(C2), received(E), received(F)],
    },
  };
}

// -- documents ------------------------------------------------------------------------------------------

/** A contract-shaped element, as the Node service wrapped a received pass. */
function specElement({ pass, changedMs }) {
  return {
    pass_uuid: pass.payload.uuid,
    timestamp: unix(changedMs),
    status: pass.payload.status,
    free_ticket_status: 0,
    payload: pass.payload,
    payload_hash: pass.hash,
  };
}

/** The contract-shaped document (the control) of one user at syncMs. */
function specDocument(userId, syncMs, cache, createdMs) {
  return {
    _id: objectId(createdMs),
    user_id: userId,
    timestamp: unix(syncMs),
    passes: cache.passes.map(specElement),
    passes4: cache.passes4.map(specElement),
  };
}

/** Rename a key in place of an object, keeping its position. */
function renameKey(obj, from, to) {
  const entries = Object.entries(obj).map(([key, value]) => [key === from ? to : key, value]);
  for (const key of Object.keys(obj)) delete obj[key];
  for (const [key, value] of entries) obj[key] = value;
}

/** Put `value` under `key` first in obj (Mongoose writes `_id` before the other paths). */
function prependKey(obj, key, value) {
  const entries = Object.entries(obj);
  for (const k of Object.keys(obj)) delete obj[k];
  obj[key] = value;
  for (const [k, v] of entries) obj[k] = v;
}

const elementsOf = (doc) => [...(doc.passes ?? []), ...(doc.passes4 ?? [])];

// Shape transformations: each takes (doc, ctx) and changes doc in place.
// ctx = {userId, syncMs, createdMs, cache, hashes: uuid -> md5, elementChangedMs: uuid -> ms}.
const SHAPES = {
  spec_control: {
    description: "The contract's shape itself, as the Node service wrote it in its last version (Int32 seconds).",
    apply: () => {},
  },
  timestamp_ms_int64: {
    description: "Document timestamp in milliseconds as Int64 (the old code stored Long.fromNumber(Date.now())).",
    apply: (doc, ctx) => {
      doc.timestamp = new Long(ctx.syncMs);
    },
  },
  timestamp_ms_double: {
    description: "Document timestamp in milliseconds as an integral Double: what the Node driver stores for a plain Date.now().",
    apply: (doc, ctx) => {
      doc.timestamp = ctx.syncMs;
    },
  },
  timestamp_double_fraction: {
    description: "Document timestamp in seconds as a Double with a fraction (Date.now() / 1000 without rounding).",
    apply: (doc, ctx) => {
      doc.timestamp = ctx.syncMs / 1000 + 0.5;
    },
  },
  timestamp_date: {
    description: "Document timestamp as a BSON Date (new Date()).",
    apply: (doc, ctx) => {
      doc.timestamp = new Date(ctx.syncMs);
    },
  },
  timestamp_string_iso: {
    description: "Document timestamp as an ISO-8601 string (new Date().toISOString()).",
    apply: (doc, ctx) => {
      doc.timestamp = iso(ctx.syncMs);
    },
  },
  timestamp_string_numeric: {
    description: "Document timestamp as a string of unix seconds (a form value / String(seconds)).",
    apply: (doc, ctx) => {
      doc.timestamp = String(unix(ctx.syncMs));
    },
  },
  timestamp_missing: {
    description: "No document timestamp at all.",
    apply: (doc) => {
      delete doc.timestamp;
    },
  },
  element_uuid_key: {
    description: "Every element keyed `uuid` instead of `pass_uuid` (no pass_uuid field).",
    apply: (doc) => {
      for (const element of elementsOf(doc)) renameKey(element, "pass_uuid", "uuid");
    },
  },
  element_no_payload_hash: {
    description: "No element carries payload_hash.",
    apply: (doc) => {
      for (const element of elementsOf(doc)) delete element.payload_hash;
    },
  },
  user_id_string: {
    description: "user_id stored as a string of digits.",
    apply: (doc, ctx) => {
      doc.user_id = String(ctx.userId);
    },
  },
  duplicate_user: {
    description: "Two documents for the same user: different _id, different timestamps, overlapping passes.",
    apply: () => {},
  },
  mongoose_extras: {
    description: "Mongoose conventions: __v version key, an _id ObjectId on every array element, createdAt/updatedAt Dates.",
    apply: (doc, ctx) => {
      for (const element of elementsOf(doc)) prependKey(element, "_id", objectId(ctx.createdMs));
      for (const entry of doc.passesLog ?? []) {
        if (!("_id" in entry)) prependKey(entry, "_id", objectId(ctx.createdMs));
      }
      doc.createdAt = new Date(ctx.createdMs);
      doc.updatedAt = new Date(ctx.syncMs);
      doc.__v = 0;
    },
  },
  passes_log: {
    description: "A passesLog array: the old in-document change log (one entry per created / status change).",
    apply: (doc, ctx) => {
      const log = [];
      for (const list of ["passes", "passes4"]) {
        for (const element of doc[list] ?? []) {
          const uuid = element.pass_uuid ?? element.uuid;
          log.push({
            uuid,
            action: "created",
            list,
            status: element.payload.status,
            previous_status: null,
            payload_hash: ctx.hashes.get(uuid),
            at: new Date(1000 * unix(ctx.elementChangedMs.get(uuid))),
          });
        }
      }
      // A pass the holder activated since it was cached: one more entry for the status change.
      for (const item of ctx.cache.passes) {
        if (item.pass.payload.status !== "USING") continue;
        log.push({
          uuid: item.pass.payload.uuid,
          action: "status_changed",
          list: "passes",
          status: "USING",
          previous_status: "USABLE",
          payload_hash: item.pass.hash,
          at: new Date(1000 * unix(item.changedMs)),
        });
      }
      log.sort((x, y) => x.at.getTime() - y.at.getTime());
      doc.passesLog = log;
    },
  },
  element_timestamp_ms: {
    description: "Element timestamps in milliseconds: Doubles (plain Date.now()) and, on the first element, an Int64.",
    apply: (doc) => {
      elementsOf(doc).forEach((element, position) => {
        element.timestamp = position === 0 ? new Long(element.timestamp * 1000) : element.timestamp * 1000;
      });
    },
  },
  element_timestamp_missing: {
    description: "Elements without a timestamp (every element of passes and the first of passes4).",
    apply: (doc) => {
      for (const element of doc.passes) delete element.timestamp;
      delete doc.passes4[0].timestamp;
    },
  },
  element_status_missing: {
    description: "Elements without a status (the payload still has Bytemark's status).",
    apply: (doc) => {
      for (const element of elementsOf(doc)) delete element.status;
    },
  },
  passes4_missing: {
    description: "No passes4 array: documents written before the v4 history was cached (not in the brief's list).",
    apply: (doc) => {
      delete doc.passes4;
    },
  },
};

// Order in which transformations are applied within a document (passes_log before mongoose_extras so the
// log's entries get their _id too; key renames before the log reads them).
const APPLY_ORDER = Object.keys(SHAPES);
APPLY_ORDER.splice(APPLY_ORDER.indexOf("passes_log"), 1);
APPLY_ORDER.splice(APPLY_ORDER.indexOf("mongoose_extras"), 0, "passes_log");

// One entry per document: its user id and shapes. A duplicated user appears twice, "older" and "newer".
const PLAN = [
  { userId: 71001, shapes: ["spec_control"] },
  { userId: 71002, shapes: ["timestamp_ms_int64"] },
  { userId: 71003, shapes: ["timestamp_ms_double"] },
  { userId: 71004, shapes: ["timestamp_double_fraction"] },
  { userId: 71005, shapes: ["timestamp_date"] },
  { userId: 71006, shapes: ["timestamp_string_iso"] },
  { userId: 71007, shapes: ["timestamp_string_numeric"] },
  { userId: 71008, shapes: ["timestamp_missing"] },
  { userId: 71009, shapes: ["element_uuid_key"] },
  { userId: 71010, shapes: ["element_no_payload_hash"] },
  { userId: 71011, shapes: ["user_id_string"] },
  { userId: 71012, shapes: ["duplicate_user"], variant: "older" },
  { userId: 71012, shapes: ["duplicate_user"], variant: "newer" },
  { userId: 71013, shapes: ["mongoose_extras"] },
  { userId: 71014, shapes: ["passes_log"] },
  { userId: 71015, shapes: ["element_timestamp_ms"] },
  { userId: 71016, shapes: ["element_timestamp_missing"] },
  { userId: 71017, shapes: ["element_status_missing"] },
  { userId: 71018, shapes: ["timestamp_ms_int64", "element_uuid_key", "mongoose_extras"] },
  { userId: 71019, shapes: ["timestamp_date", "element_no_payload_hash", "passes_log", "mongoose_extras"] },
  { userId: 71020, shapes: ["user_id_string", "timestamp_double_fraction", "element_uuid_key"] },
  { userId: 71021, shapes: ["passes4_missing"] },
  // The duplicate pair of 71022: the older one with a numeric user_id and ms timestamp, the newer one a
  // Mongoose document with a string user_id.
  { userId: 71022, shapes: ["duplicate_user", "timestamp_ms_double"], variant: "older" },
  { userId: 71022, shapes: ["duplicate_user", "user_id_string", "mongoose_extras", "element_timestamp_ms"], variant: "newer" },
];

function build() {
  const userIds = [...new Set(PLAN.map((entry) => entry.userId))];
  const stories = new Map();
  userIds.forEach((userId, position) => {
    const syncMs = LEGACY_SYNC_BASE - position * 7 * MINUTE;
    stories.set(userId, { syncMs, st: story(userId, syncMs) });
  });

  const documents = [];
  const documentEntries = [];
  for (const entry of PLAN) {
    const { syncMs: latestSyncMs, st } = stories.get(entry.userId);
    const older = entry.variant === "older";
    // The older duplicate: synced 6 hours before the newer one, C not yet activated.
    const syncMs = older ? latestSyncMs - 6 * HOUR : latestSyncMs;
    const cache = older ? st.earlier : st.cached;
    const createdMs = st.cached.passes[0].changedMs + (older ? 0 : 90 * MINUTE);
    const doc = specDocument(entry.userId, syncMs, cache, createdMs);
    const hashes = new Map();
    const elementChangedMs = new Map();
    for (const item of [...cache.passes, ...cache.passes4]) {
      hashes.set(item.pass.payload.uuid, item.pass.hash);
      elementChangedMs.set(item.pass.payload.uuid, item.changedMs);
    }
    const ctx = { userId: entry.userId, syncMs, createdMs, cache, hashes, elementChangedMs };
    for (const shape of APPLY_ORDER) if (entry.shapes.includes(shape)) SHAPES[shape].apply(doc, ctx);

    const elements = [];
    for (const list of ["passes", "passes4"]) {
      (doc[list] ?? []).forEach((element, index) => {
        const uuid = element.payload.uuid;
        elements.push({
          list,
          index,
          uuid,
          status: element.payload.status,
          payload_hash: hashes.get(uuid),
          hash_stored: "payload_hash" in element,
        });
      });
    }
    const expected = {
      passes: expectation(doc.passes ? cache.passes : [], st.truth.current),
      passes4: expectation(doc.passes4 ? cache.passes4 : [], st.truth.expired),
    };
    documentEntries.push({
      index: documents.length,
      _id: doc._id.hex,
      user_id: entry.userId,
      stored_user_id: doc.user_id,
      variant: entry.variant ?? null,
      shapes: entry.shapes,
      synced_at: iso(syncMs),
      elements,
      expected,
    });
    documents.push(toEjson(doc));
  }

  const users = {};
  for (const userId of userIds) {
    const { st } = stories.get(userId);
    const own = documentEntries.filter((d) => d.user_id === userId);
    const indexes = own.map((d) => d.index);
    const shapes = [...new Set(own.flatMap((d) => d.shapes))];
    // The outcome of a sync is judged against the user's most recent document.
    const newest = own.reduce((a, b) => (Date.parse(b.synced_at) > Date.parse(a.synced_at) ? b : a));
    const { passes } = newest.expected;
    if (!passes.unchanged.length || !passes.changed.length || !passes.gone.length || !passes.new.length) {
      throw new Error(`user ${userId}: the truth must leave, change, remove and add a pass`);
    }
    const hashes = {};
    for (const item of [...st.truth.current, ...st.truth.expired]) hashes[item.payload.uuid] = item.hash;
    users[String(userId)] = {
      shapes,
      documents: indexes,
      token: `legacy-token-${userId}`,
      truth: {
        current: st.truth.current.map((item) => item.payload),
        expired: st.truth.expired.map((item) => item.payload),
      },
      truth_wire: {
        current: st.truth.current.map((item) => item.wire),
        expired: st.truth.expired.map((item) => item.wire),
      },
      truth_hashes: hashes,
      newest_document: newest.index,
      expected: newest.expected,
    };
  }

  const manifest = {
    format: "bytemark-legacy-fixtures/1",
    generator: "tests/legacy/make_fixtures.mjs",
    collection: "BytemarkTicketsCache",
    truth_at: iso(TRUTH_AT),
    time_zone: TIME_ZONE,
    shapes: Object.fromEntries(Object.entries(SHAPES).map(([name, shape]) => [name, shape.description])),
    documents: documentEntries,
    users,
  };
  return { documents, manifest };
}

function main() {
  const outDir = process.argv[2];
  if (!outDir || process.argv.length > 3) {
    process.stderr.write("usage: node tests/legacy/make_fixtures.mjs <out_dir>\n");
    process.exit(2);
  }
  const { documents, manifest } = build();
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, "documents.json"), JSON.stringify(documents, null, 1) + "\n", "utf8");
  fs.writeFileSync(path.join(outDir, "manifest.json"), JSON.stringify(manifest, null, 1) + "\n", "utf8");
  process.stdout.write(`${documents.length} documents for ${Object.keys(manifest.users).length} users in ${outDir}\n`);
}

main();
