"""Every CloudWatch alarm of the templates, evaluated the way CloudWatch
would (alarmeval.py) over recorded per-minute series: it fires when it
must, stays quiet when it must, and, where its metric can be absent, is
shown what absence means. monitoring/ tests the Prometheus rules the same
way (promtool test rules); an alarm that can never fire fails here.

Each alarm has its scenarios below; an alarm added to a template without
scenarios fails test_every_alarm_has_scenarios.

Run: .venv/bin/python -m unittest test_alarms   (from deploy/aws/tests)
"""

from __future__ import annotations

import unittest
from collections.abc import Callable
from typing import Any

from alarmeval import Recording, composite_state, state
from awspolicy import Deployed, environment
from cfn import ENVIRONMENTS

ALB, RDS, HOST = "AWS/ApplicationELB", "AWS/RDS", "HelloBirthday/Host"
NAMES = {
    "requests": (ALB, "RequestCount"), "target5xx": (ALB, "HTTPCode_Target_5XX_Count"),
    "elb5xx": (ALB, "HTTPCode_ELB_5XX_Count"), "latency": (ALB, "TargetResponseTime"),
    "healthy": (ALB, "HealthyHostCount"), "unhealthy": (ALB, "UnHealthyHostCount"),
    "mem": (HOST, "mem_used_percent"), "disk": (HOST, "disk_used_percent"),
    "dbcpu": (RDS, "CPUUtilization"), "dbstorage": (RDS, "FreeStorageSpace"), "dbmem": (RDS, "FreeableMemory"),
    "dbconn": (RDS, "DatabaseConnections"), "cert": ("AWS/CertificateManager", "DaysToExpiry"),
    "backupfailed": ("AWS/Backup", "NumberOfBackupJobsFailed"),
    "backupaborted": ("AWS/Backup", "NumberOfBackupJobsAborted"),
    "copyfailed": ("AWS/Backup", "NumberOfCopyJobsFailed"), "dns": ("AWS/Route53", "HealthCheckStatus"),
}
MINUTES = 120
FAST, SLOW = 0.02, 0.4  # seconds, either side of the 100 ms objective


def _constant(value: Any) -> Callable[[int], Any]:
    return lambda _m: value


def rec(minutes: int = MINUTES, **metrics: Any) -> Recording:
    """Per-minute series: a constant, None (absent), or f(minute) -> value."""
    out: Recording = {}
    for short, spec in metrics.items():
        f: Callable[[int], Any] = spec if callable(spec) else _constant(spec)
        out[NAMES[short]] = [f(m) for m in range(minutes)]
    if not out:
        out[("none", "none")] = [None] * minutes
    return out


def last(n: int, then: Any, before: Any = None) -> Callable[[int], Any]:
    """`before` until the last n minutes, `then` during them."""
    return lambda m: then if m >= MINUTES - n else before


GOOD = dict(requests=1000, latency=[FAST] * 100)
# The fleet is gone for the last 10 minutes: the load balancer answers 503
# itself, no request reaches a target, RequestCount has no datapoint.
OUTAGE = dict(requests=last(10, None, 1000), latency=last(10, None, [FAST] * 100), elb5xx=last(10, 500))
ABSENT: dict[str, Any] = {}

