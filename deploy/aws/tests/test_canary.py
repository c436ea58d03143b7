"""The AWS canary step (deploy/aws/canary.sh) and its verdict from CloudWatch.

VerdictFromCloudWatch feeds recorded `aws cloudwatch get-metric-data`
answers to deploy/canary/verdict.py (pass, continue, fail on errors, fail on
latency, inconclusive, no datapoints, a malformed answer). CanaryStep runs
the step as deploy/aws/target.sh does, with a scripted `aws`
(fake_canary_aws.py: CloudWatch percentiles cannot be emulated) and one-second
"minutes" (AWS_CANARY_PERIOD=1): which stacks change with which weights, how
often CloudWatch is asked and for which interval, that a failing canary is
stopped at the first look and removed, that a rollback, --no-canary and a
redeploy skip it, and that the staging synthetic load reaches its URL (a
server on 127.0.0.1 here).
"""

import http.server
import json
import os
import subprocess
import tempfile
import threading
import unittest

from cfn import AWS_DIR, ROOT

VERDICT = ROOT / "deploy" / "canary" / "verdict.py"
PREVIOUS = {"AppVersion": "1.0.0", "ArtifactSha256": "a" * 64, "HostBundleSha256": "b" * 64}


def metric_answer(canary, baseline):
    """get-metric-data JSON for (requests, 5xx, p99 seconds) per side; 0
    requests: no datapoints at all, as CloudWatch answers for an idle group."""
    results = []
    for side, (requests, errors, p99) in (("canary", canary), ("baseline", baseline)):
        for key, val in (("requests", requests), ("errors", errors), ("p99", p99)):
            values = [] if requests == 0 else [val]
            results.append({"Id": f"{side}_{key}", "Label": key, "Timestamps": ["2026-11-30T20:00:00Z"][: len(values)],
                            "Values": values, "StatusCode": "Complete"})
    return {"MetricDataResults": results, "Messages": []}


PASS = metric_answer((300, 0, 0.021), (2700, 1, 0.019))
ERRORS = metric_answer((120, 12, 0.020), (1080, 0, 0.019))
SLOW = metric_answer((150, 0, 0.350), (1350, 0, 0.020))
FEW = metric_answer((40, 0, 0.020), (400, 0, 0.020))


class VerdictFromCloudWatch(unittest.TestCase):
    def judge(self, answer, elapsed, window=300):
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(answer, f)
            f.flush()
            return subprocess.run(["python3", str(VERDICT), "cloudwatch", "--metric-data", f.name,
                                   "--elapsed", str(elapsed), "--window", str(window)],
                                  capture_output=True, text=True, timeout=30, check=False)

    def decision(self, answer, elapsed, window=300):
        proc = self.judge(answer, elapsed, window)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return proc.stdout.strip()

    def test_pass_only_at_the_end_of_the_window(self):
        self.assertTrue(self.decision(PASS, 120).startswith("continue "))
        line = self.decision(PASS, 300)
        self.assertTrue(line.startswith("pass "), line)
        self.assertIn("canary n=300 5xx=0 (0.00%) p99=21ms | baseline n=2700 5xx=1 (0.04%) p99=19ms", line)

    def test_fail_on_errors_at_the_first_look(self):
        line = self.decision(ERRORS, 60)
        self.assertTrue(line.startswith("fail errors: canary 5xx ratio 10.00% > baseline 0.00%"), line)

    def test_fail_on_latency_seconds_read_as_seconds(self):
        line = self.decision(SLOW, 60)
        self.assertTrue(line.startswith("fail latency: canary p99 350 ms > 70 ms"), line)

    def test_inconclusive_on_too_little_traffic(self):
        line = self.decision(FEW, 300)
        self.assertTrue(line.startswith("inconclusive too little traffic"), line)

    def test_no_datapoints_is_no_traffic_not_an_error(self):
        line = self.decision(metric_answer((0, 0, 0), (0, 0, 0)), 300)
        self.assertTrue(line.startswith("inconclusive "), line)
        self.assertIn("canary n=0 5xx=0 (0.00%) p99=-", line)

    def test_counts_of_several_periods_are_summed(self):
        answer = metric_answer((60, 6, 0.02), (540, 0, 0.02))
        for r in answer["MetricDataResults"]:
            r["Values"] = r["Values"] * 2
        self.assertIn("canary n=120 5xx=12", self.decision(answer, 120))

    def test_an_answer_without_a_query_is_refused(self):
        answer = metric_answer((300, 0, 0.02), (2700, 0, 0.02))
        answer["MetricDataResults"] = [r for r in answer["MetricDataResults"] if r["Id"] != "baseline_errors"]
        proc = self.judge(answer, 300)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("baseline_errors", proc.stderr)


