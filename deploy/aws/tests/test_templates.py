"""Properties of the CloudFormation templates that zero-downtime deploys,
durability and isolation depend on, checked against both environments'
parameter files. cfn-lint checks the syntax and checkov the generic
hardening; these check the decisions specific to this service.

Run: .venv/bin/python -m unittest discover -s deploy/aws/tests -p 'test_templates.py'
"""

import json
import re
import subprocess
import unittest

from cfn import (
    AWS_DIR,
    ENVIRONMENTS,
    ROOT,
    STACK_ORDER,
    TEMPLATES,
    Node,
    Stack,
    Template,
    is_ref,
    load_parameters,
    load_template,
    param_value,
    resources,
    walk,
)

TPL = {name: load_template(name) for name in STACK_ORDER + ("dr-vault", "dns-alarm", "bootstrap")}
PARAMS = {env: load_parameters(env) for env in ENVIRONMENTS}
HOST_SCRIPT = (ROOT / "deploy/aws/host/hello-birthday-aws.sh").read_text()

# Service defaults (README configuration table) the infrastructure is sized against.
SERVICE_KEEPALIVE_SECONDS = 75
SERVICE_PORT = 5000
METRICS_PORT = 9464


def value(stack: str, env: str, name: str) -> Node:
    return param_value(TPL[stack], PARAMS[env], stack, name)


def iso_minutes(duration: str) -> int:
    m = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?", duration)
    assert m, duration
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


def one(template: Template, rtype: str) -> Node:
    # The canary's copies (Canary*) are held to the main ones in test_canary_templates.py.
    found = {k: v for k, v in resources(template, rtype).items() if not k.startswith("Canary")}
    assert len(found) == 1, f"expected one {rtype}, found {list(found)}"
    return next(iter(found.values()))


class Structure(unittest.TestCase):
    def test_templates_fit_in_a_template_body(self) -> None:
        # create-change-set --template-body takes at most 51,200 bytes.
        for path in TEMPLATES.glob("*.yaml"):
            self.assertLess(path.stat().st_size, 51_200, path.name)

    def test_parameter_files_name_only_real_parameters_and_fill_the_required_ones(self) -> None:
        supplied_by_target = {"StackPrefix", "Environment", "AppVersion", "ArtifactSha256", "HostBundleSha256",
                              "DrBackupVaultArn", "DrRegion", "DrReplicationKmsKeyArn", "ImageId",
                              # the group's capacity when the deploy begins (test_deploy.py)
                              "MinInstancesInService"}
        for env, params in PARAMS.items():
            # dr-vault (deployed in the DR Region) may take values too.
            self.assertLessEqual(set(STACK_ORDER), set(params["stacks"]), env)
            self.assertLessEqual(set(params["stacks"]), set(STACK_ORDER) | {"dr-vault"}, env)
            for key in params["stacks"].get("dr-vault", {}):
                self.assertIn(key, TPL["dr-vault"]["Parameters"], f"{env}: dr-vault has no parameter {key}")
            for stack in STACK_ORDER:
                declared = TPL[stack]["Parameters"]
                for key in params["stacks"][stack]:
                    self.assertIn(key, declared, f"{env}: {stack} has no parameter {key}")
                for key, spec in declared.items():
                    if "Default" not in spec and key not in supplied_by_target:
                        self.assertIn(key, params["stacks"][stack], f"{env}: {stack}.{key} has no value")

    def test_parameter_values_respect_allowed_values(self) -> None:
        for env, params in PARAMS.items():
            for stack in STACK_ORDER:
                for key, val in params["stacks"][stack].items():
                    spec = TPL[stack]["Parameters"][key]
                    if "AllowedValues" in spec:
                        self.assertIn(str(val), [str(v) for v in spec["AllowedValues"]], f"{env} {stack}.{key}")
                    if "AllowedPattern" in spec and "REPLACE_ME" not in str(val):
                        self.assertRegex(str(val), spec["AllowedPattern"], f"{env} {stack}.{key}")

    def test_imports_point_at_exports_of_stacks_deployed_earlier(self) -> None:
        exports = {}
        for stack in STACK_ORDER:
            for key, out in TPL[stack].get("Outputs", {}).items():
                if "Export" in out:
                    self.assertEqual(out["Export"]["Name"], {"Fn::Sub": "${AWS::StackName}-" + key})
                    exports[(stack, key)] = True
        for position, stack in enumerate(STACK_ORDER):
            for node in walk(TPL[stack]):
                if isinstance(node, dict) and "Fn::ImportValue" in node:
                    name = node["Fn::ImportValue"]["Fn::Sub"]
                    m = re.fullmatch(r"\$\{StackPrefix\}-\$\{Environment\}-([a-z]+)-(\w+)", name)
                    assert m, f"{stack}: import name {name}"
                    source, output = m.groups()
                    self.assertIn((source, output), exports, f"{stack} imports {source}.{output}")
                    self.assertLess(STACK_ORDER.index(source), position, f"{stack} imports from later {source}")

    def test_every_checkov_skip_is_explained(self) -> None:
        for name, template in TPL.items():
            for logical, res in template["Resources"].items():
                for skip in res.get("Metadata", {}).get("checkov", {}).get("skip", []):
                    self.assertRegex(skip.get("id", ""), r"^CKV2?_AWS_\d+$", f"{name}.{logical}")
                    self.assertGreater(len(skip.get("comment", "")), 20, f"{name}.{logical}: explain {skip.get('id')}")


