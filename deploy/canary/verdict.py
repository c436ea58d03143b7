#!/usr/bin/env python3
"""Canary verdict: is the new release (the canary) worse than the release it
replaces (the baseline), judged on what the load balancer saw over the same
interval?

The one place where a deploy decides. Python standard library only, so it
runs wherever deploys run (a CI job without the project's virtualenv too).

    fail          the canary's 5xx ratio is above the SLO's error-budget rate
                  AND above the baseline's by more than chance (one-sided
                  Fisher exact test, p < ALPHA);
                  or its p99 is above LATENCY_RATIO x the baseline's p99 AND
                  above the baseline's p99 + LATENCY_MARGIN_MS, with (when
                  per-request latencies are known) more canary requests slower
                  than that bound than chance explains (same test)
    continue      no failure yet and the window is not over: measure again
    pass          the window is over, enough requests on both sides, no failure
    inconclusive  the window is over with too few requests to judge

A failure stops the canary as soon as the evidence is clear (ALPHA is small
because the deploy looks many times); a pass is only given at the end of the
window.

Usage:
  verdict.py haproxy --log FILE [--offset BYTES] --since UNIX_S --canary SLOT
                     --elapsed S --window S
      judge HAProxy's per-request log (lines "hb-req <accept unix s> <server>
      <status> <total ms> <method> <path>", deploy/local/haproxy.cfg.tmpl)
  verdict.py figures --canary-requests N --canary-errors N --canary-p99-ms MS
                     --baseline-requests N --baseline-errors N --baseline-p99-ms MS
                     --elapsed S --window S
      judge aggregate figures (CloudWatch: counts and p99 per target group)
  verdict.py cloudwatch --metric-data FILE --elapsed S --window S
      judge the answer of `aws cloudwatch get-metric-data` (JSON) to the
      queries deploy/aws/canary.sh asks: ids {canary,baseline}_{requests,
      errors,p99} (RequestCount, HTTPCode_Target_5XX_Count sums and
      TargetResponseTime p99 in seconds, per target group)

Prints one line: "<decision> <reason>; <figures>". Exit 0 for every decision
(the caller acts on the first word), 2 on bad input.
"""

import argparse
import json
import math
import sys
from dataclasses import dataclass

# --- thresholds: what a deploy tolerates, and why --------------------------

# docs/slo.md: 99.9 % of /hello/ requests not 5xx. A canary that stays under
# the budget's rate does not threaten the SLO even if it is a little worse
# than the baseline.
ERROR_BUDGET_RATE = 0.001
# Significance per look. The local deploy looks at most 30 times in a window
# of up to 5 minutes; by Bonferroni at most 30 x 0.001 = 3 % of good canaries
# are failed by chance, and a bad one is still caught within seconds.
ALPHA = 0.001
# "Clearly slower": twice the baseline's p99 and at least 50 ms more. The
# ratio alone would fail a canary going from 2 ms to 5 ms; the margin alone
# would ignore a doubling of a slow baseline.
LATENCY_RATIO = 2.0
LATENCY_MARGIN_MS = 50.0
# Enough requests to pass: with 100 canary requests, a canary failing 10 %
# of them shows at least 3 errors with probability 0.998, and 3 errors
# against a clean baseline of 900 are significant (p = 9.7e-4). Fewer is
# "inconclusive", never a silent pass.
MIN_CANARY_REQUESTS = 100
MIN_BASELINE_REQUESTS = 100
# No verdict at all on a handful of requests. The tests of significance
# guard against chance; this only keeps a first look from deciding on the
# first few answers of a fresh process.
MIN_FAIL_REQUESTS = 10


@dataclass
class Group:
    """What the load balancer saw of one side over the interval."""

    requests: int  # /hello/ requests answered
    errors: int  # of which 5xx
    p99_ms: float | None  # p99 of the answers that were not 5xx
    slow: int | None = None  # answers slower than the latency bound (None: unknown)

    def error_ratio(self):
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class Verdict:
    decision: str  # continue | pass | fail | inconclusive
    reason: str
    figures: str

    def line(self):
        return f"{self.decision} {self.reason}; {self.figures}"


