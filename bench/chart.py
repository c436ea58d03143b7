#!/usr/bin/env python3
"""Draw the benchmark chart from a results JSON written by bench.py.

Usage: chart.py RESULTS.json OUT.png

Four panels: req/s and p99 latency, for GET and for PUT. One bar per target
(the ceiling, the ceiling with the service's store on SQLite and on
PostgreSQL, the service on SQLite and PostgreSQL, the Flask anchor) at the
median of the runs, with every run as a dot so the spread is visible. Both
axes are logarithmic: the Flask anchor and the ceiling are orders of
magnitude apart.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["ceiling", "ceiling-sqlite", "ceiling-postgres", "sqlite", "sqlite-1m", "postgres",
         "flask"]
COLORS = {"ceiling": "#7f7f7f", "ceiling-sqlite": "#b0b0d8", "ceiling-postgres": "#a8d8a8",
          "sqlite": "#1f77b4", "sqlite-1m": "#9ecae1",
          "postgres": "#2ca02c", "flask": "#ff7f0e"}


def label(target: str, phase: dict[str, Any]) -> str:
    return {
        "ceiling": "ceiling\n(bare hyper)",
        "ceiling-sqlite": "ceiling +\nstore\nSQLite",
        "ceiling-postgres": "ceiling +\nstore\nPostgreSQL",
        "sqlite": f"service\nSQLite\n{phase['users']:,} users",
        "sqlite-1m": f"service\nSQLite\n{phase['users']:,} users",
        "postgres": f"service\nPostgreSQL\n{phase['users']:,} users",
        "flask": "Flask anchor\nSQLite",
    }[target]


def render(results: dict[str, Any], out: Path) -> None:
    phases = {(p["target"], p["method"]): p for p in results["phases"]}
    fig, axes = plt.subplots(2, 2, figsize=(15, 8.5), constrained_layout=True)
    metrics = [("rps", "requests per second (higher is better)", "{:,.0f}"),
               ("p99_ms", "p99 latency, ms (lower is better)", None)]
    for row, method in enumerate(("GET", "PUT")):
        present = [t for t in ORDER if (t, method) in phases]
        for col, (key, title, fmt) in enumerate(metrics):
            ax = axes[row][col]
            for x, target in enumerate(present):
                phase = phases[(target, method)]
                value = phase["median"][key]
                ax.bar(x, value, color=COLORS[target], width=0.65, zorder=2)
                runs = [r[key] for r in phase["runs"]]
                # Runs spread across the bar so that equal values stay visible.
                spread = [x - 0.2 + 0.4 * i / max(len(runs) - 1, 1) for i in range(len(runs))]
                ax.scatter(spread if len(runs) > 1 else [x], runs, color="black", s=10,
                           zorder=3)
                errors = phase.get("errors_total", 0)
                shown = fmt.format(value) if fmt else (f"{value:,.0f}" if value >= 100
                                                       else f"{value:.3g}")
                note = shown + (f"\n{errors} errors" if errors else "")
                # Above the highest point, so no dot covers the number.
                ax.annotate(note, (x, max([value, *runs])), textcoords="offset points",
                            xytext=(0, 5), ha="center", fontsize=8)
            ax.set_xticks(range(len(present)))
            ax.set_xticklabels([label(t, phases[(t, method)]) for t in present], fontsize=8)
            ax.set_yscale("log")
            ax.margins(y=0.25)
            ax.grid(axis="y", which="both", alpha=0.3, zorder=0)
            ax.set_title(f"{method}: {title}", fontsize=10)
    m, c = results["machine"], results["config"]
    fig.suptitle(
        f"hello-birthday benchmark {results['timestamp']} ({results['mode']}): server on 1 core, "
        f"wrk on another, {c['connections']} connections, median of {c['runs']} run(s) "
        f"x {c['duration_s']} s\n{m['nproc']} x {m['cpu_model']}, {m['memory_gib']} GiB, "
        f"kernel {m['kernel']}, 4 KiB fsync median {m['disk']['fsync_4k']['median_us']} us, "
        f"load average at start {' '.join(m['loadavg_at_start'])}",
        fontsize=10)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    render(json.loads(Path(argv[0]).read_text()), Path(argv[1]))
    print(f"wrote {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
