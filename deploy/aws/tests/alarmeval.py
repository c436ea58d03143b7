"""A CloudWatch alarm evaluated the way CloudWatch evaluates it, over a
recorded series of per-minute datapoints.

What it models (CloudWatch User Guide, "Using Amazon CloudWatch alarms",
"Configuring how CloudWatch alarms treat missing data", "Metric math
syntax and functions"):

- each metric query aggregates the raw per-minute datapoints of its
  metric into its Period with its statistic (Sum, Average, Minimum,
  Maximum, SampleCount, pNN, PR(:t)); a period with no raw datapoint has
  no value (missing);
- metric math on those periods: + - * /, numbers, FILL(m, v) (a value for
  every period of the range), arithmetic on two series only where both
  have a value, division by zero yields no value;
- the alarm looks at its last EvaluationPeriods periods, ending now; a
  period breaches when its value compares to Threshold as
  ComparisonOperator says; TreatMissingData: breaching / notBreaching
  turn a missing period into one of those, missing and ignore use the
  periods present (all missing: INSUFFICIENT_DATA, resp. the previous
  state); ALARM when at least DatapointsToAlarm periods breach, else OK;
- a composite alarm's rule: ALARM("name"), OK("name"), AND, OR, NOT,
  parentheses.

A recording maps (namespace, metric name) to a list with one entry per
minute, oldest first: None (no datapoint that minute), a number, or, for
latency metrics, a list of the samples of that minute (their percentiles
are computed over the samples of the whole period). Dimensions are the
templates' business and are checked by the property tests, not here.
"""

from __future__ import annotations

import math
import re
from typing import Any, Union

Minute = Union[None, float, list[float]]
Recording = dict[tuple[str, str], list[Minute]]
Series = list[float | None]


def _stat(values: list[Minute], stat: str) -> float | None:
    samples: list[float] = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, list):
            samples += v
        else:
            samples.append(float(v))
    if not samples:
        return None
    if stat == "Sum":
        return sum(samples)
    if stat == "Average":
        return sum(samples) / len(samples)
    if stat == "Minimum":
        return min(samples)
    if stat == "Maximum":
        return max(samples)
    if stat == "SampleCount":
        return float(len(samples))
    m = re.fullmatch(r"p(\d+(?:\.\d+)?)", stat)
    if m:
        ordered = sorted(samples)
        rank = max(0, math.ceil(float(m.group(1)) / 100 * len(ordered)) - 1)
        return ordered[rank]
    m = re.fullmatch(r"PR\(([\d.]*):([\d.]*)\)", stat)
    if m:
        lo = float(m.group(1)) if m.group(1) else -math.inf
        hi = float(m.group(2)) if m.group(2) else math.inf
        return 100.0 * sum(1 for x in samples if lo < x <= hi) / len(samples)
    raise AssertionError(f"statistic not modelled: {stat}")


def _periods(recording: Recording, namespace: str, metric: str, stat: str, period: int, count: int) -> Series:
    minutes = period // 60
    raw = recording.get((namespace, metric), [])
    total = max((len(v) for v in recording.values()), default=0)
    raw = [None] * (total - len(raw)) + list(raw)
    out: Series = []
    for i in range(count):
        end = total - (count - 1 - i) * minutes
        start = end - minutes
        out.append(_stat(raw[max(0, start):max(0, end)], stat) if end > 0 else None)
    return out


# -- metric math ---------------------------------------------------------------

def _tokens(text: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)?|[A-Za-z_][A-Za-z0-9_]*|[-+*/(),]", text)


