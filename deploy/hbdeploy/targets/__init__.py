"""The small interface a deploy target implements, and what every target
receives. flow.py calls these in one order for every target; a target
implements only what touches its platform."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hbdeploy.canary import CanarySettings, MetricSource
from hbdeploy.release import Artifact


class Mode(enum.Enum):
    DEPLOY = "deploy"
    PLAN = "plan"  # --plan FILE: prepare every change, execute none
    EXECUTE = "execute"  # --execute-plan FILE: exactly those changes, or refuse
    ROLLBACK = "rollback"  # --rollback: back to the recorded previous release


@dataclass(frozen=True)
class Options:
    """The target-independent part of the command line."""

    env: str
    mode: Mode
    artifact: Artifact | None  # --release PATH, verified
    version: str | None  # the release label (None: from the plan, or the rollback's)
    dry_run: bool
    canary: CanarySettings
    plan_file: Path | None = None
    # DEPLOY_ROLLBACK=1: this deploy puts the previous release back: no canary.
    restoring: bool = False
    target_args: Sequence[str] = field(default_factory=tuple)


class CanaryRun(Protocol):
    """A canary taking its share of the traffic, judged by `source`."""

    @property
    def source(self) -> MetricSource: ...

    def event(self, name: str, detail: str) -> None:
        """Records a canary event (the local stack's timeline)."""
        ...

    def promote(self) -> None:
        """Verdict pass: the canary's release goes on to the fleet."""
        ...

    def abort(self, decision: str) -> None:
        """Verdict fail or inconclusive: the canary goes away, the fleet
        stays untouched. Raises when that cannot be done."""
        ...


class Target(Protocol):
    name: str

    def describe(self) -> None:
        """Prints what this deploy will do; changes nothing."""
        ...

    def dry_run(self) -> None:
        """Prints the commands a real run would make; changes nothing."""
        ...

    def url(self) -> str:
        """The base URL the smoke test checks."""
        ...

    def deploying(self) -> AbstractContextManager[None]:
        """Held around the roll-out (the local target's load report)."""
        ...

    def preflight(self) -> None:
        """Before anything changes: what was left half-done is recovered, or
        the deploy stops with the command that recovers it."""
        ...

    def prepare(self) -> None:
        """Everything before the canary: the rollback target recorded, the
        release published or installed, the stacks before the fleet."""
        ...

    def canary_settings(self) -> CanarySettings:
        """The canary's weight, window and tolerance for this run."""
        ...

    def canary_wanted(self) -> bool:
        """Whether this roll-out starts with a canary (says why not)."""
        ...

    def start_canary(self) -> CanaryRun:
        """The new release on a small share of the traffic; restores what it
        changed and raises when the canary cannot start."""
        ...

    def roll_out(self) -> None:
        """The fleet; on a failure, what this step changed is put back."""
        ...

    def verify(self) -> None:
        """Every instance runs the release."""
        ...

    def roll_back(self) -> None:
        """The whole fleet back to the release it ran before this deploy (or
        to the recorded previous release, for --rollback)."""
        ...

    def make_plan(self, path: Path) -> None:
        """--plan FILE."""
        ...