DRIVER = r"""
set -euo pipefail
ROOT=$1; PARAMS=$2; PREVIOUS=$3
TARGET=aws DRY_RUN=0 ARTIFACT=""
step() { printf '==> %s\n' "$*"; }
die() { printf 'deploy: %s\n' "$*" >&2; exit 1; }
run() { printf '+ %s\n' "$*"; "$@"; }
. "$ROOT/deploy/aws/target.sh"
target_args --aws-params "$PARAMS"
_aws_init
RELEASE_SHA256=$(printf 'c%.0s' {1..64}) HOST_SHA256=$(printf 'd%.0s' {1..64})
# As scripts/deploy.sh calls target_deploy: from a condition, set -e off.
if aws_canary_step "$PREVIOUS"; then echo "STEP: roll out"; else echo "STEP: stopped"; exit 1; fi
"""


class LoopbackCounter(http.server.BaseHTTPRequestHandler):
    paths = []
    status = 404

    def do_GET(self):  # noqa: N802 - http.server's name
        LoopbackCounter.paths.append(self.path)
        self.send_response(LoopbackCounter.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class CanaryStep(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="aws-canary-")
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name
        self.log = os.path.join(self.tmp, "calls.log")
        LoopbackCounter.paths, LoopbackCounter.status = [], 404
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LoopbackCounter)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)

    def step(self, answers, env_name="staging", version="2.0.0", previous=PREVIOUS, **extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CANARY"))}
        env.update(
            AWS_CLI=str(AWS_DIR / "tests" / "fake_canary_aws.py"), FAKE_AWS_LOG=self.log,
            FAKE_CANARY_METRICS=json.dumps(answers), ENV_NAME=env_name, VERSION=version,
            CANARY="1", CANARY_WEIGHT="10", CANARY_WINDOW="3", AWS_CANARY_PERIOD="1", AWS_CANARY_LAG="0",
            AWS_CANARY_LOAD_URL=f"http://127.0.0.1:{self.server.server_address[1]}", AWS_CANARY_LOAD_RATE="20",
        )
        env.update(extra)
        return subprocess.run(["bash", "-c", DRIVER, "driver", str(ROOT),
                               str(AWS_DIR / "parameters" / f"{env_name}.json"), json.dumps(previous) if previous else ""],
                              env=env, capture_output=True, text=True, timeout=120, check=False)

    def calls(self):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [json.loads(line) for line in f]

    def change_sets(self):
        """(stack key, {parameter: value}) of every change set, in order."""
        out = []
        for c in self.calls():
            if "create-change-set" in c:
                params = {p["ParameterKey"]: p["ParameterValue"] for p in json.loads(c[c.index("--parameters") + 1])}
                out.append((c[c.index("--stack-name") + 1].rsplit("-", 1)[1], params))
        return out

    def looks(self):
        return [c for c in self.calls() if "get-metric-data" in c]

    def assertStarted(self, sets):
        key, app = sets[0]
        self.assertEqual(key, "app")
        self.assertEqual({k: app[k] for k in ("AppVersion", "CanaryAppVersion", "CanaryArtifactSha256")},
                         {"AppVersion": "1.0.0", "CanaryAppVersion": "2.0.0", "CanaryArtifactSha256": "c" * 64})
        self.assertEqual(app["ArtifactSha256"], "a" * 64)
        self.assertEqual(sets[1], ("edge", {**sets[1][1], "CanaryWeight": "10", "MainWeight": "90"}))

    def assertRemoved(self, sets):
        self.assertEqual([(k, p.get("CanaryWeight"), p.get("MainWeight")) for k, p in sets[2:3]], [("edge", "0", "100")])
        key, app = sets[3]
        self.assertEqual((key, app["AppVersion"], app["ArtifactSha256"]), ("app", "1.0.0", "a" * 64))
        self.assertNotIn("CanaryAppVersion", app)  # template default "": the canary group is deleted
        self.assertEqual(len(sets), 4)

    def test_a_good_canary_is_judged_over_the_whole_window_then_the_rollout_goes_on(self):
        proc = self.step([PASS])
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("STEP: roll out", proc.stdout)
        self.assertIn("canary: PASS", proc.stdout)
        sets = self.change_sets()
        self.assertStarted(sets)
        # Weight back to 0; the main roll-out (not part of the step) deletes the group.
        self.assertEqual([(k, p.get("CanaryWeight")) for k, p in sets[2:]], [("edge", "0")])
        # Looks until the window (3 "minutes") is covered, each over the
        # whole interval so far from the same start (a look may cover more
        # than one new period when the previous one took longer).
        looks = self.looks()
        self.assertGreaterEqual(len(looks), 1, proc.stdout)
        starts, periods = set(), []
        for look in looks:
            queries = json.loads(look[look.index("--metric-data-queries") + 1])
            start, end = look[look.index("--start-time") + 1], look[look.index("--end-time") + 1]
            starts.add(start)
            (period,) = {q["MetricStat"]["Period"] for q in queries}
            periods.append(period)
            self.assertLess(start, end)
            by_id = {q["Id"]: q["MetricStat"] for q in queries}
            self.assertEqual(by_id["canary_p99"]["Stat"], "p99")
            self.assertEqual(by_id["baseline_errors"]["Metric"]["MetricName"], "HTTPCode_Target_5XX_Count")
            self.assertEqual(by_id["canary_requests"]["Metric"]["Dimensions"], [
                {"Name": "TargetGroup", "Value": "targetgroup/hello-b-Canar-1ABCDEF/943f017f100becff"},
                {"Name": "LoadBalancer", "Value": "app/hello-birthday-staging/50dc6c495c0c9188"}])
            self.assertEqual(by_id["baseline_requests"]["Metric"]["Dimensions"][0]["Value"],
                             "targetgroup/hello-birthday-staging/73e2d6bc24d8a067")
        self.assertEqual(len(starts), 1, "every look covers the same start")
        self.assertEqual(periods, sorted(set(periods)), "each look covers more")
        self.assertEqual(periods[-1], 3, "the pass covers the whole window")
        # Staging: the synthetic load reached its (loopback) URL.
        self.assertGreater(len(LoopbackCounter.paths), 10)
        self.assertTrue(all(p.startswith("/hello/canaryload") for p in LoopbackCounter.paths))
        self.assertRegex(proc.stdout, r"synthetic load: [1-9][0-9]* requests, 0 answered 5xx or not at all")

    def test_a_canary_failing_requests_is_stopped_at_the_first_look_and_removed(self):
        proc = self.step([ERRORS, PASS])
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertIn("canary: FAIL: errors: canary 5xx ratio 10.00%", proc.stderr)
        self.assertIn("canary n=120 5xx=12 (10.00%)", proc.stderr)
        self.assertIn("the main group still runs 1.0.0", proc.stderr)
        self.assertEqual(len(self.looks()), 1)
        sets = self.change_sets()
        self.assertStarted(sets)
        self.assertRemoved(sets)

    def test_the_synthetic_load_counts_what_the_client_saw(self):
        LoopbackCounter.status = 502  # as the load balancer answers for a target that reset the connection
        proc = self.step([ERRORS])
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertRegex(proc.stdout, r"synthetic load: ([1-9][0-9]*) requests, \1 answered 5xx or not at all")

    def test_a_slow_canary_fails_on_latency(self):
        proc = self.step([PASS, SLOW])
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertIn("canary: FAIL: latency: canary p99 350 ms", proc.stderr)
        self.assertEqual(len(self.looks()), 2)
        self.assertRemoved(self.change_sets())

    def test_too_little_traffic_stops_unless_allowed(self):
        proc = self.step([FEW], env_name="production")
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertIn("canary: INCONCLUSIVE: too little traffic", proc.stderr)
        self.assertRemoved(self.change_sets())
        self.assertEqual(LoopbackCounter.paths, [], "no synthetic load in production")
        os.remove(self.log)
        proc = self.step([FEW], env_name="production", CANARY_ALLOW_INCONCLUSIVE="1")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("INCONCLUSIVE, going on", proc.stdout)
        self.assertEqual([(k, p.get("CanaryWeight")) for k, p in self.change_sets()[2:]], [("edge", "0")])

    def test_a_canary_that_never_gets_healthy_takes_no_traffic_and_is_removed(self):
        proc = self.step([PASS], FAKE_CANARY_UNHEALTHY="1", AWS_CANARY_READY_SECONDS="0")
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertIn("no healthy target in the canary group", proc.stderr)
        sets = self.change_sets()
        self.assertNotIn("10", [p.get("CanaryWeight") for _, p in sets])
        self.assertEqual(self.looks(), [])
        self.assertEqual(sets[-1][0], "app")
        self.assertNotIn("CanaryAppVersion", sets[-1][1])

    def test_rollback_no_canary_first_deploy_and_redeploy_skip_the_step(self):
        cases = [({"DEPLOY_ROLLBACK": "1"}, PREVIOUS, "2.0.0", "no canary step"),
                 ({"CANARY": "0"}, PREVIOUS, "2.0.0", "WITHOUT canary analysis"),
                 ({}, None, "2.0.0", "first deploy"),
                 ({}, PREVIOUS, "1.0.0", "1.0.0 already runs")]
        for extra, previous, version, said in cases:
            with self.subTest(said=said):
                proc = self.step([PASS], previous=previous, version=version, **extra)
                self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
                self.assertIn(said, proc.stdout + proc.stderr)
                self.assertEqual(self.calls(), [])


if __name__ == "__main__":
    unittest.main()
