"""An emulated AWS account for the deploy program's tests.

moto runs in this process (moto_patches.py fills the gaps of its
CloudFormation engine); the deploy program (deploy/hbdeploy, `--target
aws`) runs in it through its own command line, with boto3 clients that
botocore validates against the service models, so a misspelt operation or
parameter fails here. What moto cannot answer is faked, and only that:

- CloudWatch (no emulator computes percentiles): a model of the load
  balancer's metrics per target group, the users' traffic the test asks
  for plus the probes that reached each side;
- the service behind the load balancer: a loopback server the synthetic
  probes reach, answering each side as the test asks (404 for an unknown
  user, or 502 as the load balancer answers for a target that reset).

Every call the program makes is recorded, with the role that would make it
(plan runs: the plan role; everything else: the deploy role).
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import io
import json
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import moto_patches  # noqa: F401 - the patches apply on import
from cfn import AWS_DIR, ROOT

sys.path.insert(0, str(ROOT / "deploy"))

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402
from moto.core.models import DEFAULT_ACCOUNT_ID  # noqa: E402 - where moto defines it (moto.core re-exports it implicitly)

from canary.verdict import MIN_BASELINE_REQUESTS, MIN_CANARY_REQUESTS  # noqa: E402
from hbdeploy import cli  # noqa: E402
from hbdeploy.targets.aws import AwsTarget  # noqa: E402

REGION = "eu-west-1"
# The canary window of the tests, and the probe rate (per side) that gives a
# good canary's verdict PROBE_MARGIN times the requests it needs per side
# (MIN_CANARY_REQUESTS) from the probes alone: a pass then survives the
# probe threads getting a third of their schedule on a loaded machine (60/s,
# a margin of 1.8, once got 26 answers in 3 s and an INCONCLUSIVE verdict).
# A bad canary fails on its first look whatever the rate.
CANARY_WINDOW = 3
PROBE_MARGIN = 3
PROBE_RATE = -(-PROBE_MARGIN * max(MIN_CANARY_REQUESTS, MIN_BASELINE_REQUESTS) // CANARY_WINDOW)
DOMAIN = {"staging": "hello.staging.example.com", "production": "hello.example.com"}
# The bootstrap stack's CloudFormation role (its CloudFormationRoleArn output).
CFN_ROLE = f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/hello-birthday-cloudformation"
# moto's CloudFormation engine warns about every resource type it does not
# create (AWS::Backup::*, scaling policies...): known, listed in README.md.
warnings.filterwarnings("ignore", message="Tried to parse")
logging.getLogger("moto").setLevel(logging.ERROR)


class Killed(BaseException):  # noqa: N818 - what happened, not an error kind
    """The deploy's process dies here (a runner killed, a machine gone)."""


@dataclass
class Run:
    rc: int
    out: str
    err: str
    calls: list[tuple[str, str]]

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class Traffic:
    """The users' requests per side over a look's interval (requests, target
    5xx, connection errors, p99 seconds); the probes are added to them."""

    canary: tuple[int, int, int, float] = (300, 0, 0, 0.021)
    baseline: tuple[int, int, int, float] = (2700, 1, 0, 0.019)


PASS = Traffic()
ERRORS = Traffic((120, 12, 0, 0.020), (1080, 0, 0, 0.019))
SLOW = Traffic((150, 0, 0, 0.350), (1350, 0, 0, 0.020))
QUIET = Traffic((3, 0, 0, 0.020), (30, 0, 0, 0.020))


