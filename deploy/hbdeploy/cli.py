"""The command line of scripts/deploy.sh. Exit 0: deployed (or planned,
rolled back); 1: a step failed (its name is in the error); 2: a command
line that cannot run (nothing touched)."""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

from hbdeploy import flow
from hbdeploy.canary import CanarySettings
from hbdeploy.release import check_label, verify_artifact
from hbdeploy.steps import Console, DeployError, UsageError
from hbdeploy.targets import Mode, Options, Target

USAGE = """\
Usage: scripts/deploy.sh --target local|aws (--release PATH | --version V) [options] [target options]

  --target T         where to deploy: local (deploy/local, the loopback stack) or aws
  --release PATH     release binary to deploy; its checksum file PATH.sha256
                     (sha256sum format) must match
  --write-checksum   create PATH.sha256 when it is missing (a binary built here)
  --version V        release label (default: sha-<first 12 hex digits of the
                     binary's SHA-256>); without --release the target takes
                     the release recorded under this label
  --env E            staging (default) or production
  --dry-run          print the plan and the commands, change nothing
  --no-smoke         skip the smoke test after the roll-out
  --canary-weight P  share of the traffic, in percent, the canary takes (default 10)
  --canary-window S  how long the canary is judged before it is promoted
                     (default: the target's, local 60 s, aws 300 s in whole minutes)
  --canary-allow-inconclusive
                     go on when the canary saw too little traffic to judge
                     (default: stop and put the canary back)
  --no-canary        emergencies only: roll out WITHOUT canary analysis
  --plan FILE        publish the release and prepare every change without
                     executing any, the canary included; write the plan to
                     FILE (aws)
  --execute-plan FILE
                     execute exactly that plan (its canary first, then the
                     fleet), or refuse when the environment changed since;
                     then smoke test as usual
  --rollback         return to the recorded previous release (no artifact
                     needed); with --version V, only when V is what runs.
                     The record of what "previous" is stays as it was
  -h, --help         this help

Target options:
  local: --state-dir DIR  --ready-timeout SECS (30)  --drain-timeout SECS (10)
         --events FILE (append timeline events: unix_s,slot,event,release,detail)
         --report DIR (load during the roll-out; per-request CSV, events, timeline PNG)
  aws:   --aws-params FILE  --region R  --stack-prefix P  --no-rollback-triggers
         --monitoring-minutes N (10)  --probe-rate R (synthetic requests/s per side, 1)
         --probe-url URL (default: the service URL)  --canary-period S (60)  --metrics-lag S (60)

Environment:
  DEPLOY_SMOKE       smoke test command, called with the target URL
                     (default scripts/smoke.sh; the tests set a failing one
                     to exercise the fleet rollback)
  DEPLOY_ROLLBACK=1  this deploy puts the previous release back: no canary step
  AWS_CFN_ROLE_ARN   (aws) the CloudFormation service role change sets run with

Exit status: 0 done, 1 a step failed (named in the error), 2 a usage error.

Examples:
  scripts/deploy.sh --target local --release target/release/hello-birthday --write-checksum --version v2
  scripts/deploy.sh --target local --version v1      # back to an installed release
  scripts/deploy.sh --target aws --env staging --release dist/hello-birthday --version 1.4.0 --dry-run
"""

PROG = "deploy.sh"


class Args:
    """The options every target shares; the rest goes to the target."""

    def __init__(self, argv: list[str]) -> None:
        self.target = ""
        self.release: str | None = None
        self.version: str | None = None
        self.env = "staging"
        self.dry_run = False
        self.write_checksum = False
        self.smoke = True
        self.canary = True
        self.canary_weight = "10"
        self.canary_window: str | None = None
        self.allow_inconclusive = False
        self.plan: str | None = None
        self.execute_plan: str | None = None
        self.rollback = False
        self.help = False
        self.canary_given = False
        self.rest: list[str] = []
        with_value = {"--target": "target", "--release": "release", "--version": "version", "--env": "env",
                      "--canary-weight": "canary_weight", "--canary-window": "canary_window", "--plan": "plan",
                      "--execute-plan": "execute_plan"}
        flags = {"--dry-run": ("dry_run", True), "--write-checksum": ("write_checksum", True),
                 "--no-smoke": ("smoke", False), "--canary-allow-inconclusive": ("allow_inconclusive", True),
                 "--no-canary": ("canary", False), "--rollback": ("rollback", True), "-h": ("help", True),
                 "--help": ("help", True)}
        i = 0
        while i < len(argv):
            a = argv[i]
            # The flow's canary options (not the AWS target's --canary-period).
            if a in ("--canary-weight", "--canary-window", "--canary-allow-inconclusive", "--no-canary"):
                self.canary_given = True
            if a in with_value:
                if i + 1 >= len(argv) or not argv[i + 1]:
                    raise UsageError(f"{a} needs a value")
                setattr(self, with_value[a], argv[i + 1])
                i += 2
            elif a in flags:
                name, value = flags[a]
                setattr(self, name, value)
                i += 1
            else:
                self.rest.append(a)
                i += 1


