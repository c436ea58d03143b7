"""The policies the templates define, as AWS would hold them, and an
evaluator that decides a request the way IAM does.

`Deployed` resolves a template with parameter values into what
CloudFormation would pass to AWS: every intrinsic function (Ref, Sub,
GetAtt, ImportValue, If, Join, Split, Select, FindInMap) replaced by a
value, resources that their condition leaves out dropped. Resources get
physical names and ARNs of the form AWS gives them (account 111122223333),
and an import takes the value the exporting stack's output has, so a
policy naming "the database secret" names the same ARN the database stack
exports.

`decide` evaluates one request against identity policies, a permissions
boundary and a resource policy, with IAM's rules (AWS IAM User Guide,
"Policy evaluation logic" and "IAM JSON policy elements: Condition
operators"): an explicit Deny wins; an action needs an Allow from the
identity or the resource policy, and from the boundary when there is one;
wildcards in actions (case-insensitive) and resources; NotAction,
NotResource, NotPrincipal; String*, Arn*, Bool, Null and Numeric
operators with IfExists, ForAnyValue and ForAllValues; a key missing from
the request matches no positive operator, and every negated one.

Used by test_iam.py, test_oidc.py and test_alarms.py; nothing here reads
the text of a template, only its parsed structure.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from cfn import ENVIRONMENTS, STACK_ORDER, load_parameters, load_template

ACCOUNT = "111122223333"
PARTITION = "aws"

# Stacks deployed per environment in its Region, then the extra ones (dr-vault
# in the DR Region, dns-alarm in us-east-1), with what the deploy passes them
# beyond the parameter file.
EXTRA_STACKS = ("dr-vault", "dns-alarm")


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


def _physical(stack: str, logical: str, rtype: str, props: dict[str, Any], region: str) -> tuple[str, str]:
    """(Ref value, Arn) of a resource, as AWS would name it."""
    short = f"{stack}-{logical}-ABCDEFGH1234"
    arn_base = f"arn:{PARTITION}"
    name = props.get
    if rtype == "AWS::IAM::Role":
        n = name("RoleName") or short
        path = name("Path") or "/"
        return n, f"{arn_base}:iam::{ACCOUNT}:role{path}{n}"
    if rtype == "AWS::IAM::ManagedPolicy":
        n = name("ManagedPolicyName") or short
        path = name("Path") or "/"
        arn = f"{arn_base}:iam::{ACCOUNT}:policy{path}{n}"
        return arn, arn
    if rtype == "AWS::IAM::InstanceProfile":
        n = name("InstanceProfileName") or short
        return n, f"{arn_base}:iam::{ACCOUNT}:instance-profile/{n}"
    if rtype == "AWS::IAM::OIDCProvider":
        arn = f"{arn_base}:iam::{ACCOUNT}:oidc-provider/token.actions.githubusercontent.com"
        return arn, arn
    if rtype == "AWS::KMS::Key":
        kid = f"{logical.lower()}-0000-1111-2222-{stack[:12]}"
        return kid, f"{arn_base}:kms:{region}:{ACCOUNT}:key/{kid}"
    if rtype == "AWS::S3::Bucket":
        n = name("BucketName") or short.lower()
        return n, f"{arn_base}:s3:::{n}"
    if rtype == "AWS::SNS::Topic":
        n = name("TopicName") or short
        arn = f"{arn_base}:sns:{region}:{ACCOUNT}:{n}"
        return arn, arn
    if rtype == "AWS::SecretsManager::Secret":
        n = name("Name") or short
        arn = f"{arn_base}:secretsmanager:{region}:{ACCOUNT}:secret:{n}-AbCdEf"
        return arn, arn
    if rtype == "AWS::Logs::LogGroup":
        n = name("LogGroupName") or short
        return n, f"{arn_base}:logs:{region}:{ACCOUNT}:log-group:{n}:*"
    if rtype == "AWS::RDS::DBInstance":
        n = (name("DBInstanceIdentifier") or short).lower()
        return n, f"{arn_base}:rds:{region}:{ACCOUNT}:db:{n}"
    if rtype == "AWS::Backup::BackupVault":
        n = name("BackupVaultName") or short
        return n, f"{arn_base}:backup:{region}:{ACCOUNT}:backup-vault:{n}"
    if rtype == "AWS::WAFv2::WebACL":
        n = name("Name") or short
        arn = f"{arn_base}:wafv2:{region}:{ACCOUNT}:regional/webacl/{n}/0000"
        return f"{n}|0000|REGIONAL", arn
    if rtype == "AWS::CloudWatch::Alarm":
        n = name("AlarmName") or short
        return n, f"{arn_base}:cloudwatch:{region}:{ACCOUNT}:alarm:{n}"
    if rtype == "AWS::ElasticLoadBalancingV2::LoadBalancer":
        n = name("Name") or short
        arn = f"{arn_base}:elasticloadbalancing:{region}:{ACCOUNT}:loadbalancer/app/{n}/50dc6c495c0c9188"
        return arn, arn
    if rtype == "AWS::ElasticLoadBalancingV2::TargetGroup":
        n = name("Name") or logical.lower()
        arn = f"{arn_base}:elasticloadbalancing:{region}:{ACCOUNT}:targetgroup/{n}/73e2d6bc24d8a067"
        return arn, arn
    if rtype == "AWS::EC2::SecurityGroup":
        return f"sg-{logical.lower()[:10]}", ""
    return f"{logical}-id", f"{arn_base}:unknown:{region}:{ACCOUNT}:{logical}"


def _attribute(stack: str, logical: str, rtype: str, props: dict[str, Any], region: str, attr: str) -> Any:
    ref, arn = _physical(stack, logical, rtype, props, region)
    if attr == "Arn":
        return arn
    if rtype == "AWS::RDS::DBInstance":
        if attr == "MasterUserSecret.SecretArn":
            return f"arn:{PARTITION}:secretsmanager:{region}:{ACCOUNT}:secret:rds!db-0a1b2c3d-AbCdEf"
        if attr == "Endpoint.Address":
            return f"{ref}.c9akciq32.{region}.rds.amazonaws.com"
        if attr == "Endpoint.Port":
            return "5432"
        if attr == "DbiResourceId":
            return "db-ABCDEFGHIJKLMNOPQRSTUVWXY"
    if rtype == "AWS::Backup::BackupVault" and attr == "BackupVaultArn":
        return arn
    if rtype == "AWS::Backup::BackupVault" and attr == "BackupVaultName":
        return ref
    if rtype == "AWS::ElasticLoadBalancingV2::LoadBalancer":
        if attr == "LoadBalancerFullName":
            return arn.split(":loadbalancer/", 1)[1]
        if attr == "DNSName":
            return f"{props.get('Name', 'lb')}-123.{region}.elb.amazonaws.com"
        if attr == "CanonicalHostedZoneID":
            return "Z32O12XQLNTSW2"
    if rtype == "AWS::ElasticLoadBalancingV2::TargetGroup" and attr == "TargetGroupFullName":
        return arn.split(":", 5)[5]
    if rtype == "AWS::EC2::LaunchTemplate" and attr == "LatestVersionNumber":
        return "1"
    if rtype == "AWS::EC2::SecurityGroup" and attr == "GroupId":
        return ref
    if rtype == "AWS::KMS::Key" and attr == "KeyId":
        return ref
    return f"{logical}.{attr}"


class Deployed:
    """One stack of one environment, resolved as CloudFormation would."""

    def __init__(self, name: str, env: str, region: str | None = None, values: dict[str, Any] | None = None,
                 exports: dict[str, Any] | None = None, template: dict[str, Any] | None = None) -> None:
        self.name = name
        self.env = env
        self.template = template if template is not None else load_template(name)
        params = load_parameters(env)
        self.region = region or params["region"]
        self.prefix = params["stackPrefix"]
        self.stack_name = f"{self.prefix}-{env}-{name}"
        self.exports = exports or {}
        spec = self.template.get("Parameters", {})
        self.values: dict[str, Any] = {k: v.get("Default", "") for k, v in spec.items()}
        self.values.update(params["stacks"].get(name, {}))
        for key in ("StackPrefix", "Environment"):
            if key in spec:
                self.values[key] = {"StackPrefix": self.prefix, "Environment": env}[key]
        self.values.update(values or {})
        self.values = {k: v for k, v in self.values.items()}
        unknown = set(values or {}) - set(spec)
        assert not unknown, f"{name}: no such parameters {unknown}"
        self._props_cache: dict[str, dict[str, Any]] = {}

    # -- conditions and values ------------------------------------------------
    def condition(self, name: str) -> bool:
        return bool(self._cond(self.template["Conditions"][name]))

    def _cond(self, node: Any) -> bool:
        (fn, arg), = node.items()
        if fn == "Fn::Equals":
            return str(self.resolve(arg[0])) == str(self.resolve(arg[1]))
        if fn == "Fn::Not":
            return not self._cond(arg[0])
        if fn == "Fn::And":
            return all(self._cond(a) for a in arg)
        if fn == "Fn::Or":
            return any(self._cond(a) for a in arg)
        if fn == "Condition":
            return self.condition(arg)
        raise AssertionError(f"not a condition: {node}")

    def pseudo(self, name: str) -> Any:
        return {
            "AWS::Region": self.region, "AWS::AccountId": ACCOUNT, "AWS::Partition": PARTITION,
            "AWS::StackName": self.stack_name, "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:{PARTITION}:cloudformation:{self.region}:{ACCOUNT}:stack/{self.stack_name}/"
                            "0a1b2c3d-0000-1111-2222-333344445555",
            "AWS::NoValue": NO_VALUE,
        }[name]

    def ref(self, name: str) -> Any:
        if name.startswith("AWS::"):
            return self.pseudo(name)
        if name in self.template.get("Parameters", {}):
            v = self.values[name]
            if self.template["Parameters"][name]["Type"].startswith("List<") or \
                    self.template["Parameters"][name]["Type"] == "CommaDelimitedList":
                return [x for x in str(v).split(",") if x]
            return str(v) if not isinstance(v, list) else v
        res = self.template["Resources"][name]
        return _physical(self.stack_name, name, res["Type"], self.raw_properties(name), self.region)[0]

    def getatt(self, logical: str, attr: str) -> Any:
        res = self.template["Resources"][logical]
        return _attribute(self.stack_name, logical, res["Type"], self.raw_properties(logical), self.region, attr)

    def raw_properties(self, logical: str) -> dict[str, Any]:
        """Properties with only names resolved (used to name the resource itself)."""
        props = self.template["Resources"][logical].get("Properties", {})
        out = {}
        for key in ("RoleName", "ManagedPolicyName", "Path", "InstanceProfileName", "BucketName", "TopicName",
                    "Name", "LogGroupName", "DBInstanceIdentifier", "BackupVaultName", "AlarmName"):
            if key in props:
                v = self.resolve(props[key])
                if v is not NO_VALUE:
                    out[key] = v
        return out

    def _sub(self, text: str, local: dict[str, Any]) -> str:
        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in local:
                return str(local[name])
            if "." in name and not name.startswith("AWS::"):
                logical, attr = name.split(".", 1)
                return str(self.getatt(logical, attr))
            v = self.ref(name)
            return ",".join(v) if isinstance(v, list) else str(v)
        return re.sub(r"\$\{([^}]+)\}", one, text)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.resolve(x) for x in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Ref":
                return self.ref(arg)
            if fn == "Fn::If":
                name, yes, no = arg
                return self.resolve(yes if self.condition(name) else no)
            if fn == "Fn::Sub":
                if isinstance(arg, str):
                    return self._sub(arg, {})
                text, local = arg
                return self._sub(text, {k: self.resolve(v) for k, v in local.items()})
            if fn == "Fn::GetAtt":
                logical, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.getatt(logical, attr)
            if fn == "Fn::ImportValue":
                name = self.resolve(arg)
                assert name in self.exports, f"{self.name}: import {name} not exported by an earlier stack"
                return self.exports[name]
            if fn == "Fn::Join":
                sep, items = arg
                return sep.join(str(x) for x in self.resolve(items))
            if fn == "Fn::Split":
                sep, text = arg
                return str(self.resolve(text)).split(sep)
            if fn == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if fn == "Fn::FindInMap":
                m, k1, k2 = (self.resolve(x) for x in arg)
                return self.template["Mappings"][m][k1][k2]
            if fn == "Fn::GetAZs":
                return [f"{self.region}a", f"{self.region}b"]
            if fn == "Fn::Base64":
                return self.resolve(arg)
            if fn == "Fn::Cidr":
                return ["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24", "10.0.4.0/24", "10.0.5.0/24"]
        out = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

    # -- resources --------------------------------------------------------------
    def exists(self, logical: str) -> bool:
        res = self.template["Resources"][logical]
        return "Condition" not in res or self.condition(res["Condition"])

    def resources(self, rtype: str | None = None) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items()
                if (rtype is None or v["Type"] == rtype) and self.exists(k)}

    def properties(self, logical: str) -> dict[str, Any]:
        if logical not in self._props_cache:
            self._props_cache[logical] = self.resolve(self.template["Resources"][logical].get("Properties", {}))
        return self._props_cache[logical]

    def outputs(self) -> dict[str, Any]:
        out = {}
        for key, o in self.template.get("Outputs", {}).items():
            if "Condition" in o and not self.condition(o["Condition"]):
                continue
            out[key] = self.resolve(o["Value"])
        return out

    def exported(self) -> dict[str, Any]:
        out = {}
        for key, o in self.template.get("Outputs", {}).items():
            if "Export" in o and ("Condition" not in o or self.condition(o["Condition"])):
                out[self.resolve(o["Export"]["Name"])] = self.resolve(o["Value"])
        return out

    def arn(self, logical: str) -> str:
        return str(self.getatt(logical, "Arn"))

    # -- policies ---------------------------------------------------------------
    def role_policies(self, logical: str) -> list[dict[str, Any]]:
        """Identity policies of a role: inline, managed ones defined here, and AWS::IAM::Policy attached."""
        props = self.properties(logical)
        docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
        managed_here = {self.ref(k): k for k in self.resources("AWS::IAM::ManagedPolicy")}
        for arn in props.get("ManagedPolicyArns", []):
            if arn in managed_here:
                docs.append(self.properties(managed_here[arn])["PolicyDocument"])
            else:
                docs.append(aws_managed_policy(arn))
        role_name = self.ref(logical)
        for k in self.resources("AWS::IAM::Policy"):
            p = self.properties(k)
            if role_name in p.get("Roles", []):
                docs.append(p["PolicyDocument"])
        return docs

    def boundary(self, logical: str) -> str | None:
        return self.properties(logical).get("PermissionsBoundary")


def environment(env: str, names: tuple[str, ...] = STACK_ORDER, region: str | None = None,
                values: dict[str, dict[str, Any]] | None = None) -> dict[str, Deployed]:
    """Every stack of an environment in deploy order, imports resolved from earlier exports."""
    exports: dict[str, Any] = {}
    out = {}
    for name in names:
        d = Deployed(name, env, region=region, values=(values or {}).get(name), exports=exports)
        exports.update(d.exported())
        out[name] = d
    return out


# The AWS managed policies the templates attach, by what they grant (the
# parts that matter here; their full text is AWS's and changes).
AWS_MANAGED = {
    "AmazonSSMManagedInstanceCore": [
        {"Effect": "Allow", "Action": ["ssm:DescribeAssociation", "ssm:GetDeployablePatchSnapshotForInstance",
                                       "ssm:GetDocument", "ssm:DescribeDocument", "ssm:GetManifest", "ssm:GetParameter",
                                       "ssm:GetParameters", "ssm:ListAssociations", "ssm:ListInstanceAssociations",
                                       "ssm:PutInventory", "ssm:PutComplianceItems", "ssm:PutConfigurePackageResult",
                                       "ssm:UpdateAssociationStatus", "ssm:UpdateInstanceAssociationStatus",
                                       "ssm:UpdateInstanceInformation"], "Resource": "*"},
        {"Effect": "Allow", "Action": ["ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
                                       "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"], "Resource": "*"},
        {"Effect": "Allow", "Action": ["ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage",
                                       "ec2messages:FailMessage", "ec2messages:GetEndpoint", "ec2messages:GetMessages",
                                       "ec2messages:SendReply"], "Resource": "*"},
    ],
    "AmazonRDSEnhancedMonitoringRole": [
        {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:PutRetentionPolicy"],
         "Resource": "arn:aws:logs:*:*:log-group:RDS*"},
        {"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams",
                                       "logs:GetLogEvents"], "Resource": "arn:aws:logs:*:*:log-group:RDS*:log-stream:*"},
    ],
    "AWSBackupServiceRolePolicyForBackup": [
        {"Effect": "Allow", "Action": ["rds:AddTagsToResource", "rds:ListTagsForResource", "rds:DescribeDBSnapshots",
                                       "rds:CreateDBSnapshot", "rds:CopyDBSnapshot", "rds:DescribeDBInstances",
                                       "rds:DeleteDBSnapshot", "rds:ModifyDBSnapshotAttribute"], "Resource": "*"},
        {"Effect": "Allow", "Action": ["backup:DescribeBackupVault", "backup:CopyIntoBackupVault"],
         "Resource": "arn:aws:backup:*:*:backup-vault:*"},
        {"Effect": "Allow", "Action": ["kms:CreateGrant", "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey",
                                       "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo"], "Resource": "*"},
        {"Effect": "Allow", "Action": ["tag:GetResources"], "Resource": "*"},
        {"Effect": "Allow", "Action": "*", "Resource": "*",
         "Condition": {"StringEquals": {"aws:ResourceTag/never": "a tag this model uses for the rest"}}},
    ],
    "AWSBackupServiceRolePolicyForRestores": [
        {"Effect": "Allow", "Action": ["rds:RestoreDBInstanceFromDBSnapshot", "rds:CreateDBInstance",
                                       "rds:DescribeDBInstances", "rds:AddTagsToResource"], "Resource": "*"},
        {"Effect": "Allow", "Action": ["kms:CreateGrant", "kms:DescribeKey", "kms:Decrypt"], "Resource": "*"},
        {"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*"},
    ],
}


def aws_managed_policy(arn: str) -> dict[str, Any]:
    name = arn.rsplit("/", 1)[1]
    assert name in AWS_MANAGED, f"an AWS managed policy this model does not know: {arn}"
    return {"Version": "2012-10-17", "Statement": AWS_MANAGED[name]}


# ---------------------------------------------------------------------------
# Evaluation


@dataclass
class Request:
    action: str
    resource: str
    context: dict[str, Any] = field(default_factory=dict)
    principal: dict[str, Any] = field(default_factory=dict)  # {"AWS": arn} | {"Service": name} | {"Federated": arn}


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def _glob(pattern: str, value: str, case: bool = True) -> bool:
    if not case:
        pattern, value = pattern.lower(), value.lower()
    # IAM wildcards: * any run of characters, ? one character; nothing else special.
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.S) is not None


def _action_matches(patterns: Any, action: str) -> bool:
    return any(_glob(p, action, case=False) for p in _as_list(patterns))


def _resource_matches(patterns: Any, resource: str) -> bool:
    return any(_glob(p, resource) for p in _as_list(patterns))


def _principal_matches(spec: Any, principal: dict[str, Any]) -> bool:
    if spec == "*":
        return True
    for kind, values in spec.items():
        who = principal.get(kind)
        for v in _as_list(values):
            v = str(v)
            if v == "*" or v == who:
                return True
            if kind == "AWS" and who and who.startswith("arn:aws:iam::"):
                account = who.split(":")[4]
                if v in (account, f"arn:aws:iam::{account}:root"):
                    return True
    return False


def _base_op(op: str) -> tuple[str, str | None, bool]:
    qualifier = None
    if ":" in op:
        qualifier, op = op.split(":", 1)
    if_exists = op.endswith("IfExists")
    return (op[: -len("IfExists")] if if_exists else op), qualifier, if_exists


NEGATED = {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals", "ArnNotLike",
           "NumericNotEquals"}


def _one(op: str, want: str, have: Any) -> bool:
    have_s = str(have).lower() if isinstance(have, bool) else str(have)
    if op in ("StringEquals", "StringNotEquals"):
        return have_s == str(want)
    if op in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        return have_s.lower() == str(want).lower()
    if op in ("StringLike", "StringNotLike", "ArnLike", "ArnNotLike", "ArnEquals", "ArnNotEquals"):
        return _glob(str(want), have_s)
    if op == "Bool":
        return have_s.lower() == str(want).lower()
    if op.startswith("Numeric"):
        a, b = float(have_s), float(want)
        return {"NumericEquals": a == b, "NumericNotEquals": a == b, "NumericLessThan": a < b,
                "NumericLessThanEquals": a <= b, "NumericGreaterThan": a > b,
                "NumericGreaterThanEquals": a >= b}[op]
    raise AssertionError(f"condition operator not modelled: {op}")


def _condition_holds(op_full: str, key: str, wanted: Any, context: dict[str, Any]) -> bool:
    op, qualifier, if_exists = _base_op(op_full)
    present = key in context and context[key] is not None
    wanted_l = [str(w).lower() if isinstance(w, bool) else str(w) for w in _as_list(wanted)]
    if op == "Null":
        return (not present) == (wanted_l[0].lower() == "true")
    if not present:
        if qualifier == "ForAllValues":
            return True
        if if_exists:
            return True
        return op in NEGATED
    values = _as_list(context[key])
    negated = op in NEGATED
    if qualifier == "ForAllValues":
        return all((not any(_one(op, w, v) for w in wanted_l)) if negated else any(_one(op, w, v) for w in wanted_l)
                   for v in values)
    if qualifier == "ForAnyValue":
        return any((not any(_one(op, w, v) for w in wanted_l)) if negated else any(_one(op, w, v) for w in wanted_l)
                   for v in values)
    # Single-valued: any of the wanted values (OR); negated: none of them.
    assert len(values) == 1, f"{key} is multi-valued: use ForAnyValue/ForAllValues"
    match = any(_one(op, w, values[0]) for w in wanted_l)
    return not match if negated else match


def _applies(st: dict[str, Any], req: Request, resource_policy: bool = False) -> bool:
    if "Action" in st and not _action_matches(st["Action"], req.action):
        return False
    if "NotAction" in st and _action_matches(st["NotAction"], req.action):
        return False
    if "Resource" in st and not _resource_matches(st["Resource"], req.resource):
        return False
    if "NotResource" in st and _resource_matches(st["NotResource"], req.resource):
        return False
    if resource_policy:
        if "Principal" in st and not _principal_matches(st["Principal"], req.principal):
            return False
        if "NotPrincipal" in st and _principal_matches(st["NotPrincipal"], req.principal):
            return False
    for op, keys in st.get("Condition", {}).items():
        for key, wanted in keys.items():
            if not _condition_holds(op, key, wanted, req.context):
                return False
    return True


def _effects(docs: list[dict[str, Any]], req: Request, resource_policy: bool = False) -> set[str]:
    out = set()
    for doc in docs:
        for st in _as_list(doc["Statement"]):
            if _applies(st, req, resource_policy):
                out.add(st["Effect"])
    return out


def decide(req: Request, identity: list[dict[str, Any]] | None = None, boundary: list[dict[str, Any]] | None = None,
           resource: list[dict[str, Any]] | None = None) -> str:
    """'Allow', 'Deny' (explicit) or 'ImplicitDeny' for one request (same account)."""
    identity = identity or []
    id_eff = _effects(identity, req)
    res_eff = _effects(resource or [], req, resource_policy=True)
    b_eff = _effects(boundary, req) if boundary is not None else {"Allow"}
    if "Deny" in id_eff | res_eff | b_eff:
        return "Deny"
    # Same account: an Allow of the resource policy for this principal suffices
    # (for a role session, boundaries still apply to identity-based grants).
    if "Allow" in res_eff:
        return "Allow"
    if "Allow" in id_eff and "Allow" in b_eff:
        return "Allow"
    return "ImplicitDeny"


def as_json(doc: Any) -> str:
    return json.dumps(doc, indent=1, sort_keys=True)


def policies_of_all_templates(env: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, kind, document) for every IAM policy document the environment's templates define."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    from cfn import load_parameters as _lp
    params = _lp(env)
    stacks = dict(environment(env))
    for extra, region in (("dr-vault", params.get("drRegion") or params["region"]), ("dns-alarm", "us-east-1")):
        stacks[extra] = Deployed(extra, env, region=region,
                                 values={"HealthCheckId": "0a1b2c3d-0000-1111-2222-333344445555"}
                                 if extra == "dns-alarm" else None)
    stacks["bootstrap"] = Deployed("bootstrap", env, values={
        "GitHubRepository": "example/hello-birthday", "DrRegion": params.get("drRegion", "")})
    for name, d in stacks.items():
        for logical, res in d.resources().items():
            props = d.properties(logical)
            t = res["Type"]
            if t == "AWS::IAM::Role":
                out.append((f"{name}.{logical}", "trust", props["AssumeRolePolicyDocument"]))
                for p in props.get("Policies", []):
                    out.append((f"{name}.{logical}.{p['PolicyName']}", "identity", p["PolicyDocument"]))
            elif t in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
                out.append((f"{name}.{logical}", "identity", props["PolicyDocument"]))
            elif t in ("AWS::S3::BucketPolicy", "AWS::SNS::TopicPolicy"):
                out.append((f"{name}.{logical}", "resource", props["PolicyDocument"]))
            elif t == "AWS::KMS::Key":
                out.append((f"{name}.{logical}", "resource", props["KeyPolicy"]))
            elif t == "AWS::SecretsManager::ResourcePolicy":
                out.append((f"{name}.{logical}", "resource", props["ResourcePolicy"]))
    return out


__all__ = ["ACCOUNT", "Deployed", "ENVIRONMENTS", "EXTRA_STACKS", "Request", "as_json", "decide", "environment",
           "policies_of_all_templates"]
