"""The AWS restore paths of docs/runbooks/backup-restore.md, checked against
what can be checked here: every `aws` command of the section exists with
those options in the AWS CLI's service models, and the same-Region
replacement restores with the database stack's own settings, so the
restored instance that takes over the stack's identifier is the instance
the stack describes.

Run: .venv/bin/python -m unittest test_runbooks   (from deploy/aws/tests)
"""

from __future__ import annotations

import re
import unittest

from cfn import ROOT, load_template

RUNBOOK = ROOT / "docs/runbooks/backup-restore.md"
# Database properties of database.yaml that the restore must carry, and the
# CLI option of restore-db-instance-to-point-in-time that sets each.
SETTINGS = {
    "MultiAZ": "--multi-az", "DBInstanceClass": "--db-instance-class", "DeletionProtection": "--deletion-protection",
    "CopyTagsToSnapshot": "--copy-tags-to-snapshot", "EnableCloudwatchLogsExports": "--enable-cloudwatch-logs-exports",
    "ManageMasterUserPassword": "--manage-master-user-password", "MonitoringInterval": "--monitoring-interval",
    "MonitoringRoleArn": "--monitoring-role-arn", "EnableIAMDatabaseAuthentication":
        "--enable-iam-database-authentication", "DBSubnetGroupName": "--db-subnet-group-name",
    "DBParameterGroupName": "--db-parameter-group-name", "VPCSecurityGroups": "--vpc-security-group-ids",
    "PubliclyAccessible": "--no-publicly-accessible",
}


def section() -> str:
    return RUNBOOK.read_text().split("\n## Restoring on AWS", 1)[1].split("\n## ", 1)[0]


def commands(text: str) -> list[list[str]]:
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split("#", 1)[0]
            for part in re.findall(r"(?:^|\$\()\s*aws ([^)]*)", cmd):
                out.append(part.split())
    return out


class RestoreRunbook(unittest.TestCase):
    def test_every_aws_command_exists_with_those_options(self) -> None:
        import botocore.session
        from botocore import xform_name

        session = botocore.session.get_session()
        found = commands(section())
        self.assertGreaterEqual(len(found), 8)
        for words in found:
            service, op = words[0], words[1]
            model = session.get_service_model(service)
            ops = {xform_name(o, "-"): o for o in model.operation_names}
            if op == "wait":  # a waiter polls an operation with that operation's options
                waiters = session.get_waiter_model(service)
                names = {xform_name(w, "-"): w for w in waiters.waiter_names}
                self.assertIn(words[2], names, f"aws {service} wait {words[2]}")
                op = xform_name(waiters.get_waiter(names[words[2]]).operation, "-")
                words = words[:2] + words[3:]
            self.assertIn(op, ops, f"aws {service} {op}")
            members = {xform_name(m, "-") for m in model.operation_model(ops[op]).input_shape.members}
            for option in (w[2:] for w in words[2:] if w.startswith("--")):
                base = option[3:] if option.startswith("no-") else option
                self.assertIn(base, members | {"region", "query", "output"}, f"aws {service} {op} --{option}")

    def test_the_replacement_takes_over_the_stacks_identifier_by_renaming(self) -> None:
        text = section()
        renames = [w for w in commands(text) if w[:2] == ["rds", "modify-db-instance"]]
        self.assertEqual(len(renames), 2)
        db = load_template("database")["Resources"]["Database"]["Properties"]
        fixed = db["DBInstanceIdentifier"]["Fn::Sub"].replace("${StackPrefix}", "hello-birthday") \
            .replace("${Environment}", "production")
        first, second = ({w[i]: w[i + 1] for i in range(2, len(w) - 1) if w[i].startswith("--")} for w in renames)
        # The live one moves aside first, then the restored one takes the name.
        self.assertEqual(first["--db-instance-identifier"], fixed)
        self.assertNotEqual(first["--new-db-instance-identifier"], fixed)
        self.assertEqual(second["--new-db-instance-identifier"], fixed)
        self.assertIn("deploy/aws/db-users.sh", text.split("modify-db-instance", 1)[1])
        # No path that would replace the stack's instance through CloudFormation.
        self.assertNotIn("through the database stack (", text)

    def test_the_restore_carries_the_database_stacks_settings(self) -> None:
        text = section()
        replacement = text.split("Replacing the production instance", 1)[1]
        pitr = next(w for w in commands(text) if w[:2] == ["rds", "restore-db-instance-to-point-in-time"])
        options = set(re.findall(r"--[a-z-]+", replacement.split("```", 1)[0])) | {w for w in pitr if w.startswith("--")}
        db = load_template("database")["Resources"]["Database"]["Properties"]
        for prop, option in SETTINGS.items():
            self.assertIn(prop, db, f"database.yaml no longer sets {prop}: update this table")
            self.assertIn(option, options, f"the restore does not set {prop} ({option})")


class StackPolicy(unittest.TestCase):
    """deploy/aws/stack-policy.json, which an administrator sets on the
    network and database stacks (docs/runbooks/aws-bootstrap.md): updates in
    place pass, replacing or deleting what holds data or addresses does not."""

    def decide(self, action: str, resource_type: str) -> str:
        import json

        from awspolicy import Request, decide

        policy = json.loads((ROOT / "deploy/aws/stack-policy.json").read_text())
        return decide(Request(action, "LogicalResourceId/Database", {"ResourceType": resource_type},
                              {"AWS": "*"}), resource=[policy])

    def test_stateful_resources_are_updated_in_place_only(self) -> None:
        for rtype in ("AWS::RDS::DBInstance", "AWS::Backup::BackupVault", "AWS::EC2::VPC", "AWS::EC2::Subnet"):
            self.assertEqual(self.decide("Update:Modify", rtype), "Allow", rtype)
            for action in ("Update:Replace", "Update:Delete"):
                self.assertEqual(self.decide(action, rtype), "Deny", f"{action} {rtype}")
        self.assertEqual(self.decide("Update:Replace", "AWS::RDS::DBParameterGroup"), "Allow")


if __name__ == "__main__":
    unittest.main()
