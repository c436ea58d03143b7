"""The deploy flow, the same for every target:

    plan -> preflight -> prepare -> canary -> analyse -> promote | stop
         -> roll out -> verify -> smoke test -> roll back if it fails

Each phase is a named step (steps.py): a failure stops the deploy there,
after the target put back what that step changed. The canary runs whenever
the release changes (the target says when it cannot: a first deploy, a
rollback), before the fleet is touched, and its verdict decides.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

from canary.verdict import Verdict
from hbdeploy.canary import CanarySettings, Look, analyse
from hbdeploy.steps import Console, DeployError
from hbdeploy.targets import Mode, Options, Target

ROOT = Path(__file__).resolve().parents[2]
NO_CANARY = "--no-canary: no canary analysis; a release that fails some requests or is slow goes to EVERY instance"


def smoke_command() -> list[str]:
    """DEPLOY_SMOKE (the tests set a failing one), else scripts/smoke.sh."""
    custom = os.environ.get("DEPLOY_SMOKE")
    return shlex.split(custom) if custom else [str(ROOT / "scripts" / "smoke.sh")]


def smoke_passes(console: Console, url: str) -> bool:
    cmd = [*smoke_command(), url]
    console.heading(f"smoke test against {url}")
    return subprocess.run(cmd, check=False).returncode == 0


def canary(console: Console, target: Target, settings: CanarySettings) -> None:
    run = target.start_canary()

    def on_look(look: Look, verdict: Verdict) -> None:
        console.say(f"canary {look.elapsed:.1f}s: {verdict.line()}")
        run.event("canary-check", verdict.line())

    try:
        verdict = analyse(run.source, on_look)
    except KeyboardInterrupt:
        run.abort("INTERRUPTED")
        raise
    detail = f"{verdict.reason}; {verdict.figures}"
    if verdict.decision == "pass":
        console.heading(f"canary: PASS ({detail})")
        run.event("canary-pass", detail)
        run.promote()
        return
    if verdict.decision == "inconclusive" and settings.allow_inconclusive:
        console.heading(f"canary: INCONCLUSIVE, going on (--canary-allow-inconclusive): {detail}")
        run.event("canary-inconclusive", f"going on: {detail}")
        run.promote()
        return
    run.event(f"canary-{verdict.decision}", detail)
    run.abort(verdict.decision.upper())
    if verdict.decision == "inconclusive":
        raise DeployError(
            f"canary verdict INCONCLUSIVE: {detail}\n    too little traffic to judge the release; the fleet is"
            " untouched (a longer --canary-window, or --canary-allow-inconclusive to go on without a verdict)"
        )
    raise DeployError(f"canary verdict {verdict.decision.upper()}: {detail}")


def run(console: Console, opts: Options, target: Target, version: str | None, smoke: bool) -> None:
    t0 = time.monotonic()

    def took() -> str:
        return f"{time.monotonic() - t0:.0f}s"

    if opts.mode is Mode.PLAN:
        with console.step("plan"):
            target.describe()
        assert opts.plan_file is not None
        target.make_plan(opts.plan_file)
        return

    if opts.mode is Mode.ROLLBACK:
        with console.step("roll back", f"roll back{' ' + version if version else ''}"):
            if not opts.dry_run:
                target.preflight()
            target.roll_back()
        if opts.dry_run:
            return
        if smoke and not smoke_passes(console, target.url()):
            raise DeployError("smoke test failed after the rollback: the fleet needs attention", step="smoke test")
        console.heading(f"rolled back in {took()}")
        return

    with console.step("plan"):
        target.describe()
    if opts.dry_run:
        target.dry_run()
        console.heading("dry run: nothing changed")
        return

    with console.step("preflight", "preflight: anything left half-done by an earlier run"):
        target.preflight()
    with target.deploying():
        with console.step("prepare", announce=False):
            target.prepare()
        if target.canary_wanted():
            with console.step("canary", announce=False):
                canary(console, target, target.canary_settings())
        elif not opts.canary.enabled:
            console.loud(NO_CANARY)
        with console.step("roll out"):
            target.roll_out()
        with console.step("verify", announce=False):
            target.verify()

    if smoke and not smoke_passes(console, target.url()):
        try:
            with console.step("roll back", "smoke test failed: rolling the fleet back"):
                target.roll_back()
        except DeployError as e:
            raise DeployError(f"smoke test failed on {version} AND the rollback failed: {e}; the fleet needs attention",
                              step="roll back") from e
        raise DeployError(f"smoke test failed on {version}; rolled back", step="smoke test")

    if not opts.canary.enabled:
        console.loud(NO_CANARY)
    console.heading(f"deployed {version} to {target.name} ({opts.env}) in {took()}")