def fisher_greater(a, b, c, d):
    """One-sided Fisher exact test on [[a, b], [c, d]]: the probability,
    with the margins fixed, of a first-row count >= a (row 1: canary
    errors/others, row 2: baseline errors/others). Small p: the canary's
    share is higher than chance explains."""
    n1, k, n = a + b, a + c, a + b + c + d
    if n1 == 0 or k == 0:
        return 1.0

    def log_choose(x, y):
        return math.lgamma(x + 1) - math.lgamma(y + 1) - math.lgamma(x - y + 1)

    denom = log_choose(n, n1)
    hi = min(k, n1)
    p = 0.0
    for x in range(a, hi + 1):
        if n1 - x > n - k:
            continue
        p += math.exp(log_choose(k, x) + log_choose(n - k, n1 - x) - denom)
    return min(1.0, p)


def latency_bound(baseline_p99_ms):
    """Above this p99 the canary is "clearly slower" than the baseline."""
    return max(LATENCY_RATIO * baseline_p99_ms, baseline_p99_ms + LATENCY_MARGIN_MS)


def judge(canary, baseline, elapsed_s, window_s):
    """The decision after elapsed_s of a window_s canary window."""
    figures = describe(canary, baseline)
    if canary.requests >= MIN_FAIL_REQUESTS and baseline.requests >= MIN_FAIL_REQUESTS:
        p_err = fisher_greater(
            canary.errors, canary.requests - canary.errors, baseline.errors, baseline.requests - baseline.errors
        )
        if canary.error_ratio() > ERROR_BUDGET_RATE and p_err < ALPHA:
            return Verdict(
                "fail",
                f"errors: canary 5xx ratio {pct(canary.error_ratio())} > baseline {pct(baseline.error_ratio())}"
                f" (one-sided Fisher exact p={p_err:.1e} < {ALPHA}) and > error budget {pct(ERROR_BUDGET_RATE)}",
                figures,
            )
        if canary.p99_ms is not None and baseline.p99_ms is not None:
            bound = latency_bound(baseline.p99_ms)
            if canary.p99_ms > bound:
                ok_c, ok_b = canary.requests - canary.errors, baseline.requests - baseline.errors
                if canary.slow is None or baseline.slow is None:
                    p_slow, significant = None, canary.requests >= MIN_CANARY_REQUESTS
                else:
                    p_slow = fisher_greater(canary.slow, ok_c - canary.slow, baseline.slow, ok_b - baseline.slow)
                    significant = p_slow < ALPHA
                if significant:
                    test = "" if p_slow is None else f", {canary.slow} vs {baseline.slow} answers above it (p={p_slow:.1e})"
                    return Verdict(
                        "fail",
                        f"latency: canary p99 {canary.p99_ms:.0f} ms > {bound:.0f} ms"
                        f" (max of {LATENCY_RATIO:g} x and +{LATENCY_MARGIN_MS:.0f} ms over baseline p99"
                        f" {baseline.p99_ms:.0f} ms){test}",
                        figures,
                    )
    if elapsed_s < window_s:
        return Verdict("continue", f"{elapsed_s:.0f}/{window_s:.0f} s, no failure so far", figures)
    if canary.requests < MIN_CANARY_REQUESTS or baseline.requests < MIN_BASELINE_REQUESTS:
        return Verdict(
            "inconclusive",
            f"too little traffic to judge: canary {canary.requests} (need {MIN_CANARY_REQUESTS}),"
            f" baseline {baseline.requests} (need {MIN_BASELINE_REQUESTS}) /hello/ requests in {elapsed_s:.0f} s",
            figures,
        )
    return Verdict("pass", f"no difference beyond chance after {elapsed_s:.0f} s", figures)


def pct(x):
    return f"{100 * x:.2f}%"


def describe(canary, baseline):
    def one(name, g):
        p99 = "-" if g.p99_ms is None else f"{g.p99_ms:.0f}ms"
        return f"{name} n={g.requests} 5xx={g.errors} ({pct(g.error_ratio())}) p99={p99}"

    return f"{one('canary', canary)} | {one('baseline', baseline)}"


def percentile(values, p):
    """Nearest-rank percentile of a non-empty list (None when empty)."""
    if not values:
        return None
    values = sorted(values)
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)]


