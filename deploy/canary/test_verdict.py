"""Unit tests of the canary verdict with fixed inputs (stdlib unittest):
python3 -m unittest discover -s deploy/canary"""

import unittest
from typing import Any

import verdict as v
from verdict import Group, judge

WINDOW = 60.0


def log_lines(server: str, n: int, errors: int = 0, ms: int = 10, t: float = 1000.0, path: str = "/hello/alice") -> list[str]:
    """n HAProxy log lines for one server, the first `errors` of them 500."""
    return [f"hb-req {t + i / 100:.3f} {server} {500 if i < errors else 200} {ms} GET {path}" for i in range(n)]


class FisherTest(unittest.TestCase):
    def test_known_value(self) -> None:
        # The lady tasting tea: [[3, 1], [1, 3]], one-sided p = 17/70.
        self.assertAlmostEqual(v.fisher_greater(3, 1, 1, 3), 17 / 70, places=10)

    def test_no_errors_anywhere_is_p_one(self) -> None:
        self.assertEqual(v.fisher_greater(0, 100, 0, 900), 1.0)

    def test_single_error_is_chance(self) -> None:
        # 1 of 300 canary requests vs 0 of 2700: p = 300/3000.
        self.assertAlmostEqual(v.fisher_greater(1, 299, 0, 2700), 0.1, places=6)


class JudgeTest(unittest.TestCase):
    def test_pass_at_end_of_window(self) -> None:
        d = judge(Group(300, 0, 12), Group(2700, 1, 14), WINDOW, WINDOW)
        self.assertEqual(d.decision, "pass", d.line())

    def test_no_pass_before_end_of_window(self) -> None:
        d = judge(Group(300, 0, 12), Group(2700, 0, 14), 30, WINDOW)
        self.assertEqual(d.decision, "continue", d.line())

    def test_fail_on_errors_early(self) -> None:
        # 10 % of the canary's requests fail: decided at once, not at the end.
        d = judge(Group(60, 6, 12), Group(540, 0, 14), 2, WINDOW)
        self.assertEqual(d.decision, "fail", d.line())
        self.assertIn("errors", d.reason)
        self.assertIn("Fisher", d.reason)

    def test_errors_within_chance_do_not_fail(self) -> None:
        # Above the budget rate (1/300 > 0.1 %) but one error is chance.
        d = judge(Group(300, 1, 12), Group(2700, 0, 14), WINDOW, WINDOW)
        self.assertEqual(d.decision, "pass", d.line())

    def test_errors_under_the_budget_do_not_fail(self) -> None:
        # Significantly worse than a perfect baseline, but under 0.1 %.
        d = judge(Group(100000, 90, 12), Group(900000, 0, 14), WINDOW, WINDOW)
        self.assertEqual(d.decision, "pass", d.line())

    def test_canary_as_bad_as_baseline_passes(self) -> None:
        # A shared failure (the database) is not the release's fault.
        d = judge(Group(300, 15, 12), Group(2700, 140, 14), WINDOW, WINDOW)
        self.assertEqual(d.decision, "pass", d.line())

    def test_fail_on_latency(self) -> None:
        d = judge(Group(200, 0, 320, slow=150), Group(1800, 0, 20, slow=2), 5, WINDOW)
        self.assertEqual(d.decision, "fail", d.line())
        self.assertIn("latency", d.reason)

    def test_latency_needs_ratio_and_margin(self) -> None:
        # 3x but only +20 ms: not "clearly slower".
        d = judge(Group(300, 0, 30, slow=0), Group(2700, 0, 10, slow=0), WINDOW, WINDOW)
        self.assertEqual(d.decision, "pass", d.line())
        # +60 ms but only 1.3x: not either.
        d = judge(Group(300, 0, 260, slow=0), Group(2700, 0, 200, slow=0), WINDOW, WINDOW)
        self.assertEqual(d.decision, "pass", d.line())

    def test_latency_from_aggregates_fails_with_enough_requests(self) -> None:
        # CloudWatch gives only the p99s: decided on p99 and the request count.
        self.assertEqual(judge(Group(500, 0, 400), Group(5000, 0, 40), 120, 300).decision, "fail")
        self.assertEqual(judge(Group(50, 0, 400), Group(5000, 0, 40), 120, 300).decision, "continue")

    def test_inconclusive_on_too_little_traffic(self) -> None:
        d = judge(Group(40, 0, 12), Group(400, 0, 14), WINDOW, WINDOW)
        self.assertEqual(d.decision, "inconclusive", d.line())
        self.assertIn("too little traffic", d.reason)

    def test_inconclusive_on_no_traffic(self) -> None:
        self.assertEqual(judge(Group(0, 0, None), Group(0, 0, None), WINDOW, WINDOW).decision, "inconclusive")

    def test_no_failure_on_a_handful_of_requests(self) -> None:
        few = v.MIN_FAIL_REQUESTS - 1
        d = judge(Group(few, few, None), Group(100, 0, 14), 1, WINDOW)
        self.assertEqual(d.decision, "continue", d.line())
        # A canary failing every request is stopped as soon as there are enough.
        d = judge(Group(few + 1, few + 1, None), Group(100, 0, 14), 1, WINDOW)
        self.assertEqual(d.decision, "fail", d.line())


