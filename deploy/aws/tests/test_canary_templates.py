"""Properties of the canary resources (deploy/aws/canary.sh drives them): the
canary runs what the main group runs, except its release, health-checked
and replaced the same way, in its own target group, and takes a share of
the listener's traffic set by parameters (0 when idle).

Run: .venv/bin/python -m unittest discover -s deploy/aws/tests -p 'test_canary_templates.py'
"""

import json
import unittest

from cfn import ENVIRONMENTS, load_parameters, load_template, param_value, resources

APP, EDGE = load_template("app"), load_template("edge")
RELEASE_PARAMETERS = ("AppVersion", "ArtifactSha256", "HostBundleSha256")


def res(template, name):
    return template["Resources"][name]


def as_canary(main_lt_data):
    """The main launch template's data with the canary's release, target
    group and signalled resource: what the canary's must be, exactly."""
    text = json.dumps(main_lt_data)
    for p in RELEASE_PARAMETERS:
        text = text.replace("${%s}" % p, "${Canary%s}" % p).replace('{"Ref": "%s"}' % p, '{"Ref": "Canary%s"}' % p)
    text = text.replace("--resource AutoScalingGroup", "--resource CanaryAutoScalingGroup")
    text = text.replace("-edge-TargetGroupArn", "-edge-CanaryTargetGroupArn")
    return json.loads(text)


class CanaryGroup(unittest.TestCase):
    def test_canary_launch_template_is_the_main_one_but_for_the_release(self):
        main = res(APP, "LaunchTemplate")["Properties"]["LaunchTemplateData"]
        canary = res(APP, "CanaryLaunchTemplate")["Properties"]["LaunchTemplateData"]
        self.assertEqual(canary, as_canary(main))
        # The substitution did something: the canary boots its own release
        # into its own target group and signals its own group.
        user_data = json.dumps(canary["UserData"])
        for needle in ("${CanaryAppVersion}", "${CanaryArtifactSha256}", "${CanaryHostBundleSha256}",
                       "--resource CanaryAutoScalingGroup", "-edge-CanaryTargetGroupArn"):
            self.assertIn(needle, user_data)
        self.assertNotIn("${AppVersion}", user_data)

    def test_canary_group_is_one_instance_with_the_main_health_settings(self):
        main = res(APP, "AutoScalingGroup")["Properties"]
        canary = res(APP, "CanaryAutoScalingGroup")["Properties"]
        self.assertEqual((canary["MinSize"], canary["MaxSize"], canary["DesiredCapacity"]), (1, 1, 1))
        for key in ("HealthCheckType", "HealthCheckGracePeriod", "DefaultInstanceWarmup", "VPCZoneIdentifier",
                    "MetricsCollection"):
            self.assertEqual(canary[key], main[key], key)
        self.assertEqual(canary["LaunchTemplate"], {"LaunchTemplateId": {"Ref": "CanaryLaunchTemplate"},
                                                    "Version": {"Fn::GetAtt": ["CanaryLaunchTemplate",
                                                                               "LatestVersionNumber"]}})
        self.assertEqual(canary["TargetGroupARNs"],
                         [{"Fn::ImportValue": {"Fn::Sub": "${StackPrefix}-${Environment}-edge-CanaryTargetGroupArn"}}])
        # The stack update that starts the canary completes only once the
        # canary signalled ready and healthy, as a main instance does.
        self.assertEqual(res(APP, "CanaryAutoScalingGroup")["CreationPolicy"]["ResourceSignal"]["Count"], 1)

    def test_canary_resources_exist_only_while_a_canary_runs(self):
        self.assertEqual(APP["Conditions"]["HasCanary"], {"Fn::Not": [{"Fn::Equals": [{"Ref": "CanaryAppVersion"}, ""]}]})
        for name, body in resources(APP).items():
            self.assertEqual(body.get("Condition") == "HasCanary", name.startswith("Canary"), name)
        for env in ENVIRONMENTS:
            self.assertEqual(param_value(APP, load_parameters(env), "app", "CanaryAppVersion"), "", env)

    def test_canary_may_read_only_its_own_release(self):
        policy = res(APP, "CanaryReleaseRead")["Properties"]
        self.assertEqual(policy["Roles"], [{"Ref": "InstanceRole"}])
        (statement,) = policy["PolicyDocument"]["Statement"]
        self.assertEqual((statement["Effect"], statement["Action"]), ("Allow", "s3:GetObject"))
        self.assertEqual(statement["Resource"]["Fn::Sub"][0], "${Bucket}/releases/${CanaryAppVersion}/*")

    def test_canary_release_parameters_accept_empty_and_the_main_patterns(self):
        import re

        for p in RELEASE_PARAMETERS:
            main, canary = APP["Parameters"][p], APP["Parameters"][f"Canary{p}"]
            self.assertEqual(canary["Default"], "")
            self.assertTrue(re.fullmatch(canary["AllowedPattern"], ""))
            for sample in ("1.2.3", "a" * 64, "sha-0123456789ab"):
                self.assertEqual(bool(re.fullmatch(main["AllowedPattern"], sample)),
                                 bool(re.fullmatch(canary["AllowedPattern"], sample)), (p, sample))


