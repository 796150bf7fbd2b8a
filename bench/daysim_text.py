"""The fixed part of the simulated day's section in docs/benchmarks.md: how it is simulated and read."""

METHOD = """\
### How the day is simulated

- **Riders** (`bench/daysim_riders.py`), each generated from the seed and its user id alone:
  25 % commuters (ride on 85 % of weekdays: a morning trip around 07:45 and an evening one around 17:15;
  15 % add an evening out whose ride home may cross midnight; they use 7-day passes (45 %), day passes
  (35 %) or single rides), 30 % occasional riders (ride on 40 % of weekdays, one trip or a round trip;
  30 % in the morning peak, 40 % midday, 20 % in the evening peak, 10 % at night), 44.5 % dormant accounts
  (a 3 % chance of one look at the app), 0.5 % new riders (link Bytemark during the day and open the app at
  once). Before each trip the rider opens the app at the stop; without a valid pass they activate an unused
  one, else buy one in the app (single rides in packs of 1-5) — or, 10-12 % of the time, on the website
  hours before, which nobody announces. The app puts a `purchase` message (and an `activation` message
  with the pass uuid) on the update queue at once; the queue delivers 1-2 s later. After a purchase the
  app reloads the wallet and after an activation it shows the activated pass (3-20 s later): both are
  opens (`GET /tickets`). Commuters look at the app once more on 25 % of days, occasional riders on 10 %.
- **Bytemark's truth** (`bench/daysim_truth.py`): per pass, a timeline of versions (pass JSON with
  make_pass's fields plus uses, activation count, version, order item and a 2.4 kB barcode: ~3 kB like a real
  pass). A single ride is used up at the validators 10-50 min after its activation (USES_GONE) and expires
  90 min after it; a day pass expires at 23:59:59 local on its first-use day; a 7-day pass 7 days after
  activation. Bytemark marks an expired pass EXPIRED and moves it from the v1 list to the v4 history
  5-90 s after its expiration. Unannounced changes: refunds (0.3 % of rider-days; an unused pass vanishes),
  support edits (0.2 %: a re-issued ride, or a corrected field that changes the payload only), web purchases
  by dormant riders (0.4 %). History: expired passes from before the walked days (mean 25 / 9 / 4 per
  commuter / occasional / dormant rider) plus nine walked days.
- **Requests**: one per page of 100 of each list (`total_count` ends a list), so 2 per fetch when both
  lists fit one page. No latency, rate limit or failure is simulated: a sync completes at the instant it
  starts, and an open *waited* when its answer needed a Bytemark call.
- **Ticket state**: the set of (pass uuid, status) of the passes shown as not expired. The truth's: every
  pass Bytemark lists at that instant, with Bytemark's status, except those past their expiration (during
  the seconds before Bytemark applies it they count as expired, as the app would show them). An open is
  *stale* when the shown set differs; its *age* is the time since the shown answer was last right (the
  latest instant at which the same answer, read at that instant, matched the truth), never further back
  than the sync that produced it. (d) and (e) show the view's `effective_status` of every element
  (`tickets_body`). (a), (a') and (c) show the cached Bytemark passes with the same clock rule applied
  (`effective_status`: past its expiration → EXPIRED, a day pass at the end of its day), so only what a clock
  cannot know makes them stale; with Bytemark's `status` field shown as cached instead, (a) shows a stale
  state on {raw_a} of opens.
- **MongoDB write bytes**: (d)/(e): what the real `MongoCacheStore` sends per write — the update's filter and
  update document (`update_statement`) or the inserted document of a build (`apply_plan`), the write's
  change-log entries, the claim document and the back-fill's `next_sync_at` updates — as BSON
  (`bson.encode`), command envelopes and reads left out. (a): the whole document rewritten per sync.
  (b): 0. (c): the JSON answers written to the HTTP cache.

Interpretations:

- **(a) Node** answers every open from its cache at once (a first open without a cache waits for a build)
  and syncs after the open, so the *next* open sees the result; it also refreshes every user with a token
  every hour (spread over the first 5 minutes). No update queue: a purchase or an activation shows at the
  next open after the next sync. **(a')** is the other reading of "sync on every open": the open waits for
  its sync, so it is never stale and never answered without waiting.
- **(c)** is requests-cache (`expire_after=3600`) in front of Bytemark with a per-rider key (the token in
  the key): the cached answer for an hour after each fetch, whatever was bought or activated meanwhile. Its
  default key leaves the Authorization header out (it is among the default `ignored_parameters`, and
  headers are not matched by default): the count of opens that would then get another rider's answer
  assumes Bytemark's answers carry no `Vary: Authorization`.
- **(d)** is the real services with `check_with_ttl(..., refresh_behind=False)`, `scan("stale")` at every
  local hour, purchases and activations through the queue; **(e)** the real services with
  `check_with_ttl(...)`, `scan("due")` every 5 minutes; both run `scan("missing")` daily at 03:15 (the
  template's schedules). For both the queue consumer does what `user_updates` does (`mark_activation`, then
  `sync(reason)`), all on one `FakeClock`, with in-process adapters (`bench/daysim_adapters.py`) under the
  ports' contracts.
- **Warm-up**: figures count only the 24 h window. (a), (a') and (d) start 2 h before it with every cache
  synced at a random time in the hour before; (c) starts empty an hour before; (e) starts 12 h before, each
  cache as the previous day left it (synced at the rider's last app event of the preceding 24 h, as a sync
  the rider caused, or else at a random time in the dormant floor before the start, so the floor's syncs
  are spread as in a steady state). With the first constants (a 24 h floor), a 30 h warm-up gave (e) the
  same requests within 0.5 %.
- **Goals**: "better than (c) on both counts" is read as more opens answered without waiting *and* fewer
  stale states than (c).
- Not modelled: Bytemark's latency, rate limit and failures; the queue consumer's concurrency (every
  message is delivered 1-2 s after it was sent, however many there are); forced syncs
  (`POST /tickets/sync`, pull to refresh); riders activate a pass bought on the website even when the app
  does not show it yet.
"""
