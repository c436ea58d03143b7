"""deploy/aws/target.sh, the AWS target of scripts/deploy.sh.

EmulatorScenario runs scripts/deploy.sh --target aws (and, for single
functions, tests/driver.sh) with the real AWS CLI against moto on 127.0.0.1 (random
port, dummy credentials, no network beyond loopback): every stack is created
and updated through change sets from the real templates and parameter
layout, the release is uploaded and checked in S3, and the launch template's
user data is read back. botocore validates every call against the service
models, so a misspelt command, option or parameter fails here. What moto does
not do: start instances, run user data, evaluate IAM or KMS policies, health
checks, signals, rolling updates or rollback triggers (see README.md).

ScriptedOutcomes uses a scripted `aws` (fake_aws_cli.py) for what an
emulator cannot produce: a stack rolled back by CloudFormation.
"""

import base64
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import unittest
import urllib.request

import aws_cli_server
import fake_aws_cli
from cfn import AWS_DIR, ROOT

DRIVER = AWS_DIR / "tests" / "driver.sh"
VENV_BIN = ROOT / ".venv" / "bin"
ENV = "staging"
DOMAIN = "hello.staging.example.com"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        # Dummy credentials only, and no profile or config from the machine.
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        # The canary step has its own tests (test_canary.py); these judge the stacks.
        CANARY="0",
    )
    env.update(extra)
    return env


def drive(function, *options, env, version="1.0.0", artifact=None, dry_run=False, env_name=ENV):
    full_env = dict(env, ENV_NAME=env_name, VERSION=version, DRY_RUN="1" if dry_run else "0",
                    ARTIFACT=str(artifact) if artifact else "")
    return subprocess.run([str(DRIVER), function, *options], env=full_env, capture_output=True, text=True,
                          timeout=600, check=False)


