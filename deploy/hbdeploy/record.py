"""What was approved is what is checked.

ReleaseRecord: a release as an environment runs it (label, both checksums,
image). A deploy with --release computes it from the artifact; a deploy by
label and a rollback take it from a record written by the deploy role
(deployments/<env>/ in the artifacts bucket, which the plan role may not
write), an execution from the approved plan; before anything is deployed,
the objects in S3 are checked against it, byte for byte.

RollbackRecord: deployments/<env>/previous.json, the release the app stack
ran before the last deploy that replaced it, read from the app stack's own
parameters (what CloudFormation runs) before the first change.

Plan: the file --plan writes and --execute-plan executes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

RELEASE_PARAMETERS = ("AppVersion", "ArtifactSha256", "HostBundleSha256", "ImageId")


@dataclass(frozen=True)
class ReleaseRecord:
    version: str
    artifact_sha256: str
    host_bundle_sha256: str
    image_id: str

    def parameters(self) -> dict[str, str]:
        return {
            "AppVersion": self.version,
            "ArtifactSha256": self.artifact_sha256,
            "HostBundleSha256": self.host_bundle_sha256,
            "ImageId": self.image_id,
        }

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> ReleaseRecord | None:
        """From a stack's parameters or a record file; None when incomplete."""
        values = [params.get(k, "") for k in RELEASE_PARAMETERS]
        if not all(values):
            return None
        return cls(*values)

    def to_json(self) -> str:
        return json.dumps(self.parameters(), sort_keys=True)


@dataclass(frozen=True)
class RollbackRecord:
    release: ReleaseRecord
    replaced_by: str

    def to_json(self) -> str:
        return json.dumps({**self.release.parameters(), "ReplacedBy": self.replaced_by}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RollbackRecord | None:
        doc = json.loads(text)
        release = ReleaseRecord.from_parameters(doc) if isinstance(doc, dict) else None
        if release is None:
            return None
        return cls(release, str(doc.get("ReplacedBy", "")))


@dataclass
class Change:
    action: str
    logicalId: str  # noqa: N815 - the plan file's (and plan_summary.py's) field names
    type: str
    replacement: str

    def key(self) -> tuple[str, str, str, str]:
        return (self.action, self.logicalId, self.type, self.replacement)


@dataclass
class PlannedStack:
    key: str
    region: str
    stack: str
    type: str  # CREATE | UPDATE
    fingerprint: str
    changeSet: str | None  # noqa: N815
    outcome: str  # changes | none | failed
    reason: str | None
    provisional: bool
    after: str | None
    template: str
    templateSha256: str  # noqa: N815
    parameters: dict[str, str]
    rollbackConfiguration: dict[str, Any]  # noqa: N815
    changes: list[Change] = field(default_factory=list)


@dataclass
class PlannedCanary:
    """The canary the execution runs before the fleet is touched."""

    runs: bool
    reason: str  # why it runs or not, as reviewers read it
    stack: str
    weight: int
    window: int
    allowInconclusive: bool  # noqa: N815
    probeRate: float  # noqa: N815 - per side, requests/s
    baseline: str  # the release the canary is compared with
    template: str
    templateSha256: str  # noqa: N815


@dataclass
class Plan:
    environment: str
    region: str
    stackPrefix: str  # noqa: N815
    version: str
    artifactSha256: str  # noqa: N815
    hostBundleSha256: str  # noqa: N815
    imageId: str  # noqa: N815
    createdAt: str  # noqa: N815
    rollbackTriggers: bool  # noqa: N815
    canary: PlannedCanary
    stacks: list[PlannedStack]

    @property
    def release(self) -> ReleaseRecord:
        return ReleaseRecord(self.version, self.artifactSha256, self.hostBundleSha256, self.imageId)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Plan:
        doc = json.loads(text)
        stacks = [PlannedStack(**{**s, "changes": [Change(**c) for c in s.get("changes", [])]}) for s in doc["stacks"]]
        canary = PlannedCanary(**doc["canary"])
        return cls(**{**doc, "canary": canary, "stacks": stacks})
