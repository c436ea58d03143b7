"""Properties of the canary's own stack (canary.yaml; the deploy program
creates it for one release and deletes it after the verdict): it runs what
the fleet runs but for its release, health-checked like the fleet, in its
own target group, takes the users' share set by its parameters, and sends
each side's synthetic probes to that side alone. What the stack does in a
deploy is in test_deploy.py.

Run: .venv/bin/python -m unittest discover -s deploy/aws/tests -p 'test_canary_templates.py'
"""

import json
import re
import unittest

from cfn import Node, Template, load_template

APP, EDGE, CANARY = load_template("app"), load_template("edge"), load_template("canary")


def res(template: Template, name: str) -> Node:
    return template["Resources"][name]


def imported(name: str) -> dict[str, Node]:
    return {"Fn::ImportValue": {"Fn::Sub": "${StackPrefix}-${Environment}-" + name}}


class CanaryGroup(unittest.TestCase):
    def test_launch_template_is_the_fleets_but_for_its_target_group_profile_and_name(self) -> None:
        main = dict(res(APP, "LaunchTemplate")["Properties"]["LaunchTemplateData"])
        canary = dict(res(CANARY, "LaunchTemplate")["Properties"]["LaunchTemplateData"])
        self.assertEqual(canary.pop("IamInstanceProfile"), {"Arn": imported("app-InstanceProfileArn")})
        main.pop("IamInstanceProfile")
        # Its instance is named apart (the same volume tags and release tag).
        as_canary = json.loads(json.dumps(main.pop("TagSpecifications")).replace(
            '{"Key": "Name", "Value": {"Fn::Sub": "${StackPrefix}-${Environment}"}}, {"Key": "app-version"',
            '{"Key": "Name", "Value": {"Fn::Sub": "${StackPrefix}-${Environment}-canary"}}, {"Key": "app-version"'))
        self.assertEqual(canary.pop("TagSpecifications"), as_canary)
        (main_script, main_values), (script, values) = (
            d.pop("UserData")["Fn::Base64"]["Fn::Sub"] for d in (main, canary))
        self.assertEqual(canary, main, "every other setting of the instance is the fleet's")
        # The same boot script: the release of its own parameters, checked
        # against its own checksums, signalling its own stack.
        self.assertEqual(script, main_script)
        self.assertEqual(values.pop("TargetGroupArn"), {"Ref": "TargetGroup"})
        self.assertEqual(values.pop("ServiceLogGroup"), imported("app-ServiceLogGroupName"))
        main_values.pop("TargetGroupArn")
        self.assertEqual(values, main_values)
        self.assertEqual(values["DbSecretArn"], imported("database-AppUserSecretArn"))

    def test_group_is_one_instance_with_the_fleets_health_settings(self) -> None:
        main = res(APP, "AutoScalingGroup")["Properties"]
        canary = res(CANARY, "AutoScalingGroup")["Properties"]
        self.assertEqual((canary["MinSize"], canary["MaxSize"], canary["DesiredCapacity"]), (1, 1, 1))
        for key in ("HealthCheckType", "HealthCheckGracePeriod", "DefaultInstanceWarmup", "VPCZoneIdentifier",
                    "MetricsCollection"):
            self.assertEqual(canary[key], main[key], key)
        self.assertEqual(canary["TargetGroupARNs"], [{"Ref": "TargetGroup"}])
        # The stack's creation completes only once the canary signalled ready
        # and healthy, as a fleet instance does; the signal is to this stack.
        self.assertEqual(res(CANARY, "AutoScalingGroup")["CreationPolicy"]["ResourceSignal"]["Count"], 1)
        (statement,) = res(CANARY, "SignalPolicy")["Properties"]["PolicyDocument"]["Statement"]
        self.assertEqual((statement["Action"], statement["Resource"]),
                         ("cloudformation:SignalResource", {"Ref": "AWS::StackId"}))

    def test_release_parameters_take_the_fleets_patterns(self) -> None:
        for p in ("AppVersion", "ArtifactSha256", "HostBundleSha256"):
            main, canary = APP["Parameters"][p], CANARY["Parameters"][p]
            self.assertNotIn("Default", canary, p)
            for sample in ("1.2.3", "a" * 64, "sha-0123456789ab", ""):
                self.assertEqual(bool(re.fullmatch(main["AllowedPattern"], sample)),
                                 bool(re.fullmatch(canary["AllowedPattern"], sample)), (p, sample))

    def test_the_fleet_carries_no_canary_resource_any_more(self) -> None:
        for template in (APP, EDGE):
            self.assertEqual([n for n in template["Resources"] if "Canary" in n], [])
            self.assertEqual([n for n in template.get("Parameters", {}) if "Canary" in n], [])