class EmulatorScenario(unittest.TestCase):
    """One environment's life through scripts/deploy.sh --target aws: first
    deploy, idempotent re-deploy, a release whose smoke test fails (rolled
    back), a published release deployed by its label, a refused
    re-publication, a rollback from a fresh process. The steps build on each
    other and run in order (test_1..6)."""

    @classmethod
    def setUpClass(cls):
        import boto3  # installed with moto

        cls.tmp = tempfile.TemporaryDirectory(prefix="aws-target-")
        tmp = cls.tmp.name
        port = free_port()
        cls.endpoint = f"http://127.0.0.1:{port}"
        cls.moto_log = open(os.path.join(tmp, "moto.log"), "w")
        cls.moto = subprocess.Popen(
            [str(VENV_BIN / "python"), str(AWS_DIR / "tests" / "moto_server.py"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=cls.moto_log, stderr=subprocess.STDOUT)
        cls.addClassCleanup(cls._stop)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(cls.endpoint + "/moto-api/", timeout=2)
                break
            except OSError:
                if cls.moto.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not start; see {cls.moto_log.name}")
                time.sleep(0.2)
        # The real AWS CLI, imported once and forked per call (aws_cli_server.py).
        sock = os.path.join(tmp, "aws-cli.sock")
        cls.cli_log = open(os.path.join(tmp, "aws-cli-server.log"), "w")
        cls.cli_server = subprocess.Popen([str(VENV_BIN / "python"), str(AWS_DIR / "tests" / "aws_cli_server.py"), sock],
                                          stdout=cls.cli_log, stderr=subprocess.STDOUT)
        cls.addClassCleanup(cls._stop_cli_server)
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            if cls.cli_server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the AWS CLI server did not start; see {cls.cli_log.name}")
            time.sleep(0.1)
        cls.env = base_env(AWS_ENDPOINT_URL=cls.endpoint, AWS_CLI=aws_cli_server.write_wrapper(tmp, sock))
        cls.session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                    region_name="eu-west-1")
        acm, r53 = cls.client("acm"), cls.client("route53")
        # What an account provides before the first deploy: a certificate
        # and a hosted zone (the parameter file's REPLACE_ME values).
        cert = acm.request_certificate(DomainName=DOMAIN, ValidationMethod="DNS")["CertificateArn"]
        zone = r53.create_hosted_zone(Name="staging.example.com", CallerReference="t")["HostedZone"]["Id"]
        params = json.loads((AWS_DIR / "parameters" / f"{ENV}.json").read_text())
        params["stacks"]["edge"].update(CertificateArn=cert, HostedZoneId=zone.split("/")[-1])
        cls.params = os.path.join(tmp, f"{ENV}.json")
        with open(cls.params, "w") as f:
            json.dump(params, f)
        cls.bins = {}
        for name in ("one", "two", "impostor"):
            os.makedirs(os.path.join(tmp, name))
            path = os.path.join(tmp, name, "hello-birthday")
            with open(path, "wb") as f:
                f.write(os.urandom(64 * 1024))
            cls.bins[name] = path

    @classmethod
    def client(cls, service):
        return cls.session.client(service, endpoint_url=cls.endpoint)

    @classmethod
    def _stop_cli_server(cls):
        cls.cli_server.terminate()
        cls.cli_server.wait(timeout=10)
        cls.cli_log.close()

    @classmethod
    def _stop(cls):
        cls.moto.terminate()
        try:
            cls.moto.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cls.moto.kill()
        cls.moto_log.close()
        cls.tmp.cleanup()

    def deploy(self, *args, smoke=None):
        """scripts/deploy.sh --target aws ...; smoke: None (skip) or a command."""
        env = dict(self.env)
        options = ["--target", "aws", "--env", ENV, "--no-canary", *args, "--aws-params", self.params]
        if smoke is None:
            options.append("--no-smoke")
        else:
            env["DEPLOY_SMOKE"] = smoke
        return subprocess.run([str(ROOT / "scripts" / "deploy.sh"), *options], env=env, capture_output=True,
                              text=True, timeout=600, check=False)

    def assertOk(self, proc):
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def assertFailed(self, proc, message):
        self.assertNotEqual(proc.returncode, 0, proc.stdout)
        self.assertIn(message, proc.stdout + proc.stderr)

    def stack(self, key):
        cfn = self.client("cloudformation")
        return cfn.describe_stacks(StackName=f"hello-birthday-{ENV}-{key}")["Stacks"][0]

    def app_parameters(self):
        return {p["ParameterKey"]: p["ParameterValue"] for p in self.stack("app")["Parameters"]}

    def s3_object(self, key):
        bucket = f"hello-birthday-{ENV}-artifacts-123456789012-eu-west-1"
        return self.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()

    def sha_of(self, name):
        with open(self.bins[name], "rb") as f:
            return sha256(f.read())

    def test_1_first_deploy_creates_every_stack_and_publishes_the_release(self):
        self.assertOk(self.deploy("--release", self.bins["one"], "--write-checksum", "--version", "1.0.0"))
        for key in ("foundation", "network", "database", "edge", "monitoring", "app"):
            self.assertEqual(self.stack(key)["StackStatus"], "CREATE_COMPLETE", key)
        # The Route 53 health-check alarm's stack is in us-east-1, fed the
        # edge stack's health check; the image is pinned with the release.
        edge_out = {o["OutputKey"]: o["OutputValue"] for o in self.stack("edge")["Outputs"]}
        dns = self.session.client("cloudformation", endpoint_url=self.endpoint, region_name="us-east-1")
        dns_stack = dns.describe_stacks(StackName=f"hello-birthday-{ENV}-dns-alarm")["Stacks"][0]
        self.assertEqual(dns_stack["StackStatus"], "CREATE_COMPLETE")
        self.assertIn({"ParameterKey": "HealthCheckId", "ParameterValue": edge_out["HealthCheckId"]},
                      dns_stack["Parameters"])
        image = self.s3_object("releases/1.0.0/image-id").decode().strip()
        self.assertRegex(image, r"^ami-[0-9a-f]+$")
        self.assertEqual(self.app_parameters()["ImageId"], image)
        binary = self.s3_object("releases/1.0.0/hello-birthday")
        self.assertEqual(sha256(binary), self.sha_of("one"))
        self.assertEqual(self.s3_object("releases/1.0.0/hello-birthday.sha256").decode(),
                         f"{sha256(binary)}  hello-birthday\n")
        bundle = self.s3_object("releases/1.0.0/host.tar.gz")
        self.assertEqual(self.s3_object("releases/1.0.0/host.tar.gz.sha256").decode(), f"{sha256(bundle)}  host.tar.gz\n")
        with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
            names = tar.getnames()
        for needed in ("scripts/setup.sh", "deploy/systemd", "deploy/aws/host/hello-birthday-aws.sh"):
            self.assertIn(needed, names)
        params = self.app_parameters()
        self.assertEqual((params["AppVersion"], params["ArtifactSha256"], params["HostBundleSha256"]),
                         ("1.0.0", sha256(binary), sha256(bundle)))
        # The instances would boot with this user data: the right release,
        # checksums, target group and secret, resolved through the exports.
        edge = {o["OutputKey"]: o["OutputValue"] for o in self.stack("edge")["Outputs"]}
        db = {o["OutputKey"]: o["OutputValue"] for o in self.stack("database")["Outputs"]}
        ec2 = self.client("ec2")
        lt = ec2.describe_launch_templates(LaunchTemplateNames=[f"hello-birthday-{ENV}"])["LaunchTemplates"][0]
        data = ec2.describe_launch_template_versions(LaunchTemplateId=lt["LaunchTemplateId"], Versions=["$Latest"])
        user_data = base64.b64decode(data["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"]).decode()
        self.assertIn(f'echo "{sha256(binary)}  $release/hello-birthday" | sha256sum --check --strict', user_data)
        self.assertIn(f"TARGET_GROUP_ARN={edge['TargetGroupArn']}\n", user_data)
        # The service's own login (issue 24), never the master user's secret.
        self.assertIn(f"DB_SECRET_ARN={db['AppUserSecretArn']}\n", user_data)
        self.assertNotIn(db['MasterUserSecretArn'], user_data)
        self.assertIn("APP_VERSION=1.0.0\n", user_data)
        asg = self.client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[f"hello-birthday-{ENV}"])["AutoScalingGroups"][0]
        self.assertEqual(asg["TargetGroupARNs"], [edge["TargetGroupArn"]])
        self.assertEqual(asg["HealthCheckType"], "ELB")
        url = drive("target_url", "--aws-params", self.params, env=self.env)
        self.assertOk(url)
        self.assertEqual(url.stdout.strip(), f"https://{DOMAIN}")

    def test_2_deploying_the_same_release_again_changes_nothing(self):
        proc = self.deploy("--release", self.bins["one"], "--version", "1.0.0")
        self.assertOk(proc)
        self.assertEqual(proc.stdout.count("no changes"), 7, proc.stdout)
        self.assertEqual(proc.stdout.count("already published (sha256 matches)"), 2, proc.stdout)

    def test_3_a_failed_smoke_test_puts_the_previous_release_back(self):
        proc = self.deploy("--release", self.bins["two"], "--write-checksum", "--version", "2.0.0", smoke="false")
        self.assertFailed(proc, "smoke test failed on 2.0.0; rolled back")
        self.assertIn("rollback: redeploy 1.0.0", proc.stdout)
        self.assertIn("rollback triggers: off for a rollback", proc.stdout)
        self.assertEqual(self.stack("app")["StackStatus"], "UPDATE_COMPLETE")
        params = self.app_parameters()
        self.assertEqual((params["AppVersion"], params["ArtifactSha256"]), ("1.0.0", self.sha_of("one")))
        self.assertEqual(json.loads(self.s3_object(f"deployments/{ENV}/previous.json"))["AppVersion"], "1.0.0")

    def test_4_a_published_release_deploys_by_its_label(self):
        proc = self.deploy("--version", "2.0.0")
        self.assertOk(proc)
        self.assertEqual(proc.stdout.count("no changes"), 6, proc.stdout)
        params = self.app_parameters()
        self.assertEqual((params["AppVersion"], params["ArtifactSha256"]), ("2.0.0", self.sha_of("two")))

    def test_5_a_published_release_cannot_be_replaced(self):
        proc = self.deploy("--release", self.bins["impostor"], "--write-checksum", "--version", "2.0.0")
        self.assertFailed(proc, "Releases are immutable")
        self.assertEqual(self.app_parameters()["AppVersion"], "2.0.0")

    def record(self):
        return json.loads(self.s3_object(f"deployments/{ENV}/previous.json"))

    def test_6_rollback_from_a_new_process_uses_the_record_in_s3(self):
        proc = drive("target_rollback", "--aws-params", self.params, env=self.env, version="2.0.0")
        self.assertOk(proc)
        params = self.app_parameters()
        self.assertEqual((params["AppVersion"], params["ArtifactSha256"]), ("1.0.0", self.sha_of("one")))
        self.assertEqual((self.record()["AppVersion"], self.record()["ReplacedBy"]), ("1.0.0", "2.0.0"))

    def test_7_rolling_back_does_not_change_what_previous_means(self):
        self.assertOk(self.deploy("--version", "2.0.0"))
        self.assertEqual(self.record()["AppVersion"], "1.0.0")
        # A rollback by label (what the pipeline and the runbook used to run)
        # keeps 1.0.0 as the rollback target, never the bad 2.0.0.
        proc = self.deploy("--version", "1.0.0")
        self.assertOk(proc)
        self.assertEqual(self.app_parameters()["AppVersion"], "1.0.0")
        self.assertEqual(self.record()["AppVersion"], "1.0.0")
        self.assertIn("1.0.0 is the recorded rollback target: record kept", proc.stdout)
        # The pipeline's rollback: deploy.sh --rollback --version <release being undone>.
        self.assertOk(self.deploy("--version", "2.0.0"))
        proc = self.deploy("--rollback", "--version", "2.0.0")
        self.assertOk(proc)
        self.assertIn("rollback triggers: off for a rollback", proc.stdout)
        self.assertEqual(self.app_parameters()["AppVersion"], "1.0.0")
        self.assertEqual(self.record(), {"AppVersion": "1.0.0", "ArtifactSha256": self.sha_of("one"),
                                         "HostBundleSha256": self.app_parameters()["HostBundleSha256"],
                                         "ImageId": self.app_parameters()["ImageId"],
                                         "ReplacedBy": "2.0.0"})
        # Again: nothing to undo, and 2.0.0 is not what runs.
        proc = self.deploy("--rollback")
        self.assertOk(proc)
        self.assertIn("already runs 1.0.0, the recorded rollback target: nothing to do", proc.stdout)
        proc = self.deploy("--rollback", "--version", "2.0.0")
        self.assertOk(proc)
        self.assertEqual(self.app_parameters()["AppVersion"], "1.0.0")

    def test_8_stateful_stacks_carry_a_stack_policy(self):
        cfn = self.client("cloudformation")
        for key in ("network", "database"):
            body = cfn.get_stack_policy(StackName=f"hello-birthday-{ENV}-{key}").get("StackPolicyBody")
            self.assertTrue(body, key)
            deny = [st for st in json.loads(body)["Statement"] if st["Effect"] == "Deny"]
            self.assertEqual(len(deny), 1)
            self.assertEqual(sorted(deny[0]["Action"]), ["Update:Delete", "Update:Replace"])
            types = deny[0]["Condition"]["StringEquals"]["ResourceType"]
            template = (AWS_DIR / "templates" / f"{key}.yaml").read_text()
            for needed in {"network": ("AWS::EC2::VPC", "AWS::EC2::Subnet"),
                           "database": ("AWS::RDS::DBInstance", "AWS::Backup::BackupVault")}[key]:
                self.assertIn(f"Type: {needed}\n", template)
                self.assertIn(needed, types)
        self.assertFalse(cfn.get_stack_policy(StackName=f"hello-birthday-{ENV}-app").get("StackPolicyBody"))

    def test_9_a_plan_changes_nothing_and_its_execution_runs_exactly_it(self):
        three = os.path.join(self.tmp.name, "three", "hello-birthday")
        os.makedirs(os.path.dirname(three))
        with open(three, "wb") as f:
            f.write(os.urandom(64 * 1024))
        # An infrastructure change too (monitoring), so the app stack's change
        # set is computed before an earlier stack's change is executed.
        with open(self.params) as f:
            params = json.load(f)
        params["stacks"]["monitoring"]["MinHealthyHosts"] = 1
        with open(self.params, "w") as f:
            json.dump(params, f)
        plan_file = os.path.join(self.tmp.name, "plan.json")
        proc = self.deploy("--release", three, "--write-checksum", "--version", "3.0.0", "--plan", plan_file)
        self.assertOk(proc)
        self.assertEqual(self.app_parameters()["AppVersion"], "1.0.0")
        with open(three, "rb") as f:
            self.assertEqual(self.s3_object("releases/3.0.0/hello-birthday.sha256").decode().split()[0],
                             sha256(f.read()))
        with open(plan_file) as f:
            plan = json.load(f)
        stacks = {s["key"]: s for s in plan["stacks"]}
        self.assertEqual((plan["version"], plan["environment"]), ("3.0.0", ENV))
        self.assertEqual(stacks["monitoring"]["outcome"], "changes")
        self.assertFalse(stacks["monitoring"]["provisional"])
        self.assertEqual((stacks["app"]["outcome"], stacks["app"]["provisional"], stacks["app"]["after"]),
                         ("changes", True, "monitoring"))
        self.assertEqual(stacks["network"]["outcome"], "none")
        cfn = self.client("cloudformation")
        pending = cfn.list_change_sets(StackName=f"hello-birthday-{ENV}-monitoring")["Summaries"]
        self.assertIn(stacks["monitoring"]["changeSet"], [c["ChangeSetName"] for c in pending])
        self.assertNotIn("execute-change-set", proc.stdout)

        proc = self.deploy("--execute-plan", plan_file, "--version", "3.0.0")
        self.assertOk(proc)
        self.assertIn("unchanged: every stack and template as planned", proc.stdout)
        self.assertIn("re-computed after monitoring: same changes as planned", proc.stdout)
        self.assertEqual(self.app_parameters()["AppVersion"], "3.0.0")
        mon = {p["ParameterKey"]: p["ParameterValue"] for p in self.stack("monitoring")["Parameters"]}
        self.assertEqual(mon["MinHealthyHosts"], "1")
        self.assertEqual((self.record()["AppVersion"], self.record()["ReplacedBy"]), ("1.0.0", "3.0.0"))

        # Planned, then production changes under it: the execution refuses.
        proc = self.deploy("--release", self.bins["two"], "--write-checksum", "--version", "2.0.0", "--plan", plan_file)
        self.assertOk(proc)
        self.assertOk(self.deploy("--version", "1.0.0"))
        proc = self.deploy("--execute-plan", plan_file, "--version", "2.0.0")
        self.assertFailed(proc, "refusing: changed since the plan: hello-birthday-staging-app")
        self.assertEqual(self.app_parameters()["AppVersion"], "1.0.0")
        # And a plan is for one release only.
        proc = self.deploy("--execute-plan", plan_file, "--version", "3.0.0")
        self.assertFailed(proc, "not staging in eu-west-1, release 3.0.0")