class _Parser:
    def __init__(self, text: str, env: dict[str, Series], n: int) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.env = env
        self.n = n

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.toks[self.i]
        assert want is None or tok == want, f"expected {want}, got {tok}"
        self.i += 1
        return tok

    def expr(self) -> Any:
        left = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            left = _binary(op, left, self.term(), self.n)
        return left

    def term(self) -> Any:
        left = self.atom()
        while self.peek() in ("*", "/"):
            op = self.take()
            left = _binary(op, left, self.atom(), self.n)
        return left

    def atom(self) -> Any:
        tok = self.take()
        if tok == "(":
            v = self.expr()
            self.take(")")
            return v
        if re.fullmatch(r"\d+(?:\.\d+)?", tok):
            return float(tok)
        if tok == "FILL":
            self.take("(")
            series = self.expr()
            self.take(",")
            value = self.expr()
            self.take(")")
            assert isinstance(series, list) and isinstance(value, float)
            return [value if v is None else v for v in series]
        if tok == "-":
            return _binary("*", -1.0, self.atom(), self.n)
        assert tok in self.env, f"unknown id or function in metric math: {tok}"
        return list(self.env[tok])


def _binary(op: str, a: Any, b: Any, n: int) -> Any:
    if isinstance(a, float) and isinstance(b, float):
        return _apply(op, a, b)
    sa = a if isinstance(a, list) else [a] * n
    sb = b if isinstance(b, list) else [b] * n
    return [None if x is None or y is None else _apply(op, x, y) for x, y in zip(sa, sb)]


def _apply(op: str, x: float, y: float) -> float | None:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if y == 0:
        return None
    return x / y


# -- alarms -------------------------------------------------------------------

def series_of(alarm: dict[str, Any], recording: Recording) -> Series:
    """The value of each of the alarm's last EvaluationPeriods periods."""
    n = int(alarm["EvaluationPeriods"])
    if "Metrics" not in alarm:
        stat = alarm.get("Statistic") or alarm["ExtendedStatistic"]
        return _periods(recording, alarm["Namespace"], alarm["MetricName"], stat, int(alarm["Period"]), n)
    env: dict[str, Series] = {}
    result = None
    queries = alarm["Metrics"]
    for q in queries:
        if "MetricStat" in q:
            ms = q["MetricStat"]
            env[q["Id"]] = _periods(recording, ms["Metric"]["Namespace"], ms["Metric"]["MetricName"], ms["Stat"],
                                    int(ms["Period"]), n)
    for q in queries:
        if "Expression" in q:
            env[q["Id"]] = _Parser(q["Expression"], env, n).expr()
    [returned] = [q for q in queries if q.get("ReturnData", True)]
    result = env[returned["Id"]]
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in result]


def _breaches(alarm: dict[str, Any], value: float) -> bool:
    t = float(alarm["Threshold"])
    return {"GreaterThanThreshold": value > t, "GreaterThanOrEqualToThreshold": value >= t,
            "LessThanThreshold": value < t, "LessThanOrEqualToThreshold": value <= t}[alarm["ComparisonOperator"]]


def state(alarm: dict[str, Any], recording: Recording, previous: str = "OK") -> str:
    values = series_of(alarm, recording)
    need = int(alarm.get("DatapointsToAlarm", alarm["EvaluationPeriods"]))
    treat = alarm.get("TreatMissingData", "missing")
    marks: list[bool] = []
    for v in values:
        if v is None:
            if treat == "breaching":
                marks.append(True)
            elif treat == "notBreaching":
                marks.append(False)
        else:
            marks.append(_breaches(alarm, float(v)))
    if not marks:
        return previous if treat == "ignore" else "INSUFFICIENT_DATA"
    return "ALARM" if sum(marks) >= min(need, len(values)) else "OK"


def composite_state(rule: str, states: dict[str, str]) -> bool:
    """Whether a composite alarm's rule is true for the named alarms' states."""
    text = re.sub(r'(ALARM|OK|INSUFFICIENT_DATA)\("([^"]+)"\)',
                  lambda m: str(states[m.group(2)] == m.group(1)), rule)
    text = text.replace("AND", "and").replace("OR", "or").replace("NOT", "not")
    assert re.fullmatch(r"[\sA-Za-z()]*", text) and set(re.findall(r"[A-Za-z]+", text)) <= {
        "True", "False", "and", "or", "not"}, text
    return bool(eval(text))  # noqa: S307 - only True/False/and/or/not and parentheses remain