SCENARIOS: dict[str, list[tuple[str, dict[str, Any], str]]] = {
    "ErrorBudgetBurn5m": [
        ("healthy traffic", GOOD, "OK"),
        ("5% of requests fail at the targets", {**GOOD, "target5xx": 50}, "ALARM"),
        ("0.5% fail: under 14.4x the budget", {**GOOD, "target5xx": 5}, "OK"),
        ("total outage: only the load balancer answers", OUTAGE, "ALARM"),
        ("no traffic at all", ABSENT, "OK"),
    ],
    "ErrorBudgetBurn1h": [
        ("healthy traffic", GOOD, "OK"),
        ("5% fail for the hour", {**GOOD, "target5xx": 50}, "ALARM"),
        ("total outage for 10 minutes", OUTAGE, "ALARM"),
        ("no traffic at all", ABSENT, "OK"),
    ],
    "LatencyBurn5m": [
        ("fast", GOOD, "OK"),
        ("half the requests slow", {"requests": 1000, "latency": [FAST] * 50 + [SLOW] * 50}, "ALARM"),
        ("5% slow: under 14.4x the budget", {"requests": 1000, "latency": [FAST] * 95 + [SLOW] * 5}, "OK"),
        # No request reached a target: nothing was slow. The 5xx alarms and
        # the load balancer's own 5xx page for that case (above, below).
        ("no datapoint", ABSENT, "OK"),
    ],
    "LatencyBurn1h": [
        ("fast", GOOD, "OK"),
        ("half slow for the hour", {"requests": 1000, "latency": [FAST] * 50 + [SLOW] * 50}, "ALARM"),
        ("no datapoint", ABSENT, "OK"),
    ],
    "TargetP99Latency": [
        ("fast", GOOD, "OK"),
        ("p99 slow for 20 minutes", {"latency": last(20, [FAST] * 90 + [SLOW] * 10, [FAST] * 100)}, "ALARM"),
        ("p99 slow for 5 minutes only", {"latency": last(5, [FAST] * 90 + [SLOW] * 10, [FAST] * 100)}, "OK"),
        ("no datapoint", ABSENT, "OK"),
    ],
    "UnhealthyHosts": [
        ("all healthy", {"unhealthy": 0}, "OK"),
        ("one unhealthy for 10 minutes", {"unhealthy": last(10, 1, 0)}, "ALARM"),
        ("one unhealthy for 2 minutes (a deploy)", {"unhealthy": last(2, 1, 0)}, "OK"),
        ("no datapoint", ABSENT, "OK"),
    ],
    "HealthyHostsBelowMinimum": [
        ("two healthy", {"healthy": 2}, "OK"),
        ("one healthy for 5 minutes", {"healthy": last(5, 1, 2)}, "ALARM"),
        ("the target group reports nothing", ABSENT, "ALARM"),
    ],
    "LoadBalancer5xx": [
        ("no 5xx", GOOD, "OK"),
        ("20 a minute for 3 minutes", {**GOOD, "elb5xx": last(3, 20)}, "ALARM"),
        ("20 a minute for 2 minutes", {**GOOD, "elb5xx": last(2, 20)}, "OK"),
        ("total outage", OUTAGE, "ALARM"),
        ("no datapoint", ABSENT, "OK"),
    ],
    "DatabaseCpu": [
        ("40%", {"dbcpu": 40}, "OK"),
        ("90% for 20 minutes", {"dbcpu": last(20, 90, 40)}, "ALARM"),
        ("the database reports nothing", ABSENT, "ALARM"),
    ],
    "DatabaseFreeStorage": [
        ("10 GiB free", {"dbstorage": 10 * 2**30}, "OK"),
        ("1 GiB free", {"dbstorage": 2**30}, "ALARM"),
        ("the database reports nothing", ABSENT, "ALARM"),
    ],
    "DatabaseConnections": [
        ("40", {"dbconn": 40}, "OK"),
        ("far above the threshold for 15 minutes", {"dbconn": last(15, 5000, 40)}, "ALARM"),
        ("no datapoint (DatabaseCpu and the others page for that)", ABSENT, "OK"),
    ],
    "HostMemoryHigh": [
        ("50%", {"mem": 50}, "OK"),
        ("95% for 20 minutes", {"mem": last(20, 95, 50)}, "ALARM"),
        ("the agent publishes nothing (no DescribeTags, agent down)", ABSENT, "ALARM"),
    ],
    "HostDiskHigh": [
        ("40%", {"disk": 40}, "OK"),
        ("90% for 15 minutes", {"disk": last(15, 90, 40)}, "ALARM"),
        ("the agent publishes nothing", ABSENT, "ALARM"),
    ],
    "DatabaseFreeableMemory": [
        ("2 GiB", {"dbmem": 2 * 2**30}, "OK"),
        ("100 MiB for 20 minutes", {"dbmem": last(20, 100 * 2**20, 2 * 2**30)}, "ALARM"),
        ("the database reports nothing", ABSENT, "ALARM"),
    ],
    "CertificateExpiry": [
        ("60 days left", {"cert": 60}, "OK"),
        ("20 days left", {"cert": 20}, "ALARM"),
        ("ACM reports nothing (certificate gone)", ABSENT, "ALARM"),
    ],
    "BackupJobsFailed": [
        ("no failure", {"backupfailed": 0}, "OK"),
        ("one failed job", {"backupfailed": last(1, 1, 0)}, "ALARM"),
        ("one aborted job", {"backupaborted": last(1, 1)}, "ALARM"),
        ("no datapoint", ABSENT, "OK"),
    ],
    "CopyJobsFailed": [
        ("no failure", {"copyfailed": 0}, "OK"),
        ("one failed copy", {"copyfailed": last(1, 1, 0)}, "ALARM"),
        ("no datapoint", ABSENT, "OK"),
    ],
    "dns-alarm.DnsHealthCheckFailing": [
        ("healthy", {"dns": 1}, "OK"),
        ("failing for 3 minutes", {"dns": last(3, 0, 1)}, "ALARM"),
        ("Route 53 publishes nothing", ABSENT, "ALARM"),
    ],
}

