"""Timeline of one region-loss drill run (drills/region-loss-drill.sh).

Acknowledged writes per second on Region A and on Region B (from the load
generator's --writes records, by acknowledgement time), the writes Region B
lacks after the restore, the loss, the recovery steps and the first 2xx
from Region B. Times are seconds from the start of the load.
"""

import argparse
import json
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def acked(path: str) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                w = json.loads(line)
                if 200 <= w["status"] < 300:
                    out.append(w)
    return out


def per_second(times: list[float], t0: float, t1: float) -> tuple[list[int], list[int]]:
    n = int(t1 - t0) + 1
    counts = [0] * n
    for t in times:
        i = int(t - t0)
        if 0 <= i < n:
            counts[i] += 1
    return list(range(n)), counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--summary", required=True)
    p.add_argument("--writes-a", required=True)
    p.add_argument("--writes-b", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    with open(a.summary, encoding="utf-8") as f:
        s = json.load(f)
    at = s["at"]
    t0 = at["load"]
    wa, wb = acked(a.writes_a), acked(a.writes_b)
    end = max([w["t_end"] for w in wb] + [at["first_2xx"]]) + 1

    fig, ax = plt.subplots(figsize=(11, 5.6))
    xa, ya = per_second([w["t_end"] for w in wa], t0, at["loss"])
    xb, yb = per_second([w["t_end"] for w in wb], t0, end)
    ax.step(xa, ya, where="post", color="tab:blue", label="Region A: writes acknowledged/s")
    first_b = int(at["first_2xx"] - t0)
    ax.step(xb[first_b:], yb[first_b:], where="post", color="tab:green", label="Region B: writes acknowledged/s")
    top = max(ya + yb + [1]) * 1.25

    steps = [
        ("restore", at["restore_begin"], at["restored"], "tab:orange"),
        ("start", at["restored"], at["started"], "tab:olive"),
        ("replay", at["started"], at["promoted"], "tab:purple"),
        ("service ready", at["db_ready"], at["first_2xx"], "tab:cyan"),
    ]
    ax.axvspan(at["loss"] - t0, at["restore_begin"] - t0, color="lightgrey", alpha=0.5,
               label=f"Region B host set up {at['restore_begin'] - at['loss']:.1f} s")
    for name, b, e, color in steps:
        ax.axvspan(b - t0, e - t0, color=color, alpha=0.25, label=f"{name} {e - b:.1f} s")
    ax.axvline(at["loss"] - t0, color="red", lw=2, label="Region A lost (kill -9, data deleted)")
    ax.axvline(at["first_2xx"] - t0, color="green", lw=1.5, ls="--", label="first 2xx from Region B")
    ax.axvline(at["to_time"] - t0, color="grey", lw=1, ls=":", label="--to-time check target")
    if s["acknowledged_missing"] > 0:
        first_missing = at["loss"] - s["rpo_seconds"]
        ax.axvspan(first_missing - t0, at["last_acknowledged"] - t0, color="red", alpha=0.15,
                   label=f"{s['acknowledged_missing']} acknowledged writes lost")
    ax.set_ylim(0, top)
    ax.set_xlim(0, end - t0)
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel("acknowledged writes per second")
    ax.set_title(
        f"Region loss: RPO {s['rpo_seconds']:.1f} s ({s['acknowledged_missing']} of {s['acknowledged']} writes,"
        f" archive_timeout {s['archive_timeout_seconds']} s), RTO {s['rto_seconds']:.1f} s"
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, ncol=4, frameon=False)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)


if __name__ == "__main__":
    main()