def parse_haproxy(lines, canary, since):
    """(canary, baseline) Groups from HAProxy log lines
    "hb-req <accept unix s> <server> <status> <total ms> <method> <path>":
    /hello/ requests accepted at or after `since`; the baseline is every other
    server (requests no server took, <NOSRV>, count for neither)."""
    lat = {True: [], False: []}
    req = {True: 0, False: 0}
    err = {True: 0, False: 0}
    for line in lines:
        f = line.split()
        if len(f) < 7 or f[0] != "hb-req" or not f[6].startswith("/hello/"):
            continue
        try:
            ts, status, ms = float(f[1]), int(f[3]), float(f[4])
        except ValueError:
            continue
        # Status -1: the client went away before an answer; nothing to judge.
        if ts < since or status < 0 or ms < 0 or f[2].startswith("<"):
            continue
        side = f[2] == canary
        req[side] += 1
        if status >= 500:
            err[side] += 1
        else:
            lat[side].append(ms)
    p99_b = percentile(lat[False], 99)
    bound = latency_bound(p99_b) if p99_b is not None else math.inf
    groups = [
        Group(req[s], err[s], percentile(lat[s], 99), sum(1 for v in lat[s] if v > bound)) for s in (True, False)
    ]
    return groups[0], groups[1]


def parse_cloudwatch(doc):
    """(canary, baseline) Groups from a get-metric-data answer. Counts are
    summed over the periods returned; a p99 over several periods is their
    maximum (the exact p99 needs one period over the whole interval, which is
    what canary.sh asks for). No datapoint: no requests, p99 unknown."""
    values = {r["Id"]: [float(v) for v in r.get("Values", [])] for r in doc.get("MetricDataResults", [])}

    def side(name):
        missing = [k for k in ("requests", "errors", "p99") if f"{name}_{k}" not in values]
        if missing:
            raise ValueError(f"get-metric-data answer lacks {', '.join(f'{name}_{k}' for k in missing)}")
        p99 = values[f"{name}_p99"]
        return Group(
            round(sum(values[f"{name}_requests"])),
            round(sum(values[f"{name}_errors"])),
            1000 * max(p99) if p99 else None,
        )

    return side("canary"), side("baseline")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="source", required=True)
    h = sub.add_parser("haproxy")
    h.add_argument("--log", required=True)
    h.add_argument("--offset", type=int, default=0, help="start reading the log at this byte")
    h.add_argument("--since", type=float, required=True, help="first accept time (unix s) of the interval")
    h.add_argument("--canary", required=True, help="HAProxy server name of the canary")
    g = sub.add_parser("figures")
    for side in ("canary", "baseline"):
        g.add_argument(f"--{side}-requests", type=int, required=True)
        g.add_argument(f"--{side}-errors", type=int, required=True)
        g.add_argument(f"--{side}-p99-ms", type=float)
    c = sub.add_parser("cloudwatch")
    c.add_argument("--metric-data", required=True, help="JSON answer of aws cloudwatch get-metric-data")
    for p in (h, g, c):
        p.add_argument("--elapsed", type=float, required=True, help="seconds of the window so far")
        p.add_argument("--window", type=float, required=True, help="length of the window, seconds")
    a = ap.parse_args(argv)
    if a.source == "haproxy":
        try:
            with open(a.log, "rb") as f:
                f.seek(a.offset)
                text = f.read().decode("utf-8", "replace")
        except OSError as e:
            print(f"verdict.py: cannot read {a.log}: {e}", file=sys.stderr)
            return 2
        canary, baseline = parse_haproxy(text.splitlines(), a.canary, a.since)
    elif a.source == "cloudwatch":
        try:
            with open(a.metric_data, encoding="utf-8") as f:
                canary, baseline = parse_cloudwatch(json.load(f))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"verdict.py: cannot use {a.metric_data}: {e}", file=sys.stderr)
            return 2
    else:
        canary = Group(a.canary_requests, a.canary_errors, a.canary_p99_ms)
        baseline = Group(a.baseline_requests, a.baseline_errors, a.baseline_p99_ms)
        if min(canary.requests, canary.errors, baseline.requests, baseline.errors) < 0 or (
            canary.errors > canary.requests or baseline.errors > baseline.requests
        ):
            print("verdict.py: counts must be >= 0 and errors <= requests", file=sys.stderr)
            return 2
    print(judge(canary, baseline, a.elapsed, a.window).line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
