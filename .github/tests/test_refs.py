"""One rule for which refs reach which environment, and the three places
that state it agreeing: each role-taking job's `if:` in cd.yml, the AWS
roles' trust policies (bootstrap.yaml, evaluated as IAM would for the
token GitHub presents), and the environments' deployment rules in
.github/PIPELINE.md.

Run: .venv/bin/python -m unittest discover -s .github/tests -p 'test_refs.py'
"""

from __future__ import annotations

import re
import sys
import unittest
from pathlib import Path
from typing import Any

from test_workflows import REF_RULE, SAMPLE_REFS, admits, creds, environment, expr, found, load, rule_admits, rule_env

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "aws" / "tests"))

from awspolicy import Deployed, Request, decide  # noqa: E402

REPO = "example/hello-birthday"


def subject(env_name: str, ref: str, with_ref: bool) -> str:
    """The `sub` claim of a job's OIDC token: GitHub's default for a job
    with an environment, or the customised template [repo, context, ref]."""
    sub = f"repo:{REPO}:environment:{env_name}"
    return f"{sub}:ref:{ref}" if with_ref else sub


def trusts(bootstrap_env: str, role: str, sub: str, with_ref: bool) -> bool:
    boot = Deployed("bootstrap", bootstrap_env, values={
        "GitHubRepository": REPO, "SubjectIncludesRef": "true" if with_ref else "false"})
    trust = [boot.properties(role)["AssumeRolePolicyDocument"]]
    provider = boot.properties(role)["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Federated"]
    req = Request("sts:AssumeRoleWithWebIdentity", boot.arn(role), {
        "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
        "token.actions.githubusercontent.com:sub": sub}, {"Federated": provider})
    return decide(req, resource=trust) == "Allow"


def documented_rules() -> dict[str, set[str]]:
    """environment -> its deployment branch and tag rules, from PIPELINE.md's settings table."""
    text = (ROOT / ".github" / "PIPELINE.md").read_text(encoding="utf-8")
    out = {}
    for name, rules in re.findall(r"\| environment `([\w-]+)` \|[^|]*?deployment branches and tags: ([^;|]+)", text):
        out[name] = {r.strip().strip("`") for r in rules.split(",")}
    return out


def role_jobs() -> list[tuple[str, dict[str, Any]]]:
    cd = load("cd.yml")
    return [(n, j) for n, j in cd["jobs"].items() if creds(j)]


def role_of(job: dict[str, Any]) -> str:
    """The bootstrap role a job assumes."""
    arn = str(found(creds(job), "credentials step")["with"]["role-to-assume"])
    return "PlanRole" if "AWS_PLAN_ROLE_ARN" in arn else "DeployRole"


def env_of(name: str, job: dict[str, Any]) -> str:
    return found(environment(job), f"{name}: environment")


class OneRule(unittest.TestCase):
    def test_the_jobs_admit_exactly_their_environments_refs(self) -> None:
        jobs = role_jobs()
        self.assertEqual({environment(j) for _, j in jobs}, {"staging", "production-plan", "production"})
        for name, job in jobs:
            for ref in SAMPLE_REFS:
                self.assertEqual(admits(expr(job.get("if")), ref), rule_admits(rule_env(job), ref), f"{name} {ref}")

    def test_the_roles_trust_the_same_refs_once_the_subject_carries_the_ref(self) -> None:
        for name, job in role_jobs():
            env_name = env_of(name, job)
            role = role_of(job)
            for ref in SAMPLE_REFS:
                self.assertEqual(trusts(rule_env(job), role, subject(env_name, ref, True), True),
                                 rule_admits(rule_env(job), ref), f"{name} ({role}) {ref}")

    def test_following_the_bootstrap_step_keeps_every_job_working(self) -> None:
        # SubjectIncludesRef=true must not refuse the plan job (or any other)
        # on a ref its rule admits.
        for name, job in role_jobs():
            role = role_of(job)
            admitted = [r for r in SAMPLE_REFS if rule_admits(rule_env(job), r)]
            self.assertTrue(admitted)
            for ref in admitted:
                self.assertTrue(trusts(rule_env(job), role, subject(env_of(name, job), ref, True), True), f"{name} {ref}")
                self.assertTrue(trusts(rule_env(job), role, subject(env_of(name, job), ref, False), False), name)

    def test_the_roles_trust_only_their_environment(self) -> None:
        for env, others in (("staging", ("production", "production-plan")),
                            ("production", ("staging", "staging-plan"))):
            for other in others:
                for ref in SAMPLE_REFS:
                    for with_ref in (True, False):
                        self.assertFalse(trusts(env, "DeployRole", subject(other, ref, with_ref), with_ref),
                                         f"{env} deploy role trusts {other}")
            self.assertFalse(trusts(env, "PlanRole", subject(env, "refs/tags/v1.4.0", False), False),
                             "the plan role trusts the deploy job's environment")
        # A pull request's token (no environment) never matches.
        self.assertFalse(trusts("staging", "DeployRole", f"repo:{REPO}:pull_request", False))

    def test_the_environments_deployment_rules_are_the_same_rule(self) -> None:
        # Without the ref in the subject, these GitHub settings restrict the ref.
        rules = documented_rules()
        self.assertEqual(set(rules), {"staging", "production-plan", "production"})
        for name, patterns in rules.items():
            env = "production" if name.startswith("production") else "staging"
            expected = {("main" if p == "refs/heads/main" else p.replace("refs/tags/", "")) for p in REF_RULE[env]}
            self.assertEqual(patterns, expected, name)


if __name__ == "__main__":
    unittest.main()
