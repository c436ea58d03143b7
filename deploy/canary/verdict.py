"""Canary verdict: is the new release (the canary) worse than the release it
replaces (the baseline), judged on what the load balancer saw over the same
interval?

The one place where a deploy decides; the deploy program's canary loop
(deploy/hbdeploy/canary.py) calls judge() on every look, with the figures of
its metric source: HAProxy's per-request log on the local stack, CloudWatch
and the synthetic probes on AWS. Standard library only.

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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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

    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class Verdict:
    decision: str  # continue | pass | fail | inconclusive
    reason: str
    figures: str

    def line(self) -> str:
        return f"{self.decision} {self.reason}; {self.figures}"


def fisher_greater(a: int, b: int, c: int, d: int) -> float:
    """One-sided Fisher exact test on [[a, b], [c, d]]: the probability,
    with the margins fixed, of a first-row count >= a (row 1: canary
    errors/others, row 2: baseline errors/others). Small p: the canary's
    share is higher than chance explains."""
    n1, k, n = a + b, a + c, a + b + c + d
    if n1 == 0 or k == 0:
        return 1.0

    def log_choose(x: int, y: int) -> float:
        return math.lgamma(x + 1) - math.lgamma(y + 1) - math.lgamma(x - y + 1)

    denom = log_choose(n, n1)
    hi = min(k, n1)
    p = 0.0
    for x in range(a, hi + 1):
        if n1 - x > n - k:
            continue
        p += math.exp(log_choose(k, x) + log_choose(n - k, n1 - x) - denom)
    return min(1.0, p)


def latency_bound(baseline_p99_ms: float) -> float:
    """Above this p99 the canary is "clearly slower" than the baseline."""
    return max(LATENCY_RATIO * baseline_p99_ms, baseline_p99_ms + LATENCY_MARGIN_MS)


def judge(canary: Group, baseline: Group, elapsed_s: float, window_s: float) -> Verdict:
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
                p_slow: float | None
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


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def describe(canary: Group, baseline: Group) -> str:
    def one(name: str, g: Group) -> str:
        p99 = "-" if g.p99_ms is None else f"{g.p99_ms:.0f}ms"
        return f"{name} n={g.requests} 5xx={g.errors} ({pct(g.error_ratio())}) p99={p99}"

    return f"{one('canary', canary)} | {one('baseline', baseline)}"


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of a non-empty list (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def groups_from_answers(answers: Iterable[tuple[bool, int, float]]) -> tuple[Group, Group]:
    """(canary, baseline) Groups from single answers (is_canary, status,
    latency ms): status 0 or 5xx is an error (no answer at all counts as one,
    as a client sees it); slow counts use the baseline's latency bound."""
    lat: dict[bool, list[float]] = {True: [], False: []}
    req = {True: 0, False: 0}
    err = {True: 0, False: 0}
    for side, status, ms in answers:
        req[side] += 1
        if status >= 500 or status == 0:
            err[side] += 1
        else:
            lat[side].append(ms)
    p99_b = percentile(lat[False], 99)
    bound = latency_bound(p99_b) if p99_b is not None else math.inf
    groups = [
        Group(req[s], err[s], percentile(lat[s], 99), sum(1 for v in lat[s] if v > bound)) for s in (True, False)
    ]
    return groups[0], groups[1]


def parse_haproxy(lines: Iterable[str], canary: str, since: float) -> tuple[Group, Group]:
    """(canary, baseline) Groups from HAProxy log lines
    "hb-req <accept unix s> <server> <status> <total ms> <method> <path>"
    (deploy/local/haproxy.cfg.tmpl): /hello/ requests accepted at or after
    `since`; the baseline is every other server (requests no server took,
    <NOSRV>, count for neither)."""

    def answers() -> Iterable[tuple[bool, int, float]]:
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
            yield f[2] == canary, status, ms

    return groups_from_answers(answers())


def parse_cloudwatch(doc: Mapping[str, Any]) -> tuple[Group, Group]:
    """(canary, baseline) Groups from a GetMetricData answer to the queries
    ids {canary,baseline}_{requests,errors,connection_errors,p99}:
    RequestCount, HTTPCode_Target_5XX_Count and TargetConnectionErrorCount
    sums, TargetResponseTime p99 in seconds, per target group. A connection
    the load balancer could not open to a target is a 502/503 the client
    saw, so it counts as a 5xx of that side. Counts are summed over the
    periods returned; a p99 over several periods is their maximum (the exact
    p99 needs one period over the whole interval, which is what the canary
    loop asks for). No datapoint: no requests, p99 unknown."""
    values = {r["Id"]: [float(v) for v in r.get("Values", [])] for r in doc.get("MetricDataResults", [])}

    def side(name: str) -> Group:
        keys = ("requests", "errors", "connection_errors", "p99")
        missing = [k for k in keys if f"{name}_{k}" not in values]
        if missing:
            raise ValueError(f"GetMetricData answer lacks {', '.join(f'{name}_{k}' for k in missing)}")
        p99 = values[f"{name}_p99"]
        requests = round(sum(values[f"{name}_requests"]))
        errors = round(sum(values[f"{name}_errors"]) + sum(values[f"{name}_connection_errors"]))
        return Group(max(requests, errors), errors, 1000 * max(p99) if p99 else None)

    return side("canary"), side("baseline")
