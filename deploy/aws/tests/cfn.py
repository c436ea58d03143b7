"""Read CloudFormation YAML (short-form tags included) and the parameter files.

The short forms (!Ref, !Sub, !GetAtt, ...) become the long forms
CloudFormation itself expands them to, so the tests see one shape only.
"""

import json
import pathlib

import yaml

AWS_DIR = pathlib.Path(__file__).resolve().parents[1]
ROOT = AWS_DIR.parents[1]
TEMPLATES = AWS_DIR / "templates"
PARAMETERS = AWS_DIR / "parameters"
ENVIRONMENTS = ("staging", "production")
# Deployment order of deploy/aws/target.sh: a stack imports only from earlier ones.
STACK_ORDER = ("foundation", "network", "database", "edge", "monitoring", "app")


class _Loader(yaml.SafeLoader):
    pass


def _construct(loader, tag_suffix, node):
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


def load_template(name):
    path = TEMPLATES / f"{name}.yaml"
    return yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader subclass


def load_parameters(env):
    return json.loads((PARAMETERS / f"{env}.json").read_text())


def resources(template, rtype=None):
    return {
        k: v for k, v in template.get("Resources", {}).items() if rtype is None or v["Type"] == rtype
    }


def param_value(template, params, stack, name):
    """Value a parameter takes in an environment: parameter file, else default."""
    env_values = params["stacks"].get(stack, {})
    if name in env_values:
        return env_values[name]
    return template["Parameters"][name].get("Default")


def walk(node):
    """Every dict and list inside node, depth first."""
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def is_ref(node, name):
    return node == {"Ref": name}
