"""The pipeline's own scripts (.github/scripts).

staging_load.py runs against an HTTP server on 127.0.0.1 that answers like
the service's API (and, on demand, 503 for a share of requests), with a
scripted `aws` standing in for CloudWatch (moto computes no percentiles).
plan_summary.py renders a plan as the deploy program (deploy/hbdeploy) writes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

FAKE_AWS = r'''#!/usr/bin/env python3
import json, os, sys
log = os.environ["FAKE_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
calls = sum(1 for _ in open(log))
values = json.loads(os.environ["FAKE_P99"])
# CloudWatch publishes late: the first answer has no datapoints yet.
points = [] if calls == 1 else [{"ExtendedStatistics": {"p99": v}, "Unit": "Seconds"} for v in values]
print(json.dumps({"Label": "TargetResponseTime", "Datapoints": points}))
'''


class Api(BaseHTTPRequestHandler):
    fail_every = 0
    count = 0
    lock = threading.Lock()

    def answer(self, ok: int) -> None:
        with Api.lock:
            Api.count += 1
            n = Api.count
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status = 503 if Api.fail_every and n % Api.fail_every == 0 else ok
        body = b'{"message": "Hello"}' if status == 200 else b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self.answer(200)

    def do_PUT(self) -> None:  # noqa: N802
        self.answer(204)

    def do_DELETE(self) -> None:  # noqa: N802
        self.answer(204)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StagingLoad(unittest.TestCase):
    def setUp(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        Api.fail_every, Api.count = 0, 0
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.aws = os.path.join(tmp.name, "aws")
        with open(self.aws, "w") as f:
            f.write(FAKE_AWS)
        os.chmod(self.aws, 0o755)
        self.log = os.path.join(tmp.name, "calls")

    def load(self, p99: list[float], *extra: str) -> subprocess.CompletedProcess[str]:
        url = f"http://127.0.0.1:{self.server.server_address[1]}"
        env = dict(os.environ, AWS_CLI=self.aws, FAKE_LOG=self.log, FAKE_P99=json.dumps(p99))
        return subprocess.run(
            [sys.executable, str(SCRIPTS / "staging_load.py"), "--url", url, "--rate", "40", "--duration", "2",
             "--availability", "0.999", "--load-balancer", "app/hello-birthday-staging/0123", "--p99-ms", "100",
             "--metrics-wait", "10", *extra],
            env=env, capture_output=True, text=True, timeout=120, check=False)

    def test_a_healthy_service_passes_and_latency_is_read_at_the_load_balancer(self) -> None:
        proc = self.load([0.012, 0.02])
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("load: ok: 0 of 80 failed (allowed 0)", proc.stdout)
        self.assertIn("server-side p99 per minute 12 ms, 20 ms", proc.stdout)
        with open(self.log) as f:
            calls = [json.loads(line) for line in f]
        self.assertGreaterEqual(len(calls), 2)  # polled until CloudWatch had the minutes
        call = calls[-1]
        self.assertEqual(call[:2], ["cloudwatch", "get-metric-statistics"])
        for opt, value in (("--namespace", "AWS/ApplicationELB"), ("--metric-name", "TargetResponseTime"),
                           ("--dimensions", "Name=LoadBalancer,Value=app/hello-birthday-staging/0123"),
                           ("--extended-statistics", "p99"), ("--period", "60")):
            self.assertEqual(call[call.index(opt) + 1], value)
        # The synthetic users were written, read and deleted.
        self.assertGreaterEqual(Api.count, 80 + 20)

    def test_5xx_beyond_the_availability_budget_fail(self) -> None:
        Api.fail_every = 40
        proc = self.load([0.01])
        self.assertEqual(proc.returncode, 1, proc.stdout)
        self.assertIn("answered 5xx or not at all; the 99.9% availability SLO allows 0 of 80", proc.stderr)

    def test_server_side_latency_above_the_slo_fails(self) -> None:
        proc = self.load([0.02, 0.25])
        self.assertEqual(proc.returncode, 1, proc.stdout)
        self.assertIn("server-side p99 250 ms above the 100 ms latency SLO", proc.stderr)

    def test_no_metrics_is_a_failure_not_a_pass(self) -> None:
        proc = self.load([])
        self.assertEqual(proc.returncode, 1, proc.stdout)
        self.assertIn("no TargetResponseTime data", proc.stderr)


class PlanSummary(unittest.TestCase):
    PLAN = {
        "environment": "production", "region": "eu-west-1", "stackPrefix": "hello-birthday", "version": "1.5.0",
        "artifactSha256": "ab" * 32, "hostBundleSha256": "cd" * 32, "createdAt": "2026-01-02T03:04:05Z",
        "rollbackTriggers": True,
        "stacks": [
            {"key": "network", "stack": "hello-birthday-production-network", "outcome": "none", "provisional": False,
             "changes": []},
            {"key": "database", "stack": "hello-birthday-production-database", "outcome": "changes",
             "changeSet": "plan-20260102030405", "provisional": False, "after": None,
             "changes": [{"action": "Modify", "logicalId": "Database", "type": "AWS::RDS::DBInstance",
                          "replacement": "True"}]},
            {"key": "app", "stack": "hello-birthday-production-app", "outcome": "changes",
             "changeSet": "plan-20260102030405", "provisional": True, "after": "database",
             "changes": [{"action": "Modify", "logicalId": "LaunchTemplate", "type": "AWS::EC2::LaunchTemplate",
                          "replacement": "False"}]},
        ],
    }

    def render(self) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(self.PLAN, f)
        self.addCleanup(os.unlink, f.name)
        proc = subprocess.run([sys.executable, str(SCRIPTS / "plan_summary.py"), f.name,
                               "https://hello.staging.example.com", "https://github.com/o/r/actions/runs/1"],
                              capture_output=True, text=True, check=True)
        return proc.stdout

    def test_reviewers_see_every_change_and_what_to_try_on_staging(self) -> None:
        md = self.render()
        self.assertIn("## Production plan: release 1.5.0", md)
        self.assertIn("| hello-birthday-production-network | - | no changes |", md)
        self.assertIn("| hello-birthday-production-database | plan-20260102030405 | Modify | Database | "
                      "AWS::RDS::DBInstance | True |", md)
        self.assertIn("provisional: computed before database's change runs; re-checked at execution", md)
        self.assertIn("**Replacements or removals:** hello-birthday-production-database: Database", md)
        self.assertIn("try it by hand on staging (https://hello.staging.example.com)", md)
        self.assertIn("`https://hello.staging.example.com/healthz`", md)
        self.assertIn("**1.5.0**", md)
        self.assertGreaterEqual(md.count("- [ ] "), 5)


if __name__ == "__main__":
    unittest.main()
