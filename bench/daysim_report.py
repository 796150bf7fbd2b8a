"""The simulated day's report: the world in numbers, the policy table, the goals, the breakdowns, the plot,
and the section of docs/benchmarks.md between its markers (printed either way)."""

from __future__ import annotations

import platform
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.daysim_core import PolicyResult
from bench.daysim_riders import T0, T_END, Rider
from bench.daysim_text import METHOD
from bench.daysim_truth import PAGE_SIZE, Truth
from bytemark_cache.domain import freshness

START_MARKER = "<!-- bench-day:start -->"
END_MARKER = "<!-- bench-day:end -->"
VARIANTS_START = "<!-- bench-day-variants:start -->"
VARIANTS_END = "<!-- bench-day-variants:end -->"
PLOT = "docs/bench-day-requests.png"
MAIN = ("a", "a'", "b", "c", "d", "e")
OPEN_KINDS = ("trip", "look", "after purchase", "after activation", "first")


def world_stats(world: Iterable[Rider], truth: Truth) -> Counter[str]:
    """Summable counts describing the riders and what happened in the window."""
    stats: Counter[str] = Counter()
    for rider in world:
        stats["riders"] += 1
        stats[f"segment {rider.segment}"] += 1
        opens = [e for e in rider.events if e.kind == "open" and T0 <= e.t < T_END]
        stats["riders who open"] += bool(opens)
        stats["opens"] += len(opens)
        for event in rider.events:
            if T0 <= event.t < T_END and event.kind != "open":
                stats[f"in-app {event.kind}s"] += 1
        current, history = truth.lists_at(rider.user_id, T0)
        stats["v1 passes at start"] += len(current)
        stats["v4 passes at start"] += len(history)
        stats["riders with a list over one page"] += max(len(current), len(history)) > PAGE_SIZE
        for p in rider.passes:
            stats["web purchases (unannounced)"] += p.channel == "web" and T0 <= p.created < T_END
            stats["support re-issues (unannounced)"] += p.channel == "support" and T0 <= p.created < T_END
            stats["refunds (unannounced)"] += p.removed is not None and T0 <= p.removed < T_END
            stats["support edits (unannounced)"] += sum(T0 <= t < T_END for t in p.corrections)
            stats["rides ending (single rides used up)"] += p.used_up is not None and T0 <= p.used_up < T_END
            stats["expiries"] += p.expiration is not None and T0 <= p.expiration < T_END
            late = p.first_use is not None and T0 <= p.first_use < T_END and p.product.duration is None
            stats["day passes activated after 21:00 (expire at midnight)"] += late and (
                datetime.fromtimestamp(p.first_use or 0, UTC).hour in (2, 3, 4)  # 21:00-23:59 CDT
            )
    return stats