class Backend(http.server.BaseHTTPRequestHandler):
    """What answers behind the load balancer: the probes of each side."""

    # Keep-alive, as the load balancer: a probe is one request on an open
    # connection, not a new connection and server thread each.
    protocol_version = "HTTP/1.1"

    seen: list[tuple[float, str, int]] = []
    answers = {"canary": 404, "baseline": 404}
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        side = (self.headers.get("X-Canary-Probe") or "-").rsplit("-", 1)[-1]
        status = Backend.answers.get(side, 404)
        with Backend.lock:
            Backend.seen.append((time.time(), side, status))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class FakeCloudWatch:
    """GetMetricData as the load balancer would publish it: the test's
    users' traffic plus the probes each side's target group took."""

    account: Account
    traffic: Traffic = field(default_factory=Traffic)
    kill_at_look: int | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def get_metric_data(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(kw)
        self.account.during_canary(self)
        if self.kill_at_look == len(self.calls):
            raise Killed()
        start, end = kw["StartTime"].timestamp(), kw["EndTime"].timestamp()
        with Backend.lock:
            probes = [(side, status) for t, side, status in Backend.seen if start <= t < end]
        results = []
        for side, (n, e5, conn, p99) in (("canary", self.traffic.canary), ("baseline", self.traffic.baseline)):
            mine = [status for s, status in probes if s == side]
            n += len(mine)
            # A 502 the load balancer answered for a probe is a target it could not reach.
            conn += sum(1 for status in mine if status == 502)
            for key, value in (("requests", n), ("errors", e5), ("connection_errors", conn), ("p99", p99)):
                results.append({"Id": f"{side}_{key}", "Values": [value] if n else [],
                                "Timestamps": [kw["StartTime"]] if n else [], "StatusCode": "Complete"})
        return {"MetricDataResults": results, "Messages": []}


class Account:
    """One emulated account; `deploy` runs scripts/deploy.sh's program in it."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="hbdeploy-aws-")
        self.dir = Path(self.tmp.name)
        self.mock = mock_aws()
        self.mock.start()
        self.env = mock.patch.dict(os.environ, {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_CFN_ROLE_ARN": CFN_ROLE})
        self.env.start()
        for k in [k for k in os.environ if k.startswith("AWS_") and k not in self.env.values]:
            os.environ.pop(k)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        Backend.seen, Backend.answers = [], {"canary": 404, "baseline": 404}
        self.params: dict[str, Path] = {}
        # What an account provides before the first deploy: a certificate and
        # a hosted zone (the parameter files' REPLACE_ME values).
        for env, domain in DOMAIN.items():
            cert = self.client("acm").request_certificate(DomainName=domain, ValidationMethod="DNS")["CertificateArn"]
            zone = self.client("route53").create_hosted_zone(Name=domain.split(".", 1)[1], CallerReference=env)
            doc = json.loads((AWS_DIR / "parameters" / f"{env}.json").read_text())
            doc["stacks"]["edge"].update(CertificateArn=cert, HostedZoneId=zone["HostedZone"]["Id"].split("/")[-1])
            self.params[env] = self.dir / f"{env}.json"
            self.params[env].write_text(json.dumps(doc))
        self.calls: list[tuple[str, str, str]] = []  # (role, service, operation)
        self.snapshots: list[dict[str, Any]] = []
        self.cloudwatch = FakeCloudWatch(self)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.mock.stop()
        self.env.stop()
        self.tmp.cleanup()

    def client(self, service: str, region: str = REGION) -> Any:
        return boto3.client(service, region_name=region)

    def binary(self, name: str) -> Path:
        path = self.dir / name / "hello-birthday"
        if not path.exists():
            path.parent.mkdir()
            path.write_bytes(os.urandom(64 * 1024))
        return path

    def stack(self, env: str, key: str, region: str = REGION) -> dict[str, Any] | None:
        try:
            return dict(self.client("cloudformation", region).describe_stacks(
                StackName=f"hello-birthday-{env}-{key}")["Stacks"][0])
        except Exception as e:  # ValidationError: no such stack
            if "does not exist" in str(e):
                return None
            raise

    def parameters(self, env: str, key: str, region: str = REGION) -> dict[str, str]:
        stack = self.stack(env, key, region)
        assert stack is not None, key
        return {p["ParameterKey"]: p["ParameterValue"] for p in stack.get("Parameters", [])}

    def bucket(self, env: str) -> str:
        return f"hello-birthday-{env}-artifacts-{DEFAULT_ACCOUNT_ID}-{REGION}"

    def s3(self, env: str, key: str) -> bytes:
        return bytes(self.client("s3").get_object(Bucket=self.bucket(env), Key=key)["Body"].read())

    def set_stack_policies_as_told(self, run: Run) -> None:
        """What the operator does with the command the deploy printed."""
        for line in run.text.splitlines():
            if "set-stack-policy" in line:
                cmd = line[line.index("aws cloudformation set-stack-policy"):]
                stack = cmd.split("--stack-name ", 1)[1].split()[0]
                region = cmd.split("--region ", 1)[1].split()[0]
                body = cmd.split("--stack-policy-body '", 1)[1].rsplit("'", 1)[0]
                self.client("cloudformation", region).set_stack_policy(StackName=stack, StackPolicyBody=body)

    def create_db_users_as_told(self, run: Run) -> None:
        """What the administrator's deploy/aws/db-users.sh leaves that the
        deploy can see: the tag on the app secret (test_db_users.py runs the
        script itself on a real PostgreSQL)."""
        line = next(ln for ln in run.text.splitlines() if "deploy/aws/db-users.sh" in ln)
        args = line.split("deploy/aws/db-users.sh", 1)[1].split()
        env = args[args.index("--env") + 1]
        region = args[args.index("--region") + 1] if "--region" in args else REGION
        secret = f"hello-birthday-{env}-database-app"
        self.client("secretsmanager", region).tag_resource(
            SecretId=secret, Tags=[{"Key": "db-users", "Value": "2026-01-01T00:00:00Z"}])

    def first_deploy(self, *args: str, env: str = "staging", **kw: Any) -> tuple[Run, Run]:
        """A new environment: the deploy creates every stack but the fleet and
        stops; the administrator sets the stateful stacks' policies and
        creates the database users as told; the deploy again. Both runs."""
        stopped = self.deploy(*args, env=env, **kw)
        assert stopped.rc == 1 and "db-users.sh" in stopped.err, stopped.text
        self.set_stack_policies_as_told(stopped)
        self.create_db_users_as_told(stopped)
        return stopped, self.deploy(*args, env=env, **kw)

    def during_canary(self, cw: FakeCloudWatch) -> None:
        """At a canary's first look: what AWS holds then (stacks, rules)."""
        if len(cw.calls) != 1:
            return
        elb = self.client("elbv2")
        listener = next(lsn for lb in elb.describe_load_balancers()["LoadBalancers"]
                        for lsn in elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
                        if lsn["Port"] == 443)
        self.snapshots.append({
            "rules": elb.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"],
            "canary": self.stack(self.current_env, "canary"),
            "app": self.parameters(self.current_env, "app"),
        })

    def deploy(self, *args: str, env: str = "staging", smoke: str | None = None, traffic: Traffic = PASS,
               kill_at_look: int | None = None, probes: bool = True, window: int = CANARY_WINDOW,
               params: Path | None = None) -> Run:
        """scripts/deploy.sh --target aws --env ENV ARGS..., in this process."""
        self.current_env = env
        self.cloudwatch = FakeCloudWatch(self, traffic, kill_at_look)
        role = "plan" if "--plan" in args else "deploy"
        options = ["--target", "aws", "--env", env, *args, "--aws-params", str(params or self.params[env]),
                   "--poll-seconds", "0", "--canary-period", "1", "--metrics-lag", "0",
                   "--probe-url", f"http://127.0.0.1:{self.server.server_address[1]}",
                   "--probe-rate", str(PROBE_RATE) if probes else "0"]
        if not any(a in args for a in ("--execute-plan", "--rollback")):
            options += ["--canary-window", str(window)]
        if smoke is None:
            options.append("--no-smoke")
        calls: list[tuple[str, str]] = []
        real = AwsTarget.make_client

        def make_client(target: AwsTarget, service: str, region: str) -> Any:
            if service == "cloudwatch":
                return self.cloudwatch
            c = real(target, service, region)

            def record(model: Any, **_: Any) -> None:
                calls.append((service, model.name))
                self.calls.append((role, service, model.name))

            c.meta.events.register("before-call.*.*", record)
            return c

        out, err = io.StringIO(), io.StringIO()
        smoke_env = {"DEPLOY_SMOKE": smoke} if smoke else {}
        with mock.patch.object(AwsTarget, "make_client", make_client), mock.patch.dict(os.environ, smoke_env), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main(options)
            except Killed:
                rc = -9
        return Run(rc, out.getvalue(), err.getvalue(), calls)


def utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC)