class HaproxyLogTest(unittest.TestCase):
    def test_groups_from_log(self) -> None:
        lines = (
            log_lines("s1", 100, errors=10, ms=15)
            + log_lines("s2", 500, errors=1)
            + log_lines("s3", 500)
            + log_lines("s2", 50, path="/readyz")  # not user traffic
            + log_lines("<NOSRV>", 5, errors=5)  # no server took it
            + log_lines("s1", 50, t=900.0, errors=50)  # before the interval
            + ["garbage", "hb-req x s1 200 1 GET /hello/a"]
        )
        canary, baseline = v.parse_haproxy(lines, "s1", 1000.0)
        self.assertEqual((canary.requests, canary.errors, canary.p99_ms), (100, 10, 15))
        self.assertEqual((baseline.requests, baseline.errors, baseline.p99_ms), (1000, 1, 10))

    def test_slow_counts_use_the_baseline_bound(self) -> None:
        # Baseline p99 10 ms -> bound max(20, 60) = 60 ms.
        lines = log_lines("s1", 50, ms=300) + log_lines("s1", 50, ms=59) + log_lines("s2", 1000, ms=10)
        canary, baseline = v.parse_haproxy(lines, "s1", 0)
        self.assertEqual((canary.slow, baseline.slow), (50, 0))
        self.assertEqual(judge(canary, baseline, 3, WINDOW).decision, "fail")

    def test_a_client_without_an_answer_counts_an_error(self) -> None:
        # Status 0: refused, reset or timed out, as a synthetic probe sees it.
        canary, baseline = v.groups_from_answers([(True, 0, 5000.0)] * 5 + [(True, 404, 3.0)] * 95
                                                 + [(False, 404, 3.0)] * 100)
        self.assertEqual((canary.requests, canary.errors, baseline.errors), (100, 5, 0))
        self.assertEqual(canary.p99_ms, 3.0)


def metric_answer(canary: tuple[float, ...], baseline: tuple[float, ...]) -> dict[str, Any]:
    """GetMetricData answer for (requests, target 5xx, connection errors,
    p99 seconds) per side; 0 requests: no datapoints at all, as CloudWatch
    answers for an idle target group."""
    results = []
    for side, figures in (("canary", canary), ("baseline", baseline)):
        for key, val in zip(("requests", "errors", "connection_errors", "p99"), figures):
            results.append({"Id": f"{side}_{key}", "Values": [] if figures[0] == 0 else [val]})
    return {"MetricDataResults": results}


class CloudWatchTest(unittest.TestCase):
    def test_connection_errors_count_as_5xx_of_their_side(self) -> None:
        # Connections the load balancer could not open to the canary: its 502/503.
        canary, baseline = v.parse_cloudwatch(metric_answer((120, 2, 10, 0.020), (1080, 0, 0, 0.019)))
        self.assertEqual((canary.requests, canary.errors), (120, 12))
        self.assertEqual(judge(canary, baseline, 60, 300).decision, "fail")

    def test_seconds_are_read_as_milliseconds(self) -> None:
        canary, baseline = v.parse_cloudwatch(metric_answer((150, 0, 0, 0.350), (1350, 0, 0, 0.020)))
        self.assertEqual((canary.p99_ms, baseline.p99_ms), (350.0, 20.0))
        self.assertTrue(judge(canary, baseline, 60, 300).line().startswith("fail latency: canary p99 350 ms > 70 ms"))

    def test_no_datapoints_is_no_traffic_not_an_error(self) -> None:
        canary, baseline = v.parse_cloudwatch(metric_answer((0, 0, 0, 0), (0, 0, 0, 0)))
        self.assertEqual((canary.requests, canary.errors, canary.p99_ms), (0, 0, None))
        self.assertEqual(judge(canary, baseline, 300, 300).decision, "inconclusive")

    def test_counts_of_several_periods_are_summed(self) -> None:
        answer = metric_answer((60, 6, 0, 0.02), (540, 0, 0, 0.02))
        for r in answer["MetricDataResults"]:
            r["Values"] = r["Values"] * 2
        canary, _ = v.parse_cloudwatch(answer)
        self.assertEqual((canary.requests, canary.errors), (120, 12))

    def test_an_answer_without_a_query_is_refused(self) -> None:
        answer = metric_answer((300, 0, 0, 0.02), (2700, 0, 0, 0.02))
        answer["MetricDataResults"] = [r for r in answer["MetricDataResults"] if r["Id"] != "baseline_errors"]
        with self.assertRaisesRegex(ValueError, "baseline_errors"):
            v.parse_cloudwatch(answer)


if __name__ == "__main__":
    unittest.main()
