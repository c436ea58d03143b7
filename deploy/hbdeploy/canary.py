"""The one canary loop: look at a metric source on its schedule, judge every
look with deploy/canary/verdict.py, stop at the first decision.

A metric source knows how to measure the canary and its baseline over the
same interval (HAProxy's per-request log on the local stack; CloudWatch per
target group plus the synthetic probes on AWS) and when it can next be
asked. The loop is the same for both, so staging and production get the
same verdict as the local tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from canary.verdict import Group, Verdict, judge

DECISIONS = ("continue", "pass", "fail", "inconclusive")


@dataclass(frozen=True)
class CanarySettings:
    """--no-canary, --canary-weight, --canary-window, --canary-allow-inconclusive."""

    enabled: bool = True
    weight: int = 10
    window: float | None = None  # None: the target's default
    allow_inconclusive: bool = False
    given: bool = False  # any of these options was on the command line


@dataclass
class Look:
    """One measurement: how far into the window, and per source the canary's
    and the baseline's figures over the same interval. `problem` says the
    canary itself is gone (dead, unhealthy, out of rotation): a failure."""

    elapsed: float
    sides: list[tuple[str, Group, Group]] = field(default_factory=list)
    problem: str | None = None


class MetricSource(Protocol):
    @property
    def window(self) -> float: ...

    def schedule(self) -> Iterator[float]:
        """Wall-clock times (time.time()) of the looks; the last covers the whole window."""
        ...

    def look(self, last: bool) -> Look: ...


def combine(verdicts: list[tuple[str, Verdict]]) -> Verdict:
    """One decision from every source's: any failure fails; otherwise any
    source that wants more time continues; otherwise a source without enough
    traffic makes it inconclusive; a pass needs every source to pass."""
    if len(verdicts) == 1:
        return verdicts[0][1]
    for decision in ("fail", "continue", "inconclusive"):
        hits = [(name, v) for name, v in verdicts if v.decision == decision]
        if hits:
            name, v = hits[0]
            return Verdict(decision, f"{name}: {v.reason}", " || ".join(f"{n}: {x.figures}" for n, x in verdicts))
    name, v = verdicts[0]
    return Verdict("pass", v.reason, " || ".join(f"{n}: {x.figures}" for n, x in verdicts))


def analyse(
    source: MetricSource,
    on_look: Callable[[Look, Verdict], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> Verdict:
    """Looks on the source's schedule until the verdict is not "continue"."""
    times = list(source.schedule())
    verdict = Verdict("fail", "no look at the canary was possible", "")
    for i, at in enumerate(times):
        wait = at - clock()
        if wait > 0:
            sleep(wait)
        look = source.look(last=i == len(times) - 1)
        if look.problem is not None:
            verdict = Verdict("fail", look.problem, f"after {look.elapsed:.1f}s")
        else:
            verdict = combine([(name, judge(c, b, look.elapsed, source.window)) for name, c, b in look.sides])
        on_look(look, verdict)
        if verdict.decision != "continue":
            return verdict
    # The last look covers the whole window, where judge() never says "continue".
    return verdict