def options(console: Console, args: Args) -> tuple[Options, str | None]:
    if not args.target:
        raise UsageError("--target is required")
    if args.target not in ("local", "aws"):
        raise UsageError(f"unknown target '{args.target}' (local or aws)")
    if args.env not in ("staging", "production"):
        raise UsageError("--env must be staging or production")
    modes = [m for m, on in ((Mode.PLAN, args.plan), (Mode.EXECUTE, args.execute_plan), (Mode.ROLLBACK, args.rollback))
             if on]
    if len(modes) > 1:
        raise UsageError("--plan, --execute-plan and --rollback exclude each other")
    mode = modes[0] if modes else Mode.DEPLOY
    if mode is Mode.PLAN and not args.release:
        raise UsageError("--plan publishes what it plans: give --release PATH")
    if mode in (Mode.EXECUTE, Mode.ROLLBACK) and args.release:
        raise UsageError("--execute-plan and --rollback take no --release (the release is already published)")
    if mode is Mode.EXECUTE and not Path(args.execute_plan or "").is_file():
        raise UsageError(f"plan {args.execute_plan} not found")
    if mode is Mode.DEPLOY and not args.release and not args.version:
        raise UsageError("give --release PATH or --version V")
    if not args.canary_weight.isdigit() or not 1 <= int(args.canary_weight) <= 50:
        raise UsageError("--canary-weight must be a whole percentage from 1 to 50")
    if args.canary_window is not None and (not args.canary_window.isdigit() or int(args.canary_window) < 1):
        raise UsageError("--canary-window must be whole seconds")
    if args.version is not None:
        try:
            check_label(args.version)
        except DeployError as e:
            raise UsageError(str(e)) from e
    settings = CanarySettings(args.canary, int(args.canary_weight),
                              None if args.canary_window is None else float(args.canary_window),
                              args.allow_inconclusive, given=args.canary_given)
    if not settings.enabled:
        console.loud(flow.NO_CANARY)
    console.heading(f"deploy to {args.target} ({args.env}){', dry run' if args.dry_run else ''}")
    artifact = None
    version = args.version
    if args.release:
        with console.step("verify artifact", announce=False):
            artifact = verify_artifact(console, Path(args.release), args.write_checksum, args.dry_run)
        version = version or f"sha-{artifact.sha256[:12]}"
    if version is not None:
        console.heading(f"release {version}")
    plan_file = args.plan or args.execute_plan
    return Options(
        env=args.env,
        mode=mode,
        artifact=artifact,
        version=version,
        dry_run=args.dry_run,
        canary=settings,
        plan_file=Path(plan_file) if plan_file else None,
        restoring=os.environ.get("DEPLOY_ROLLBACK", "0") == "1",
        target_args=tuple(args.rest),
    ), version


def make_target(name: str, console: Console, opts: Options) -> Target:
    if name == "local":
        from hbdeploy.targets.local import LocalTarget

        return LocalTarget(console, opts)
    from hbdeploy.targets.aws import AwsTarget

    return AwsTarget(console, opts)


def main(argv: list[str]) -> int:
    console = Console()
    t0 = time.monotonic()
    try:
        args = Args(argv)
        if args.help:
            print(USAGE, end="")
            return 0
        opts, version = options(console, args)
        target = make_target(args.target, console, opts)
        flow.run(console, opts, target, version, args.smoke)
        return 0
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        print(f"Try '{PROG} --help'.", file=sys.stderr)
        return 2
    except DeployError as e:
        cause = e.__cause__
        if cause is not None and not isinstance(cause, OSError) and not type(cause).__module__.startswith("botocore"):
            traceback.print_exception(cause, file=sys.stderr)
        where = f' at step "{e.step}"' if e.step else ""
        print(f"{PROG}: failed{where} after {time.monotonic() - t0:.0f}s: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
