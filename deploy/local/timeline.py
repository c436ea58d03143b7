#!/usr/bin/env python3
"""Deploy timeline chart from the data the deploy tests record.

Inputs:
  --requests CSV  loadgen run --csv: start_unix_s,latency_ms,method,status,server,error,kind
  --events CSV    deploy.sh --events: unix_s,slot,event,release[,detail] (events:
                  drain, stopped, starting, started, ready, failed, rollback;
                  canary-start, canary-check, canary-pass, canary-fail,
                  canary-inconclusive, canary-skipped with the figures in detail)
Output: a PNG with, per 250 ms bucket, requests per second and errors,
p50/p99 latency, and one band per instance showing which release it ran,
when it was draining, down or starting, and failed start attempts; the
canary's analysis is shaded, each measurement a tick, the verdict labelled.

Usage: timeline.py --requests R.csv --events E.csv --out T.png [--title TEXT]
"""

import argparse
import csv
import math
from collections import defaultdict
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

BUCKET = 0.25  # seconds
PALETTE = ["#4c72b0", "#55a868", "#8172b2", "#ccb974", "#64b5cd", "#dd8452"]

# A request: (start unix s, latency ms, server, error 0/1); an event: (unix s,
# slot, event, release, detail); an instance's segment: (start, end, state,
# release); a mark: (unix s, label).
Request = tuple[float, float, str, int]
Event = tuple[float, str, str, str, str]
Segment = tuple[float, float, str, str]
Mark = tuple[float, str]


def read_requests(path: str) -> list[Request]:
    rows: list[Request] = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append(
                (float(r["start_unix_s"]), float(r["latency_ms"]), r["server"], int(r["error"]))
            )
    rows.sort()
    return rows


def read_events(path: str | None) -> list[Event]:
    if not path:
        return []
    try:
        with open(path, newline="") as f:
            return sorted(
                (float(r["unix_s"]), r["slot"], r["event"], r["release"], r.get("detail") or "")
                for r in csv.DictReader(f)
            )
    except FileNotFoundError:
        return []


def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def segments(slot_events: list[Event], t_start: float, t_end: float, initial: str) -> tuple[list[Segment], list[Mark]]:
    """(start, end, state, release) segments for one instance."""
    segs: list[Segment] = []
    state, release, since = "serving", initial, t_start
    marks: list[Mark] = []
    for t, _slot, ev, rel, _detail in slot_events:
        new: tuple[str, str] | None = None
        if ev == "drain":
            release = rel or release
            new = ("draining", release)
        elif ev == "stopped":
            new = ("down", release)
        elif ev in ("starting", "started"):
            new = ("starting", rel)
        elif ev == "ready":
            new = ("serving", rel)
        elif ev == "failed":
            marks.append((t, f"{rel} failed"))
            new = ("down", rel)
        elif ev == "rollback":
            # Usually right after "failed": one label for both.
            if marks and t - marks[-1][0] < 1.0:
                marks[-1] = (marks[-1][0], f"{marks[-1][1]}, back to {rel}")
            else:
                marks.append((t, f"rollback to {rel}"))
        if new:
            segs.append((since, t, state, release))
            state, release = new
            since = t
    segs.append((since, t_end, state, release))
    return segs, marks


VERDICT_COLOR = {"canary-pass": "#55a868", "canary-fail": "#c44e52", "canary-inconclusive": "#dd8452"}


