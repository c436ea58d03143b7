"""Read CloudFormation YAML (short-form tags included) and the parameter files.

The short forms (!Ref, !Sub, !GetAtt, ...) become the long forms
CloudFormation itself expands them to, so the tests see one shape only.
"""

import json
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import yaml

AWS_DIR = pathlib.Path(__file__).resolve().parents[1]
ROOT = AWS_DIR.parents[1]
TEMPLATES = AWS_DIR / "templates"
PARAMETERS = AWS_DIR / "parameters"
ENVIRONMENTS = ("staging", "production")

sys.path.insert(0, str(ROOT / "deploy"))
from hbdeploy.stacks import CANARY, STACKS, Region  # noqa: E402 - the one table of stacks

# The stacks of the environment's own Region, in the deploy's order (a
# stack imports only from earlier ones); the table also has dr-vault (the
# DR Region) and dns-alarm (us-east-1).
STACK_ORDER = tuple(s.key for s in STACKS if s.region is Region.PRIMARY)
# Every stack a deploy may change, the per-deploy canary included.
ALL_STACKS = (*(s.key for s in STACKS), CANARY.key)

# A template, a parameter file, or any node inside them: parsed YAML / JSON,
# whose shape is CloudFormation's and not known to the type checker.
Template = dict[str, Any]
Node = Any


# yaml has no stubs in requirements-dev.txt (mypy.ini), so SafeLoader is Any.
class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # subclassing an untyped base
    pass


def _construct(loader: _Loader, tag_suffix: str, node: yaml.Node) -> dict[str, Node]:
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        return {"Fn::GetAtt": value.split(".", 1)}
    if tag_suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{tag_suffix}": value}


_Loader.add_multi_constructor("!", _construct)


def load_template(name: str) -> Template:
    path = TEMPLATES / f"{name}.yaml"
    template: Template = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    return template


def load_parameters(env: str) -> dict[str, Any]:
    params: dict[str, Any] = json.loads((PARAMETERS / f"{env}.json").read_text())
    return params


def resources(template: Template, rtype: str | None = None) -> dict[str, Node]:
    return {
        k: v for k, v in template.get("Resources", {}).items() if rtype is None or v["Type"] == rtype
    }


def param_value(template: Template, params: dict[str, Any], stack: str, name: str) -> Node:
    """Value a parameter takes in an environment: parameter file, else default."""
    env_values = params["stacks"].get(stack, {})
    if name in env_values:
        return env_values[name]
    return template["Parameters"][name].get("Default")


def walk(node: Node) -> Iterator[Node]:
    """Every dict and list inside node, depth first."""
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def is_ref(node: Node, name: str) -> bool:
    return bool(node == {"Ref": name})


NO_VALUE = object()


class Stack:
    """A template with parameter values: its conditions and rules evaluated,
    Fn::If resolved, Refs to parameters replaced by their values (other
    intrinsics left as they are), as CloudFormation would before creating."""

    def __init__(self, template: Template, region: str = "eu-west-1", **values: object) -> None:
        self.template = template
        self.region = region
        unknown = set(values) - set(template["Parameters"])
        assert not unknown, f"no such parameters: {unknown}"
        self.values = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
        self.values.update({k: str(v) for k, v in values.items()})

    def condition(self, name: str) -> bool:
        return self._eval(self.template["Conditions"][name])

    def _eval(self, node: Node) -> bool:
        (fn, arg), = node.items()
        if fn == "Fn::Equals":
            left: object = self.resolve(arg[0])
            right: object = self.resolve(arg[1])
            return left == right
        if fn == "Fn::Not":
            return not self._eval(arg[0])
        if fn == "Fn::And":
            return all(self._eval(a) for a in arg)
        if fn == "Fn::Or":
            return any(self._eval(a) for a in arg)
        if fn == "Condition":
            return self.condition(arg)
        raise AssertionError(f"not a condition: {node}")

    def resolve(self, node: Node) -> Node:
        if isinstance(node, list):
            return [v for v in (self.resolve(x) for x in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if set(node) == {"Ref"}:
            if node["Ref"] == "AWS::NoValue":
                return NO_VALUE
            if node["Ref"] == "AWS::Region":
                return self.region
            return self.values.get(node["Ref"], node)
        if set(node) == {"Fn::If"}:
            name, yes, no = node["Fn::If"]
            return self.resolve(yes if self.condition(name) else no)
        out = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

    def properties(self, logical_id: str) -> dict[str, Node] | None:
        """A resource's properties, or None when its condition leaves it out."""
        res = self.template["Resources"][logical_id]
        if "Condition" in res and not self.condition(res["Condition"]):
            return None
        props: dict[str, Node] = self.resolve(res.get("Properties", {}))
        return props

    def broken_rules(self) -> list[str]:
        """AssertDescription of every rule assertion these values break."""
        broken: list[str] = []
        for rule in self.template.get("Rules", {}).values():
            if "RuleCondition" in rule and not self._eval(rule["RuleCondition"]):
                continue
            broken += [a["AssertDescription"] for a in rule["Assertions"] if not self._eval(a["Assert"])]
        return broken