class CanaryTraffic(unittest.TestCase):
    def test_target_group_is_checked_like_the_main_one(self) -> None:
        main = res(EDGE, "TargetGroup")["Properties"]
        canary = res(CANARY, "TargetGroup")["Properties"]
        drop = ("Name", "Tags", "VpcId", "Port", "HealthCheckIntervalSeconds", "HealthyThresholdCount",
                "UnhealthyThresholdCount", "TargetGroupAttributes")
        self.assertEqual({k: v for k, v in canary.items() if k not in drop},
                         {k: v for k, v in main.items() if k not in drop})
        self.assertIn("HealthCheckPath", canary)
        # The settings the edge stack takes from parameters, the deploy hands
        # to the canary stack with the edge stack's values.
        for key in ("HealthCheckIntervalSeconds", "HealthyThresholdCount", "UnhealthyThresholdCount"):
            self.assertEqual(set(canary[key].values()) <= set(CANARY["Parameters"]), True, key)

    def test_users_are_split_by_weight_after_the_metrics_block(self) -> None:
        rule = res(CANARY, "WeightedForward")["Properties"]
        (action,) = rule["Actions"]
        groups = [(g["TargetGroupArn"], g["Weight"]) for g in action["ForwardConfig"]["TargetGroups"]]
        self.assertEqual(groups, [(imported("edge-TargetGroupArn"), {"Ref": "MainWeight"}),
                                  ({"Ref": "TargetGroup"}, {"Ref": "CanaryWeight"})])
        self.assertFalse(action["ForwardConfig"]["TargetGroupStickinessConfig"]["Enabled"])
        self.assertEqual(rule["Conditions"], [{"Field": "path-pattern", "PathPatternConfig": {"Values": ["/*"]}}])
        self.assertGreater(rule["Priority"], res(EDGE, "MetricsPathBlocked")["Properties"]["Priority"])

    def test_each_sides_probes_reach_that_side_alone_before_the_split(self) -> None:
        split = res(CANARY, "WeightedForward")["Properties"]["Priority"]
        for name, side, group in (("ProbeToCanary", "canary", {"Ref": "TargetGroup"}),
                                  ("ProbeToBaseline", "baseline", imported("edge-TargetGroupArn"))):
            rule = res(CANARY, name)["Properties"]
            self.assertLess(rule["Priority"], split, name)
            ((condition,), (action,)) = rule["Conditions"], rule["Actions"]
            self.assertEqual(condition["HttpHeaderConfig"]["Values"], [{"Fn::Sub": "${ProbeToken}-" + side}])
            self.assertEqual(action, {"Type": "forward", "TargetGroupArn": group})
        # No traffic reaches the canary before its instance is healthy.
        for name in ("WeightedForward", "ProbeToCanary", "ProbeToBaseline"):
            self.assertEqual(res(CANARY, name)["DependsOn"], "AutoScalingGroup", name)

    def test_the_edge_exports_what_the_canary_stack_imports(self) -> None:
        text = json.dumps(CANARY)
        for name in re.findall(r'\$\{StackPrefix\}-\$\{Environment\}-edge-(\w+)', text):
            self.assertEqual(EDGE["Outputs"][name]["Export"]["Name"], {"Fn::Sub": "${AWS::StackName}-" + name})
        self.assertEqual(CANARY["Outputs"]["CanaryTargetGroupFullName"]["Value"],
                         {"Fn::GetAtt": ["TargetGroup", "TargetGroupFullName"]})


if __name__ == "__main__":
    unittest.main()
