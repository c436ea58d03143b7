"""The deploy program's AWS target against an emulated account (emulator.py:
moto in-process, CloudWatch and the service behind the load balancer faked).

Each class is one environment's life, its steps in order (test_1, test_2...).
The assertions are on what AWS ends up holding: stacks, their parameters and
rollback configurations, the listener rules during a canary, the objects and
records in S3, the Auto Scaling group, and the exit status and the errors an
operator reads. What moto cannot do (instances that boot and signal, rolling
updates, rollback triggers that fire) is in deploy/aws/README.md.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import tarfile
import unittest
from pathlib import Path
from typing import Any
from unittest import mock

from moto.cloudformation import models as moto_cfn
from moto.core.models import DEFAULT_ACCOUNT_ID  # where moto defines it (moto.core re-exports it implicitly)

import emulator
import moto_patches
from cfn import AWS_DIR, ROOT, TEMPLATES, load_template
from emulator import ERRORS, QUIET, SLOW, Account, Backend
from hbdeploy.record import Plan
from hbdeploy.stacks import CANARY, STACKS, Region

sys.path.insert(0, str(ROOT / ".github" / "scripts"))
import plan_summary  # noqa: E402

STAGING_KEYS = [s.key for s in STACKS if s.region is not Region.DR]


def sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def set_status(key: str, status: str, env: str = "staging") -> None:
    """What CloudFormation leaves after an update whose rollback broke off
    (no emulator produces it)."""
    backend = moto_cfn.cloudformation_backends[DEFAULT_ACCOUNT_ID][emulator.REGION]
    stack = next(s for s in backend.stacks.values() if s.name == f"hello-birthday-{env}-{key}")
    stack.status = status


class Scenario(unittest.TestCase):
    aws: Account

    @classmethod
    def setUpClass(cls) -> None:
        cls.aws = Account()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.aws.close()

    def assertOk(self, run: emulator.Run) -> None:
        self.assertEqual(run.rc, 0, run.text)

    def assertFails(self, run: emulator.Run, message: str, rc: int = 1) -> None:
        self.assertEqual(run.rc, rc, run.text)
        self.assertIn(message, run.err, run.text)

    def stack(self, env: str, key: str, region: str = emulator.REGION) -> dict[str, Any]:
        """DescribeStacks' entry for a stack that must exist."""
        stack = self.aws.stack(env, key, region)
        assert stack is not None, f"{env}-{key} does not exist"
        return stack

    def app(self, env: str = "staging") -> dict[str, str]:
        return self.aws.parameters(env, "app")

    def record(self, env: str = "staging") -> dict[str, str]:
        record: dict[str, str] = json.loads(self.aws.s3(env, f"deployments/{env}/previous.json"))
        return record

    def no_canary_left(self, env: str = "staging") -> None:
        self.assertIsNone(self.aws.stack(env, "canary"), "the canary stack is gone")

    def allowed(self, role: str) -> set[str]:
        boot = load_template("bootstrap")["Resources"]
        policies = boot[role]["Properties"]["Policies"] + [boot["ReadDeploymentState"]["Properties"]]
        out = set()
        for p in policies:
            for st in p["PolicyDocument"]["Statement"]:
                if st["Effect"] == "Allow":
                    out |= set(st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
        return out

    def assertEveryCallAllowed(self) -> None:
        """Every AWS call the program made is an action its role may take."""
        iam = {"elbv2": "elasticloadbalancing"}
        roles = {"deploy": self.allowed("DeployRole"), "plan": self.allowed("PlanRole")}
        made = {(role, f"{iam.get(service, service)}:{op}") for role, service, op in self.aws.calls}
        made -= {(r, "sts:GetCallerIdentity") for r in roles}  # needs no permission
        self.assertTrue(made)
        missing = sorted(f"{role}: {action}" for role, action in made if action not in roles[role])
        self.assertEqual(missing, [])


class Staging(Scenario):
    """staging from its first deploy: the canary in every release change,
    its failures (the fleet untouched), low traffic, interrupted runs,
    stuck stacks and suspended processes, a scaled-out group, rollbacks."""

    def test_01_first_deploy_creates_every_stack_and_publishes_the_release(self) -> None:
        one = self.aws.binary("one")
        stopped, run = self.aws.first_deploy("--release", str(one), "--write-checksum", "--version", "1.0.0")
        # A new environment: every stack but the fleet, then a stop for what
        # only an administrator does: the stateful stacks' policies (the
        # pipeline may not set them) and the database users (db-users.sh,
        # from inside the VPC).
        self.assertFails(stopped, 'failed at step "database users"')
        for key in ("network", "database"):
            self.assertIn(f"set-stack-policy --region eu-west-1 --stack-name hello-birthday-staging-{key} ", stopped.err)
        self.assertIn("deploy/aws/db-users.sh --env staging\n", stopped.err)
        self.assertIn(("cloudformation", "CreateChangeSet"), stopped.calls)
        self.assertNotIn(("cloudformation", "SetStackPolicy"), stopped.calls + run.calls)
        self.assertOk(run)
        self.assertEqual(run.out.count("already published (sha256 matches)"), 2, run.out)
        self.assertIn("database users created 2026-01-01T00:00:00Z (db-users.sh)", run.out)
        for key in STAGING_KEYS:
            region = "us-east-1" if key == "dns-alarm" else emulator.REGION
            stack = self.aws.stack("staging", key, region)
            assert stack is not None, key
            self.assertEqual(stack["StackStatus"], "CREATE_COMPLETE", key)
            # Stated on every change set: the app stack's rolling update has the
            # fast burn alarms as triggers, every other stack none.
            # Through the CloudFormation role, which the guardrails require.
            self.assertEqual(stack.get("RoleARN"), emulator.CFN_ROLE, key)
            triggers = stack["RollbackConfiguration"]["RollbackTriggers"]
            if key == "app":
                self.assertEqual([t["Arn"].rsplit(":", 1)[1] for t in triggers],
                                 ["hello-birthday-staging-5xx-burn-5m", "hello-birthday-staging-latency-burn-5m"])
                self.assertEqual(stack["RollbackConfiguration"]["MonitoringTimeInMinutes"], 10)
            else:
                self.assertEqual(triggers, [], key)
        # The DNS alarm's stack reached us-east-1, fed the edge stack's health check.
        edge = {o["OutputKey"]: o["OutputValue"] for o in self.stack("staging", "edge")["Outputs"]}
        self.assertEqual(self.aws.parameters("staging", "dns-alarm", "us-east-1")["HealthCheckId"], edge["HealthCheckId"])
        # The release, its checksums, the host bundle and the pinned image, once.
        binary = self.aws.s3("staging", "releases/1.0.0/hello-birthday")
        self.assertEqual(binary, one.read_bytes())
        self.assertEqual(self.aws.s3("staging", "releases/1.0.0/hello-birthday.sha256").decode(),
                         f"{sha(binary)}  hello-birthday\n")
        bundle = self.aws.s3("staging", "releases/1.0.0/host.tar.gz")
        self.assertEqual(self.aws.s3("staging", "releases/1.0.0/host.tar.gz.sha256").decode(),
                         f"{sha(bundle)}  host.tar.gz\n")
        with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
            names = tar.getnames()
        for needed in ("scripts/setup.sh", "scripts/lib/common.sh", "deploy/systemd",
                       "deploy/aws/host/hello-birthday-aws.sh"):
            self.assertIn(needed, names)
        image = self.aws.s3("staging", "releases/1.0.0/image-id").decode().strip()
        self.assertEqual(self.aws.client("ec2").describe_images(ImageIds=[image])["Images"][0]["ImageOwnerAlias"],
                         "amazon")
        app = self.app()
        self.assertEqual((app["AppVersion"], app["ArtifactSha256"], app["HostBundleSha256"], app["ImageId"]),
                         ("1.0.0", sha(binary), sha(bundle), image))
        self.assertEqual(app["MinInstancesInService"], "2")
        # The record of what this environment approved under that label.
        self.assertEqual(json.loads(self.aws.s3("staging", "deployments/staging/releases/1.0.0.json")),
                         {k: app[k] for k in ("AppVersion", "ArtifactSha256", "HostBundleSha256", "ImageId")})
        # The instances would boot with this user data.
        db = {o["OutputKey"]: o["OutputValue"] for o in self.stack("staging", "database")["Outputs"]}
        ec2 = self.aws.client("ec2")
        lt = ec2.describe_launch_templates(LaunchTemplateNames=["hello-birthday-staging"])["LaunchTemplates"][0]
        data = ec2.describe_launch_template_versions(LaunchTemplateId=lt["LaunchTemplateId"], Versions=["$Latest"])
        user_data = base64.b64decode(data["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"]).decode()
        self.assertIn(f'echo "{sha(binary)}  $release/hello-birthday" | sha256sum --check --strict', user_data)
        self.assertIn(f"TARGET_GROUP_ARN={edge['TargetGroupArn']}\n", user_data)
        # The service's own login, never the master's.
        self.assertIn(f"DB_SECRET_ARN={db['AppUserSecretArn']}\n", user_data)
        group = self.aws.client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=["hello-birthday-staging"])["AutoScalingGroups"][0]
        self.assertEqual((group["TargetGroupARNs"], group["HealthCheckType"]), ([edge["TargetGroupArn"]], "ELB"))
        # Nothing to compare with: no canary, said loudly.
        self.assertIn("no running release to compare with (first deploy)", run.err)
        self.no_canary_left()

    def test_02_a_stateful_stack_without_its_policy_stops_the_deploy_with_the_command(self) -> None:
        # Someone loosened the database stack's policy.
        self.aws.client("cloudformation").set_stack_policy(
            StackName="hello-birthday-staging-database",
            StackPolicyBody=json.dumps({"Statement": [{"Effect": "Allow", "Action": "Update:*", "Principal": "*",
                                                       "Resource": "*"}]}))
        before = self.stack("staging", "database")["StackStatus"], self.app()
        run = self.aws.deploy("--version", "1.0.0")
        self.assertFails(run, "set-stack-policy --region eu-west-1 --stack-name hello-birthday-staging-database ")
        self.assertIn('failed at step "preflight"', run.err)
        self.assertNotIn("--stack-name hello-birthday-staging-network ", run.err)
        self.assertNotIn(("cloudformation", "CreateChangeSet"), run.calls)
        self.assertNotIn(("cloudformation", "SetStackPolicy"), run.calls)
        self.assertEqual((self.stack("staging", "database")["StackStatus"], self.app()), before)
        # The operator sets it as told.
        self.aws.set_stack_policies_as_told(run)
        policy = json.loads(self.aws.client("cloudformation").get_stack_policy(
            StackName="hello-birthday-staging-database")["StackPolicyBody"])
        self.assertEqual(policy["Statement"][1]["Condition"]["StringEquals"]["ResourceType"],
                         ["AWS::RDS::DBInstance", "AWS::Backup::BackupVault", "AWS::EC2::VPC", "AWS::EC2::Subnet"])
        # Now an identical deploy changes nothing at all.
        run = self.aws.deploy("--release", str(self.aws.binary("one")), "--version", "1.0.0")
        self.assertOk(run)
        self.assertEqual(run.out.count("    no changes"), len(STAGING_KEYS), run.out)
        self.assertEqual(run.out.count("already published (sha256 matches)"), 2, run.out)
        self.assertIn("1.0.0 already runs: no canary step", run.out)
        self.assertNotIn(("cloudformation", "ExecuteChangeSet"), run.calls)

    def test_03_a_canary_that_passes_then_a_smoke_test_that_fails_puts_the_previous_release_back(self) -> None:
        two = self.aws.binary("two")
        run = self.aws.deploy("--release", str(two), "--write-checksum", "--version", "2.0.0", smoke="false")
        self.assertFails(run, "smoke test failed on 2.0.0; rolled back")
        self.assertIn("canary: PASS", run.out)
        # During the canary: its own stack, the new release on the image pinned
        # for it, the fleet's settings, and the listener rules that split the
        # users' traffic 90/10 and send each side's probes to that side alone.
        (snap,) = self.aws.snapshots[-1:]
        canary = {p["ParameterKey"]: p["ParameterValue"] for p in snap["canary"]["Parameters"]}
        self.assertEqual((canary["AppVersion"], canary["ArtifactSha256"], canary["ImageId"]),
                         ("2.0.0", sha(two.read_bytes()), snap["app"]["ImageId"]))
        self.assertEqual(snap["app"]["AppVersion"], "1.0.0", "the fleet is not touched while the canary runs")
        self.assertEqual(snap["canary"]["RollbackConfiguration"]["RollbackTriggers"], [])
        outputs = {o["OutputKey"]: o["OutputValue"] for o in snap["canary"]["Outputs"]}
        main_tg = {o["OutputKey"]: o["OutputValue"] for o in self.stack("staging", "edge")["Outputs"]}["TargetGroupArn"]
        rules = {r["Priority"]: r for r in snap["rules"]}
        weighted = rules["100"]["Actions"][0]["ForwardConfig"]["TargetGroups"]
        self.assertEqual({g["TargetGroupArn"]: g["Weight"] for g in weighted},
                         {main_tg: 90, outputs["CanaryTargetGroupArn"]: 10})
        for priority, side, tg in (("90", "canary", outputs["CanaryTargetGroupArn"]), ("91", "baseline", main_tg)):
            (cond,) = rules[priority]["Conditions"]
            self.assertEqual(cond["Field"], "http-header")
            self.assertEqual(cond["HttpHeaderConfig"]["HttpHeaderName"], "X-Canary-Probe")
            self.assertRegex(cond["HttpHeaderConfig"]["Values"][0], rf"^[0-9a-f]{{32}}-{side}$")
            self.assertEqual(rules[priority]["Actions"][0]["TargetGroupArn"], tg)
        # The probes reached both sides; CloudWatch was asked per target group,
        # each look over the whole interval so far.
        sides = {side for _, side, _ in Backend.seen}
        self.assertEqual(sides, {"canary", "baseline"})
        looks = self.aws.cloudwatch.calls
        self.assertEqual(len({c["StartTime"] for c in looks}), 1)
        periods = [{q["MetricStat"]["Period"] for q in c["MetricDataQueries"]} for c in looks]
        self.assertEqual(periods, [{1}, {2}, {3}])
        metrics = {q["Id"]: q["MetricStat"] for q in looks[0]["MetricDataQueries"]}
        self.assertEqual(metrics["canary_connection_errors"]["Metric"]["MetricName"], "TargetConnectionErrorCount")
        self.assertEqual(metrics["canary_p99"]["Stat"], "p99")
        self.assertEqual(metrics["canary_requests"]["Metric"]["Dimensions"][0]["Value"],
                         outputs["CanaryTargetGroupFullName"])
        # Then: canary gone, the smoke test failed, the fleet back on 1.0.0
        # without rollback triggers, the record names 1.0.0.
        self.no_canary_left()
        self.assertEqual((self.app()["AppVersion"], self.app()["ArtifactSha256"]),
                         ("1.0.0", sha(self.aws.binary("one").read_bytes())))
        self.assertEqual(self.stack("staging", "app")["RollbackConfiguration"]["RollbackTriggers"], [])
        self.assertEqual((self.record()["AppVersion"], self.record()["ReplacedBy"]), ("1.0.0", "2.0.0"))

    def test_04_a_recorded_release_deploys_by_its_label_after_its_canary(self) -> None:
        run = self.aws.deploy("--version", "2.0.0")
        self.assertOk(run)
        self.assertIn("canary: PASS", run.out)
        self.assertIn("releases/2.0.0: binary", run.out)
        self.assertEqual(self.app()["AppVersion"], "2.0.0")
        self.assertEqual(self.stack("staging", "app")["RollbackConfiguration"]["MonitoringTimeInMinutes"], 10)
        self.no_canary_left()

    def test_05_a_published_release_cannot_be_replaced(self) -> None:
        run = self.aws.deploy("--release", str(self.aws.binary("impostor")), "--write-checksum", "--version", "2.0.0")
        self.assertFails(run, "Releases are immutable")
        self.assertEqual(self.aws.s3("staging", "releases/2.0.0/hello-birthday"), self.aws.binary("two").read_bytes())
        self.assertEqual(self.app()["AppVersion"], "2.0.0")

    def test_06_a_rollback_from_a_new_process_uses_the_record(self) -> None:
        run = self.aws.deploy("--rollback", "--version", "2.0.0")
        self.assertOk(run)
        self.assertIn("rollback triggers: off for a rollback", run.out)
        self.assertEqual(self.app()["AppVersion"], "1.0.0")
        self.assertEqual(self.stack("staging", "app")["RollbackConfiguration"]["RollbackTriggers"], [])
        self.assertEqual((self.record()["AppVersion"], self.record()["ReplacedBy"]), ("1.0.0", "2.0.0"))
        # Only the deploy being undone: 1.0.0 runs now, a rollback of 2.0.0 does nothing.
        run = self.aws.deploy("--rollback", "--version", "2.0.0")
        self.assertOk(run)
        self.assertIn("already runs 1.0.0, the recorded rollback target: nothing to do", run.out)

    def test_07_rolling_back_does_not_change_what_previous_means(self) -> None:
        self.assertOk(self.aws.deploy("--version", "2.0.0"))
        # Deploying the recorded rollback target by label is a rollback: no
        # canary, and the record keeps 1.0.0, never the bad 2.0.0.
        run = self.aws.deploy("--version", "1.0.0")
        self.assertOk(run)
        self.assertIn("1.0.0 is the recorded rollback target: record kept", run.out)
        self.assertIn("a rollback, no canary step", run.out)
        self.assertEqual((self.app()["AppVersion"], self.record()["AppVersion"]), ("1.0.0", "1.0.0"))

    def test_08_a_failing_canary_leaves_the_fleet_untouched(self) -> None:
        before = self.stack("staging", "app")
        for traffic, says in ((ERRORS, "cloudwatch: errors: canary 5xx ratio"), (SLOW, "latency: canary p99 350 ms")):
            run = self.aws.deploy("--release", str(self.aws.binary("three")), "--write-checksum", "--version", "3.0.0",
                                  traffic=traffic)
            self.assertFails(run, "canary verdict FAIL")
            self.assertIn(says, run.err)
            self.assertIn('failed at step "canary"', run.err)
            self.assertEqual(len(self.aws.cloudwatch.calls), 1, "stopped at the first look")
            self.no_canary_left()
            after = self.stack("staging", "app")
            self.assertEqual((after["Parameters"], after.get("LastUpdatedTime")),
                             (before["Parameters"], before.get("LastUpdatedTime")))

    def test_09_the_probes_see_the_load_balancers_own_5xx(self) -> None:
        # The canary's target resets connections: the load balancer answers
        # 502 (no target 5xx at all); the probes of the canary side see it.
        Backend.answers = {"canary": 502, "baseline": 404}
        try:
            run = self.aws.deploy("--version", "3.0.0", traffic=QUIET)
        finally:
            Backend.answers = {"canary": 404, "baseline": 404}
        self.assertFails(run, "canary verdict FAIL")
        self.assertRegex(run.err, r"(probes|cloudwatch): errors: canary 5xx ratio")
        self.assertEqual(self.app()["AppVersion"], "1.0.0")
        self.no_canary_left()

    def test_10_low_traffic_gets_a_verdict_from_the_probes_or_stops_as_inconclusive(self) -> None:
        run = self.aws.deploy("--version", "3.0.0", traffic=emulator.Traffic((0, 0, 0, 0.0), (0, 0, 0, 0.0)),
                              probes=False)
        self.assertFails(run, "canary verdict INCONCLUSIVE")
        self.assertIn("too little traffic", run.err)
        self.assertEqual(self.app()["AppVersion"], "1.0.0")
        self.no_canary_left()
        # The same quiet hour with the probes: a verdict.
        run = self.aws.deploy("--version", "3.0.0", traffic=QUIET)
        self.assertOk(run)
        self.assertRegex(run.out, r"synthetic probes: canary [1-9][0-9]{2,} sent, 0 answered 5xx")
        self.assertEqual(self.app()["AppVersion"], "3.0.0")

    def test_11_a_canary_left_by_an_interrupted_run_is_removed_by_the_next(self) -> None:
        run = self.aws.deploy("--release", str(self.aws.binary("four")), "--write-checksum", "--version", "4.0.0",
                              kill_at_look=2)
        self.assertEqual(run.rc, -9)
        left = self.aws.stack("staging", "canary")
        self.assertIsNotNone(left)
        self.assertEqual(self.app()["AppVersion"], "3.0.0")
        run = self.aws.deploy("--version", "4.0.0")
        self.assertOk(run)
        self.assertIn("a canary stack left by an interrupted run (4.0.0, CREATE_COMPLETE): removing it", run.out)
        self.assertEqual(self.app()["AppVersion"], "4.0.0")
        self.no_canary_left()

    def test_12_a_rollback_that_broke_off_and_suspended_processes_are_recovered(self) -> None:
        set_status("monitoring", "UPDATE_ROLLBACK_FAILED")
        autoscaling = self.aws.client("autoscaling")
        autoscaling.suspend_processes(AutoScalingGroupName="hello-birthday-staging",
                                      ScalingProcesses=["AlarmNotification", "HealthCheck"])
        run = self.aws.deploy("--version", "4.0.0")
        self.assertOk(run)
        self.assertIn("is UPDATE_ROLLBACK_FAILED (an earlier update's rollback broke off): continuing its rollback",
                      run.out)
        self.assertEqual(self.stack("staging", "monitoring")["StackStatus"], "UPDATE_ROLLBACK_COMPLETE")
        self.assertIn("AlarmNotification, HealthCheck still suspended with no update running: resuming them", run.out)
        group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["hello-birthday-staging"])
        self.assertEqual(group["AutoScalingGroups"][0]["SuspendedProcesses"], [])
        # A process no update suspends was suspended by a person: stop, say how.
        autoscaling.suspend_processes(AutoScalingGroupName="hello-birthday-staging", ScalingProcesses=["Launch"])
        run = self.aws.deploy("--version", "4.0.0")
        self.assertFails(run, "aws autoscaling resume-processes --region eu-west-1 --auto-scaling-group-name"
                              " hello-birthday-staging --scaling-processes Launch")
        autoscaling.resume_processes(AutoScalingGroupName="hello-birthday-staging", ScalingProcesses=["Launch"])

    def test_13_a_scaled_out_group_keeps_its_capacity(self) -> None:
        autoscaling = self.aws.client("autoscaling")
        autoscaling.set_desired_capacity(AutoScalingGroupName="hello-birthday-staging", DesiredCapacity=3)
        # staging's MaxSize is 3: no room for the one extra instance.
        before = self.stack("staging", "app")
        run = self.aws.deploy("--release", str(self.aws.binary("five")), "--write-checksum", "--version", "5.0.0")
        self.assertFails(run, "the app group runs 3 instances, its MaxSize is 3")
        self.assertEqual(self.stack("staging", "app")["Parameters"], before["Parameters"])
        self.no_canary_left()
        params = json.loads(self.aws.params["staging"].read_text())
        params["stacks"]["app"]["MaxSize"] = 4
        roomy = self.aws.dir / "staging-max4.json"
        roomy.write_text(json.dumps(params))
        run = self.aws.deploy("--version", "5.0.0", params=roomy)
        self.assertOk(run)
        self.assertEqual((self.app()["AppVersion"], self.app()["MinInstancesInService"]), ("5.0.0", "3"))

    def test_99_every_call_is_one_its_role_may_make(self) -> None:
        self.assertEveryCallAllowed()