class CanaryTraffic(unittest.TestCase):
    def test_canary_target_group_is_checked_like_the_main_one(self):
        main = res(EDGE, "TargetGroup")["Properties"]
        canary = res(EDGE, "CanaryTargetGroup")["Properties"]
        same = {k: v for k, v in main.items() if k != "Name"}
        self.assertEqual({k: v for k, v in canary.items() if k != "Tags"}, same)
        self.assertIn("HealthCheckPath", same)

    def test_weights_are_parameters_and_the_canary_takes_nothing_when_idle(self):
        rule = res(EDGE, "CanaryWeightedForward")["Properties"]
        (action,) = rule["Actions"]
        self.assertEqual(action["Type"], "forward")
        groups = {g["TargetGroupArn"]["Ref"]: g["Weight"] for g in action["ForwardConfig"]["TargetGroups"]}
        self.assertEqual(groups, {"TargetGroup": {"Ref": "MainWeight"}, "CanaryTargetGroup": {"Ref": "CanaryWeight"}})
        self.assertFalse(action["ForwardConfig"]["TargetGroupStickinessConfig"]["Enabled"])
        for env in ENVIRONMENTS:
            params = load_parameters(env)
            self.assertEqual(param_value(EDGE, params, "edge", "CanaryWeight"), 0, env)
            self.assertEqual(param_value(EDGE, params, "edge", "MainWeight"), 100, env)

    def test_weighted_rule_covers_every_path_after_the_metrics_block(self):
        rule = res(EDGE, "CanaryWeightedForward")["Properties"]
        self.assertEqual(rule["ListenerArn"], {"Ref": "HttpsListener"})
        self.assertEqual(rule["Conditions"], [{"Field": "path-pattern", "PathPatternConfig": {"Values": ["/*"]}}])
        blocked = res(EDGE, "MetricsPathBlocked")["Properties"]["Priority"]
        self.assertGreater(rule["Priority"], blocked)

    def test_canary_target_group_is_exported_for_the_app_stack_and_named_for_cloudwatch(self):
        outputs = EDGE["Outputs"]
        self.assertEqual(outputs["CanaryTargetGroupArn"]["Export"]["Name"],
                         {"Fn::Sub": "${AWS::StackName}-CanaryTargetGroupArn"})
        self.assertEqual(outputs["CanaryTargetGroupFullName"]["Value"],
                         {"Fn::GetAtt": ["CanaryTargetGroup", "TargetGroupFullName"]})
        self.assertIn("TargetGroupFullName", outputs)
        self.assertIn("LoadBalancerFullName", outputs)


if __name__ == "__main__":
    unittest.main()