class ZeroDowntime(unittest.TestCase):
    asg = one(TPL["app"], "AWS::AutoScaling::AutoScalingGroup")

    def test_rolling_update_replaces_one_instance_at_a_time_without_losing_capacity(self) -> None:
        rolling = self.asg["UpdatePolicy"]["AutoScalingRollingUpdate"]
        self.assertEqual(rolling["MaxBatchSize"], 1)
        # The deploy passes the group's current capacity (test_deploy.py,
        # a scaled-out group keeps it).
        self.assertTrue(is_ref(rolling["MinInstancesInService"], "MinInstancesInService"))
        self.assertEqual(rolling["MinSuccessfulInstancesPercent"], 100)
        self.assertIs(rolling["WaitOnResourceSignals"], True)
        self.assertTrue(5 <= iso_minutes(rolling["PauseTime"]) <= 60)
        self.assertLessEqual(
            {"HealthCheck", "ReplaceUnhealthy", "AZRebalance", "AlarmNotification", "ScheduledActions"},
            set(rolling["SuspendProcesses"]),
        )
        self.assertNotIn("Launch", rolling["SuspendProcesses"])
        self.assertNotIn("Terminate", rolling["SuspendProcesses"])

    def test_creation_waits_for_a_signal_from_every_instance(self) -> None:
        policy = self.asg["CreationPolicy"]
        self.assertTrue(is_ref(policy["ResourceSignal"]["Count"], "MinSize"))
        self.assertGreaterEqual(iso_minutes(policy["ResourceSignal"]["Timeout"]), 10)
        self.assertEqual(policy["AutoScalingCreationPolicy"]["MinSuccessfulInstancesPercent"], 100)

    def test_the_load_balancer_decides_instance_health(self) -> None:
        props = self.asg["Properties"]
        self.assertEqual(props["HealthCheckType"], "ELB")
        self.assertGreaterEqual(props["HealthCheckGracePeriod"], 120)
        self.assertEqual(props["TargetGroupARNs"], [{"Fn::ImportValue": {"Fn::Sub": "${StackPrefix}-${Environment}-edge-TargetGroupArn"}}])

    def test_each_environment_has_room_for_the_extra_instance_of_a_rolling_update(self) -> None:
        for env in ENVIRONMENTS:
            lo, hi = (int(value("app", env, k)) for k in ("MinSize", "MaxSize"))
            self.assertGreater(hi, lo, f"{env}: MaxSize must exceed MinSize")
        self.assertGreaterEqual(int(value("app", "production", "MinSize")), 2)

    def test_a_deploy_never_resets_a_scaled_out_group(self) -> None:
        # CloudFormation applies every group-size property the template names
        # on each update (documented under the AutoScalingScheduledAction update
        # policy; aws-cdk stopped emitting DesiredCapacity for this reason), so
        # with target tracking the template must not name DesiredCapacity at
        # all: the group is created at MinSize and updates leave its size alone.
        props = self.asg["Properties"]
        self.assertNotIn("DesiredCapacity", props)
        self.assertNotIn("DesiredCapacity", TPL["app"]["Parameters"])
        for env in ENVIRONMENTS:
            self.assertNotIn("DesiredCapacity", PARAMS[env]["stacks"]["app"], env)
        self.assertNotIn("DesiredCapacity", str(self.asg.get("UpdatePolicy")) + str(self.asg.get("CreationPolicy")))
        self.assertTrue(resources(TPL["app"], "AWS::AutoScaling::ScalingPolicy"), "target tracking owns the size")
        self.assertIs(self.asg["UpdatePolicy"]["AutoScalingScheduledAction"]["IgnoreUnmodifiedGroupSizeProperties"], True)

    def test_replacements_launch_before_terminating(self) -> None:
        policy = self.asg["Properties"]["InstanceMaintenancePolicy"]
        self.assertEqual(policy["MinHealthyPercentage"], 100)
        self.assertGreater(policy["MaxHealthyPercentage"], 100)

    def test_the_image_is_pinned_per_release_and_promoted(self) -> None:
        image = TPL["app"]["Parameters"]["ImageId"]
        self.assertEqual(image["Type"], "AWS::EC2::Image::Id", "an SSM 'latest' parameter re-resolves on every deploy")
        self.assertNotIn("Default", image)
        # The deploy pins the image with the release and passes it on every
        # app deploy and rollback (test_deploy.py).

    def test_user_data_verifies_the_release_and_signals_the_outcome(self) -> None:
        lt = one(TPL["app"], "AWS::EC2::LaunchTemplate")
        script = lt["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"][0]
        self.assertIn('echo "${ArtifactSha256}  $release/hello-birthday" | sha256sum --check --strict', script)
        self.assertIn('echo "${HostBundleSha256}  $release/host.tar.gz" | sha256sum --check --strict', script)
        self.assertIn("releases/${AppVersion}/hello-birthday", script)
        self.assertRegex(script, r"cfn-signal --exit-code \"\$rc\" --stack \$\{AWS::StackName\} --resource AutoScalingGroup")
        self.assertIn("trap report EXIT", script)
        # rc becomes 0 only after the bootstrap (which waits for health) returned.
        lines = script.strip().splitlines()
        self.assertEqual(lines[-1], "rc=0")
        self.assertIn("hello-birthday-aws.sh\" bootstrap", lines[-2])
        self.assertIn("AutoScalingGroup", TPL["app"]["Resources"])

    def test_bootstrap_succeeds_only_once_ready_and_healthy_in_the_target_group(self) -> None:
        body = HOST_SCRIPT.split("bootstrap() {", 1)[1].split("\n}\n", 1)[0]
        # The env file (PostgreSQL) is written before setup.sh installs the
        # unit, and setup.sh does not start it with the template env.
        self.assertLess(body.index("render_env"), body.index("scripts/setup.sh\" host"))
        self.assertIn('host --binary "$release/hello-birthday" --no-start', body)
        ready = body.index('poll "local /readyz"')
        healthy = body.index("healthy_in_target_group")
        self.assertLess(body.index("systemctl restart $UNIT"), ready)
        self.assertLess(ready, healthy)
        self.assertIn("/readyz", HOST_SCRIPT)
        self.assertIn("describe-target-health", HOST_SCRIPT)

    def test_health_check_and_drain_timings_fit_together(self) -> None:
        tg = one(TPL["edge"], "AWS::ElasticLoadBalancingV2::TargetGroup")["Properties"]
        self.assertEqual(tg["HealthCheckPath"], "/readyz")
        self.assertTrue(is_ref(tg["Port"], "ServicePort"))
        self.assertEqual(tg["Matcher"], {"HttpCode": "200"})
        attrs = {a["Key"]: a["Value"] for a in tg["TargetGroupAttributes"]}
        self.assertTrue(is_ref(attrs["deregistration_delay.timeout_seconds"], "DeregistrationDelaySeconds"))
        for env in ENVIRONMENTS:
            interval = int(value("edge", env, "HealthCheckIntervalSeconds"))
            threshold = int(value("edge", env, "HealthCheckThreshold"))
            dereg = int(value("edge", env, "DeregistrationDelaySeconds"))
            idle = int(value("edge", env, "IdleTimeoutSeconds"))
            drain = int(value("app", env, "DrainSeconds"))
            shutdown = int(value("app", env, "ShutdownTimeoutSeconds"))
            request = int(value("app", env, "RequestTimeoutSeconds"))
            self.assertEqual(int(value("edge", env, "ServicePort")), SERVICE_PORT)
            # Readiness turns 503 at SIGTERM: the ALB must have marked the
            # target unhealthy before the listener closes.
            self.assertLess(interval * threshold, drain, env)
            # A deregistering target keeps its in-flight requests this long.
            self.assertGreaterEqual(dereg, shutdown, env)
            self.assertGreaterEqual(dereg, request, env)
            self.assertLess(idle, SERVICE_KEEPALIVE_SECONDS, env)
            self.assertLess(shutdown, drain + shutdown + 5)  # systemd stop timeout, below
        self.assertIn("stop_timeout=$((CONF_DRAIN_SECONDS + CONF_SHUTDOWN_TIMEOUT_SECONDS + 5))", HOST_SCRIPT)
        self.assertIn("TimeoutStopSec=$stop_timeout", HOST_SCRIPT)

    def test_waf_guards_the_load_balancer(self) -> None:
        edge = TPL["edge"]
        acl = one(edge, "AWS::WAFv2::WebACL")["Properties"]
        self.assertEqual(acl["Scope"], "REGIONAL")
        assoc = one(edge, "AWS::WAFv2::WebACLAssociation")["Properties"]
        self.assertEqual(assoc["ResourceArn"], {"Ref": "LoadBalancer"})
        self.assertEqual(assoc["WebACLArn"], {"Fn::GetAtt": ["WebAcl", "Arn"]})
        rules = {r["Name"]: r for r in acl["Rules"]}
        rate = rules["rate-per-client-ip"]["Statement"]["RateBasedStatement"]
        self.assertEqual(rate["AggregateKeyType"], "IP")
        self.assertEqual(rate["Limit"], {"Ref": "WafRateLimitPer5Minutes"})
        groups = {r["Statement"]["ManagedRuleGroupStatement"]["Name"] for r in acl["Rules"]
                  if "ManagedRuleGroupStatement" in r["Statement"]}
        self.assertEqual(groups, {"AWSManagedRulesAmazonIpReputationList", "AWSManagedRulesCommonRuleSet",
                                  "AWSManagedRulesKnownBadInputsRuleSet"})
        # Count mode first, switched by one parameter.
        self.assertEqual(edge["Parameters"]["WafMode"]["Default"], "count")
        for r in acl["Rules"]:
            key = "Action" if "RateBasedStatement" in r["Statement"] else "OverrideAction"
            if r["Name"] == "aws-known-bad-inputs":
                self.assertEqual(r[key], {"None": {}})  # blocks from day one
            elif r["Name"] == "rate-per-client-ip":
                self.assertEqual(r[key], {"Block": {}})  # so does the rate limit (test_waf.py)
            else:
                self.assertEqual(r[key]["Fn::If"][0], "WafBlocks", r["Name"])
        self.assertEqual(len({r["Priority"] for r in acl["Rules"]}), len(acl["Rules"]))
        logging = one(edge, "AWS::WAFv2::LoggingConfiguration")["Properties"]
        self.assertEqual(logging["ResourceArn"], {"Fn::GetAtt": ["WebAcl", "Arn"]})
        self.assertTrue(one(edge, "AWS::Logs::LogGroup")["Properties"]["LogGroupName"]["Fn::Sub"].startswith("aws-waf-logs-"))

    def test_alb_listeners(self) -> None:
        listeners = resources(TPL["edge"], "AWS::ElasticLoadBalancingV2::Listener")
        by_port = {l["Properties"]["Port"]: l["Properties"] for l in listeners.values()}
        self.assertEqual(set(by_port), {80, 443})
        self.assertEqual(by_port[443]["Protocol"], "HTTPS")
        self.assertRegex(by_port[443]["SslPolicy"], r"^ELBSecurityPolicy-TLS13-1-2-")
        self.assertEqual([a["Type"] for a in by_port[80]["DefaultActions"]], ["redirect"])
        self.assertEqual(by_port[80]["DefaultActions"][0]["RedirectConfig"]["Protocol"], "HTTPS")

    def test_alb_hardening_and_production_deletion_protection(self) -> None:
        lb = one(TPL["edge"], "AWS::ElasticLoadBalancingV2::LoadBalancer")["Properties"]
        attrs = {a["Key"]: a["Value"] for a in lb["LoadBalancerAttributes"]}
        self.assertEqual(attrs["deletion_protection.enabled"], {"Fn::If": ["IsProduction", "true", "false"]})
        self.assertEqual(TPL["edge"]["Conditions"]["IsProduction"], {"Fn::Equals": [{"Ref": "Environment"}, "production"]})
        self.assertEqual(attrs["access_logs.s3.enabled"], "true")
        self.assertEqual(attrs["routing.http.drop_invalid_header_fields.enabled"], "true")
        self.assertTrue(is_ref(attrs["idle_timeout.timeout_seconds"], "IdleTimeoutSeconds"))

    def test_metrics_are_never_reachable_through_the_load_balancer(self) -> None:
        for tg in resources(TPL["edge"], "AWS::ElasticLoadBalancingV2::TargetGroup").values():
            self.assertTrue(is_ref(tg["Properties"]["Port"], "ServicePort"))
        rules = resources(TPL["edge"], "AWS::ElasticLoadBalancingV2::ListenerRule")
        blocked = [r for r in rules.values() if r["Properties"]["Actions"][0]["Type"] == "fixed-response"]
        self.assertTrue(any("/metrics" in c["PathPatternConfig"]["Values"]
                            for r in blocked for c in r["Properties"]["Conditions"]))
        egress = resources(TPL["network"], "AWS::EC2::SecurityGroupEgress")
        lb_egress = [e["Properties"] for e in egress.values() if is_ref(e["Properties"]["GroupId"], "LoadBalancerSecurityGroup")]
        self.assertEqual(len(lb_egress), 1)
        self.assertTrue(is_ref(lb_egress[0]["FromPort"], "ServicePort"))
        self.assertTrue(is_ref(lb_egress[0]["ToPort"], "ServicePort"))

    def test_app_stack_deploys_carry_the_fast_burn_rollback_triggers(self) -> None:
        out = TPL["monitoring"]["Outputs"]["RollbackTriggerAlarmArns"]["Value"]["Fn::Join"][1]
        self.assertEqual(out, [{"Fn::GetAtt": ["ErrorBudgetBurn5m", "Arn"]}, {"Fn::GetAtt": ["LatencyBurn5m", "Arn"]}])
        # test_deploy.py: the app stack's updates carry them, every other none.