def merge_stats(parts: Iterable[Counter[str]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part)
    return total


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def _age(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def policy_table(results: dict[str, PolicyResult], keys: Iterable[str]) -> list[str]:
    base = results["a"].requests
    lines = [
        "| policy | Bytemark requests per user-day | vs (a) | opens answered without waiting | "
        "opens showing a stale ticket state | worst stale age | MongoDB write bytes per user-day |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in keys:
        r = results[key]
        write = f"{r.write_bytes / r.riders:,.0f}"
        if key == "c":
            write += " (cache writes)"
        ratio = f"{r.requests / base:.3f}x" if base else "-"
        lines.append(
            f"| ({key}) {r.name} | {r.requests / r.riders:.2f} | {ratio} | {_share(r.no_wait, r.opens)} | "
            f"{_share(r.stale, r.opens)} ({r.stale:,}) | {_age(r.worst_age)} | {write} |"
        )
    return lines


def goals(results: dict[str, PolicyResult]) -> list[str]:
    a, c, e = results["a"], results["c"], results["e"]

    def share(r: PolicyResult, part: int) -> float:
        return part / r.opens if r.opens else 0.0

    ratio = a.requests / e.requests if e.requests else float("inf")
    per_day = f"{e.requests / e.riders:.2f} vs {a.requests / a.riders:.2f} per user-day"
    wait = (share(e, e.no_wait), f"{_share(e.no_wait, e.opens)} ({e.no_wait:,})")
    stale = (share(e, e.stale), f"{_share(e.stale, e.opens)} ({e.stale:,})")
    checks = [
        (ratio >= 10, f"(e) makes at least 10x fewer Bytemark requests than (a): {ratio:.1f}x ({per_day})"),
        (
            wait[0] >= share(a, a.no_wait),
            f"(e) answers at least as many opens without waiting as (a): {wait[1]} vs "
            f"{_share(a.no_wait, a.opens)} ({a.no_wait:,})",
        ),
        (
            stale[0] <= share(a, a.stale),
            f"(e) shows no more stale ticket states than (a): {stale[1]} vs {_share(a.stale, a.opens)} "
            f"({a.stale:,})",
        ),
        (
            wait[0] > share(c, c.no_wait) and stale[0] < share(c, c.stale),
            f"(e) beats (c) on both counts: {wait[1]} vs {_share(c.no_wait, c.opens)} of opens without "
            f"waiting, {stale[1]} vs {_share(c.stale, c.opens)} stale",
        ),
    ]
    return [f"- **{'met' if ok else 'NOT met'}**: {text}" for ok, text in checks]


def breakdowns(results: dict[str, PolicyResult], keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    lines = ["Stale opens by kind of open (stale / opens of that kind):", ""]
    lines.append("| open | " + " | ".join(f"({k})" for k in keys) + " |")
    lines.append("| --- |" + " ---: |" * len(keys))
    for kind in OPEN_KINDS:
        cells = []
        for key in keys:
            opens = results[key].counts.get(f"opens: {kind}", 0)
            stale = results[key].counts.get(f"stale: {kind}", 0)
            cells.append(f"{stale:,} / {opens:,}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    reasons = sorted({n for k in keys for n in results[k].counts if n.startswith("why stale: ")})
    lines += ["", "What differed (stale opens, one open may count under several):", ""]
    lines.append("| difference | " + " | ".join(f"({k})" for k in keys) + " |")
    lines.append("| --- |" + " ---: |" * len(keys))
    for name in reasons:
        cells = [f"{results[k].counts.get(name, 0):,}" for k in keys]
        lines.append(f"| {name.removeprefix('why stale: ')} | " + " | ".join(cells) + " |")
    return lines


def engine_breakdown(results: dict[str, PolicyResult], keys: Iterable[str]) -> list[str]:
    keys = [k for k in keys if k in results]
    names = sorted({n for k in keys for n in results[k].counts if n.startswith(("requests: ", "due by rule: ",
                                                                                "open: "))})  # fmt: skip
    lines = [
        "| per user-day | " + " | ".join(f"({k})" for k in keys) + " |",
        "| --- |" + " ---: |" * len(keys),
    ]
    for name in names:
        cells = [f"{results[k].counts.get(name, 0) / results[k].riders:.3f}" for k in keys]
        label = name.replace("requests: ", "Bytemark requests, ").replace(
            "due by rule: ", "due syncs, rule: "
        )
        label = label.replace("open: ", "opens answered ")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def plot(results: dict[str, PolicyResult], keys: Iterable[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5), dpi=110)
    hours = list(range(24))
    for key in keys:
        r = results[key]
        per_hour = [max(value, 0.5) for value in r.requests_by_hour]  # log scale: 0 drawn at the floor
        style = "--" if key == "a'" else "-"
        axes.plot(hours, per_hour, style, marker="o", markersize=3, label=f"({key}) {r.name}")
    axes.set_yscale("log")
    axes.set_xticks(hours[::2], [f"{(3 + h) % 24:02d}" for h in hours[::2]])
    axes.set_xlabel("local hour (America/Chicago), the service day 03:00-03:00")
    riders = results["a"].riders
    axes.set_ylabel(f"Bytemark requests per hour ({riders:,} riders)")
    axes.set_title("Simulated day: Bytemark requests per hour by policy")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def reading(results: dict[str, PolicyResult]) -> list[str]:
    """A few comparisons worth reading first, from this run's figures."""
    a, d, e = results["a"], results["d"], results["e"]
    per_day = {k: r.requests / r.riders for k, r in results.items()}
    trip = {k: r.counts.get("stale: trip", 0) for k, r in results.items()}
    trips = a.counts.get("opens: trip", 0)
    after = sum(a.counts.get(f"opens: after {what}", 0) for what in ("purchase", "activation"))
    riding = e.counts.get("due by rule: riding (a ride ticket in use)", 0)
    due = sum(v for k, v in e.counts.items() if k.startswith("due by rule: "))
    per_sync = a.write_bytes / max(1, a.counts.get("syncs", 1))
    per_write = e.write_bytes / max(1, e.counts.get("writes", 1))
    stale_syncs = d.counts.get("syncs: backfill", 0) / d.riders
    return [
        f"- (e) makes {per_day['a'] / per_day['e']:.1f}x fewer Bytemark requests than (a) and "
        f"{per_day['d'] / per_day['e']:.1f}x fewer than (d); but (b), no cache at all, makes "
        f"{per_day['b']:.2f} per user-day and (c) {per_day['c']:.2f}: most riders never open the app, while "
        "the back-fill syncs every user.",
        f"- {_share(riding, due)} of (e)'s due syncs come from the riding interval (a ride ticket in use, "
        "whose uses go at the validators); a 7-day or a day pass in use is synced at its expiration only.",
        f"- The wallet reloads right after an in-app purchase or activation ({after:,} opens) are stale in "
        "(a) and (c) every time. On the opens at the stop before a trip "
        f"({trips:,}), stale states are (a) {trip['a']:,}, (c) {trip['c']:,}, (d) {trip['d']:,}, "
        f"(e) {trip['e']:,}: (e) serves a cache an hour old or more with a refresh queued behind it, so a "
        "pass bought on the website or a finished ride shows late.",
        f"- (e) waits on Bytemark for {_share(e.opens - e.no_wait, e.opens)} of opens, (d) for "
        f"{_share(d.opens - d.no_wait, d.opens)}: (d) syncs inline whenever the cache is an hour old.",
        f"- (d)'s hourly `stale` scan syncs each user {stale_syncs:.1f} times a day, not 24: the sync it "
        "queues lands a second or two after the scan, so at the next scan the cache is just under an hour "
        "old and skipped. Everyone is synced in the same hour, every other hour (the zigzag in the plot).",
        f"- Write bytes: (a) rewrites the whole document, {per_sync:,.0f} B per sync; (e) sends "
        f"{per_write:,.0f} B per write on average.",
        f"- Worst stale age: (e) {_age(e.worst_age)} against (a) {_age(a.worst_age)}. (a) syncs everyone "
        "hourly; in (e) a change made outside the app (a web purchase, a refund) for a rider synced only by "
        "the dormant floor waits for that floor or the rider's next open, which shows it once and queues "
        "the refresh that corrects it seconds later. The goals count stale opens, not their age; this is "
        "the price of the floor (see the variants below).",
    ]


def _world(stats: Counter[str]) -> str:
    n = stats["riders"]
    late = stats["day passes activated after 21:00 (expire at midnight)"]
    return (
        f"The same riders and the same events for every policy: {stats['opens']:,} app opens in the 24 h "
        f"(03:00-03:00 local, Tuesday 2024-06-18, America/Chicago) by {stats['riders who open']:,} riders "
        f"({_share(n - stats['riders who open'], n)} never open the app that day); "
        f"{stats['in-app purchases']:,} in-app purchases, {stats['in-app activations']:,} activations, "
        f"{stats['rides ending (single rides used up)']:,} single rides used up at the validators, "
        f"{stats['expiries']:,} expiries, {late:,} day passes activated after 21:00; unannounced at "
        f"Bytemark: {stats['web purchases (unannounced)']:,} web purchases, "
        f"{stats['refunds (unannounced)']:,} refunds, "
        f"{stats['support edits (unannounced)']:,} support edits, "
        f"{stats['support re-issues (unannounced)']:,} re-issued rides. At the start a rider holds "
        f"{stats['v1 passes at start'] / n:.1f} current (v1) and {stats['v4 passes at start'] / n:.1f} "
        f"expired (v4) passes on average; {stats['riders with a list over one page']:,} riders have a list "
        f"longer than one page of {PAGE_SIZE}."
    )


def _command(riders: int, seed: int, processes: int = 2, explore: bool = False) -> str:
    """How to repeat this run: ``make bench-day`` for the defaults."""
    options = [
        f"--riders {riders}" if riders != 10_000 else "",
        f"--seed {seed}" if seed != 7 else "",
        f"--processes {processes}" if processes != 2 else "",
        "--explore" if explore else "",
    ]
    given = " ".join(option for option in options if option)
    return f".venv/bin/python bench/day.py {given}" if given else "make bench-day"


def section(
    results: dict[str, PolicyResult],
    *,
    shared: tuple[int, int],
    stats: Counter[str],
    riders: int,
    seed: int,
    processes: int,
    elapsed: float,
    explore: bool,
    layer: str,
) -> str:
    command = _command(riders, seed, processes, explore)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cpu = ", ".join(f"({k}) {r.seconds:.0f}" for k, r in results.items() if k in MAIN)
    lines = [START_MARKER, "## The simulated day (`make bench-day`)", ""]
    lines += [
        f"Command: `{command}` — {when}, layer at {layer}, Python {platform.python_version()}, seed {seed}, "
        f"{riders:,} riders, {processes} processes, run time {elapsed:.0f} s (CPU seconds per policy, all "
        f"processes: {cpu}). "
        "Code: `bench/day.py` and `bench/daysim_*.py`; the method and the interpretations follow the tables.",
        "",
        _world(stats),
        "",
    ]
    lines += policy_table(results, MAIN)
    total, foreign = shared
    lines += [
        "",
        f"With requests-cache's **default** key (no Authorization header in it) all riders share one entry "
        f"per list: {foreign:,} of {total:,} opens ({_share(foreign, total)}) would have been answered with "
        "another rider's tickets. (c) above uses a per-rider key.",
        "",
        "Goals of the new policy (e):",
        "",
        *goals(results),
        "",
        "Reading it:",
        "",
        *reading(results),
        "",
        *breakdowns(results, MAIN),
        "",
        "Where (d)'s and (e)'s Bytemark requests come from:",
        "",
        *engine_breakdown(results, [k for k in results if k in ("d",) or k.startswith("e")]),
        "",
        f"![Bytemark requests per simulated hour]({Path(PLOT).name})",
        "",
        METHOD.format(raw_a=_share(results["a"].stale_raw or 0, results["a"].opens)).rstrip("\n"),
        END_MARKER,
    ]
    return "\n".join(lines)


def variants_section(results: dict[str, PolicyResult], *, riders: int, seed: int, layer: str) -> str:
    keys = [k for k in results if k.startswith("e")]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        VARIANTS_START,
        "### Variants of (e) (`--explore`)",
        "",
        f"`{_command(riders, seed, explore=True)}` — {when}, layer at {layer}, seed {seed}, "
        f"{riders:,} riders. Same riders and events; each variant patches the freshness policy in the "
        "run's process (exploration only, the layer is unchanged): the constants named, or (e5) the rule "
        "this issue's first (e) ran with, where every pass in use (a 7-day or a day pass too) was synced "
        "every 30 minutes for its whole validity.",
        "",
        *policy_table(results, ["a", *keys]),
        "",
        *choosing(results),
        VARIANTS_END,
    ]
    return "\n".join(lines)


def choosing(results: dict[str, PolicyResult]) -> list[str]:
    """Why the shipped constants, in this run's figures (given the variants ``variants`` names)."""
    if not {"a", "e", "e1", "e4", "e5"} <= results.keys():
        return []
    a, e, first, long_floor, before = (results[k] for k in ("a", "e", "e1", "e4", "e5"))

    def per_day(r: PolicyResult) -> float:
        return r.requests / r.riders

    return [
        "Choosing the constants: the ride-ticket rule is the one change with no cost in freshness ((e5) "
        f"spends {per_day(before) / per_day(e):.1f}x (e)'s requests for {_share(before.stale, before.opens)} "
        f"stale opens against {_share(e.stale, e.opens)}). The two intervals trade requests for stale opens: "
        f"(e1)'s 4-hour active interval and daily floor show {_share(first.stale, first.opens)} stale opens "
        f"instead of {_share(e.stale, e.opens)} for {per_day(first) / per_day(e):.1f}x the requests; what "
        "the longer intervals show late is a change made outside the app (a web purchase, a refund), never "
        "one made in it, which the queue brings at once. A 72 h floor (e4) saves "
        f"{100 * (1 - per_day(long_floor) / per_day(e)):.0f} % more, but a change made outside the app then "
        f"waits up to {_age(long_floor.worst_age)} for its rider's open. The shipped constants keep (e) at "
        f"{per_day(a) / per_day(e):.1f}x fewer requests than (a) with {_share(e.stale, e.opens)} stale "
        f"opens, and every cache synced within {freshness.DORMANT_FLOOR_SECONDS // 3600} h.",
        "",
        "The price is paid at the stop: on the opens before a trip (e) shows "
        f"{e.counts.get('stale: trip', 0):,} stale states where (a) shows {a.counts.get('stale: trip', 0):,} "
        f"and (e1) {first.counts.get('stale: trip', 0):,}, nearly all a pass bought on the website hours "
        "before and not shown yet. Such a cache is nearly always older than the TTL, so that open queues the "
        "refresh that brings the pass seconds later; the app shows it on its next read "
        "(`refreshing: true` says one is coming). Overall (e) still shows far fewer stale states than (a), "
        "whose stale opens are the purchases and activations it had not synced yet.",
    ]


def _replace(current: str, start: str, end: str, text: str, after: str | None = None) -> str:
    if start in current and end in current:
        before, rest = current.split(start, 1)
        return before + text + rest.split(end, 1)[1]
    if after is not None and after in current:
        before, rest = current.split(after, 1)
        return before + after + "\n\n" + text + rest
    return current.rstrip("\n") + "\n\n" + text + "\n"


def write_report(results: dict[str, PolicyResult], *, root: Path, write: bool, **context: Any) -> None:
    text = section(results, **context)
    print(text)
    variants = None
    if context["explore"]:
        variants = variants_section(
            results, riders=context["riders"], seed=context["seed"], layer=context["layer"]
        )
        print("\n" + variants)
    if not write:
        return
    plot(results, MAIN, root / PLOT)
    doc = root / "docs" / "benchmarks.md"
    updated = _replace(doc.read_text(), START_MARKER, END_MARKER, text)
    if variants is not None:
        updated = _replace(updated, VARIANTS_START, VARIANTS_END, variants, after=END_MARKER)
    doc.write_text(updated)
    print(f"\nwritten: {doc.relative_to(root)}, {PLOT}")
