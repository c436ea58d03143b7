"""moto's AWS emulator, in-process, with the gaps of its CloudFormation
engine that the deploy tests meet filled. Importing this module applies
the patches; the tests then run the deploy program inside mock_aws().

1. moto (5.x) accepts create-change-set / execute-change-set, but executing a
   change set neither resolves Fn::ImportValue nor publishes the stack's
   outputs and exports, so a chain of stacks wired by exports cannot be
   exercised through change sets. Here execute-change-set does what moto's
   own create_stack / update_stack do (build the stack from the template with
   the account's exports, register its exports, refresh outputs).
2. moto does not evaluate Fn::Cidr; it is computed here as CloudFormation
   documents it (COUNT subnets of CIDR_BITS host bits each, in order).
3. moto splits the short form `!GetAtt A.B.C` at every dot; CloudFormation
   splits at the first one (resource A, attribute B.C).
4. moto's RDS instance lacks the MasterUserSecret.SecretArn attribute; it
   is answered with a secret created as RDS does for ManageMasterUserPassword.
5. moto's RDS parameter group has no physical id, so !Ref returned the
   object instead of its name.
6. moto's load balancer lacks the LoadBalancerFullName and
   CanonicalHostedZoneID attributes, its target group TargetGroupFullName:
   the full names are derived from the ARNs as AWS defines them, the zone is
   a fixed stand-in.
7. moto's CloudFormation engine has no AWS::CloudWatch::Alarm or
   CompositeAlarm. They are accepted as records with the return values AWS
   documents (Ref: the alarm name; Arn), nothing is created in CloudWatch.
8. Nor AWS::WAFv2::WebACL, WebACLAssociation or LoggingConfiguration: the
   same kind of record (Arn of a regional web ACL), nothing is created.
9. moto's AWS::KMS::Key hands the template's Tags ({Key, Value}, as
   CloudFormation has them) to its KMS tagger, which wants {TagKey,
   TagValue}: they are converted first.
10. Nor AWS::SecretsManager::Secret: a secret is created in moto's Secrets
   Manager as CloudFormation does (GenerateSecretString: the template with
   a generated value under GenerateStringKey); Ref is its ARN.
15. Nor AWS::Backup::BackupVault (the DR Region's vault): a record with
   its name and ARN, nothing is created.
11. RollbackConfiguration is accepted but dropped: it is kept on the change
   set and, once executed, on the stack, where DescribeStacks reports it as
   AWS does.
12. ContinueUpdateRollback is not implemented: it ends the rollback
   (UPDATE_ROLLBACK_COMPLETE), as AWS does once the cause is gone.
13. moto never rolls an update back. OUTCOMES scripts it: executing an update
   of a stack named there leaves the stack as it was, in the status given,
   with the failure event CloudFormation records for the resource.
14. Deleting a stack leaves its AWS::ElasticLoadBalancingV2::ListenerRule
   resources on the listener: they are deleted, as AWS does.

Everything else is stock moto.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from moto.cloudformation import models as cfn
from moto.cloudformation import parsing
from moto.cloudformation import responses as cfn_responses
from moto.cloudformation import utils as cfn_utils
from moto.cloudformation.exceptions import ValidationError
from moto.core.common_models import CloudFormationModel
from moto.core.responses import EmptyResult
from moto.elbv2 import models as elbv2
from moto.kms import models as kms_models
from moto.rds import models as rds

_clean_json = parsing.clean_json


def clean_json(resource_json: Any, resources_map: parsing.ResourceMap) -> Any:
    if isinstance(resource_json, dict) and "Fn::Cidr" in resource_json:
        block, count, bits = (clean_json(v, resources_map) for v in resource_json["Fn::Cidr"])
        network = ipaddress.ip_network(block)
        prefix = network.max_prefixlen - int(bits)
        return [str(n) for n in list(network.subnets(new_prefix=prefix))[: int(count)]]
    return _clean_json(resource_json, resources_map)


parsing.clean_json = clean_json

_yaml_tag_constructor = cfn_utils.yaml_tag_constructor


def yaml_tag_constructor(loader: Any, tag: Any, node: Any) -> Any:
    if tag == "!GetAtt" and isinstance(node.value, str):
        return {"Fn::GetAtt": node.value.split(".", 1)}
    return _yaml_tag_constructor(loader, tag, node)


# Replaced where models.py looks it up (it imports the name from utils).
cfn.yaml_tag_constructor = yaml_tag_constructor  # type: ignore[attr-defined]  # not re-exported by moto

_db_get_cfn_attribute = rds.DBInstance.get_cfn_attribute


def db_get_cfn_attribute(self: rds.DBInstance, attribute_name: str) -> Any:
    if attribute_name == "MasterUserSecret.SecretArn":
        if not hasattr(self, "master_user_secret"):
            # What RDS does for ManageMasterUserPassword, which moto's
            # CloudFormation path does not pass on.
            self.master_user_secret = rds.MasterUserSecret(self, None)
        return self.master_user_secret.secret.arn
    return _db_get_cfn_attribute(self, attribute_name)


# The function under the classmethod, to call with the class it is called on.
_db_has_cfn_attr: Callable[[type[rds.DBInstance], str], bool] = vars(rds.DBInstance)["has_cfn_attr"].__func__


def db_has_cfn_attr(cls: type[rds.DBInstance], attr: str) -> bool:
    return attr == "MasterUserSecret.SecretArn" or _db_has_cfn_attr(cls, attr)


# The patches below replace methods on moto's classes ([method-assign]) or
# add the ones they lack ([attr-defined]); mypy still checks each
# replacement's signature against the method it replaces.
rds.DBInstance.get_cfn_attribute = db_get_cfn_attribute  # type: ignore[method-assign]  # the patch
# mypy types a classmethod read from its class as the bound method, so a
# classmethod put in its place looks like a different type ([assignment]).
rds.DBInstance.has_cfn_attr = classmethod(db_has_cfn_attr)  # type: ignore[method-assign, assignment]  # the patch


def parameter_group_physical_id(self: rds.DBParameterGroup) -> str:
    return self.name


rds.DBParameterGroup.physical_resource_id = property(parameter_group_physical_id)  # type: ignore[attr-defined]  # the patch

_lb_get_cfn_attribute = elbv2.FakeLoadBalancer.get_cfn_attribute


def lb_get_cfn_attribute(self: elbv2.FakeLoadBalancer, attribute_name: str) -> Any:
    if attribute_name == "LoadBalancerFullName":
        return self.arn.split(":loadbalancer/", 1)[1]
    if attribute_name == "CanonicalHostedZoneID":
        return "ZMOTOALBZONE"
    return _lb_get_cfn_attribute(self, attribute_name)


def tg_get_cfn_attribute(self: elbv2.FakeTargetGroup, attribute_name: str) -> str:
    if attribute_name == "TargetGroupFullName":
        return self.arn.split(":", 5)[5]
    if attribute_name == "TargetGroupArn":
        return self.arn
    raise NotImplementedError(attribute_name)


def tg_has_cfn_attr(cls: type[elbv2.FakeTargetGroup], attr: str) -> bool:
    return attr in ("TargetGroupFullName", "TargetGroupArn")


elbv2.FakeLoadBalancer.get_cfn_attribute = lb_get_cfn_attribute  # type: ignore[method-assign]  # the patch
elbv2.FakeTargetGroup.get_cfn_attribute = tg_get_cfn_attribute  # type: ignore[attr-defined]  # the patch
elbv2.FakeTargetGroup.has_cfn_attr = classmethod(tg_has_cfn_attr)  # type: ignore[method-assign, assignment]  # as above


def delete_listener_rule(self: elbv2.FakeListenerRule, account_id: str, region_name: str) -> None:
    elbv2.elbv2_backends[account_id][region_name].delete_rule(self.arn)


elbv2.FakeListenerRule.delete = delete_listener_rule  # type: ignore[attr-defined]  # the patch

# stack name -> (final status, logical id of the failed resource, reason)
OUTCOMES: dict[str, tuple[str, str, str]] = {}


def execute_change_set(self: cfn.CloudFormationBackend, change_set_name: str, stack_name: str | None = None) -> None:
    change_set = self.describe_change_set(change_set_name)
    assert change_set is not None  # describe_change_set raises for an unknown one
    placeholder = self.stacks[change_set.stack_id]
    if change_set.change_set_type == "UPDATE" and placeholder.name in OUTCOMES:
        status, logical_id, reason = OUTCOMES[placeholder.name]
        placeholder._add_stack_event("UPDATE_IN_PROGRESS", resource_status_reason="User Initiated")
        placeholder.events.append(cfn.Event(
            stack_id=placeholder.stack_id, stack_name=placeholder.name, logical_resource_id=logical_id,
            # None: the event names no physical resource; moto's annotation says str.
            physical_resource_id=None,  # type: ignore[arg-type]
            resource_type="AWS::AutoScaling::AutoScalingGroup",
            resource_status="UPDATE_FAILED", resource_status_reason=reason, resource_properties=None))
        change_set.execution_status = "EXECUTE_COMPLETE"
        placeholder.status = status
        return
    if change_set.change_set_type == "CREATE":
        # moto's own create_stack builds a Stack the same way; mypy finds two of
        # CloudFormationModel's abstract methods unimplemented on it.
        stack = cfn.Stack(  # type: ignore[abstract]
            stack_id=placeholder.stack_id,
            name=placeholder.name,
            template=change_set.template,
            parameters=change_set.parameters,
            account_id=self.account_id,
            region_name=self.region_name,
            notification_arns=change_set.notification_arns,
            tags=change_set.tags,
            role_arn=change_set.role_arn,
            cross_stack_resources=self.exports,
        )
        stack.events = placeholder.events
        self.stacks[stack.stack_id] = stack
        self._validate_export_uniqueness(stack)
        stack._add_stack_event("CREATE_IN_PROGRESS", resource_status_reason="User Initiated")
        stack.create_resources()
    else:
        stack = placeholder
        for export in stack.exports:
            self.exports.pop(export.name, None)
        stack.cross_stack_resources = self.exports
        stack.resource_map.cross_stack_resources = self.exports
        stack.update(
            change_set.template,
            role_arn=change_set.role_arn,
            parameters=change_set.parameters,
            tags=change_set.tags,
        )
    for export in stack.exports:
        self.exports[export.name] = export
    change_set.execution_status = "EXECUTE_COMPLETE"
    stack.status = f"{change_set.change_set_type}_COMPLETE"
    stack.rollback_configuration = getattr(change_set, "rollback_configuration", None)  # type: ignore[attr-defined]  # 11.


cfn.CloudFormationBackend.execute_change_set = execute_change_set  # type: ignore[method-assign]  # the patch


class AlarmRecord(CloudFormationModel):
    # moto files models by the service named in their module path.
    __module__ = "moto.cloudwatch.records"

    def __init__(self, name: str, region_name: str, account_id: str) -> None:
        self.name = name
        self.arn = f"arn:aws:cloudwatch:{region_name}:{account_id}:alarm:{name}"

    @property
    def physical_resource_id(self) -> str:
        return self.name

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr == "Arn"

    def get_cfn_attribute(self, attribute_name: str) -> str:
        if attribute_name == "Arn":
            return self.arn
        raise NotImplementedError(attribute_name)

    name_property = "AlarmName"

    @classmethod
    def create_from_cloudformation_json(
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any,
    ) -> AlarmRecord:
        name = cloudformation_json["Properties"].get(cls.name_property, resource_name)
        return cls(name, region_name, account_id)

    @classmethod
    def update_from_cloudformation_json(
        cls, original_resource: Any, new_resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
    ) -> AlarmRecord:
        return cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id, region_name)

    @classmethod
    def delete_from_cloudformation_json(
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
    ) -> None:
        return None


_resource_class_from_type = parsing.resource_class_from_type


class WafRecord(AlarmRecord):
    __module__ = "moto.wafv2.records"
    name_property = "Name"

    def __init__(self, name: str, region_name: str, account_id: str) -> None:
        self.name = name
        self.arn = f"arn:aws:wafv2:{region_name}:{account_id}:regional/webacl/{name}/00000000-0000-0000-0000-000000000000"


class SecretRecord(AlarmRecord):
    __module__ = "moto.secretsmanager.records"

    def __init__(self, arn: str) -> None:
        self.name = self.arn = arn

    @classmethod
    def create_from_cloudformation_json(
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any,
    ) -> SecretRecord:
        import json
        import secrets as random_source

        from moto.secretsmanager.models import secretsmanager_backends

        props = cloudformation_json["Properties"]
        value = props.get("SecretString")
        gen = props.get("GenerateSecretString")
        if gen:
            value = json.loads(gen.get("SecretStringTemplate", "{}"))
            value[gen.get("GenerateStringKey", "password")] = random_source.token_hex(int(gen.get("PasswordLength", 32)) // 2)
            value = json.dumps(value)
        backend = secretsmanager_backends[account_id][region_name]
        out = json.loads(backend.create_secret(name=props.get("Name", resource_name), secret_string=value,
                                               secret_binary=None, description=props.get("Description"), tags=None,
                                               kms_key_id=props.get("KmsKeyId"), client_request_token=None,
                                               replica_regions=[], force_overwrite=False))
        return cls(out["ARN"])


class BackupVaultRecord(AlarmRecord):
    __module__ = "moto.backup.records"
    name_property = "BackupVaultName"

    def __init__(self, name: str, region_name: str, account_id: str) -> None:
        self.name = name
        self.arn = f"arn:aws:backup:{region_name}:{account_id}:backup-vault:{name}"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr in ("BackupVaultArn", "BackupVaultName")

    def get_cfn_attribute(self, attribute_name: str) -> str:
        if attribute_name == "BackupVaultArn":
            return self.arn
        if attribute_name == "BackupVaultName":
            return self.name
        raise NotImplementedError(attribute_name)


def resource_class_from_type(resource_type: str) -> type[CloudFormationModel]:
    if resource_type == "AWS::Backup::BackupVault":
        return BackupVaultRecord
    if resource_type == "AWS::SecretsManager::Secret":
        return SecretRecord
    if resource_type in ("AWS::CloudWatch::Alarm", "AWS::CloudWatch::CompositeAlarm"):
        return AlarmRecord
    if resource_type in ("AWS::WAFv2::WebACL", "AWS::WAFv2::WebACLAssociation", "AWS::WAFv2::LoggingConfiguration"):
        return WafRecord
    return _resource_class_from_type(resource_type)


parsing.resource_class_from_type = resource_class_from_type

_create_change_set = cfn_responses.CloudFormationResponse.create_change_set


def create_change_set(self: cfn_responses.CloudFormationResponse) -> Any:
    result = _create_change_set(self)
    change_set = self.cloudformation_backend.describe_change_set(self._get_param("ChangeSetName"))
    assert change_set is not None  # describe_change_set raises for an unknown one
    change_set.rollback_configuration = self._get_param("RollbackConfiguration")  # type: ignore[attr-defined]  # 11.
    return result


cfn_responses.CloudFormationResponse.create_change_set = create_change_set  # type: ignore[method-assign]  # the patch


def continue_update_rollback(self: cfn_responses.CloudFormationResponse) -> EmptyResult:
    stack = self.cloudformation_backend.get_stack(self._get_param("StackName"))
    if stack.status != "UPDATE_ROLLBACK_FAILED":
        raise ValidationError(message=f"Stack is in {stack.status} state and can not continue the rollback")
    stack.status = "UPDATE_ROLLBACK_COMPLETE"
    return EmptyResult()


cfn_responses.CloudFormationResponse.continue_update_rollback = continue_update_rollback  # type: ignore[attr-defined]  # the patch


# The function under the classmethod, as for DBInstance.has_cfn_attr.
_create_key: Callable[..., kms_models.Key] = vars(kms_models.Key)["create_from_cloudformation_json"].__func__


def create_key_from_cloudformation_json(cls: type[kms_models.Key], /, resource_name: str, cloudformation_json: Any,
                                        account_id: str, region_name: str, **kwargs: Any) -> kms_models.Key:
    props = cloudformation_json.get("Properties", {})
    if props.get("Tags"):
        props = {**props, "Tags": [{"TagKey": t["Key"], "TagValue": t["Value"]} for t in props["Tags"]]}
        cloudformation_json = {**cloudformation_json, "Properties": props}
    return _create_key(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)


kms_models.Key.create_from_cloudformation_json = classmethod(  # type: ignore[method-assign, assignment]  # as above
    create_key_from_cloudformation_json)