def verdict_label(ev: str, detail: str) -> str:
    """'canary FAIL: errors: canary 5xx ratio 9.43% > baseline 0.00%' from a verdict event."""
    word = ev.split("-", 1)[1].upper()
    text = detail.split(";")[0]
    for prefix in ("fail ", "pass ", "inconclusive "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return f"canary {word}: {text.split(' (')[0]}"


def draw_canary(events: list[Event], t0: float, t_end: float, top_axes: Sequence[Axes], band_ax: Axes,
                servers: list[str]) -> None:
    """Shades the canary's analysis (from its slot's ready to the verdict),
    ticks every measurement and labels the verdict."""
    start: tuple[float, str] | None = None
    ready: float | None = None

    def label(t: float, text: str, color: str) -> None:
        # Right of the line in the first half of the chart, left of it after.
        left = t - t0 < (t_end - t0) / 2
        top_axes[0].annotate(text, (t - t0, 0.6), xycoords=("data", "axes fraction"), xytext=(4 if left else -4, 0),
                             textcoords="offset points", fontsize=8, color=color, ha="left" if left else "right",
                             bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 1}, zorder=5)

    for t, slot, ev, _rel, detail in events:
        if ev == "canary-start":
            start, ready = (t, slot), None
        elif ev == "ready" and start and slot == start[1] and ready is None:
            ready = t
        elif ev == "canary-check" and start:
            row = servers.index(slot) if slot in servers else 0
            band_ax.plot([t - t0], [row - 0.45], marker="|", color="#333333", ms=6)
        elif ev in VERDICT_COLOR and start:
            a = (ready or start[0]) - t0
            for ax in top_axes:
                ax.axvspan(a, t - t0, color="#f2d16b", alpha=0.25, lw=0)
                ax.axvline(t - t0, color=VERDICT_COLOR[ev], lw=1.2)
            label(t, verdict_label(ev, detail), VERDICT_COLOR[ev])
            start = None
        elif ev == "canary-skipped":
            label(t, f"canary skipped: {detail}", "#c44e52")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--events")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="Deploy under load")
    args = ap.parse_args()

    reqs = read_requests(args.requests)
    if not reqs:
        raise SystemExit("timeline: no requests in " + args.requests)
    events = read_events(args.events)
    t0 = reqs[0][0]
    t_end = max(t + lat / 1000 for t, lat, _, _ in reqs)

    # Whole buckets only: a partial last bucket would read as a drop in rate.
    n = max(1, int((t_end - t0) / BUCKET))
    lat: defaultdict[int, list[float]] = defaultdict(list)
    count = [0] * n
    errors = [0] * n
    for t, ms, _server, err in reqs:
        bucket = int((t - t0) / BUCKET)
        if bucket >= n:
            continue
        count[bucket] += 1
        errors[bucket] += err
        if not err:
            lat[bucket].append(ms)
    xs = [i * BUCKET for i in range(n)]
    rps = [c / BUCKET for c in count]
    p50 = [percentile(lat[i], 50) for i in range(n)]
    p99 = [percentile(lat[i], 99) for i in range(n)]

    servers = sorted({s for _, _, s, _ in reqs if s and s != "-"} | {e[1] for e in events})
    initial = next((e[3] for e in events if e[2] == "drain" and e[3]), "?")
    releases: list[str] = []
    by_slot: defaultdict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_slot[e[1]].append(e)
        if e[3] and e[3] not in releases:
            releases.append(e[3])
    if initial not in releases:
        releases.insert(0, initial)
    color = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(releases)}

    fig, (ax1, ax2, ax3) = plt.subplots(
        3, 1, figsize=(12, 8), sharex=True, gridspec_kw={"height_ratios": [2, 2, 0.4 * max(len(servers), 1) + 0.6]}
    )
    total_err = sum(errors)
    fig.suptitle(
        f"{args.title}: {len(reqs)} requests, {total_err} errors, "
        f"{(t_end - t0):.1f} s, {len(reqs) / (t_end - t0):.0f} req/s",
        fontsize=12,
    )

    ax1.plot(xs, rps, color="#333333", lw=1, label="requests/s (250 ms buckets)")
    ax1.set_ylabel("req/s")
    ax1.set_ylim(bottom=0)
    # Errors on their own scale: a few per second must not vanish under 300 req/s.
    ax1e = ax1.twinx()
    ax1e.bar(xs, [e / BUCKET for e in errors], width=BUCKET, align="edge", color="#c44e52", alpha=0.8)
    ax1e.set_ylabel("errors/s", color="#c44e52")
    ax1e.set_ylim(0, max(4, max(errors) / BUCKET * 2.5))
    ax1e.tick_params(axis="y", colors="#c44e52")
    ax1.legend(handles=[Line2D([], [], color="#333333", lw=1, label="requests/s (250 ms buckets)"),
                        Patch(facecolor="#c44e52", label="errors/s (right scale)")], loc="lower left", fontsize=8)
    ax1.grid(alpha=0.3)

    ax2.plot(xs, p50, color="#4c72b0", lw=1, label="p50")
    ax2.plot(xs, p99, color="#dd8452", lw=1, label="p99")
    ax2.set_ylabel("latency (ms)")
    ax2.set_yscale("log")
    ax2.legend(loc="upper left", fontsize=8)
    ax2.grid(alpha=0.3, which="both")

    hatch = {"serving": None, "draining": "////", "starting": "..", "down": None}
    for row, slot in enumerate(servers):
        segs, marks = segments(by_slot.get(slot, []), t0, t_end, initial)
        for a, b, state, rel in segs:
            face = "#dddddd" if state == "down" else color.get(rel, "#999999")
            alpha = 0.45 if state in ("starting", "draining") else 0.9
            ax3.broken_barh([(a - t0, b - a)], (row - 0.4, 0.8), facecolors=face, alpha=alpha,
                            hatch=hatch[state], edgecolor="white", lw=0.5)
            if state == "serving" and b - a > 1.5:
                ax3.text((a + b) / 2 - t0, row, rel, ha="center", va="center", fontsize=8, color="white")
        for t, label in marks:
            ax3.plot([t - t0], [row], marker="x", color="#c44e52")
            ax3.annotate(label, (t - t0, row + 0.42), fontsize=7, color="#c44e52", ha="center", va="bottom")
    for t, _slot, ev, _rel, _detail in events:
        if ev in ("drain", "ready"):
            for ax in (ax1, ax2):
                ax.axvline(t - t0, color="#999999", lw=0.5, ls=":")
    draw_canary(events, t0, t_end, (ax1, ax2), ax3, servers)
    ax3.set_yticks(range(len(servers)))
    ax3.set_yticklabels(servers)
    ax3.set_ylim(-0.6, len(servers) - 0.4 + 0.4)
    ax3.invert_yaxis()
    ax3.set_xlabel("seconds since the load started")
    legend = [Patch(facecolor=color[r], label=f"release {r}") for r in releases]
    legend += [
        Patch(facecolor="white", edgecolor="#666666", hatch="////", label="draining"),
        Patch(facecolor="white", edgecolor="#666666", hatch="..", label="starting"),
        Patch(facecolor="#dddddd", label="down"),
    ]
    if any(e[2] == "canary-start" for e in events):
        legend.append(Patch(facecolor="#f2d16b", alpha=0.5, label="canary analysis (| = a measurement)"))
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(args.out, dpi=100)
    print(f"timeline: {args.out} ({len(reqs)} requests, {total_err} errors, {len(events)} events)")


if __name__ == "__main__":
    main()
