"""Target "aws": the CloudFormation stacks of deploy/aws/templates, through boto3.

Every stack of the table (stacks.py) is changed through a named change set
that states its rollback configuration (the app stack's: the fast SLO burn
alarms; every other: none); a stack that rolls back stops the deploy with
CloudFormation's own reasons. The release is published once per label (each
object written with If-None-Match, so the bucket never replaces one), and a
deploy by label, a rollback and an execution check the objects in S3, byte
for byte, against the record of what was approved, and the image's owner.

The canary is a stack of its own (templates/canary.yaml), created after the
stacks before the fleet and deleted after its verdict: a one-instance group
of the new release in its own target group, a weighted listener rule giving
it --canary-weight % of the users' requests, and header-matched rules that
send the synthetic probes of each side to that side alone. Its verdict
reads CloudWatch per target group and the probes' own counts (the load
balancer's 502/503/504 included). The app stack is not touched while it
runs, so the app stack's planned change set stays valid.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import os
import secrets
import tarfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from canary.verdict import parse_cloudwatch
from hbdeploy.canary import CanarySettings, Look
from hbdeploy.probes import Probes
from hbdeploy.record import (
    Change,
    Plan,
    PlannedCanary,
    PlannedStack,
    ReleaseRecord,
    RollbackRecord,
)
from hbdeploy.stacks import CANARY, STACK_POLICY, Region, StackSpec, stack_name, stack_policy_json, stacks_for
from hbdeploy.steps import Console, DeployError, UsageError
from hbdeploy.targets import Mode, Options

ROOT = Path(__file__).resolve().parents[3]
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
WINDOW_DEFAULT = 300
# What `aws cloudformation wait` allows (120 polls, 30 s apart): CloudFormation's
# own bounds (PauseTime, CreationPolicy) sit inside it.
WAIT_SECONDS = 3600
# db-users.sh tags the app secret with this once the users exist.
DB_USERS_TAG = "db-users"
# The processes the app group's rolling update suspends (app.yaml,
# UpdatePolicy): CloudFormation resumes them afterwards, unless the update
# or its rollback broke off.
UPDATE_SUSPENDS = ("HealthCheck", "ReplaceUnhealthy", "AZRebalance", "AlarmNotification", "ScheduledActions")
# Parameters the canary group takes from the app stack's (the fleet's settings).
CANARY_FROM_APP = ("InstanceType", "DbPoolSize", "ServicePort", "MetricsPort", "DrainSeconds",
                   "ShutdownTimeoutSeconds", "RequestTimeoutSeconds")
# ... and its target group from the edge stack's (checked like the main one).
CANARY_FROM_EDGE = ("HealthCheckIntervalSeconds", "HealthCheckThreshold", "DeregistrationDelaySeconds",
                    "SlowStartSeconds")
NO_TRIGGERS: dict[str, Any] = {"RollbackTriggers": [], "MonitoringTimeInMinutes": 0}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def error_code(e: Exception) -> str:
    response = getattr(e, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def host_bundle() -> bytes:
    """host.tar.gz: what `scripts/setup.sh host` and the instance bootstrap
    need. Reproducible (sorted, fixed owner, mode and mtime, no gzip name
    or time), so the same sources give the same checksum and a re-run of a
    deploy changes nothing."""
    paths = ["scripts/setup.sh", "scripts/lib", "deploy/systemd", "deploy/aws/host"]
    files: list[Path] = []
    for p in paths:
        full = ROOT / p
        if not full.exists():
            raise DeployError(f"{p} is missing; the host bundle needs it")
        files += [full] if full.is_file() else sorted(f for f in full.rglob("*") if "__pycache__" not in f.parts)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for f in sorted(files, key=lambda x: str(x.relative_to(ROOT))):
            rel = f.relative_to(ROOT)
            for parent in reversed(rel.parents[:-1]):
                if str(parent) not in dirs:
                    dirs.add(str(parent))
                    info = tarfile.TarInfo(str(parent))
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
            if f.is_dir():
                continue
            info = tarfile.TarInfo(str(rel))
            data = f.read_bytes()
            info.size, info.mtime = len(data), 0
            info.mode = 0o755 if os.access(f, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


class CloudWatchAndProbes:
    """Metric source on AWS. Looks after each whole period of the window
    (plus the lag of ALB metrics), each over the whole interval so far: per
    target group, CloudWatch's RequestCount, HTTPCode_Target_5XX_Count,
    TargetConnectionErrorCount (sums) and TargetResponseTime (p99 of the
    interval, one period over all of it); and the probes' own counts of
    each side. The canary's target must stay healthy."""

    def __init__(self, target: AwsTarget, lb: str, canary_tg: str, main_tg: str, canary_tg_arn: str,
                 probes: Probes | None, window: int) -> None:
        self.t = target
        self.lb, self.canary_tg, self.main_tg, self.canary_tg_arn = lb, canary_tg, main_tg, canary_tg_arn
        self.probes = probes
        period = target.period
        self._window = -(-window // period) * period  # whole periods
        now = time.time()
        self.start = -(-int(now) // period) * period  # the first whole period at the canary's weight

    @property
    def window(self) -> float:
        return float(self._window)

    def schedule(self) -> Iterator[float]:
        for k in range(1, self._window // self.t.period + 1):
            yield self.start + k * self.t.period + self.t.lag

    def queries(self, period: int) -> list[dict[str, Any]]:
        out = []
        for side, tg in (("canary", self.canary_tg), ("baseline", self.main_tg)):
            for key, metric, stat in (("requests", "RequestCount", "Sum"),
                                      ("errors", "HTTPCode_Target_5XX_Count", "Sum"),
                                      ("connection_errors", "TargetConnectionErrorCount", "Sum"),
                                      ("p99", "TargetResponseTime", "p99")):
                out.append({"Id": f"{side}_{key}", "ReturnData": True, "MetricStat": {
                    "Period": period, "Stat": stat, "Metric": {
                        "Namespace": "AWS/ApplicationELB", "MetricName": metric,
                        "Dimensions": [{"Name": "TargetGroup", "Value": tg}, {"Name": "LoadBalancer", "Value": self.lb}]}}})
        return out

    def look(self, last: bool) -> Look:
        period = self.t.period
        end = self.start + self._window if last else min(
            int(time.time() - self.t.lag) // period * period, self.start + self._window)
        end = max(end, self.start + period)
        elapsed = float(end - self.start)
        health = self.t.client("elbv2").describe_target_health(TargetGroupArn=self.canary_tg_arn)
        states = [d["TargetHealth"]["State"] for d in health.get("TargetHealthDescriptions", [])]
        if "healthy" not in states:
            return Look(elapsed, problem=f"the canary's target is not healthy ({', '.join(states) or 'no target'})")
        answer = self.t.client("cloudwatch").get_metric_data(
            MetricDataQueries=self.queries(end - self.start),
            StartTime=datetime.datetime.fromtimestamp(self.start, datetime.UTC),
            EndTime=datetime.datetime.fromtimestamp(end, datetime.UTC))
        try:
            c, b = parse_cloudwatch(answer)
        except (KeyError, TypeError, ValueError) as e:
            raise DeployError(f"CloudWatch's answer cannot be judged: {e}") from e
        sides = [("cloudwatch", c, b)]
        if self.probes is not None:
            pc, pb = self.probes.groups(self.start, end)
            sides.append(("probes", pc, pb))
        return Look(elapsed, sides)


class AwsCanary:
    def __init__(self, target: AwsTarget, source: CloudWatchAndProbes, probes: Probes | None) -> None:
        self.t = target
        self._source = source
        self.probes = probes

    @property
    def source(self) -> CloudWatchAndProbes:
        return self._source

    def event(self, name: str, detail: str) -> None:
        return None

    def _end(self) -> None:
        if self.probes is not None:
            self.probes.stop()
            self.t.console.say(self.probes.summary())
        self.t.remove_canary("canary over")

    def promote(self) -> None:
        self._end()

    def abort(self, decision: str) -> None:
        self.t.console.heading(f"canary: {decision}: removing the canary stack")
        self._end()
        running = self.t.running.version if self.t.running else "?"
        self.t.console.warn(f"canary: {self.t.version} stopped; the fleet still runs {running}")


class AwsTarget:
    name = "aws"

    def __init__(self, console: Console, opts: Options) -> None:
        self.console = console
        self.opts = opts
        params_file: str | None = None
        region: str | None = None
        prefix: str | None = None
        self.triggers = True
        self.monitoring_minutes = 10
        self.probe_rate = 1.0
        self.probe_url: str | None = None
        self.period = 60
        self.lag = 60
        self.poll = 5.0
        args = list(opts.target_args)
        known = ("--aws-params", "--region", "--stack-prefix", "--no-rollback-triggers", "--monitoring-minutes",
                 "--probe-rate", "--probe-url", "--canary-period", "--metrics-lag", "--poll-seconds")
        while args:
            opt = args.pop(0)
            if opt not in known:
                raise UsageError(f"aws target: unknown option {opt} (known: {' '.join(known)})")
            if opt == "--no-rollback-triggers":
                self.triggers = False
                continue
            if not args:
                raise UsageError(f"{opt} needs a value")
            value = args.pop(0)
            try:
                if opt == "--aws-params":
                    params_file = value
                elif opt == "--region":
                    region = value
                elif opt == "--stack-prefix":
                    prefix = value
                elif opt == "--monitoring-minutes":
                    self.monitoring_minutes = int(value)
                elif opt == "--probe-rate":
                    self.probe_rate = float(value)
                elif opt == "--probe-url":
                    self.probe_url = value
                elif opt == "--canary-period":
                    self.period = int(value)
                elif opt == "--metrics-lag":
                    self.lag = int(value)
                else:
                    self.poll = float(value)
            except ValueError as e:
                raise UsageError(f"{opt}: {value} is not a number") from e
        self.params_path = Path(params_file or ROOT / "deploy" / "aws" / "parameters" / f"{opts.env}.json")
        try:
            doc = json.loads(self.params_path.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"aws target: parameter file {self.params_path}: {e}") from e
        if not all(k in doc for k in ("region", "stackPrefix", "stacks")):
            raise UsageError(f"aws target: {self.params_path} needs region, stackPrefix and stacks")
        self.values: dict[str, dict[str, Any]] = doc["stacks"]
        self.region: str = region or doc["region"]
        self.prefix: str = prefix or doc["stackPrefix"]
        self.dr_region: str = doc.get("drRegion") or ""
        self.env = opts.env
        self.version = opts.version or ""
        self.stacks = stacks_for(bool(self.dr_region))
        self._clients: dict[tuple[str, str], Any] = {}
        self.plan: Plan | None = None
        if opts.mode is Mode.EXECUTE:
            assert opts.plan_file is not None
            self.plan = Plan.from_json(opts.plan_file.read_text())
            self.check_plan_identity(self.plan)
            self.version = self.plan.version
        self.release: ReleaseRecord | None = None  # what this deploy runs, once known
        self.running: ReleaseRecord | None = None  # what the app stack runs before it
        self.previous: RollbackRecord | None = None  # the rollback target, once read
        self.new_stateful: list[str] = []
        self.canary_token = ""
        self.changed: str | None = None  # the last planned stack executed

    # ---- AWS access ---------------------------------------------------------------

    def make_client(self, service: str, region: str) -> Any:
        import boto3  # only this target needs it (no stubs, mypy.ini: its calls are typed Any)

        return boto3.session.Session().client(service, region_name=region)

    def client(self, service: str, region: str | None = None) -> Any:
        key = (service, region or self.region)
        if key not in self._clients:
            self._clients[key] = self.make_client(service, key[1])
        return self._clients[key]

    def region_of(self, spec: StackSpec) -> str:
        return {Region.PRIMARY: self.region, Region.DR: self.dr_region, Region.US_EAST_1: "us-east-1"}[spec.region]

    def cfn(self, spec: StackSpec) -> Any:
        return self.client("cloudformation", self.region_of(spec))

    def name_of(self, spec: StackSpec) -> str:
        return stack_name(self.prefix, self.env, spec.key)

    def spec(self, key: str) -> StackSpec:
        for s in (*self.stacks, CANARY):
            if s.key == key:
                return s
        raise KeyError(key)

    def describe_stack(self, spec: StackSpec) -> dict[str, Any] | None:
        try:
            stacks = self.cfn(spec).describe_stacks(StackName=self.name_of(spec))["Stacks"]
        except Exception as e:
            if error_code(e) == "ValidationError" and "does not exist" in str(e):
                return None
            raise
        return dict(stacks[0]) if stacks else None

    def status(self, spec: StackSpec) -> str:
        stack = self.describe_stack(spec)
        return "NONE" if stack is None else str(stack["StackStatus"])

    def outputs(self, spec: StackSpec) -> dict[str, str]:
        stack = self.describe_stack(spec)
        if stack is None:
            raise DeployError(f"stack {self.name_of(spec)} does not exist (deployed?)")
        return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    def output(self, key: str, output: str) -> str:
        value = self.outputs(self.spec(key)).get(output)
        if not value:
            raise DeployError(f"stack {self.name_of(self.spec(key))} has no output {output} (deployed?)")
        return value

    def stack_parameters(self, spec: StackSpec) -> dict[str, str]:
        stack = self.describe_stack(spec)
        return {} if stack is None else {p["ParameterKey"]: p["ParameterValue"] for p in stack.get("Parameters", [])}

    def bucket(self) -> str:
        return self.output("foundation", "ArtifactsBucketName")

    def failures(self, spec: StackSpec) -> list[str]:
        """CloudFormation's reasons for the failed resources (newest first)."""
        try:
            events = self.cfn(spec).describe_stack_events(StackName=self.name_of(spec))["StackEvents"][:60]
        except Exception:  # the reasons are a help, not a step: the deploy already failed
            return []
        return [f"{e['LogicalResourceId']}\t{e['ResourceStatus']}\t{e.get('ResourceStatusReason', '')}"
                for e in events if "FAILED" in e["ResourceStatus"]][:15]

    def wait_stack(self, spec: StackSpec, what: str) -> str:
        """Polls until the stack leaves *_IN_PROGRESS; its final status."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            status = self.status(spec)
            if not status.endswith("_IN_PROGRESS"):
                return status
            if time.monotonic() > deadline:
                raise DeployError(f"stack {self.name_of(spec)} still {status} after {WAIT_SECONDS // 60} minutes of {what}")
            time.sleep(self.poll)

    # ---- parameters -----------------------------------------------------------------

    def placeholders(self) -> list[str]:
        return [f"{s}.{k}" for s, values in self.values.items() for k, v in values.items() if "REPLACE_ME" in str(v)]

    def rollback_configuration(self, spec: StackSpec) -> dict[str, Any]:
        """Stated on every change set: without one CloudFormation would reuse
        the triggers it saved for the stack. Only the app stack's rolling
        update has triggers, and never in a rollback."""
        if not spec.release or not self.triggers or self.opts.mode is Mode.ROLLBACK:
            return dict(NO_TRIGGERS)
        if self.opts.dry_run:
            arns = [f"<RollbackTriggerAlarmArns of {stack_name(self.prefix, self.env, 'monitoring')}>"]
        else:
            arns = self.output("monitoring", "RollbackTriggerAlarmArns").split(",")
        return {"RollbackTriggers": [{"Arn": a, "Type": "AWS::CloudWatch::Alarm"} for a in arns],
                "MonitoringTimeInMinutes": self.monitoring_minutes}

    def capacity(self) -> str:
        """MinInstancesInService for the app group's rolling update: the
        instances it runs now (it may have scaled out), at least MinSize.
        CloudFormation requires it below MaxSize; a group at MaxSize has no
        room for the extra instance a one-at-a-time update adds."""
        try:
            min_size = int(self.values.get("app", {})["MinSize"])
            max_size = int(self.values.get("app", {})["MaxSize"])
        except (KeyError, ValueError) as e:
            raise DeployError(f"{self.params_path}: stacks.app needs MinSize and MaxSize") from e
        # A plan leaves it to the execution: the group's size then is what counts.
        group = None if self.opts.dry_run or self.opts.mode is Mode.PLAN else self.app_group()
        if group is None:
            return str(min_size)
        desired = int(group["DesiredCapacity"])
        keep = max(min_size, desired)
        if keep >= max_size and self.release_changes():
            raise DeployError(
                f"the app group runs {desired} instances, its MaxSize is {max_size}: a rolling update that"
                f" keeps them all needs room for one more. Raise MaxSize in {self.params_path} (stacks.app)"
                " and deploy again (nothing of the fleet changed)")
        return str(keep)

    def release_changes(self) -> bool:
        return self.release is not None and (self.running is None or self.running != self.release)

    def parameters(self, spec: StackSpec) -> dict[str, str]:
        """A stack's parameters: the parameter file's values, the stack's
        name parts, outputs of earlier stacks, and for the app stack the
        release and the capacity to keep."""
        values = {k: str(v) for k, v in self.values.get(spec.key, {}).items()}
        values.update(StackPrefix=self.prefix, Environment=self.env)
        if spec.inputs and (self.dr_region or not spec.inputs_need_dr):
            for param, src in spec.inputs.items():
                if self.opts.dry_run:
                    values[param] = f"<{src.output} of {stack_name(self.prefix, self.env, src.stack)}>"
                else:
                    values[param] = self.output(src.stack, src.output)
            if spec.inputs_need_dr:
                values["DrRegion"] = self.dr_region
        for param, (key, value_of) in spec.shared.items():
            values[param] = str(self.values.get(key, {}).get(value_of, ""))
        if spec.release:
            if self.release is None:
                raise DeployError("the release is not known yet")
            values.update(self.release.parameters())
            values["MinInstancesInService"] = self.capacity()
        return values

    # ---- change sets --------------------------------------------------------------------

    def change_set_type(self, spec: StackSpec) -> str:
        name, status = self.name_of(spec), self.status(spec)
        region = self.region_of(spec)
        if status in ("NONE", "REVIEW_IN_PROGRESS"):
            return "CREATE"
        if status in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED"):
            raise DeployError(f"stack {name} is {status} (its creation failed). Delete it, then deploy again:"
                              f" aws cloudformation delete-stack --region {region} --stack-name {name}")
        if status == "UPDATE_ROLLBACK_FAILED":
            raise DeployError(f"stack {name} is UPDATE_ROLLBACK_FAILED: {self.recovery_command(spec)}")
        if status.endswith("_IN_PROGRESS"):
            raise DeployError(f"stack {name} is busy ({status}); wait for it to finish")
        return "UPDATE"

    def create_change_set(self, spec: StackSpec, cs_type: str, cs_name: str, params: Mapping[str, str],
                          rollback: dict[str, Any]) -> tuple[str, list[Change], str]:
        """(outcome, changes, reason): outcome "changes", "none" (an identical
        update: the change set is deleted again) or "failed"."""
        cfn, name = self.cfn(spec), self.name_of(spec)
        kwargs: dict[str, Any] = dict(
            StackName=name, ChangeSetName=cs_name, ChangeSetType=cs_type,
            TemplateBody=spec.template.read_text(),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
            Capabilities=["CAPABILITY_IAM"], RollbackConfiguration=rollback,
            Tags=[{"Key": "project", "Value": self.prefix}, {"Key": "environment", "Value": self.env}])
        # The bootstrap stack's CloudFormationRoleArn: CloudFormation, not the
        # caller, holds the rights to create the resources, and the change-set
        # guardrails refuse a change set without it.
        kwargs["RoleARN"] = self.cfn_role_arn()
        try:
            cfn.create_change_set(**kwargs)
        except Exception as e:
            # An identical update is refused here by some endpoints, and
            # reported as a FAILED change set (below) by others.
            if "No updates are to be performed" in str(e):
                return "none", [], ""
            return "failed", [], f"create-change-set: {e}"
        deadline = time.monotonic() + 600
        while True:
            desc = cfn.describe_change_set(StackName=name, ChangeSetName=cs_name)
            status = desc["Status"]
            if status == "CREATE_COMPLETE":
                return "changes", self.all_changes(spec, cs_name, desc), ""
            if status == "FAILED":
                reason = str(desc.get("StatusReason", "unknown reason"))
                if "didn't contain changes" in reason or "No updates are to be performed" in reason:
                    cfn.delete_change_set(StackName=name, ChangeSetName=cs_name)
                    return "none", [], ""
                return "failed", [], reason
            if time.monotonic() > deadline:
                return "failed", [], f"still {status} after 10 minutes"
            time.sleep(self.poll)

    def all_changes(self, spec: StackSpec, cs_name: str, desc: dict[str, Any]) -> list[Change]:
        out, page = [], desc
        while True:
            for c in page.get("Changes", []):
                rc = c.get("ResourceChange", {})
                out.append(Change(str(rc.get("Action", "")), str(rc.get("LogicalResourceId", "")),
                                  str(rc.get("ResourceType", "")), str(rc.get("Replacement") or "-")))
            token = page.get("NextToken")
            if not token:
                return out
            page = self.cfn(spec).describe_change_set(StackName=self.name_of(spec), ChangeSetName=cs_name,
                                                      NextToken=token)

    def show(self, changes: list[Change]) -> None:
        for c in changes:
            self.console.say(f"{c.action}\t{c.logicalId}\t{c.type}\t{c.replacement}")

    def execute(self, spec: StackSpec, cs_name: str, cs_type: str) -> None:
        name = self.name_of(spec)
        self.console.say(f"$ execute-change-set {cs_name} ({name})")
        self.cfn(spec).execute_change_set(StackName=name, ChangeSetName=cs_name)
        final = self.wait_stack(spec, "the change set's execution")
        if final == f"{cs_type}_COMPLETE":
            self.console.say(f"{cs_type} complete")
            if cs_type == "CREATE" and spec.stateful:
                self.new_stateful.append(spec.key)
            return
        reasons = self.failures(spec)
        if reasons:
            self.console.warn(f"CloudFormation reasons for {name}:")
            for r in reasons:
                self.console.warn(f"    {r}")
        if final.endswith("ROLLBACK_COMPLETE"):
            raise DeployError(f"CloudFormation rolled back stack {name} ({final}); the previous version is still serving")
        if final == "UPDATE_ROLLBACK_FAILED":
            raise DeployError(f"stack {name} ended in UPDATE_ROLLBACK_FAILED: {self.recovery_command(spec)}")
        raise DeployError(f"stack {name} ended in {final}")

    def deploy_stack(self, spec: StackSpec) -> None:
        """One stack through a change set: its changes printed, executed, waited for."""
        name = self.name_of(spec)
        with self.console.step(f"stack {spec.key}", f"stack {name} ({spec.template.name})"):
            cs_type = self.change_set_type(spec)
            params = self.parameters(spec)
            cs = f"deploy-{datetime.datetime.now(datetime.UTC):%Y%m%d%H%M%S}-{spec.key}"
            self.console.say(f"{cs_type} change set {cs}")
            outcome, changes, reason = self.create_change_set(spec, cs_type, cs, params, self.rollback_configuration(spec))
            if outcome == "none":
                self.console.say("no changes")
                return
            if outcome == "failed":
                raise DeployError(f"change set for {name} failed: {reason}")
            self.show(changes)
            self.execute(spec, cs, cs_type)

    # ---- stack policies, stuck stacks, leftovers -----------------------------------------

    def policy_command(self, spec: StackSpec) -> str:
        return (f"aws cloudformation set-stack-policy --region {self.region_of(spec)} --stack-name"
                f" {self.name_of(spec)} --stack-policy-body '{stack_policy_json()}'")

    def check_stack_policy(self, spec: StackSpec) -> None:
        """People set the stateful stacks' policy (the pipeline may not);
        every deploy checks it before it updates such a stack."""
        body = self.cfn(spec).get_stack_policy(StackName=self.name_of(spec)).get("StackPolicyBody")
        try:
            have = json.loads(body) if body else None
        except ValueError:
            have = None
        if json.dumps(have, sort_keys=True) != json.dumps(STACK_POLICY, sort_keys=True):
            raise DeployError(
                f"stack {self.name_of(spec)} does not carry the stack policy that keeps its database, backup vault,"
                " VPC and subnets from being replaced or deleted; nothing changed. Set it (an operator, once:"
                f" the pipeline may not), then deploy again: {self.policy_command(spec)}")

    def recovery_command(self, spec: StackSpec) -> str:
        skip = [r.split("\t")[0] for r in self.failures(spec) if "\tUPDATE_FAILED\t" in r]
        base = f"aws cloudformation continue-update-rollback --region {self.region_of(spec)} --stack-name {self.name_of(spec)}"
        if skip:
            return (f"continue the rollback: {base} (if it fails again on the same resources, after checking them:"
                    f" {base} --resources-to-skip {' '.join(sorted(set(skip)))})")
        return f"continue the rollback: {base}"

    def recover_rollback_failed(self, spec: StackSpec) -> None:
        name = self.name_of(spec)
        if self.opts.mode is Mode.EXECUTE:
            raise DeployError(f"stack {name} is UPDATE_ROLLBACK_FAILED; an approved plan changes nothing else:"
                              f" {self.recovery_command(spec)}; then plan again")
        self.console.say(f"stack {name} is UPDATE_ROLLBACK_FAILED (an earlier update's rollback broke off):"
                         " continuing its rollback")
        self.cfn(spec).continue_update_rollback(StackName=name)
        final = self.wait_stack(spec, "continue-update-rollback")
        if final != "UPDATE_ROLLBACK_COMPLETE":
            raise DeployError(f"stack {name} is {final} after continue-update-rollback: {self.recovery_command(spec)}")
        self.console.say(f"stack {name}: UPDATE_ROLLBACK_COMPLETE, back on its previous state")

    def app_group(self) -> dict[str, Any] | None:
        stack = self.describe_stack(self.spec("app"))
        if stack is None:
            return None
        name = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}.get("AutoScalingGroupName")
        if not name:
            return None
        groups = self.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        found = groups.get("AutoScalingGroups", [])
        return dict(found[0]) if found else None

    def resume_processes(self, when: str) -> None:
        """Processes an update left suspended: the update policy's are resumed
        (target tracking and health replacement work again); any other was
        suspended by a person, and the deploy stops."""
        group = self.app_group()
        if group is None:
            return
        suspended = [p["ProcessName"] for p in group.get("SuspendedProcesses", [])]
        ours = sorted(p for p in suspended if p in UPDATE_SUSPENDS)
        others = sorted(p for p in suspended if p not in UPDATE_SUSPENDS)
        name = group["AutoScalingGroupName"]
        if others:
            raise DeployError(
                f"the app group {name} has {', '.join(others)} suspended, which no update suspends: someone"
                f" did it on purpose. Once that is over: aws autoscaling resume-processes --region {self.region}"
                f" --auto-scaling-group-name {name} --scaling-processes {' '.join(others)}")
        if ours:
            self.console.say(f"app group {name}: {', '.join(ours)} still suspended {when}: resuming them")
            self.client("autoscaling").resume_processes(AutoScalingGroupName=name, ScalingProcesses=ours)

    def remove_canary(self, why: str) -> None:
        """Deletes the canary stack (its rules first: the traffic is back on
        the main group before its instance goes)."""
        spec, name = CANARY, self.name_of(CANARY)
        status = self.status(spec)
        if status == "NONE":
            return
        if status.endswith("_IN_PROGRESS"):
            self.console.say(f"canary stack {name} is {status}: waiting for CloudFormation")
            status = self.wait_stack(spec, "the canary stack's last operation")
            if status == "NONE":
                return
        self.console.say(f"$ delete-stack {name} ({why})")
        self.cfn(spec).delete_stack(StackName=name)
        final = self.wait_stack(spec, "the canary's deletion")
        if final not in ("NONE", "DELETE_COMPLETE"):
            raise DeployError(
                f"the canary stack {name} is {final}: remove it, then deploy again: aws cloudformation delete-stack"
                f" --region {self.region} --stack-name {name} (the fleet was not changed)")
        self.console.say(f"canary stack {name} deleted")

    def cfn_role_arn(self) -> str:
        arn = os.environ.get("AWS_CFN_ROLE_ARN", "")
        if not arn.startswith("arn:"):
            raise DeployError("AWS_CFN_ROLE_ARN is not set: the CloudFormation role every change set runs with (the"
                              " bootstrap stack's CloudFormationRoleArn output); the guardrails refuse a change set"
                              " without it")
        return arn

    def check_database_users(self) -> None:
        """The service logs in with its own users, which an administrator
        creates once per database (db-users.sh, from inside the VPC: the
        deploy never reads the master secret, nor reaches the database).
        Before the app stack's first creation (a new environment, or the DR
        Region after its restore, whose database stack makes a new app
        secret) the deploy stops until db-users.sh has tagged the app
        secret; afterwards the instances' own login proves it."""
        if self.status(self.spec("app")) != "NONE":
            return
        arn = self.outputs(self.spec("database")).get("AppUserSecretArn", "")
        tags: dict[str, str] = {}
        if arn:
            described = self.client("secretsmanager").describe_secret(SecretId=arn)
            tags = {t["Key"]: t["Value"] for t in described.get("Tags", [])}
        if DB_USERS_TAG in tags:
            self.console.say(f"database users created {tags[DB_USERS_TAG]} (db-users.sh)")
            return
        # db-users.sh defaults to the Region of the environment's own parameter
        # file; a DR rebuild's file (dr-params.sh) names another.
        try:
            home = json.loads((ROOT / "deploy" / "aws" / "parameters" / f"{self.env}.json").read_text())["region"]
        except (OSError, ValueError, KeyError):
            home = self.region
        region = "" if self.region == home else f" --region {self.region}"
        todo = [f"{self.policy_command(self.spec(k))}" for k in self.new_stateful]
        todo.append(f"deploy/aws/db-users.sh --env {self.env}{region}")
        raise DeployError(
            f"the database users of {self.env} in {self.region} are not created yet, and the app stack's instances"
            " would not log in; the fleet was not created. An administrator, once (docs/runbooks/aws-bootstrap.md),"
            " then deploy again:\n    " + "\n    ".join(todo))

    def preflight(self) -> None:
        if self.placeholders():
            raise DeployError(f"fill in {self.params_path} first (placeholders: {' '.join(self.placeholders())})")
        self.cfn_role_arn()
        for spec in self.stacks:
            status = self.status(spec)
            if status == "UPDATE_ROLLBACK_FAILED":
                self.recover_rollback_failed(spec)
            elif status.endswith("_IN_PROGRESS") and status != "REVIEW_IN_PROGRESS":
                raise DeployError(f"stack {self.name_of(spec)} is busy ({status}): another deploy, or the rollback"
                                  " of one, is running; wait for it to finish")
        leftover = self.describe_stack(CANARY)
        if leftover is not None:
            release = {p["ParameterKey"]: p["ParameterValue"] for p in leftover.get("Parameters", [])}.get("AppVersion")
            self.console.say(f"a canary stack left by an interrupted run ({release}, {leftover['StackStatus']}):"
                             " removing it")
            self.remove_canary("left by an interrupted run")
        self.resume_processes("with no update running")
        for spec in self.stacks:
            if spec.stateful and self.status(spec) != "NONE":
                self.check_stack_policy(spec)

    # ---- releases and records ---------------------------------------------------------------

    def s3_get(self, key: str) -> bytes | None:
        try:
            return bytes(self.client("s3").get_object(Bucket=self.bucket(), Key=key)["Body"].read())
        except Exception as e:
            if error_code(e) in ("NoSuchKey", "404"):
                return None
            raise

    def put_once(self, key: str, data: bytes) -> bool:
        """Writes s3://<artifacts>/KEY unless it exists (If-None-Match: the
        bucket refuses to replace it); an existing object must hold the same
        bytes. True when written now."""
        bucket = self.bucket()
        try:
            self.client("s3").put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except Exception as e:
            if error_code(e) not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise
        existing = self.s3_get(key)
        if existing != data:
            got = "missing" if existing is None else f"sha256 {sha256(existing)}"
            raise DeployError(f"s3://{bucket}/{key} already exists with {got} (this build: sha256 {sha256(data)})."
                              " Releases are immutable: use a new version.")
        return False

    def publish(self, data: bytes, name: str) -> None:
        prefix = f"releases/{self.version}/{name}"
        digest = sha256(data)
        wrote = self.put_once(prefix, data)
        wrote = self.put_once(f"{prefix}.sha256", f"{digest}  {name}\n".encode()) or wrote
        if wrote:
            self.console.say(f"s3://{self.bucket()}/{prefix} published (sha256 {digest})")
        else:
            self.console.say(f"s3://{self.bucket()}/{prefix} already published (sha256 matches)")

    def check_image(self, image: str) -> None:
        """The image exists and is Amazon's or this account's own (checked by
        every deploy and execution; a plan leaves it to its execution)."""
        if self.opts.mode is Mode.PLAN:
            return
        found = self.client("ec2").describe_images(ImageIds=[image]).get("Images", [])
        if not found:
            raise DeployError(f"image {image} does not exist in {self.region}")
        owner, alias = found[0].get("OwnerId", ""), found[0].get("ImageOwnerAlias", "")
        account = self.client("sts").get_caller_identity()["Account"]
        if alias != "amazon" and owner != account:
            raise DeployError(f"image {image} belongs to {owner} ({alias or 'no alias'}), neither Amazon nor this"
                              f" account ({account}): refused")

    def pin_image(self) -> str:
        """The image of the release, pinned when it was first published
        (releases/V/image-id), so staging and production run the same
        image; resolved from Amazon's parameter once, never again."""
        key = f"releases/{self.version}/image-id"
        pinned = self.s3_get(key)
        if pinned is not None:
            image = pinned.decode().strip()
        else:
            image = self.client("ssm").get_parameter(Name=AMI_PARAMETER)["Parameter"]["Value"]
        self.check_image(image)
        if pinned is None:
            self.put_once(key, f"{image}\n".encode())
        self.console.say(f"image {image} (pinned for {self.version})")
        return image

    def publish_release(self) -> ReleaseRecord:
        artifact = self.opts.artifact
        assert artifact is not None
        with self.console.step("publish", f"publish release {self.version} to s3://{self.bucket()}/releases/{self.version}/"):
            binary = artifact.path.read_bytes()
            if sha256(binary) != artifact.sha256:
                raise DeployError(f"{artifact.path} changed since its checksum was verified")
            bundle = host_bundle()
            self.publish(binary, "hello-birthday")
            self.publish(bundle, "host.tar.gz")
            image = self.pin_image()
        return ReleaseRecord(self.version, artifact.sha256, sha256(bundle), image)

    def record_key(self, version: str) -> str:
        return f"deployments/{self.env}/releases/{version}.json"

    def write_release_record(self, release: ReleaseRecord) -> None:
        """What this environment approved under that label, written by the
        deploy role only: later deploys by label and rollbacks check S3 against it."""
        try:
            self.put_once(self.record_key(release.version), release.to_json().encode())
        except DeployError as e:
            raise DeployError(f"the record of release {release.version} in this environment says otherwise: {e}") from e

    def recorded_release(self, version: str) -> ReleaseRecord:
        """A release deployed by label: the record written when this
        environment first ran it (or, for the rollback target and the
        running release, those records), never a checksum read from
        releases/ now."""
        doc = self.s3_get(self.record_key(version))
        if doc is not None:
            found = ReleaseRecord.from_parameters(json.loads(doc))
            if found is not None:
                return found
        for known in (self.previous.release if self.previous else None, self.running):
            if known is not None and known.version == version:
                return known
        raise DeployError(f"release {version} is not published for {self.env}; deploy it with --release PATH")

    def verify_published(self, release: ReleaseRecord) -> None:
        """The objects in S3 are the approved bytes: each file and its
        .sha256 against the record, the pinned image too."""
        prefix = f"releases/{release.version}"
        for name, want in (("hello-birthday", release.artifact_sha256), ("host.tar.gz", release.host_bundle_sha256)):
            data = self.s3_get(f"{prefix}/{name}")
            sums = self.s3_get(f"{prefix}/{name}.sha256")
            got = "missing" if data is None else sha256(data)
            said = "missing" if sums is None else (sums.decode().split() or ["empty"])[0]
            if got != want or said != want:
                raise DeployError(f"s3://{self.bucket()}/{prefix}/{name} is {got} and its .sha256 says {said}, but"
                                  f" the record of what was approved says {want}: refused (nothing deployed)")
        pinned = self.s3_get(f"{prefix}/image-id")
        if pinned is not None and pinned.decode().strip() != release.image_id:
            raise DeployError(f"s3://{self.bucket()}/{prefix}/image-id says {pinned.decode().strip()}, the record"
                              f" says {release.image_id}: refused")
        self.check_image(release.image_id)
        self.console.say(f"{prefix}: binary {release.artifact_sha256[:12]}..., host bundle"
                         f" {release.host_bundle_sha256[:12]}..., image {release.image_id}: as recorded")

    def app_running(self) -> ReleaseRecord | None:
        """What the app stack runs, from its own parameters; None without an
        app stack. No deploy starts without knowing its rollback target."""
        spec = self.spec("app")
        stack = self.describe_stack(spec)
        if stack is None:
            return None
        status = str(stack["StackStatus"])
        if status.endswith("_IN_PROGRESS") or status.endswith("_FAILED"):
            raise DeployError(f"{self.name_of(spec)} is {status}: which release it runs is not settled; wait, or"
                              " repair it first")
        found = ReleaseRecord.from_parameters(
            {p["ParameterKey"]: p["ParameterValue"] for p in stack.get("Parameters", [])})
        if found is None:
            raise DeployError(f"cannot tell which release {self.name_of(spec)} runs (no AppVersion and checksums in"
                              " its parameters): no rollback target, nothing deployed")
        return found

    def previous_key(self) -> str:
        return f"deployments/{self.env}/previous.json"

    def read_previous(self) -> RollbackRecord | None:
        doc = self.s3_get(self.previous_key())
        return None if doc is None else RollbackRecord.from_json(doc.decode())

    def record_rollback_target(self) -> None:
        """Before the first change: what runs now is the rollback target of
        this release, unless it is this release, or this release is the
        recorded target (a rollback by label keeps what "previous" means)."""
        with self.console.step("record", "rollback target (deployment record, from the app stack's parameters)"):
            self.running = self.app_running()
            if self.running is None:
                self.console.say("no app stack yet: a first deploy has nothing to roll back to")
                return
            self.previous = self.read_previous()
            recorded = self.previous.release.version if self.previous else "none"
            if self.running.version == self.version:
                self.console.say(f"{self.env} already runs {self.version}; rollback record kept ({recorded})")
                return
            if self.previous and self.previous.release.version == self.version:
                self.console.say(f"{self.version} is the recorded rollback target: record kept (a rollback does not"
                                 " change what \"previous\" means)")
                return
            record = RollbackRecord(self.running, self.version)
            self.client("s3").put_object(Bucket=self.bucket(), Key=self.previous_key(), Body=record.to_json().encode())
            self.previous = record
            self.console.say(f"previous release: {self.running.version} (the rollback target, recorded before any change)")

    # ---- the phases ---------------------------------------------------------------------------

    def url(self) -> str:
        if not self.opts.dry_run:
            try:
                return self.output("edge", "ServiceUrl")
            except DeployError:
                pass
        return f"https://{self.values.get('edge', {}).get('DomainName', '')}"

    @contextmanager
    def deploying(self) -> Iterator[None]:
        yield

    def canary_settings(self) -> CanarySettings:
        if self.plan is None:
            return self.opts.canary
        c = self.plan.canary
        return CanarySettings(enabled=c.runs, weight=c.weight, window=float(c.window),
                              allow_inconclusive=c.allowInconclusive)

    def window(self) -> int:
        if self.plan is not None:
            return self.plan.canary.window
        w = int(self.opts.canary.window or WINDOW_DEFAULT)
        return -(-w // self.period) * self.period

    def describe(self) -> None:
        say = self.console.say

        def name(key: str) -> str:
            return stack_name(self.prefix, self.env, key)
        say(f"AWS target: {self.env} in {self.region} (parameters: {self.params_path})")
        if self.opts.mode is Mode.ROLLBACK:
            say(f"stack {name('app')} back to the release recorded in deployments/{self.env}/previous.json,"
                " checked in S3 against that record, without rollback triggers")
            return
        if self.plan is not None:
            say(f"execute the plan of {self.plan.createdAt} for release {self.plan.version}: every stack as planned,"
                " or refuse")
        for i, spec in enumerate(self.stacks, 1):
            where = "" if spec.region is Region.PRIMARY else f" in {self.region_of(spec)}"
            extra = ""
            if spec.release:
                extra = (f" with AppVersion={self.version}: instances replaced one at a time, each signalling when"
                         " /readyz and its target are healthy, as many kept in service as run now")
            say(f"{i}. stack {name(spec.key)}{where}{extra}")
        if self.opts.artifact is not None:
            say(f"publish {self.opts.artifact.path} (sha256 {self.opts.artifact.sha256}) and host.tar.gz to"
                f" s3://<artifacts bucket>/releases/{self.version}/ (refused if {self.version} exists with other bytes)")
        elif self.plan is None:
            say(f"release {self.version} as recorded for {self.env}, checked in S3 against that record")
        if self.triggers:
            say(f"rollback triggers of the app stack: the 5-minute 5xx and latency burn alarms, watched for"
                f" {self.monitoring_minutes} more minutes; every other stack: none")
        else:
            say("rollback triggers: none (--no-rollback-triggers)")
        self.describe_canary()

    def describe_canary(self) -> None:
        if self.plan is not None:
            c = self.plan.canary
            self.console.say(f"canary: {c.reason}" if not c.runs else
                             f"canary first: {c.reason}")
            return
        if not self.opts.canary.enabled:
            self.console.say("canary: SKIPPED (--no-canary)")
            return
        self.console.say(f"canary first: {self.canary_text()}")

    def canary_text(self) -> str:
        return (f"{self.version} on a one-instance canary stack ({self.name_of(CANARY)}) with"
                f" {self.opts.canary.weight}% of the users' requests and {self.probe_rate:g} synthetic request(s)/s"
                f" to each side for {self.window()}s, judged every {self.period}s on CloudWatch per target"
                " group (5xx, connection errors, p99) and on the probes' own answers (load balancer 5xx included)"
                " by deploy/canary/verdict.py; fail or inconclusive: canary removed, the fleet untouched, exit"
                " non-zero")

    def dry_run(self) -> None:
        if self.placeholders():
            self.console.say(f"note: still placeholders in {self.params_path}: {' '.join(self.placeholders())}")
        self.release = ReleaseRecord(self.version, self.opts.artifact.sha256 if self.opts.artifact else "<recorded>",
                                     "<sha256 of host.tar.gz>", f"<image pinned in releases/{self.version}/image-id>")
        for spec in self.stacks:
            params = self.parameters(spec)
            self.console.heading(f"stack {self.name_of(spec)} <- {spec.template.relative_to(ROOT)}")
            self.console.say(
                f"$ aws --region {self.region_of(spec)} cloudformation create-change-set --stack-name"
                f" {self.name_of(spec)} --template-body file://{spec.template.relative_to(ROOT)} --parameters"
                f" '{json.dumps([{'ParameterKey': k, 'ParameterValue': v} for k, v in params.items()])}'"
                f" --capabilities CAPABILITY_IAM --role-arn {os.environ.get('AWS_CFN_ROLE_ARN') or '<AWS_CFN_ROLE_ARN>'}"
                " --rollback-configuration"
                f" '{json.dumps(self.rollback_configuration(spec))}'")

    def prepare(self) -> None:
        """The rollback target recorded, then every stack before the fleet
        (the release published once the foundation's bucket exists)."""
        if self.plan is not None:
            self.prepare_planned(self.plan)
            return
        self.record_rollback_target()
        for spec in self.stacks:
            if spec.release:
                break
            self.deploy_stack(spec)
            if spec.key == "foundation":
                if self.opts.artifact is not None:
                    self.release = self.publish_release()
                    with self.console.step("record release", announce=False):
                        self.write_release_record(self.release)
                else:
                    with self.console.step("check release", f"release {self.version} as recorded for {self.env}"):
                        self.release = self.recorded_release(self.version)
                        self.verify_published(self.release)
        with self.console.step("database users", announce=False):
            self.check_database_users()
        with self.console.step("capacity", announce=False):
            self.capacity()  # a group with no room for the update stops the deploy here, before the canary
        for key in self.new_stateful:
            spec = self.spec(key)
            self.console.warn(f"stack {self.name_of(spec)} was created without a stack policy: set it now (people"
                              f" set it, deploys check it, the next one stops without it): {self.policy_command(spec)}")

    def canary_wanted(self) -> bool:
        if self.plan is not None:
            if not self.plan.canary.runs:
                self.console.say(f"canary: {self.plan.canary.reason}")
            return self.plan.canary.runs
        reason = self.canary_skipped()
        if reason is None:
            return True
        if not self.opts.canary.enabled:
            self.console.warn(f"WARNING: --no-canary: {self.version} goes to every instance WITHOUT canary analysis")
        elif self.running is None:
            self.console.warn(f"WARNING: {reason}")
        else:
            self.console.say(reason)
        return False

    def canary_skipped(self) -> str | None:
        """Why this deploy has no canary (None: it has one)."""
        if not self.opts.canary.enabled:
            return "SKIPPED (--no-canary)"
        if self.opts.restoring:
            return "rollback to the previous release: no canary step"
        if self.running is None:
            return "no running release to compare with (first deploy): no canary analysis"
        if self.running.version == self.version:
            return f"{self.version} already runs: no canary step"
        if self.previous is not None and self.previous.release.version == self.version:
            return (f"{self.version} is the release {self.env} ran before (the recorded rollback target): a rollback,"
                    " no canary step")
        return None

    def start_canary(self) -> AwsCanary:
        assert self.release is not None and self.running is not None
        spec, name = CANARY, self.name_of(CANARY)
        weight = self.plan.canary.weight if self.plan else self.opts.canary.weight
        window = self.window()
        probe_rate = self.plan.canary.probeRate if self.plan else self.probe_rate
        self.console.heading(f"canary: {self.version} on a one-instance canary stack, {weight}% of the requests and"
                             f" {probe_rate:g} probe(s)/s per side, window {window}s")
        self.canary_token = secrets.token_hex(16)
        app = self.plan_parameters("app") if self.plan else self.parameters(self.spec("app"))
        edge = self.stack_parameters(self.spec("edge"))
        params = {"StackPrefix": self.prefix, "Environment": self.env, **self.release.parameters(),
                  "CanaryWeight": str(weight), "MainWeight": str(100 - weight), "ProbeToken": self.canary_token}
        params.update({k: app[k] for k in CANARY_FROM_APP if k in app})
        params.update({k: edge[k] for k in CANARY_FROM_EDGE if k in edge})
        cs = f"canary-{datetime.datetime.now(datetime.UTC):%Y%m%d%H%M%S}"
        try:
            outcome, changes, reason = self.create_change_set(spec, "CREATE", cs, params, dict(NO_TRIGGERS))
            if outcome != "changes":
                raise DeployError(f"change set for {name} failed: {reason}")
            self.show(changes)
            self.execute(spec, cs, "CREATE")
        except DeployError:
            # A canary that never got healthy never took traffic: it goes.
            self.remove_canary("it did not start")
            raise
        out = self.outputs(spec)
        edge_out = self.outputs(self.spec("edge"))
        probes = None
        if probe_rate > 0:
            probes = Probes(self.probe_url or self.url(), self.canary_token, probe_rate)
            probes.start(window + self.lag + 2 * self.period)
        source = CloudWatchAndProbes(self, edge_out["LoadBalancerFullName"], out["CanaryTargetGroupFullName"],
                                     edge_out["TargetGroupFullName"], out["CanaryTargetGroupArn"], probes, window)
        return AwsCanary(self, source, probes)

    def roll_out(self) -> None:
        if self.plan is not None:
            self.execute_planned("app")
            return
        app = self.spec("app")
        self.deploy_stack(app)

    def verify(self) -> None:
        params = self.stack_parameters(self.spec("app"))
        if params.get("AppVersion") != self.version:
            raise DeployError(f"{self.name_of(self.spec('app'))} says AppVersion={params.get('AppVersion')},"
                              f" not {self.version}")
        self.resume_processes("after the update")
        self.console.heading(f"AWS {self.env} runs {self.version}")

    def roll_back(self) -> None:
        """The app stack back to the recorded previous release, without
        rollback triggers (while the bad release's alarms still fire,
        CloudFormation would roll the rollback back). With a version, only
        when that release is what runs (another deploy's work is never
        undone). Never writes the record."""
        spec = self.spec("app")
        record = self.previous or self.read_previous()
        if record is None:
            raise DeployError(f"no previous release recorded for {self.env}; nothing to roll back to")
        if self.status(spec).endswith("_IN_PROGRESS"):
            self.console.say(f"rollback: {self.name_of(spec)} is still changing; waiting for CloudFormation to finish")
            self.wait_stack(spec, "the interrupted update")
        current = self.app_running()
        if current is None:
            raise DeployError(f"{self.name_of(spec)} does not exist; nothing to roll back")
        target = record.release
        if current.version == target.version:
            self.console.say(f"rollback: {self.env} already runs {target.version}, the recorded rollback target:"
                             " nothing to do")
            return
        if self.opts.version and current.version != self.opts.version:
            raise DeployError(f"{self.env} runs {current.version}, not {self.opts.version}: refusing to roll back a"
                              " deploy that is not the one being undone")
        if current.version != record.replaced_by:
            raise DeployError(f"the record says {target.version} was replaced by {record.replaced_by or 'an unrecorded'}"
                              f" release, but {self.env} runs {current.version}: refusing to guess (deploy the release"
                              " you want by label: --version V)")
        self.running = current
        self.verify_published(target)
        self.console.heading(f"rollback: redeploy {target.version} to {self.name_of(spec)} (replacing {current.version})")
        self.console.say(f"rollback triggers: off for a rollback (the alarms of {current.version} may still be firing)")
        self.release, self.triggers = target, False
        self.deploy_stack(spec)

    # ---- plan, then execute ------------------------------------------------------------------------
    # A plan is made before approval by a role that may create change sets but
    # not execute them; the approved run executes exactly those, or refuses.

    def fingerprint(self, spec: StackSpec) -> str:
        """What must not change between a plan and its execution: the stack's
        status, last update and parameters ("NONE": no stack)."""
        stack = self.describe_stack(spec)
        if stack is None:
            return "NONE"
        updated = stack.get("LastUpdatedTime") or stack.get("CreationTime")
        doc = {"StackStatus": stack["StackStatus"], "Updated": str(updated),
               "Parameters": sorted((p["ParameterKey"], p["ParameterValue"]) for p in stack.get("Parameters", []))}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def make_plan(self, path: Path) -> None:
        if self.opts.dry_run:
            raise UsageError("aws target: a plan asks AWS; --plan and --dry-run exclude each other")
        if self.placeholders():
            raise DeployError(f"fill in {self.params_path} first (placeholders: {' '.join(self.placeholders())})")
        foundation = self.spec("foundation")
        if self.status(foundation) == "NONE":
            raise DeployError(f"{self.name_of(foundation)} does not exist: the first creation of an environment is a"
                              " deploy without --plan (docs/runbooks/deploy-rollback.md)")
        with self.console.step("preflight", "preflight (a plan recovers nothing: it reports)"):
            for spec in self.stacks:
                status = self.status(spec)
                if status == "UPDATE_ROLLBACK_FAILED":
                    raise DeployError(f"stack {self.name_of(spec)} is UPDATE_ROLLBACK_FAILED: {self.recovery_command(spec)}")
            if self.describe_stack(CANARY) is not None:
                self.console.say(f"note: a canary stack {self.name_of(CANARY)} is left by an interrupted run; the"
                                 " execution removes it first")
            self.running = self.app_running()
            self.previous = self.read_previous()
        self.release = self.publish_release()
        stamp = f"{datetime.datetime.now(datetime.UTC):%Y%m%d%H%M%S}"
        entries: list[PlannedStack] = []
        changed: str | None = None
        for spec in self.stacks:
            name, region = self.name_of(spec), self.region_of(spec)
            with self.console.step(f"plan {spec.key}", f"plan: stack {name}"
                                   + (f", provisional: computed before the change of {changed} is executed"
                                      if changed else "")):
                cs_type = self.change_set_type(spec)
                fp = self.fingerprint(spec)
                params = self.parameters(spec)
                rollback = self.rollback_configuration(spec)
                # One name per stack and plan (change sets are looked up by name).
                cs = f"plan-{stamp}-{spec.key}"
                outcome, changes, reason = self.create_change_set(spec, cs_type, cs, params, rollback)
                if outcome == "none":
                    self.console.say("no changes")
                elif outcome == "changes":
                    self.show(changes)
                elif changed is None:
                    raise DeployError(f"change set for {name} failed: {reason}")
                else:
                    self.console.say(f"cannot be computed until {changed}'s change is executed: {reason}")
                entries.append(PlannedStack(
                    key=spec.key, region=region, stack=name, type=cs_type, fingerprint=fp,
                    changeSet=cs if outcome == "changes" else None, outcome=outcome, reason=reason or None,
                    provisional=changed is not None, after=changed, template=str(spec.template.relative_to(ROOT)),
                    templateSha256=sha256(spec.template.read_bytes()), parameters=params,
                    rollbackConfiguration=rollback, changes=changes))
                if outcome != "none":
                    changed = spec.key
        skipped = self.canary_skipped()
        canary = PlannedCanary(
            runs=skipped is None, reason=self.canary_text() if skipped is None else skipped,
            stack=self.name_of(CANARY), weight=self.opts.canary.weight, window=self.window(),
            allowInconclusive=self.opts.canary.allow_inconclusive, probeRate=self.probe_rate,
            baseline=self.running.version if self.running else "",
            template=str(CANARY.template.relative_to(ROOT)), templateSha256=sha256(CANARY.template.read_bytes()))
        plan = Plan(environment=self.env, region=self.region, stackPrefix=self.prefix, version=self.version,
                    artifactSha256=self.release.artifact_sha256, hostBundleSha256=self.release.host_bundle_sha256,
                    imageId=self.release.image_id, createdAt=f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}",
                    rollbackTriggers=self.triggers, canary=canary, stacks=entries)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(plan.to_json())
        n = sum(1 for s in entries if s.outcome != "none")
        self.console.heading(f"plan written to {path}: {n} stack(s) to change, canary {'first' if canary.runs else 'none'},"
                             " nothing executed")

    def check_plan_identity(self, plan: Plan) -> None:
        if (plan.environment, plan.region, plan.stackPrefix) != (self.env, self.region, self.prefix) or (
                self.opts.version and plan.version != self.opts.version):
            want = f"{self.env} in {self.region}" + (f", release {self.opts.version}" if self.opts.version else "")
            raise DeployError(f"plan {self.opts.plan_file} is for {plan.environment} in {plan.region}, release"
                              f" {plan.version}, not {want}")
        if self.opts.canary.given:
            raise UsageError("the plan decides the canary (it was approved with it): plan again for other canary"
                             " options")

    def plan_parameters(self, key: str) -> dict[str, str]:
        assert self.plan is not None
        return next(s.parameters for s in self.plan.stacks if s.key == key)

    def prepare_planned(self, plan: Plan) -> None:
        with self.console.step("drift", f"check that {self.env} is still what was planned ({plan.createdAt})"):
            drift = []
            for entry in plan.stacks:
                spec = self.spec(entry.key)
                if self.fingerprint(spec) != entry.fingerprint:
                    drift.append(entry.stack)
                if sha256((ROOT / entry.template).read_bytes()) != entry.templateSha256:
                    drift.append(f"{entry.template}(template)")
            if sha256((ROOT / plan.canary.template).read_bytes()) != plan.canary.templateSha256:
                drift.append(f"{plan.canary.template}(template)")
            if drift:
                raise DeployError(f"refusing: changed since the plan: {' '.join(drift)}. Plan again (nothing executed)")
            self.console.say("unchanged: every stack and template as planned")
        with self.console.step("check release", f"release {plan.version} as planned, in S3"):
            self.release = plan.release
            self.verify_published(plan.release)
        self.record_rollback_target()
        with self.console.step("record release", announce=False):
            self.write_release_record(plan.release)
        self.triggers = plan.rollbackTriggers
        with self.console.step("capacity", announce=False):
            self.capacity()
        for entry in plan.stacks:
            if entry.key == "app":
                break
            self.execute_planned(entry.key)

    def execute_planned(self, key: str) -> None:
        """Executes the planned change set of one stack. A stack planned after
        an earlier stack's unexecuted change, or whose live inputs (the
        capacity to keep) moved since, is computed again now and executed
        only when its changes are the planned ones."""
        assert self.plan is not None
        entry = next(s for s in self.plan.stacks if s.key == key)
        spec = self.spec(key)
        with self.console.step(f"stack {key}", f"execute: stack {entry.stack}"):
            params = dict(entry.parameters)
            if spec.release:
                params["MinInstancesInService"] = self.capacity()
            again = (entry.provisional and self.changed is not None) or params != entry.parameters
            cs = entry.changeSet or ""
            outcome = entry.outcome
            if again:
                cs = f"exec-{datetime.datetime.now(datetime.UTC):%Y%m%d%H%M%S}-{key}"
                outcome, changes, reason = self.create_change_set(spec, entry.type, cs, params,
                                                                  entry.rollbackConfiguration)
                if outcome == "failed":
                    raise DeployError(f"re-computed change set for {entry.stack} failed: {reason}")
                planned = sorted(c.key() for c in entry.changes)
                if entry.outcome == "failed" or sorted(c.key() for c in changes) != planned:
                    self.console.warn("planned:")
                    for c in entry.changes:
                        self.console.warn(f"  {c.action}\t{c.logicalId}\t{c.type}\t{c.replacement}")
                    self.console.warn("now:")
                    for c in changes:
                        self.console.warn(f"  {c.action}\t{c.logicalId}\t{c.type}\t{c.replacement}")
                    after = f" after {self.changed}'s" if self.changed else ""
                    raise DeployError(f"refusing: {entry.stack}'s change{after} differs from the approved plan. Plan"
                                      " again (stacks before it are done)")
                why = f"after {self.changed}" if self.changed else "with the capacity the group runs now"
                self.console.say(f"re-computed {why}: same changes as planned")
            elif outcome == "changes":
                desc = self.cfn(spec).describe_change_set(StackName=entry.stack, ChangeSetName=cs)
                if desc.get("Status") != "CREATE_COMPLETE" or desc.get("ExecutionStatus") != "AVAILABLE":
                    raise DeployError(f"planned change set {cs} of {entry.stack} is {desc.get('Status')}/"
                                      f"{desc.get('ExecutionStatus')}: plan again")
            if outcome == "none":
                self.console.say("no changes")
                return
            self.show(entry.changes)
            self.execute(spec, cs, entry.type)
            self.changed = key