class Production(Scenario):
    """production, which the pipeline changes only through approved plans:
    the plan names the canary; its execution runs it before the fleet,
    refuses drift and releases replaced in S3 after the plan."""

    plan_file: Path

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        _, run = cls.aws.first_deploy("--release", str(cls.aws.binary("one")), "--write-checksum", "--version",
                                      "1.0.0", env="production")
        assert run.rc == 0, run.text
        cls.plan_file = cls.aws.dir / "plan.json"

    def plan(self, name: str, version: str, **kw: Any) -> Plan:
        run = self.aws.deploy("--release", str(self.aws.binary(name)), "--write-checksum", "--version", version,
                              "--plan", str(self.plan_file), env="production", **kw)
        self.assertOk(run)
        self.assertNotIn(("cloudformation", "ExecuteChangeSet"), run.calls)
        return Plan.from_json(self.plan_file.read_text())

    def execute(self, version: str, **kw: Any) -> emulator.Run:
        return self.aws.deploy("--execute-plan", str(self.plan_file), "--version", version, env="production", **kw)

    def test_1_the_database_stack_is_linked_to_the_dr_region(self) -> None:
        self.assertEqual(self.stack("production", "dr-vault", "eu-central-1")["StackStatus"], "CREATE_COMPLETE")
        vault = {o["OutputKey"]: o["OutputValue"]
                 for o in self.stack("production", "dr-vault", "eu-central-1")["Outputs"]}
        db = self.aws.parameters("production", "database")
        self.assertEqual((db["DrRegion"], db["DrBackupVaultArn"], db["DrReplicationKmsKeyArn"]),
                         ("eu-central-1", vault["VaultArn"], vault["ReplicationKeyArn"]))

    def test_2_a_plan_names_its_canary_and_its_execution_runs_it_before_the_fleet(self) -> None:
        # An infrastructure change too: the app stack is planned before the
        # monitoring change is executed (provisional), and computed again.
        params = json.loads(self.aws.params["production"].read_text())
        params["stacks"]["monitoring"]["MinHealthyHosts"] = 1
        self.aws.params["production"].write_text(json.dumps(params))
        plan = self.plan("two", "2.0.0")
        self.assertEqual(self.app("production")["AppVersion"], "1.0.0")
        self.assertTrue(plan.canary.runs)
        self.assertEqual((plan.canary.weight, plan.canary.window, plan.canary.baseline), (10, 3, "1.0.0"))
        stacks = {s.key: s for s in plan.stacks}
        self.assertEqual(list(stacks), [s.key for s in STACKS])  # the one table, dns-alarm and dr-vault included
        self.assertEqual((stacks["monitoring"].outcome, stacks["app"].provisional), ("changes", True))
        self.assertEqual(stacks["network"].outcome, "none")
        self.assertEqual(stacks["edge"].rollbackConfiguration["RollbackTriggers"], [])
        self.assertEqual(len(stacks["app"].rollbackConfiguration["RollbackTriggers"]), 2)
        # Reviewers see the canary in the summary of what they approve.
        summary = plan_summary.render(json.loads(self.plan_file.read_text()), "https://hello.staging.example.com")
        self.assertIn("**Canary first**", summary)
        self.assertIn("1.0.0", summary)
        run = self.execute("2.0.0")
        self.assertOk(run)
        self.assertIn("unchanged: every stack and template as planned", run.out)
        self.assertIn("re-computed after monitoring: same changes as planned", run.out)
        self.assertIn("canary: PASS", run.out)
        (snap,) = self.aws.snapshots[-1:]
        self.assertEqual(snap["app"]["AppVersion"], "1.0.0", "the canary ran before the fleet was touched")
        self.assertEqual(self.aws.parameters("production", "monitoring")["MinHealthyHosts"], "1", "before the canary")
        self.assertEqual(self.app("production")["AppVersion"], "2.0.0")
        self.assertEqual((self.record("production")["AppVersion"], self.record("production")["ReplacedBy"]),
                         ("1.0.0", "2.0.0"))
        self.no_canary_left("production")

    def test_3_a_failing_canary_stops_the_execution_before_the_fleet(self) -> None:
        before = self.stack("production", "app")
        self.plan("three", "3.0.0")
        run = self.execute("3.0.0", traffic=ERRORS)
        self.assertFails(run, "canary verdict FAIL")
        self.assertEqual(self.stack("production", "app")["Parameters"], before["Parameters"])
        self.no_canary_left("production")

    def test_4_a_checksum_replaced_in_s3_after_the_plan_is_refused(self) -> None:
        plan = self.plan("four", "4.0.0")
        s3 = self.aws.client("s3")
        bucket = self.aws.bucket("production")
        evil = b"not what was approved"
        s3.put_object(Bucket=bucket, Key="releases/4.0.0/hello-birthday", Body=evil)
        s3.put_object(Bucket=bucket, Key="releases/4.0.0/hello-birthday.sha256",
                      Body=f"{sha(evil)}  hello-birthday\n".encode())
        run = self.execute("4.0.0")
        self.assertFails(run, f"the record of what was approved says {plan.artifactSha256}: refused")
        self.assertIn('failed at step "check release"', run.err)
        self.assertNotIn(("cloudformation", "ExecuteChangeSet"), run.calls)
        self.assertEqual(self.app("production")["AppVersion"], "2.0.0")

    def test_5_a_plan_refuses_once_production_changed_under_it(self) -> None:
        self.plan("five", "5.0.0")
        self.assertOk(self.aws.deploy("--version", "1.0.0", env="production"))  # production changes under the plan
        run = self.execute("5.0.0")
        self.assertFails(run, "refusing: changed since the plan: hello-birthday-production-app")
        self.assertEqual(self.app("production")["AppVersion"], "1.0.0")
        run = self.execute("9.9.9")
        self.assertFails(run, "release 5.0.0, not production in eu-west-1, release 9.9.9")
        run = self.aws.deploy("--execute-plan", str(self.plan_file), "--no-canary", env="production")
        self.assertFails(run, "the plan decides the canary", rc=2)

    def test_6_an_execution_recovers_nothing_it_was_not_approved_for(self) -> None:
        self.plan("six", "6.0.0")
        set_status("edge", "UPDATE_ROLLBACK_FAILED", env="production")
        run = self.execute("6.0.0")
        self.assertFails(run, "aws cloudformation continue-update-rollback --region eu-west-1 --stack-name"
                              " hello-birthday-production-edge")
        self.assertEqual(self.stack("production", "edge")["StackStatus"], "UPDATE_ROLLBACK_FAILED")
        set_status("edge", "UPDATE_COMPLETE", env="production")

    def test_99_every_call_is_one_its_role_may_make(self) -> None:
        self.assertEveryCallAllowed()


