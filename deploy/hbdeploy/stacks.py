"""THE table of CloudFormation stacks of an environment.

Deploy, plan, execute, rollback and the tests read this table and nothing
else: the order (each stack imports only from stacks before it), the Region
each lives in, which carry a stack policy, which parameters come from
another stack's outputs or from the release, and which take the rollback
triggers. Stack names are <stackPrefix>-<environment>-<key>.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[1] / "aws" / "templates"


class Region(enum.Enum):
    PRIMARY = "the environment's Region"
    DR = "the DR Region (parameter file drRegion)"
    US_EAST_1 = "us-east-1"


@dataclass(frozen=True)
class FromOutput:
    """A parameter fed by an output of a stack deployed before."""

    stack: str
    output: str


@dataclass(frozen=True)
class StackSpec:
    key: str
    region: Region
    # Data or addresses that cannot be recreated: the stack must carry
    # STACK_POLICY (set by people, checked by every deploy).
    stateful: bool = False
    # Parameters from earlier stacks' outputs; only with a DR Region when dr_only.
    inputs: dict[str, FromOutput] = field(default_factory=dict)
    inputs_need_dr: bool = False
    # Parameters taken from another stack's section of the parameter file.
    shared: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Takes the release (AppVersion, checksums, image) and the capacity to
    # keep during its rolling update, and carries the rollback triggers.
    release: bool = False

    @property
    def template(self) -> Path:
        return TEMPLATES / f"{self.key}.yaml"


STACKS: tuple[StackSpec, ...] = (
    # Backup copies and the replication key in the DR Region (production).
    StackSpec("dr-vault", Region.DR),
    StackSpec("foundation", Region.PRIMARY),
    StackSpec("network", Region.PRIMARY, stateful=True),
    StackSpec(
        "database",
        Region.PRIMARY,
        stateful=True,
        inputs={
            "DrBackupVaultArn": FromOutput("dr-vault", "VaultArn"),
            "DrReplicationKmsKeyArn": FromOutput("dr-vault", "ReplicationKeyArn"),
        },
        inputs_need_dr=True,
    ),
    StackSpec("edge", Region.PRIMARY),
    # Route 53 publishes health-check metrics in us-east-1 only.
    StackSpec(
        "dns-alarm",
        Region.US_EAST_1,
        inputs={"HealthCheckId": FromOutput("edge", "HealthCheckId")},
        shared={"AlarmEmail": ("foundation", "AlarmEmail")},
    ),
    StackSpec("monitoring", Region.PRIMARY),
    StackSpec("app", Region.PRIMARY, release=True),
)

BY_KEY = {s.key: s for s in STACKS}

# The canary of one deploy: created before the fleet rolls, deleted after its
# verdict. Not a planned change set: the plan states its parameters, and the
# app stack's planned change set stays valid while it runs.
CANARY = StackSpec("canary", Region.PRIMARY)

# Stateful stacks may be updated in place, never have these replaced or deleted.
PROTECTED_TYPES = ("AWS::RDS::DBInstance", "AWS::Backup::BackupVault", "AWS::EC2::VPC", "AWS::EC2::Subnet")
STACK_POLICY = {
    "Statement": [
        {"Effect": "Allow", "Action": "Update:*", "Principal": "*", "Resource": "*"},
        {
            "Effect": "Deny",
            "Action": ["Update:Replace", "Update:Delete"],
            "Principal": "*",
            "Resource": "*",
            "Condition": {"StringEquals": {"ResourceType": list(PROTECTED_TYPES)}},
        },
    ]
}


def stack_policy_json() -> str:
    return json.dumps(STACK_POLICY, separators=(",", ":"))


def stack_name(prefix: str, env: str, key: str) -> str:
    return f"{prefix}-{env}-{key}"


def stacks_for(has_dr: bool) -> tuple[StackSpec, ...]:
    """The stacks of an environment, in order: dr-vault only with a DR Region."""
    return tuple(s for s in STACKS if s.region is not Region.DR or has_dr)
