"""The web ACL as AWS WAF would apply it: which rules block in which mode,
which requests its logging filter keeps, the alarm on counted matches, and
the date by which counting must end.

Run: .venv/bin/python -m unittest test_waf   (from deploy/aws/tests)
"""

from __future__ import annotations

import datetime
import unittest
from typing import Any

from alarmeval import Recording, state
from awspolicy import Deployed
from cfn import ENVIRONMENTS, Stack, load_parameters, load_template

# The staging synthetic loads (.github/scripts/staging_load.py --rate 20 and
# the canary's AWS_CANARY_LOAD_RATE, 20/s) come from one runner address.
STAGING_LOAD_PER_SECOND = 20


def edge(env: str, **values: Any) -> Deployed:
    exports = {f"hello-birthday-{env}-{k}": v for k, v in {
        "network-PublicSubnetIds": "subnet-a,subnet-b", "network-LoadBalancerSecurityGroupId": "sg-1",
        "network-VpcId": "vpc-1", "foundation-LogsBucketName": "logs", "foundation-KmsKeyArn": "arn:aws:kms:k",
        "foundation-AlarmTopicArn": "arn:aws:sns:topic"}.items()}
    base = {"HostedZoneId": "Z1", "CertificateArn": "arn:aws:acm:eu-west-1:111122223333:certificate/0a1b"}
    return Deployed("edge", env, values={**base, **values}, exports=exports)


def keeps(log_filter: dict[str, Any], record: dict[str, Any]) -> bool:
    """AWS WAF's logging filter on one log record (WAF Developer Guide,
    "Log filtering"; ActionCondition matches the terminating action, or the
    action of a non-terminating match: COUNT for a count rule,
    EXCLUDED_AS_COUNT for a rule of a group overridden to count)."""
    actions = {record["action"]}
    actions |= {r["action"] for r in record.get("nonTerminatingMatchingRules", [])}
    for group in record.get("ruleGroupList", []):
        if group.get("excludedRules") or group.get("ruleActionOverrides"):
            actions.add("EXCLUDED_AS_COUNT")
    for f in log_filter["Filters"]:
        hits = [c["ActionCondition"]["Action"] in actions for c in f["Conditions"] if "ActionCondition" in c]
        met = any(hits) if f["Requirement"] == "MEETS_ANY" else all(hits)
        if met:
            return bool(f["Behavior"] == "KEEP")
    return bool(log_filter["DefaultBehavior"] == "KEEP")


class WebAcl(unittest.TestCase):
    def rules(self, mode: str) -> dict[str, dict[str, Any]]:
        d = edge("production", WafMode=mode, WafCountModeUntil="2027-01-31")
        return {r["Name"]: r for r in d.properties("WebAcl")["Rules"]}

    def test_the_rate_limit_blocks_from_the_start(self) -> None:
        for mode in ("count", "block"):
            self.assertEqual(self.rules(mode)["rate-per-client-ip"]["Action"], {"Block": {}}, mode)
            self.assertEqual(self.rules(mode)["aws-known-bad-inputs"]["OverrideAction"], {"None": {}}, mode)

    def test_the_rule_groups_count_only_in_count_mode(self) -> None:
        for name in ("aws-ip-reputation", "aws-common"):
            self.assertEqual(self.rules("count")[name]["OverrideAction"], {"Count": {}})
            self.assertEqual(self.rules("block")[name]["OverrideAction"], {"None": {}})

    def test_staging_rate_limit_admits_its_own_synthetic_load(self) -> None:
        limit = int(edge("staging").values["WafRateLimitPer5Minutes"])
        self.assertGreater(limit, STAGING_LOAD_PER_SECOND * 300)
        # Production is judged on real traffic; one client stays far below capacity.
        self.assertLessEqual(int(edge("production").values["WafRateLimitPer5Minutes"]), 3000)


class Logging(unittest.TestCase):
    def test_only_blocked_and_counted_requests_are_logged(self) -> None:
        log_filter = edge("production").properties("WafLogging")["LoggingFilter"]
        allowed = {"action": "ALLOW", "nonTerminatingMatchingRules": [], "ruleGroupList": []}
        blocked = {"action": "BLOCK", "terminatingRuleId": "rate-per-client-ip"}
        counted = {"action": "ALLOW", "nonTerminatingMatchingRules": [{"ruleId": "aws-common", "action": "COUNT"}]}
        overridden = {"action": "ALLOW", "ruleGroupList": [{"ruleGroupId": "AWS#AWSManagedRulesCommonRuleSet",
                                                             "ruleActionOverrides": [{"actionType": "COUNT",
                                                                                      "ruleId": "NoUserAgent_HEADER"}]}]}
        self.assertFalse(keeps(log_filter, allowed))
        for record in (blocked, counted, overridden):
            self.assertTrue(keeps(log_filter, record), record)


class CountMode(unittest.TestCase):
    def test_counting_needs_an_end_date(self) -> None:
        tpl = load_template("edge")
        base = dict(Environment="production", DomainName="hello.example.com", HostedZoneId="Z1",
                    CertificateArn="arn:aws:acm:eu-west-1:111122223333:certificate/0a1b")
        self.assertTrue(Stack(tpl, WafMode="count", **base).broken_rules())
        self.assertEqual(Stack(tpl, WafMode="count", WafCountModeUntil="2027-01-31", **base).broken_rules(), [])
        self.assertEqual(Stack(tpl, WafMode="block", **base).broken_rules(), [])

    def test_no_environment_counts_past_its_date(self) -> None:
        # The step nobody can forget: once the date has passed with the rule
        # groups still counting, CI fails (docs/runbooks/waf-count-mode.md).
        today = datetime.date.today()
        for env in ENVIRONMENTS:
            e = load_parameters(env)["stacks"]["edge"]
            mode = e.get("WafMode", load_template("edge")["Parameters"]["WafMode"]["Default"])
            if mode == "count":
                until = datetime.date.fromisoformat(e["WafCountModeUntil"])
                self.assertLessEqual(today, until, f"{env}: the WAF rule groups still count past {until}: switch "
                                                   "WafMode to block (docs/runbooks/waf-count-mode.md)")

    def test_counted_matches_alarm_while_counting_only(self) -> None:
        counting = edge("production", WafMode="count", WafCountModeUntil="2027-01-31")
        self.assertIn("WafCountedMatches", counting.resources())
        self.assertNotIn("WafCountedMatches", edge("production", WafMode="block").resources())
        alarm = counting.properties("WafCountedMatches")
        names = {q["MetricStat"]["Metric"]["Dimensions"][2]["Value"] for q in alarm["Metrics"] if "MetricStat" in q}
        rules = {r["Name"] for r in counting.properties("WebAcl")["Rules"]
                 if r.get("OverrideAction") == {"Count": {}}}
        self.assertEqual(names, rules, "the alarm watches every counting rule group")
        minutes = 120
        quiet: Recording = {("AWS/WAFV2", "CountedRequests"): [None] * minutes}
        matched: Recording = {("AWS/WAFV2", "CountedRequests"): [*[None] * (minutes - 1), 3]}
        self.assertEqual(state(alarm, quiet), "OK")
        self.assertEqual(state(alarm, matched), "ALARM")


if __name__ == "__main__":
    unittest.main()