class Durability(unittest.TestCase):
    db = one(TPL["database"], "AWS::RDS::DBInstance")

    def test_database_survives_deletion_and_replacement(self) -> None:
        self.assertEqual(self.db["DeletionPolicy"], "Snapshot")
        self.assertEqual(self.db["UpdateReplacePolicy"], "Snapshot")
        props = self.db["Properties"]
        self.assertIs(props["DeletionProtection"], True)
        self.assertIs(props["DeleteAutomatedBackups"], False)

    def test_database_is_encrypted_multi_az_and_backed_up(self) -> None:
        props = self.db["Properties"]
        self.assertIs(props["StorageEncrypted"], True)
        self.assertEqual(props["KmsKeyId"]["Fn::If"][0], "Restoring")  # environment key unless restored
        for env in ENVIRONMENTS:
            self.assertNotIn("RestoreFromSnapshot", PARAMS[env]["stacks"]["database"], "DR only, not a default")
        self.assertIs(props["ManageMasterUserPassword"], True)
        self.assertTrue(is_ref(props["MultiAZ"], "MultiAz"))
        self.assertTrue(is_ref(props["BackupRetentionPeriod"], "BackupRetentionDays"))
        self.assertIs(props["EnablePerformanceInsights"], True)
        self.assertGreater(props["MonitoringInterval"], 0)
        self.assertEqual(value("database", "production", "MultiAz"), "true")
        self.assertGreaterEqual(int(value("database", "production", "BackupRetentionDays")), 14)
        for env in ENVIRONMENTS:
            self.assertGreaterEqual(int(value("database", env, "BackupRetentionDays")), 7)

    def test_database_requires_tls(self) -> None:
        pg = one(TPL["database"], "AWS::RDS::DBParameterGroup")["Properties"]
        self.assertEqual(pg["Parameters"]["rds.force_ssl"], "1")
        self.assertIn("sslmode=require", HOST_SCRIPT)
        for env in ENVIRONMENTS:
            # The family is derived from EngineVersion, so it must be a major version.
            self.assertRegex(str(value("database", env, "EngineVersion")), r"^\d+$")

    def test_snapshots_are_copied_to_another_region_in_production(self) -> None:
        rule = one(TPL["database"], "AWS::Backup::BackupPlan")["Properties"]["BackupPlan"]["BackupPlanRule"][0]
        copy = rule["CopyActions"]["Fn::If"]
        self.assertEqual(copy[0], "HasDrVault")
        self.assertTrue(is_ref(copy[1][0]["DestinationBackupVaultArn"], "DrBackupVaultArn"))
        prod = PARAMS["production"]
        self.assertTrue(prod["drRegion"])
        self.assertNotEqual(prod["drRegion"], prod["region"])

    def test_connection_budget_fits_the_database(self) -> None:
        for env in ENVIRONMENTS:
            max_conn = int(value("database", env, "MaxConnections"))
            alarm = int(value("monitoring", env, "DatabaseConnectionsThreshold"))
            pools = int(value("app", env, "MaxSize")) * int(value("app", env, "DbPoolSize"))
            self.assertEqual(alarm, int(max_conn * 0.8), env)
            self.assertLessEqual(pools, alarm, f"{env}: MaxSize x DbPoolSize must stay under the alarm")

    def test_buckets_are_private_versioned_encrypted_and_kept(self) -> None:
        buckets = resources(TPL["foundation"], "AWS::S3::Bucket")
        self.assertEqual(set(buckets), {"LogsBucket", "ArtifactsBucket", "BackupsBucket"})
        for name, bucket in buckets.items():
            props = bucket["Properties"]
            self.assertEqual(bucket["DeletionPolicy"], "Retain", name)
            self.assertEqual(set(props["PublicAccessBlockConfiguration"].values()), {True}, name)
            self.assertEqual(len(props["PublicAccessBlockConfiguration"]), 4, name)
            self.assertEqual(props["VersioningConfiguration"], {"Status": "Enabled"}, name)
            self.assertIn("BucketEncryption", props, name)
        for name in ("ArtifactsBucket", "BackupsBucket"):
            sse = buckets[name]["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
            self.assertEqual(sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"], "aws:kms", name)
        rule = buckets["BackupsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"][0]
        self.assertIn("Transitions", rule)
        self.assertIn("ExpirationInDays", rule)
        for policy in resources(TPL["foundation"], "AWS::S3::BucketPolicy").values():
            deny = policy["Properties"]["PolicyDocument"]["Statement"][0]
            self.assertEqual((deny["Effect"], deny["Condition"]), ("Deny", {"Bool": {"aws:SecureTransport": "false"}}))

    def test_keys_rotate(self) -> None:
        for stack in ("foundation", "dr-vault"):
            for key in resources(TPL[stack], "AWS::KMS::Key").values():
                self.assertIs(key["Properties"]["EnableKeyRotation"], True)


class Isolation(unittest.TestCase):
    net = TPL["network"]

    def _ingress(self, group: str) -> list[dict[str, Node]]:
        rules: list[dict[str, Node]] = []
        sg = self.net["Resources"][group]["Properties"]
        rules += sg.get("SecurityGroupIngress", [])
        for r in resources(self.net, "AWS::EC2::SecurityGroupIngress").values():
            if is_ref(r["Properties"]["GroupId"], group):
                rules.append(r["Properties"])
        return rules

    def test_database_and_instances_are_not_publicly_reachable(self) -> None:
        db = one(TPL["database"], "AWS::RDS::DBInstance")["Properties"]
        self.assertIs(db["PubliclyAccessible"], False)
        subnet_group = one(TPL["database"], "AWS::RDS::DBSubnetGroup")["Properties"]
        self.assertIn("DataSubnetIds", str(subnet_group["SubnetIds"]))
        lt = one(TPL["app"], "AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]
        self.assertIs(lt["NetworkInterfaces"][0]["AssociatePublicIpAddress"], False)
        self.assertNotIn("KeyName", lt)
        asg = one(TPL["app"], "AWS::AutoScaling::AutoScalingGroup")["Properties"]
        self.assertIn("AppSubnetIds", str(asg["VPCZoneIdentifier"]))
        for subnet in resources(self.net, "AWS::EC2::Subnet").values():
            self.assertIsNot(subnet["Properties"].get("MapPublicIpOnLaunch"), True)

    def test_only_public_subnets_route_to_the_internet_and_data_subnets_nowhere(self) -> None:
        routes = resources(self.net, "AWS::EC2::Route").values()
        for route in routes:
            props = route["Properties"]
            if "GatewayId" in props:
                self.assertTrue(is_ref(props["RouteTableId"], "PublicRouteTable"))
            self.assertFalse(is_ref(props["RouteTableId"], "DataRouteTable"))
        assoc = {
            a["Properties"]["SubnetId"]["Ref"]: a["Properties"]["RouteTableId"]["Ref"]
            for a in resources(self.net, "AWS::EC2::SubnetRouteTableAssociation").values()
        }
        self.assertEqual({s for s, t in assoc.items() if t == "PublicRouteTable"}, {"PublicSubnetA", "PublicSubnetB"})
        self.assertEqual({s for s, t in assoc.items() if t == "DataRouteTable"}, {"DataSubnetA", "DataSubnetB"})

    def test_two_availability_zones(self) -> None:
        for tier in ("Public", "App", "Data"):
            azs = [self.net["Resources"][f"{tier}Subnet{x}"]["Properties"]["AvailabilityZone"] for x in "AB"]
            self.assertEqual(azs, [{"Fn::Select": [0, {"Fn::GetAZs": ""}]}, {"Fn::Select": [1, {"Fn::GetAZs": ""}]}])
        self.assertEqual(value("network", "production", "NatGatewayPerAz"), "true")

    def test_security_groups_admit_only_what_they_must(self) -> None:
        instance = self._ingress("InstanceSecurityGroup")
        self.assertEqual(len(instance), 2)
        sources = {r["SourceSecurityGroupId"]["Ref"]: r for r in instance}
        self.assertEqual(set(sources), {"LoadBalancerSecurityGroup", "PrometheusSecurityGroup"})
        self.assertTrue(is_ref(sources["LoadBalancerSecurityGroup"]["FromPort"], "ServicePort"))
        self.assertTrue(is_ref(sources["PrometheusSecurityGroup"]["FromPort"], "MetricsPort"))
        self.assertTrue(is_ref(sources["PrometheusSecurityGroup"]["ToPort"], "MetricsPort"))
        self.assertEqual(self.net["Parameters"]["MetricsPort"]["Default"], METRICS_PORT)
        database = self._ingress("DatabaseSecurityGroup")
        self.assertEqual([(r["FromPort"], r["ToPort"], r["SourceSecurityGroupId"]) for r in database],
                         [(5432, 5432, {"Ref": "InstanceSecurityGroup"})])
        lb = self._ingress("LoadBalancerSecurityGroup")
        self.assertEqual(sorted(r["FromPort"] for r in lb), [80, 443])
        # Address-range ingress exists on the load balancer only.
        for group in ("InstanceSecurityGroup", "DatabaseSecurityGroup", "PrometheusSecurityGroup"):
            for r in self._ingress(group):
                self.assertNotIn("CidrIp", r, group)

    def test_instance_metadata_and_disks(self) -> None:
        lt = one(TPL["app"], "AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]
        self.assertEqual(lt["MetadataOptions"]["HttpTokens"], "required")
        self.assertEqual(lt["MetadataOptions"]["HttpPutResponseHopLimit"], 1)
        for bdm in lt["BlockDeviceMappings"]:
            self.assertIs(bdm["Ebs"]["Encrypted"], True)

    def test_instance_role_is_least_privilege(self) -> None:
        role = one(TPL["app"], "AWS::IAM::Role")["Properties"]
        self.assertEqual(len(role["ManagedPolicyArns"]), 1)
        self.assertIn("AmazonSSMManagedInstanceCore", str(role["ManagedPolicyArns"][0]))
        for statement in role["Policies"][0]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            for action in actions:
                self.assertNotIn("*", action, statement["Sid"])
            if statement["Resource"] == "*":
                # Only actions without resource-level permissions, and metrics only in our namespace.
                self.assertIn(actions, [["cloudwatch:PutMetricData"], ["elasticloadbalancing:DescribeTargetHealth"],
                                        ["ec2:DescribeTags"]])
                if actions == ["cloudwatch:PutMetricData"]:
                    self.assertIn("cloudwatch:namespace", statement["Condition"]["StringEquals"])
        read = next(s for s in role["Policies"][0]["PolicyDocument"]["Statement"] if s["Sid"] == "ReadReleases")
        self.assertEqual(read["Action"], "s3:GetObject")
        self.assertEqual(read["Resource"]["Fn::Sub"][0], "${Bucket}/releases/*")

    def test_an_update_rollback_can_still_fetch_the_old_release(self) -> None:
        # The role must not change with AppVersion: during an update rollback
        # the group launches old-release instances before the role's policy is
        # rolled back, and a failed download ends in UPDATE_ROLLBACK_FAILED.
        role = one(TPL["app"], "AWS::IAM::Role")
        self.assertNotIn("AppVersion", str(role))
        profile = one(TPL["app"], "AWS::IAM::InstanceProfile")
        self.assertNotIn("AppVersion", str(profile))


BURN_WINDOWS = ("ErrorBudgetBurn5m", "ErrorBudgetBurn1h", "LatencyBurn5m", "LatencyBurn1h")


class Alarms(unittest.TestCase):
    mon = TPL["monitoring"]

    def test_only_both_windows_together_page(self) -> None:
        res = self.mon["Resources"]
        for name in BURN_WINDOWS:
            props = res[name]["Properties"]
            self.assertNotIn("AlarmActions", props, f"{name} alone must not notify")
            self.assertNotIn("OKActions", props, name)
        for page in ("ErrorBudgetBurnPage", "LatencyBurnPage"):
            self.assertIn("AlarmActions", res[page]["Properties"], page)
        # The short windows stay the deploy's rollback triggers.
        out = self.mon["Outputs"]["RollbackTriggerAlarmArns"]["Value"]["Fn::Join"][1]
        self.assertEqual(out, [{"Fn::GetAtt": ["ErrorBudgetBurn5m", "Arn"]}, {"Fn::GetAtt": ["LatencyBurn5m", "Arn"]}])

    def test_route53_health_check_alarm_is_created_in_us_east_1(self) -> None:
        # Route 53 publishes HealthCheckStatus only in us-east-1 and both
        # environments run elsewhere: the alarm is a stack of its own there.
        self.assertNotIn("AWS/Route53", str(self.mon))
        dns = TPL["dns-alarm"]
        rule = dns["Rules"]["OnlyInUsEast1"]["Assertions"][0]["Assert"]
        self.assertEqual(rule, {"Fn::Equals": [{"Ref": "AWS::Region"}, "us-east-1"]})
        alarm = one(dns, "AWS::CloudWatch::Alarm")["Properties"]
        self.assertEqual((alarm["Namespace"], alarm["MetricName"]), ("AWS/Route53", "HealthCheckStatus"))
        self.assertEqual(alarm["Dimensions"], [{"Name": "HealthCheckId", "Value": {"Ref": "HealthCheckId"}}])
        self.assertEqual(alarm["AlarmActions"], [{"Ref": "AlarmTopic"}])  # a topic in the alarm's Region
        self.assertNotIn("Condition", one(dns, "AWS::CloudWatch::Alarm"))
        # The deploy creates it there after the edge stack, from its health
        # check (test_deploy.py).
        for env in ENVIRONMENTS:
            self.assertNotEqual(PARAMS[env]["region"], "us-east-1", "then the main stack could hold it")

    def test_host_memory_and_disk_alarms_are_per_group(self) -> None:
        group = one(TPL["app"], "AWS::AutoScaling::AutoScalingGroup")["Properties"]["AutoScalingGroupName"]
        for name, metric in (("HostMemoryHigh", "mem_used_percent"), ("HostDiskHigh", "disk_used_percent")):
            props = self.mon["Resources"][name]["Properties"]
            self.assertEqual((props["Namespace"], props["MetricName"]), ("HelloBirthday/Host", metric))
            self.assertEqual(props["Dimensions"], [{"Name": "AutoScalingGroupName", "Value": group}])
            self.assertEqual(props["Statistic"], "Maximum")
        # The agent publishes the per-group aggregate the alarms read.
        self.assertIn('"aggregation_dimensions": [["AutoScalingGroupName"]]', HOST_SCRIPT)
        self.assertIn('"AutoScalingGroupName": "\\${aws:AutoScalingGroupName}"', HOST_SCRIPT)

    def test_every_alarm_links_a_runbook_that_exists(self) -> None:
        for tpl in ("monitoring", "dns-alarm"):
            for kind in ("AWS::CloudWatch::Alarm", "AWS::CloudWatch::CompositeAlarm"):
                for name, alarm in resources(TPL[tpl], kind).items():
                    desc = alarm["Properties"]["AlarmDescription"]
                    links = re.findall(r"docs/runbooks/[a-z0-9-]+\.md", desc)
                    self.assertTrue(links, f"{tpl}.{name} has no runbook link")
                    for link in links:
                        self.assertTrue((ROOT / link).is_file(), f"{tpl}.{name}: {link} does not exist")

    def test_thresholds_match_the_slos(self) -> None:
        p = self.mon["Parameters"]
        availability, latency, burn = 0.999, 0.99, 14.4
        self.assertAlmostEqual(p["ErrorRatioPercentThreshold"]["Default"], round(100 * burn * (1 - availability), 4))
        self.assertAlmostEqual(p["FastEnoughPercentThreshold"]["Default"], round(100 - 100 * burn * (1 - latency), 4))
        self.assertEqual(p["LatencyObjectiveSeconds"]["Default"], 0.1)
        for env in ENVIRONMENTS:
            for key in ("ErrorRatioPercentThreshold", "FastEnoughPercentThreshold", "LatencyObjectiveSeconds"):
                self.assertNotIn(key, PARAMS[env]["stacks"]["monitoring"], "SLO thresholds are not per environment")
            self.assertEqual(int(value("monitoring", env, "MinHealthyHosts")), int(value("app", env, "MinSize")))

    def test_slo_document_uses_the_same_numbers(self) -> None:
        slo = ROOT / "docs" / "slo.md"
        if not slo.exists():
            self.skipTest("docs/slo.md not written yet")
        text = slo.read_text()
        for number in ("99.9", "14.4", "100 ms"):
            self.assertIn(number, text)

    def test_burn_alarms_use_both_windows_and_page_when_both_fire(self) -> None:
        res = self.mon["Resources"]
        for name, period in (("ErrorBudgetBurn5m", 300), ("ErrorBudgetBurn1h", 3600)):
            periods = {m["MetricStat"]["Period"] for m in res[name]["Properties"]["Metrics"] if "MetricStat" in m}
            self.assertEqual(periods, {period}, name)
        for name, period in (("LatencyBurn5m", 300), ("LatencyBurn1h", 3600)):
            self.assertEqual(res[name]["Properties"]["Period"], period, name)
            self.assertEqual(res[name]["Properties"]["ExtendedStatistic"], {"Fn::Sub": "PR(:${LatencyObjectiveSeconds})"})
        for page, fast, slow in (("ErrorBudgetBurnPage", "ErrorBudgetBurn5m", "ErrorBudgetBurn1h"),
                                 ("LatencyBurnPage", "LatencyBurn5m", "LatencyBurn1h")):
            rule = res[page]["Properties"]["AlarmRule"]["Fn::Sub"]
            self.assertEqual(rule, f'ALARM("${{{fast}}}") AND ALARM("${{{slow}}}")')

    def test_required_alarms_exist_and_notify(self) -> None:
        alarms = resources(self.mon, "AWS::CloudWatch::Alarm")
        metrics = {a["Properties"].get("MetricName") for a in alarms.values()}
        self.assertLessEqual({"TargetResponseTime", "UnHealthyHostCount", "HealthyHostCount", "CPUUtilization",
                              "FreeStorageSpace", "DatabaseConnections"}, metrics)
        self.assertLessEqual({"FreeableMemory", "DaysToExpiry", "NumberOfCopyJobsFailed", "mem_used_percent",
                              "disk_used_percent"}, metrics)
        backup = str(self.mon["Resources"]["BackupJobsFailed"]["Properties"]["Metrics"])
        self.assertIn("NumberOfBackupJobsFailed", backup)
        self.assertIn("NumberOfBackupJobsAborted", backup)
        vault = one(TPL["database"], "AWS::Backup::BackupVault")["Properties"]["BackupVaultName"]
        self.assertEqual(backup.count(str(vault)), 2, "the alarm watches the database stack's vault")
        for name, alarm in list(alarms.items()) + list(resources(self.mon, "AWS::CloudWatch::CompositeAlarm").items()):
            if name in BURN_WINDOWS:
                continue  # only feed the composite page alarms (and the rollback triggers)
            self.assertIn("AlarmActions", alarm["Properties"], name)
        events = one(TPL["database"], "AWS::RDS::EventSubscription")["Properties"]
        self.assertIn("failover", events["EventCategories"])


class Identity(unittest.TestCase):
    boot = TPL["bootstrap"]

    def trust(self, role: str) -> list[dict[str, Node]]:
        statements: list[dict[str, Node]] = (
            self.boot["Resources"][role]["Properties"]["AssumeRolePolicyDocument"]["Statement"])
        return statements

    def test_bootstrap_is_deployed_by_an_administrator_not_the_pipeline(self) -> None:
        self.assertTrue((ROOT / "docs/runbooks/aws-bootstrap.md").is_file())
        provider = self.boot["Resources"]["GitHubOidcProvider"]
        self.assertEqual(provider["Condition"], "CreateOidcProvider")
        self.assertEqual(provider["Properties"]["Url"], "https://token.actions.githubusercontent.com")
        self.assertEqual(provider["Properties"]["ClientIdList"], ["sts.amazonaws.com"])
        self.assertEqual(set(self.boot["Outputs"]), {"OidcProviderArn", "CloudFormationRoleArn", "DeployRoleArn",
                                                     "PlanRoleArn"})

    def test_deploy_role_session_outlasts_the_deploy_job(self) -> None:
        # cd.yml asks for role-duration-seconds; STS refuses more than the
        # role's MaxSessionDuration, so every deploy would fail at login.
        cd = (ROOT / ".github/workflows/cd.yml").read_text()
        asked = max(int(x) for x in re.findall(r"role-duration-seconds: (\d+)", cd))
        self.assertGreaterEqual(self.boot["Resources"]["DeployRole"]["Properties"]["MaxSessionDuration"], asked)

    def test_github_roles_trust_only_this_repository_and_environment(self) -> None:
        for role in ("DeployRole", "PlanRole"):
            st = self.trust(role)[0]  # DeployRole: [1] is the optional operator trust (test_oidc.py)
            self.assertEqual(st["Action"], "sts:AssumeRoleWithWebIdentity")
            self.assertEqual(st["Condition"]["StringEquals"], {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com"})
            subs = st["Condition"]["StringLike"]["token.actions.githubusercontent.com:sub"]
            for sub in re.findall(r"repo:[^'\"]*", str(subs)):
                self.assertTrue(sub.startswith("repo:${GitHubRepository}:"), sub)
                # Wildcards only in a tag pattern, never for repository or environment.
                self.assertNotIn("*", sub.replace("refs/tags/v*", ""), sub)
        deploy = self.trust("DeployRole")[0]["Condition"]["StringLike"]["token.actions.githubusercontent.com:sub"]["Fn::If"]
        self.assertEqual(deploy[0], "RefInSubject")
        with_ref, without = deploy[1]["Fn::If"], deploy[2]
        # Production: v* tags; staging: main and v* tags (test_oidc.py evaluates the rule).
        self.assertEqual(with_ref[1], [{"Fn::Sub": "repo:${GitHubRepository}:environment:${Environment}:ref:refs/tags/v*"}])
        self.assertEqual(with_ref[2], [{"Fn::Sub": "repo:${GitHubRepository}:environment:${Environment}:ref:refs/heads/main"},
                                       {"Fn::Sub": "repo:${GitHubRepository}:environment:${Environment}:ref:refs/tags/v*"}])
        self.assertEqual(without, {"Fn::Sub": "repo:${GitHubRepository}:environment:${Environment}"})

    def statements(self, role: str) -> list[dict[str, Node]]:
        res = self.boot["Resources"]
        out: list[dict[str, Node]] = [s for p in res[role]["Properties"].get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
        out += res["ReadDeploymentState"]["Properties"]["PolicyDocument"]["Statement"]
        return out

    def test_deploy_role_is_least_privilege_and_creates_nothing_itself(self) -> None:
        allowed = set()
        # Read-only actions without resource-level permissions, for the
        # canary, the staging load check, the group's capacity and the
        # image's owner: the only ones allowed on "*".
        unscoped = {"cloudwatch:GetMetricData", "cloudwatch:GetMetricStatistics",
                    "elasticloadbalancing:DescribeTargetHealth", "autoscaling:DescribeAutoScalingGroups",
                    "ec2:DescribeImages"}
        for st in self.statements("DeployRole"):
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            self.assertEqual(st["Effect"], "Allow")
            if st["Resource"] == "*":
                self.assertLessEqual(set(actions), unscoped, st["Sid"])
            for a in actions:
                self.assertNotIn("*", a, st["Sid"])
                allowed.add(a)
        # What the deploy calls (test_deploy.py checks every call it makes
        # against these roles), and nothing that creates resources directly.
        self.assertLessEqual({"cloudformation:CreateChangeSet", "cloudformation:ExecuteChangeSet",
                              "cloudformation:DescribeChangeSet", "cloudformation:DescribeStacks",
                              "cloudformation:DescribeStackEvents", "cloudformation:DeleteChangeSet",
                              "s3:GetObject", "s3:PutObject", "ssm:GetParameter", "iam:PassRole"}, allowed)
        # Of the services' own calls only one that changes anything: resuming
        # the processes an update left suspended, on the app group alone.
        self.assertEqual({a for a in allowed - unscoped
                          if a.split(":")[0] in ("ec2", "rds", "autoscaling", "elasticloadbalancing")},
                         {"autoscaling:ResumeProcesses"})
        resume = next(st for st in self.statements("DeployRole") if st["Action"] == "autoscaling:ResumeProcesses")
        self.assertTrue(resume["Resource"]["Fn::Sub"].endswith(":autoScalingGroupName/${StackPrefix}-${Environment}"))
        self.assertNotIn("iam:CreateRole", allowed)
        passrole = next(st for st in self.statements("DeployRole") if st["Action"] == "iam:PassRole")
        self.assertEqual(passrole["Resource"], {"Fn::GetAtt": ["CloudFormationServiceRole", "Arn"]})
        self.assertEqual(passrole["Condition"]["StringEquals"]["iam:PassedToService"], "cloudformation.amazonaws.com")
        # Stack policies are people's to set (the deploy only reads them).
        self.assertNotIn("cloudformation:SetStackPolicy", allowed)

    def test_plan_role_cannot_execute(self) -> None:
        deny = [st for st in self.statements("PlanRole") if st["Effect"] == "Deny"]
        denied = {a for st in deny for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])}
        self.assertLessEqual({"cloudformation:ExecuteChangeSet", "cloudformation:UpdateStack",
                              "cloudformation:CreateStack", "cloudformation:DeleteStack", "s3:DeleteObject"}, denied)
        # The plan job publishes the release it plans, and writes nothing else.
        puts = [st for st in self.statements("PlanRole") if "s3:PutObject" in str(st["Action"])]
        allow = [st for st in puts if st["Effect"] == "Allow"]
        self.assertEqual(len(allow), 1)
        self.assertTrue(allow[0]["Resource"]["Fn::Sub"].endswith("/releases/*"))
        self.assertTrue(any(st["Effect"] == "Deny" and st.get("NotResource") == allow[0]["Resource"] for st in puts))
        # Trusted only for the plan job's environment: not pull requests, not other jobs.
        [st] = self.trust("PlanRole")
        self.assertEqual(st["Condition"]["StringLike"]["token.actions.githubusercontent.com:sub"]["Fn::If"][2],
                         {"Fn::Sub": "repo:${GitHubRepository}:environment:${Environment}-plan"})
        allowed = {a for st in self.statements("PlanRole") if st["Effect"] == "Allow"
                   for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])}
        self.assertIn("cloudformation:CreateChangeSet", allowed)
        self.assertNotIn("cloudformation:ExecuteChangeSet", allowed)

    def test_service_role_creates_only_this_environments_roles(self) -> None:
        sts = self.boot["Resources"]["CloudFormationServiceRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        for st in (st for st in sts if st["Effect"] == "Allow"):
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            if any(a.startswith("iam:") and a != "iam:CreateServiceLinkedRole" for a in actions):
                for r in st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]:
                    self.assertIn("${StackPrefix}-${Environment}-", r["Fn::Sub"], st["Sid"])
            if "iam:AttachRolePolicy" in actions:
                self.assertIn("iam:PolicyARN", st["Condition"]["ArnEquals"])
            if any(a.startswith("s3:") for a in actions):
                self.assertNotEqual(st["Resource"], "*", st["Sid"])


class Backups(unittest.TestCase):
    def test_vaults_are_locked_compliance_only_in_production_after_a_grace_period(self) -> None:
        for tpl, stack in (("database", "database"), ("dr-vault", "dr-vault")):
            vault = one(TPL[tpl], "AWS::Backup::BackupVault")["Properties"]
            lock = vault["LockConfiguration"]["Fn::If"]
            self.assertEqual(lock[0], "VaultLocked")
            self.assertEqual(lock[1]["ChangeableForDays"]["Fn::If"][1], {"Ref": "VaultLockGraceDays"})
            self.assertGreaterEqual(lock[1]["MinRetentionDays"], 7)
            self.assertGreaterEqual(TPL[tpl]["Parameters"]["VaultLockGraceDays"]["MinValue"], 3)
            self.assertEqual(TPL[tpl]["Parameters"]["VaultLockMode"]["Default"], "governance")
        prod = PARAMS["production"]["stacks"]
        self.assertEqual(prod["database"]["VaultLockMode"], "compliance")
        self.assertGreaterEqual(int(prod["database"]["VaultLockGraceDays"]), 7)
        self.assertEqual(prod["dr-vault"]["VaultLockMode"], "compliance")
        self.assertIn(PARAMS["staging"]["stacks"]["database"].get("VaultLockMode", "governance"), ("governance", "none"))
        # The plan keeps recovery points at least as long as the lock's minimum.
        for env in ENVIRONMENTS:
            self.assertGreaterEqual(int(value("database", env, "BackupRetentionDays")), 7)

    def test_failed_backup_jobs_notify(self) -> None:
        rule = one(TPL["database"], "AWS::Events::Rule")["Properties"]
        self.assertEqual(rule["EventPattern"]["source"], ["aws.backup"])
        self.assertIn("Backup Job State Change", rule["EventPattern"]["detail-type"])
        self.assertIn("Copy Job State Change", rule["EventPattern"]["detail-type"])
        self.assertIn("FAILED", rule["EventPattern"]["detail"]["state"])
        self.assertEqual(rule["Targets"][0]["Arn"],
                         {"Fn::ImportValue": {"Fn::Sub": "${StackPrefix}-${Environment}-foundation-AlarmTopicArn"}})
        topic_policy = one(TPL["foundation"], "AWS::SNS::TopicPolicy")["Properties"]["PolicyDocument"]["Statement"]
        self.assertTrue(any("events.amazonaws.com" in str(s["Principal"]) for s in topic_policy))
        key = one(TPL["foundation"], "AWS::KMS::Key")["Properties"]["KeyPolicy"]["Statement"]
        self.assertTrue(any("events.amazonaws.com" in str(s["Principal"]) and "kms:GenerateDataKey*" in s["Action"]
                            for s in key))

    def test_restore_runbook_covers_each_backup(self) -> None:
        text = (ROOT / "docs/runbooks/backup-restore.md").read_text()
        for needle in ("restore-db-instance-to-point-in-time", "start-restore-job", "RestoreFromSnapshot",
                       "Vault Lock"):
            self.assertIn(needle, text)


class RegionLoss(unittest.TestCase):
    """Cross-Region point-in-time recovery (replicated automated backups),
    the restore through the stack in the DR Region, and the DNS failover."""

    ARN = "arn:aws:rds:eu-central-1:111122223333:auto-backup:ab-L2IJCEXJP7XQ7HOJ4SIEXAMPLE"
    CERT = "arn:aws:acm:eu-central-1:111122223333:certificate/0a1b2c3d-0000-1111-2222-333344445555"

    def database(self, region: str = "eu-west-1", **values: object) -> tuple[Stack, dict[str, Node]]:
        stack = Stack(TPL["database"], region=region, Environment="production", **values)
        db = stack.properties("Database")
        assert db is not None, "the database has no condition"
        return stack, db

    def test_production_replicates_automated_backups_to_its_dr_region(self) -> None:
        key = "arn:aws:kms:eu-central-1:111122223333:key/0a1b2c3d-0000-1111-2222-333344445555"
        stack, db = self.database(DrRegion="eu-central-1", DrReplicationKmsKeyArn=key, BackupRetentionDays=14)
        self.assertEqual(stack.broken_rules(), [])
        self.assertEqual(db["AutomaticBackupReplicationRegion"], "eu-central-1")
        self.assertEqual(db["AutomaticBackupReplicationKmsKeyId"], key)
        self.assertEqual(db["AutomaticBackupReplicationRetentionPeriod"], "14")
        # Without a DR Region (staging, the rebuilt copy) nothing is replicated.
        _, db = self.database()
        self.assertFalse({k for k in db if k.startswith("AutomaticBackupReplication")})
        # An encrypted instance needs a key in the other Region; and it must be another Region.
        self.assertTrue(self.database(DrRegion="eu-central-1")[0].broken_rules())
        self.assertTrue(self.database(region="eu-central-1", DrRegion="eu-central-1",
                                      DrReplicationKmsKeyArn=key)[0].broken_rules())
        # The deploy passes the parameter file's drRegion and the key of the
        # dr-vault stack there (test_deploy.py, Production).
        prod = PARAMS["production"]
        self.assertTrue(prod["drRegion"] and prod["drRegion"] != prod["region"])
        dr = TPL["dr-vault"]
        self.assertEqual(dr["Outputs"]["ReplicationKeyArn"]["Value"], {"Fn::GetAtt": ["ReplicationKey", "Arn"]})
        self.assertIs(dr["Resources"]["ReplicationKey"]["Properties"]["EnableKeyRotation"], True)
        self.assertEqual(dr["Resources"]["ReplicationKey"]["DeletionPolicy"], "Retain")

    def test_a_new_database_is_created_empty_with_the_environment_key(self) -> None:
        _, db = self.database()
        self.assertEqual(db["DBName"], "hello_birthday")
        self.assertIn("KmsKeyId", db)
        for key in ("DBSnapshotIdentifier", "SourceDBInstanceAutomatedBackupsArn", "RestoreTime",
                    "UseLatestRestorableTime"):
            self.assertNotIn(key, db)

    def test_point_in_time_restore_to_the_latest_time_or_a_given_one(self) -> None:
        stack, db = self.database(region="eu-central-1", RestoreFromAutomatedBackupsArn=self.ARN)
        self.assertEqual(stack.broken_rules(), [])
        self.assertEqual(db["SourceDBInstanceAutomatedBackupsArn"], self.ARN)
        self.assertIs(db["UseLatestRestorableTime"], True)
        # The restored database keeps the source's name, master user and key (the replica key).
        for key in ("RestoreTime", "DBSnapshotIdentifier", "DBName", "MasterUsername", "KmsKeyId"):
            self.assertNotIn(key, db)
        _, db = self.database(region="eu-central-1", RestoreFromAutomatedBackupsArn=self.ARN,
                              RestoreTime="2026-11-30T23:45:00Z")
        self.assertEqual(db["RestoreTime"], "2026-11-30T23:45:00Z")
        self.assertNotIn("UseLatestRestorableTime", db)  # RDS refuses both together
        self.assertIs(db["ManageMasterUserPassword"], True)
        self.assertIs(db["DeletionProtection"], True)
        spec = TPL["database"]["Parameters"]
        self.assertRegex(self.ARN, spec["RestoreFromAutomatedBackupsArn"]["AllowedPattern"])
        self.assertRegex("2026-11-30T23:45:00Z", spec["RestoreTime"]["AllowedPattern"])
        self.assertNotRegex("2026-11-30 23:45", spec["RestoreTime"]["AllowedPattern"])

    def test_restore_from_a_snapshot_still_works_and_excludes_the_other_source(self) -> None:
        snap = "arn:aws:backup:eu-central-1:111122223333:recovery-point:abc"
        stack, db = self.database(RestoreFromSnapshot=snap)
        self.assertEqual(stack.broken_rules(), [])
        self.assertEqual(db["DBSnapshotIdentifier"], snap)
        self.assertNotIn("SourceDBInstanceAutomatedBackupsArn", db)
        self.assertNotIn("KmsKeyId", db)
        self.assertTrue(self.database(RestoreFromSnapshot=snap, RestoreFromAutomatedBackupsArn=self.ARN)[0]
                        .broken_rules())
        self.assertTrue(self.database(RestoreTime="2026-11-30T23:45:00Z")[0].broken_rules())
        for env in ENVIRONMENTS:
            for key in ("RestoreFromAutomatedBackupsArn", "RestoreTime"):
                self.assertNotIn(key, PARAMS[env]["stacks"]["database"], "DR only, never in the environment's file")

    def edge(self, failover: str) -> tuple[Stack, dict[str, Node], dict[str, Node] | None]:
        """The stack, its DNS record and its health check (None unless the primary)."""
        stack = Stack(TPL["edge"], Environment="production", DomainName="hello.example.com",
                      HostedZoneId="Z1", CertificateArn=self.CERT, DnsFailover=failover)
        record = stack.properties("DnsRecord")
        assert record is not None, "the record has no condition"
        return stack, record, stack.properties("FailoverHealthCheck")

    def test_dns_fails_over_only_when_the_region_cannot_answer(self) -> None:
        _, record, check = self.edge("primary")
        self.assertEqual(record["Failover"], "PRIMARY")
        self.assertEqual(record["HealthCheckId"], {"Ref": "FailoverHealthCheck"})
        assert check is not None, "the primary's health check"
        cfg = check["HealthCheckConfig"]
        # Liveness, not readiness: never the database's state, so a Multi-AZ
        # failover (1-2 min) never moves the traffic to another Region.
        self.assertEqual(cfg["ResourcePath"], "/healthz")
        # This Region's own load balancer, not the service name, which
        # resolves to the other Region once failed over.
        self.assertEqual(cfg["FullyQualifiedDomainName"], {"Fn::GetAtt": ["LoadBalancer", "DNSName"]})
        self.assertGreaterEqual(cfg["RequestInterval"] * cfg["FailureThreshold"], 90)
        health = (ROOT / "src/http/health.rs").read_text()
        body = health.split("pub async fn healthz", 1)[1].split("\n}\n", 1)[0]
        self.assertNotIn("store", body, "/healthz must do no I/O")
        _, record, check = self.edge("secondary")
        self.assertEqual(record["Failover"], "SECONDARY")
        self.assertNotIn("HealthCheckId", record)
        self.assertIsNone(check)
        # Each Region's stack owns its own record of the pair: the identifiers differ by Region.
        self.assertIn("${AWS::Region}", record["SetIdentifier"]["Fn::Sub"])
        _, record, check = self.edge("none")
        self.assertFalse({"Failover", "SetIdentifier", "HealthCheckId"} & set(record))
        self.assertIsNone(check)
        # Production's record is the primary of a failover pair; staging has no DR Region.
        self.assertEqual(value("edge", "production", "DnsFailover"), "primary")
        self.assertEqual(value("edge", "staging", "DnsFailover"), "none")

    def dr_params(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(AWS_DIR / "dr-params.sh"), *args], capture_output=True, text=True,
                              timeout=30, check=False)

    def test_the_dr_parameter_file_rebuilds_production_in_its_dr_region(self) -> None:
        proc = self.dr_params("--env", "production", "--automated-backups", self.ARN, "--certificate", self.CERT,
                              "--restore-time", "2026-11-30T23:45:00Z")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        dr, prod = json.loads(proc.stdout), PARAMS["production"]
        self.assertEqual(dr["region"], prod["drRegion"])
        self.assertEqual(dr["drRegion"], "")
        self.assertNotIn("dr-vault", dr["stacks"])
        self.assertEqual(dr["stacks"]["database"]["RestoreFromAutomatedBackupsArn"], self.ARN)
        self.assertEqual(dr["stacks"]["database"]["RestoreTime"], "2026-11-30T23:45:00Z")
        self.assertEqual(dr["stacks"]["edge"]["CertificateArn"], self.CERT)
        self.assertEqual(dr["stacks"]["edge"]["DnsFailover"], "secondary")
        # Everything else as in production; every value is a parameter of its stack and obeys its rules.
        for stack in STACK_ORDER:
            for key, val in prod["stacks"][stack].items():
                if (stack, key) not in (("edge", "CertificateArn"), ("edge", "DnsFailover")):
                    self.assertEqual(dr["stacks"][stack][key], val, f"{stack}.{key}")
            self.assertEqual(Stack(TPL[stack], region=dr["region"], **{
                k: v for k, v in {**dr["stacks"][stack], "Environment": "production"}.items()
                if k in TPL[stack]["Parameters"] and k != "HostedZoneId"}).broken_rules(), [], stack)
        _, db = self.database(region=dr["region"], **dr["stacks"]["database"])
        self.assertEqual(db["SourceDBInstanceAutomatedBackupsArn"], self.ARN)
        self.assertFalse({k for k in db if k.startswith("AutomaticBackupReplication")})
        latest = json.loads(self.dr_params("--env", "production", "--automated-backups", self.ARN,
                                           "--certificate", self.CERT).stdout)
        self.assertNotIn("RestoreTime", latest["stacks"]["database"])

    def test_the_dr_parameter_file_refuses_what_the_dr_region_cannot_use(self) -> None:
        west = self.ARN.replace("eu-central-1", "eu-west-1")
        for args, message in (
                (("--env", "staging", "--automated-backups", self.ARN, "--certificate", self.CERT), "no drRegion"),
                (("--env", "production", "--automated-backups", west, "--certificate", self.CERT), "eu-central-1"),
                (("--env", "production", "--automated-backups", self.ARN,
                  "--certificate", self.CERT.replace("eu-central-1", "eu-west-1")), "certificate"),
                (("--env", "production", "--automated-backups", self.ARN, "--certificate", self.CERT,
                  "--restore-time", "yesterday"), "--restore-time")):
            proc = self.dr_params(*args)
            self.assertEqual(proc.returncode, 2, args)
            self.assertIn(message, proc.stderr)
            self.assertEqual(proc.stdout, "")

    def test_runbook_gives_the_commands_in_order(self) -> None:
        text = (ROOT / "docs/runbooks/region-loss.md").read_text()
        aws = text.split("\n## AWS", 1)[1]
        steps = ["describe-db-instance-automated-backups", "deploy/aws/dr-params.sh --env", "scripts/deploy.sh --target aws",
                 "update-health-check", "scripts/smoke.sh"]
        positions = [aws.find(s) for s in steps]
        self.assertNotIn(-1, positions, dict(zip(steps, positions)))
        self.assertEqual(positions, sorted(positions))

    def test_runbook_aws_commands_exist_with_those_options(self) -> None:
        # Nobody can run them here against AWS: check every `aws` command of
        # the section against the CLI's service models instead.
        import botocore.session
        from botocore import xform_name

        session = botocore.session.get_session()
        aws = (ROOT / "docs/runbooks/region-loss.md").read_text().split("\n## AWS", 1)[1]
        commands = []
        for block in re.findall(r"```sh\n(.*?)```", aws, re.S):
            for cmd in block.replace("\\\n", " ").splitlines():
                for part in re.findall(r"(?:^|\$\()\s*aws ([^)]*)", cmd):
                    commands.append(part.split())
        self.assertGreaterEqual(len(commands), 10)
        for words in commands:
            service, op = words[0], words[1]
            model = session.get_service_model(service)
            ops = {xform_name(o, "-"): o for o in model.operation_names}
            self.assertIn(op, ops, f"aws {service} {op}")
            members = {xform_name(m, "-") for m in model.operation_model(ops[op]).input_shape.members}
            for option in (w[2:] for w in words[2:] if w.startswith("--")):
                self.assertIn(option, members | {"region", "query", "output"}, f"aws {service} {op} --{option}")


if __name__ == "__main__":
    unittest.main()