class ScriptedOutcomes(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="aws-target-fake-")
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name
        self.log = os.path.join(self.tmp, "calls.log")
        fake = os.path.join(self.tmp, "aws")
        shutil.copy(AWS_DIR / "tests" / "fake_aws_cli.py", fake)
        os.chmod(fake, 0o755)
        self.env = base_env(AWS_CLI=fake, FAKE_AWS_LOG=self.log)
        params = json.loads((AWS_DIR / "parameters" / f"{ENV}.json").read_text())
        params["stacks"]["edge"].update(
            CertificateArn="arn:aws:acm:eu-west-1:111122223333:certificate/0b5e3c4a-1111-2222-3333-444455556666",
            HostedZoneId="Z0123456789ABCDEFGHIJ")
        self.params = os.path.join(self.tmp, "params.json")
        with open(self.params, "w") as f:
            json.dump(params, f)
        self.artifact = os.path.join(self.tmp, "hello-birthday")
        with open(self.artifact, "wb") as f:
            f.write(b"binary")

    def calls(self):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [json.loads(line) for line in f]

    def test_dry_run_plans_every_stack_and_calls_nothing(self):
        for env_name, stacks in (("staging", 7), ("production", 8)):
            plan = drive("target_plan", env=self.env, dry_run=True, env_name=env_name)
            self.assertEqual(plan.returncode, 0, plan.stderr)
            self.assertIn("AppVersion=1.0.0", plan.stdout)
            proc = drive("target_deploy", env=self.env, dry_run=True, artifact=self.artifact, env_name=env_name)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertEqual(proc.stdout.count("create-change-set"), stacks, proc.stdout)
            self.assertIn('"ParameterKey":"AppVersion","ParameterValue":"1.0.0"', proc.stdout)
            self.assertIn("placeholders", proc.stdout)
        self.assertIn("dr-vault", proc.stdout)
        self.assertEqual(self.calls(), [])

    def test_placeholders_block_a_real_deploy(self):
        proc = drive("target_deploy", env=self.env, artifact=self.artifact)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("fill in", proc.stderr)
        self.assertIn("edge.HostedZoneId", proc.stderr)
        self.assertEqual(self.calls(), [])

    def test_a_rolled_back_app_stack_fails_the_deploy_with_cloudformations_reason(self):
        env = dict(self.env, FAKE_AWS_FAIL_SUFFIX="-app")
        proc = drive("target_deploy", "--aws-params", self.params, env=env, artifact=self.artifact)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("CloudFormation rolled back stack hello-birthday-staging-app (UPDATE_ROLLBACK_COMPLETE)",
                      proc.stderr)
        self.assertIn("Received 0 SUCCESS signal(s) out of 1", proc.stderr)
        app = [c for c in self.calls() if "create-change-set" in c and "hello-birthday-staging-app" in c]
        self.assertEqual(len(app), 1)
        rollback = json.loads(app[0][app[0].index("--rollback-configuration") + 1])
        self.assertEqual([t["Arn"].rsplit(":", 1)[1] for t in rollback["RollbackTriggers"]], ["fast-5xx", "fast-latency"])
        self.assertEqual(rollback["MonitoringTimeInMinutes"], 10)
        uploads = [c[-1] for c in self.calls() if c[2:4] == ["s3", "cp"] and c[-1] != "-"]
        self.assertIn("s3://fake-artifacts/deployments/staging/previous.json", uploads)
        self.assertIn("previous release: 0.9.0", proc.stdout)

    def test_rollback_triggers_can_be_switched_off_for_an_emergency_fix(self):
        proc = drive("target_deploy", "--aws-params", self.params, "--no-rollback-triggers", env=self.env,
                     artifact=self.artifact)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        app = [c for c in self.calls() if "create-change-set" in c and "hello-birthday-staging-app" in c][0]
        self.assertEqual(json.loads(app[app.index("--rollback-configuration") + 1]), {"RollbackTriggers": []})

    def test_a_label_never_published_is_refused_before_the_app_stack(self):
        proc = drive("target_deploy", "--aws-params", self.params, env=self.env, version="9.9.9")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("release 9.9.9 is not published for staging", proc.stderr)
        self.assertFalse([c for c in self.calls() if "create-change-set" in c and "hello-birthday-staging-app" in c])

    def first(self, predicate):
        return next((i for i, c in enumerate(self.calls()) if predicate(c)), None)

    def test_the_rollback_target_is_recorded_before_any_stack_changes(self):
        proc = drive("target_deploy", "--aws-params", self.params, env=self.env, artifact=self.artifact)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        record = self.first(lambda c: c[-1].endswith("/deployments/staging/previous.json") and c[2:4] == ["s3", "cp"])
        change = self.first(lambda c: "create-change-set" in c)
        self.assertIsNotNone(record)
        self.assertLess(record, change)

    def test_an_unknown_rollback_target_stops_the_deploy_before_it_starts(self):
        proc = drive("target_deploy", "--aws-params", self.params, env=dict(self.env, FAKE_AWS_APP="noparams"),
                     artifact=self.artifact)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("cannot tell which release hello-birthday-staging-app runs", proc.stderr)
        self.assertIsNone(self.first(lambda c: "create-change-set" in c or c[-1].startswith("s3://")))

    def rollback(self, record, version):
        env = dict(self.env, FAKE_AWS_RECORD=json.dumps(record))
        return drive("target_rollback", "--aws-params", self.params, env=env, version=version)

    def test_a_rollback_runs_without_rollback_triggers_and_says_so(self):
        record = {"AppVersion": "0.8.0", "ArtifactSha256": "c" * 64, "HostBundleSha256": "d" * 64,
                  "ReplacedBy": "0.9.0"}
        proc = self.rollback(record, "0.9.0")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("rollback triggers: off for a rollback", proc.stdout)
        app = [c for c in self.calls() if "create-change-set" in c and "hello-birthday-staging-app" in c]
        self.assertEqual(len(app), 1)
        self.assertEqual(json.loads(app[0][app[0].index("--rollback-configuration") + 1]), {"RollbackTriggers": []})

    def test_a_rollback_never_undoes_another_deploy(self):
        # The fake app stack runs 0.9.0. This run's release (1.0.0) never
        # got there: nothing of it to undo, and 0.9.0 is someone else's.
        record = {"AppVersion": "0.8.0", "ArtifactSha256": "c" * 64, "HostBundleSha256": "d" * 64,
                  "ReplacedBy": "0.9.0"}
        proc = self.rollback(record, "1.0.0")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("runs 0.9.0, not 1.0.0: refusing", proc.stderr)
        # A record about another deploy than what runs: no guessing.
        proc = self.rollback(dict(record, ReplacedBy="0.8.5"), "")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("refusing to guess", proc.stderr)
        self.assertIsNone(self.first(lambda c: "create-change-set" in c))

    def test_an_execution_runs_the_planned_change_sets_or_refuses_a_different_change(self):
        plan = os.path.join(self.tmp, "plan.json")
        proc = drive("target_make_plan", "--aws-params", self.params, env=dict(self.env, PLAN_FILE=plan),
                     artifact=self.artifact)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertFalse([c for c in self.calls() if "execute-change-set" in c])
        with open(plan) as f:
            stacks = json.load(f)["stacks"]
        self.assertEqual([s["provisional"] for s in stacks], [False] + [True] * 5)
        # Executed as planned: the foundation's planned change set, then each
        # later stack computed again and found the same.
        open(self.log, "w").close()
        proc = drive("target_execute_plan", "--aws-params", self.params, env=dict(self.env, PLAN_FILE=plan))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        executed = [c[c.index("--change-set-name") + 1] for c in self.calls() if "execute-change-set" in c]
        self.assertEqual(executed[0], stacks[0]["changeSet"])
        self.assertEqual(len(executed), 6)
        self.assertEqual(proc.stdout.count("same changes as planned"), 5)
        # A later stack whose change turns out different: refused after the
        # foundation, nothing else executed.
        open(self.log, "w").close()
        proc = drive("target_execute_plan", "--aws-params", self.params,
                     env=dict(self.env, PLAN_FILE=plan, FAKE_AWS_EXEC_CHANGES="replace"))
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("refusing: hello-birthday-staging-network's change after foundation's differs from the approved plan",
                      proc.stderr)
        executed = [c for c in self.calls() if "execute-change-set" in c]
        self.assertEqual(len(executed), 1)

    def test_the_database_stack_is_linked_to_the_dr_region_in_a_deploy_and_a_plan(self):
        params = json.loads((AWS_DIR / "parameters" / "production.json").read_text())
        params["stacks"]["edge"].update(
            CertificateArn="arn:aws:acm:eu-west-1:111122223333:certificate/0b5e3c4a-1111-2222-3333-444455556666",
            HostedZoneId="Z0123456789ABCDEFGHIJ")
        path = os.path.join(self.tmp, "production.json")
        with open(path, "w") as f:
            json.dump(params, f)
        plan = os.path.join(self.tmp, "plan.json")
        for function in ("target_deploy", "target_make_plan"):
            open(self.log, "w").close()
            proc = drive(function, "--aws-params", path, env=dict(self.env, PLAN_FILE=plan), artifact=self.artifact,
                         env_name="production")
            self.assertEqual(proc.returncode, 0, proc.stderr)
            # The dr-vault stack's outputs are read in the DR Region.
            self.assertIn(["--region", "eu-central-1", "cloudformation", "describe-stacks", "--stack-name",
                           "hello-birthday-production-dr-vault", "--query",
                           "Stacks[0].Outputs[?OutputKey=='ReplicationKeyArn'].OutputValue | [0]", "--output", "text"],
                          self.calls())
            db = [c for c in self.calls() if "create-change-set" in c and "hello-birthday-production-database" in c]
            self.assertEqual(len(db), 1, function)
            sent = {p["ParameterKey"]: p["ParameterValue"] for p in json.loads(db[0][db[0].index("--parameters") + 1])}
            self.assertEqual(sent["DrRegion"], "eu-central-1")
            self.assertEqual(sent["DrReplicationKmsKeyArn"], fake_aws_cli.OUTPUTS["ReplicationKeyArn"])
            self.assertEqual(sent["DrBackupVaultArn"], fake_aws_cli.OUTPUTS["VaultArn"])

    def test_unknown_target_option_is_refused(self):
        proc = drive("target_plan", "--regoin", "x", env=self.env)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("unknown option --regoin", proc.stderr)


if __name__ == "__main__":
    unittest.main()