class Outcomes(Scenario):
    """What CloudFormation does that moto cannot: a stack it rolls back."""

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        _, run = cls.aws.first_deploy("--release", str(cls.aws.binary("one")), "--write-checksum", "--version",
                                      "1.0.0")
        assert run.rc == 0, run.text

    def test_an_app_stack_rolled_back_by_cloudformation_fails_the_deploy_with_its_reason(self) -> None:
        moto_patches.OUTCOMES["hello-birthday-staging-app"] = (
            "UPDATE_ROLLBACK_COMPLETE", "AutoScalingGroup",
            "Received 0 SUCCESS signal(s) out of 1. Unable to satisfy 100% MinSuccessfulInstancesPercent requirement")
        try:
            run = self.aws.deploy("--release", str(self.aws.binary("two")), "--write-checksum", "--version", "2.0.0")
        finally:
            moto_patches.OUTCOMES.clear()
        self.assertFails(run, "CloudFormation rolled back stack hello-birthday-staging-app (UPDATE_ROLLBACK_COMPLETE)")
        self.assertIn("Received 0 SUCCESS signal(s) out of 1", run.err)
        self.assertIn('failed at step "stack app"', run.err)
        self.assertEqual(self.app()["AppVersion"], "1.0.0")

    def test_without_the_cloudformation_role_nothing_is_changed(self) -> None:
        with mock.patch.dict(os.environ):
            del os.environ["AWS_CFN_ROLE_ARN"]
            run = self.aws.deploy("--release", str(self.aws.binary("two")), "--write-checksum", "--version", "2.0.0")
        self.assertFails(run, "AWS_CFN_ROLE_ARN is not set")
        self.assertIn('failed at step "preflight"', run.err)
        self.assertNotIn(("cloudformation", "CreateChangeSet"), run.calls)
        self.assertNotIn(("s3", "PutObject"), run.calls)

    def test_no_rollback_triggers_for_an_emergency_fix(self) -> None:
        run = self.aws.deploy("--release", str(self.aws.binary("fix")), "--write-checksum", "--version", "1.0.1",
                              "--no-rollback-triggers")
        self.assertOk(run)
        self.assertEqual(self.stack("staging", "app")["RollbackConfiguration"]["RollbackTriggers"], [])

    def test_a_label_never_recorded_is_refused_before_any_stack_changes(self) -> None:
        run = self.aws.deploy("--version", "9.9.9")
        self.assertFails(run, "release 9.9.9 is not published for staging")
        self.assertNotIn(("cloudformation", "ExecuteChangeSet"), run.calls)

    def test_an_unknown_rollback_target_stops_the_deploy_before_it_starts(self) -> None:
        backend = moto_cfn.cloudformation_backends[DEFAULT_ACCOUNT_ID][emulator.REGION]
        stack = next(s for s in backend.stacks.values() if s.name == "hello-birthday-staging-app")
        params = stack.resource_map.resolved_parameters
        kept = dict(params)
        params.pop("ArtifactSha256")
        try:
            run = self.aws.deploy("--version", "1.0.0")
        finally:
            params.update(kept)
        self.assertFails(run, "cannot tell which release hello-birthday-staging-app runs")
        self.assertNotIn(("cloudformation", "CreateChangeSet"), run.calls)