COMPOSITES: dict[str, list[tuple[str, dict[str, Any], bool]]] = {
    "ErrorBudgetBurnPage": [("healthy", GOOD, False), ("5% errors", {**GOOD, "target5xx": 50}, True),
                            ("total outage", OUTAGE, True), ("no traffic", ABSENT, False)],
    "LatencyBurnPage": [("fast", GOOD, False),
                        ("half slow", {"requests": 1000, "latency": [FAST] * 50 + [SLOW] * 50}, True)],
}


def alarms(env: str) -> dict[str, dict[str, Any]]:
    stacks = environment(env, ("foundation", "network", "database", "edge", "monitoring"))
    mon = stacks["monitoring"]
    out = {k: mon.properties(k) for k in mon.resources("AWS::CloudWatch::Alarm")}
    dns = Deployed("dns-alarm", env, region="us-east-1", values={"HealthCheckId": "0a1b2c3d-0000-1111-2222-333344445555"})
    out.update({f"dns-alarm.{k}": dns.properties(k) for k in dns.resources("AWS::CloudWatch::Alarm")})
    out.update({k: mon.properties(k) for k in mon.resources("AWS::CloudWatch::CompositeAlarm")})
    return out


def length(alarm: dict[str, Any]) -> int:
    periods = [alarm.get("Period", 60)] + [q["MetricStat"]["Period"] for q in alarm.get("Metrics", []) if "MetricStat" in q]
    return max(MINUTES, max(int(p) for p in periods) // 60 * int(alarm["EvaluationPeriods"]))


def stretch(recording: dict[str, Any], minutes: int) -> dict[str, Any]:
    """A scenario over a longer recording: the same per-minute rule, the last minutes unchanged."""
    out = {}
    for k, v in recording.items():
        if callable(v):
            out[k] = (lambda f: (lambda m: f(m - (minutes - MINUTES))))(v)
        else:
            out[k] = v
    return out


class Alarms(unittest.TestCase):
    def test_every_alarm_has_scenarios(self) -> None:
        for env in ENVIRONMENTS:
            found = set(alarms(env))
            self.assertEqual(found, set(SCENARIOS) | set(COMPOSITES), env)

    def test_each_alarm_fires_when_it_must_and_only_then(self) -> None:
        for env in ENVIRONMENTS:
            for name, alarm in alarms(env).items():
                if name in COMPOSITES:
                    continue
                n = length(alarm)
                for what, scenario, want in SCENARIOS[name]:
                    recording = rec(n, **stretch(scenario, n))
                    with self.subTest(env=env, alarm=name, scenario=what):
                        self.assertEqual(state(alarm, recording), want)

    def test_the_pages_are_both_windows_together(self) -> None:
        for env in ENVIRONMENTS:
            found = alarms(env)
            names = {a.get("AlarmName"): k for k, a in found.items()}
            for page, cases in COMPOSITES.items():
                rule = found[page]["AlarmRule"]
                for what, scenario, want in cases:
                    states = {alarm_name: state(found[key], rec(length(found[key]),
                                                                **stretch(scenario, length(found[key]))))
                              for alarm_name, key in names.items() if alarm_name and key not in COMPOSITES}
                    with self.subTest(env=env, page=page, scenario=what):
                        self.assertEqual(composite_state(rule, states), want)

    def test_the_rollback_triggers_fire_in_a_total_outage(self) -> None:
        # The deploy's rollback triggers are the 5-minute burn alarms: a
        # release that takes every target out must roll back, not look fine.
        for env in ENVIRONMENTS:
            found = alarms(env)
            mon = environment(env, ("foundation", "network", "database", "edge", "monitoring"))["monitoring"]
            triggers = mon.outputs()["RollbackTriggerAlarmArns"].split(",")
            fired = [k for k, a in found.items() if k not in COMPOSITES and
                     any(t.endswith(":alarm:" + a["AlarmName"]) for t in triggers) and
                     state(a, rec(length(a), **stretch(OUTAGE, length(a)))) == "ALARM"]
            self.assertIn("ErrorBudgetBurn5m", fired, env)


class Evaluator(unittest.TestCase):
    """The evaluator's own rules, on alarms written here."""

    def alarm(self, **props: Any) -> dict[str, Any]:
        base = {"Namespace": ALB, "MetricName": "RequestCount", "Statistic": "Sum", "Period": 60,
                "EvaluationPeriods": 3, "ComparisonOperator": "GreaterThanThreshold", "Threshold": 10}
        return {**base, **props}

    def test_missing_data_treatments(self) -> None:
        absent = rec(requests=None)
        self.assertEqual(state(self.alarm(TreatMissingData="breaching"), absent), "ALARM")
        self.assertEqual(state(self.alarm(TreatMissingData="notBreaching"), absent), "OK")
        self.assertEqual(state(self.alarm(TreatMissingData="missing"), absent), "INSUFFICIENT_DATA")
        self.assertEqual(state(self.alarm(TreatMissingData="ignore"), absent, previous="ALARM"), "ALARM")

    def test_m_out_of_n(self) -> None:
        two_of_three = self.alarm(DatapointsToAlarm=2)
        self.assertEqual(state(two_of_three, rec(requests=last(2, 20, 0))), "ALARM")
        self.assertEqual(state(two_of_three, rec(requests=last(1, 20, 0))), "OK")

    def test_metric_math_fill_and_division(self) -> None:
        ratio = self.alarm(Metrics=[
            {"Id": "r", "Expression": "100 * FILL(a, 0) / b", "ReturnData": True},
            {"Id": "a", "ReturnData": False, "MetricStat": {"Stat": "Sum", "Period": 60, "Metric": {
                "Namespace": ALB, "MetricName": "HTTPCode_Target_5XX_Count"}}},
            {"Id": "b", "ReturnData": False, "MetricStat": {"Stat": "Sum", "Period": 60, "Metric": {
                "Namespace": ALB, "MetricName": "RequestCount"}}}], TreatMissingData="notBreaching")
        self.assertEqual(state(ratio, rec(requests=100, target5xx=20)), "ALARM")
        self.assertEqual(state(ratio, rec(requests=100)), "OK")
        # The denominator absent: no value at all, whatever the numerator.
        self.assertEqual(state(ratio, rec(target5xx=20)), "OK")


if __name__ == "__main__":
    unittest.main()