class NoAws(unittest.TestCase):
    """What runs without an account: dry runs, refusals before any call."""

    def run_cli(self, *args: str) -> emulator.Run:
        aws = Account()
        self.addCleanup(aws.close)
        run = aws.deploy(*args)
        self.assertEqual(run.calls, [], "no AWS call")
        return run

    def test_a_dry_run_prints_every_change_set_and_calls_nothing(self) -> None:
        for env, count in (("staging", len(STAGING_KEYS)), ("production", len(STACKS))):
            params = AWS_DIR / "parameters" / f"{env}.json"
            aws = Account()
            self.addCleanup(aws.close)
            run = aws.deploy("--release", str(aws.binary("one")), "--write-checksum", "--version", "1.0.0",
                             "--dry-run", env=env, params=params)
            self.assertEqual(run.rc, 0, run.text)
            self.assertEqual(run.calls, [])
            self.assertEqual(run.out.count("cloudformation create-change-set"), count, run.out)
            self.assertIn('{"ParameterKey": "AppVersion", "ParameterValue": "1.0.0"}', run.out)
            self.assertIn("still placeholders", run.out)
            self.assertIn("canary first:", run.out)

    def test_placeholders_block_a_real_deploy(self) -> None:
        aws = Account()
        self.addCleanup(aws.close)
        run = aws.deploy("--release", str(aws.binary("one")), "--write-checksum", "--version", "1.0.0",
                         params=AWS_DIR / "parameters" / "staging.json")
        self.assertEqual(run.rc, 1, run.text)
        self.assertIn("fill in", run.err)
        self.assertIn("edge.HostedZoneId", run.err)
        self.assertEqual(run.calls, [])

    def test_usage_errors_exit_2(self) -> None:
        aws = Account()
        self.addCleanup(aws.close)
        for args, message in ((("--version", "1.0.0", "--regoin", "x"), "unknown option --regoin"),
                              (("--rollback", "--plan", "p.json"), "exclude each other"),
                              (("--version", "1.0.0", "--canary-weight", "80"), "--canary-weight")):
            run = aws.deploy(*args)
            self.assertEqual(run.rc, 2, run.text)
            self.assertIn(message, run.err)
            self.assertEqual(run.calls, [])


class Table(unittest.TestCase):
    def test_the_table_of_stacks_names_every_template(self) -> None:
        keys = [s.key for s in STACKS]
        self.assertEqual(sorted(p.stem for p in TEMPLATES.glob("*.yaml")),
                         # bootstrap and db-rotation are an administrator's stacks, never a deploy's.
                         sorted([*keys, CANARY.key, "bootstrap", "db-rotation"]))
        self.assertEqual(keys.index("dns-alarm"), keys.index("edge") + 1, "the DNS alarm needs the edge's health check")
        self.assertEqual(keys[-1], "app", "the fleet is the last stack a deploy changes")


if __name__ == "__main__":
    unittest.main()
