"""Structural tests of the CI/CD workflows.

actionlint checks that the workflows are valid; these tests check that they
say what the release process promises:

- the production deploy comes after staging's smoke test and waits for the
  "production" environment (its required reviewers are the manual gate);
- every deploy, smoke test and rollback of an environment holds that
  environment's concurrency group and is never cancelled halfway;
- AWS access is by OIDC role assumption only (id-token: write where a role
  is assumed and nowhere else, no access keys);
- the artifact is built once and every deploy checks its SHA-256;
- hosted CI runs the stages of scripts/ci.sh, read from `--list`, so local
  and hosted CI cannot drift;
- every third-party action is pinned to a full commit SHA.

Each rule is also shown to fail on a workflow broken on purpose.

Run: .venv/bin/python -m unittest discover -s .github/tests -v
"""

from __future__ import annotations

import json
import re
import unittest
from pathlib import Path

import yaml

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
DEPLOY = re.compile(r"scripts/deploy\.sh\b[^\n]*--env\s+\"?([\w$]+)\"?")


def load(name: str) -> dict:
    with open(WORKFLOWS / name, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    # YAML 1.1 (PyYAML) reads the key `on` as the boolean true.
    if True in doc:
        doc["on"] = doc.pop(True)
    # A JSON round trip turns anchors/aliases into independent copies, so a
    # test can break one job without changing the jobs that share its steps.
    return json.loads(json.dumps(doc))


def needs(job: dict) -> list[str]:
    n = job.get("needs", [])
    return [n] if isinstance(n, str) else list(n)


def ancestors(jobs: dict, name: str) -> set[str]:
    seen: set[str] = set()
    todo = needs(jobs[name])
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += needs(jobs[n])
    return seen


def runs(job: dict) -> str:
    return "\n".join(s.get("run", "") for s in job.get("steps", []))


def uses(job: dict) -> list[str]:
    return [s["uses"] for s in job.get("steps", []) if "uses" in s]


def environment(job: dict) -> str | None:
    env = job.get("environment")
    return env.get("name") if isinstance(env, dict) else env


def deploy_env(job: dict) -> str | None:
    """The environment a job deploys to with scripts/deploy.sh, if any."""
    m = DEPLOY.search(runs(job))
    if not m:
        return None
    value = m.group(1)
    if value.startswith("$"):
        value = str(job.get("env", {}).get(value.lstrip("${").rstrip("}"), value))
    return value


def smoke_env(jobs: dict, name: str) -> str | None:
    """The environment a smoke job tests: that of the deploy it needs."""
    if "scripts/smoke.sh" not in runs(jobs[name]):
        return None
    envs = {deploy_env(jobs[a]) for a in needs(jobs[name])} - {None}
    return envs.pop() if len(envs) == 1 else "ambiguous"


def pin_problems(doc: dict, where: str) -> list[str]:
    problems = []
    for name, job in doc["jobs"].items():
        refs = uses(job) + ([job["uses"]] if "uses" in job else [])
        for ref in refs:
            if not ref.startswith("./") and not SHA_PIN.match(ref):
                problems.append(f"{where}:{name}: action {ref} is not pinned to a commit SHA")
    return problems


def ci_problems(doc: dict) -> list[str]:
    problems = pin_problems(doc, "ci")
    on = doc.get("on", {})
    for trigger in ("pull_request", "push", "workflow_call"):
        if trigger not in on:
            problems.append(f"ci: not triggered by {trigger}")
    if doc.get("permissions") != {"contents": "read"}:
        problems.append("ci: workflow permissions must be exactly contents: read")
    jobs = doc["jobs"]
    listers = [n for n, j in jobs.items() if "scripts/ci.sh --list" in runs(j)]
    if len(listers) != 1:
        problems.append("ci: exactly one job must read the stages from `scripts/ci.sh --list`")
        return problems
    lister = listers[0]
    stage_jobs = [
        n for n, j in jobs.items()
        if re.search(r'scripts/ci\.sh "\$\{?STAGE\}?"', runs(j))
    ]
    if len(stage_jobs) != 1:
        problems.append("ci: exactly one job must run `scripts/ci.sh \"$STAGE\"`")
        return problems
    job = jobs[stage_jobs[0]]
    matrix = job.get("strategy", {}).get("matrix", {}).get("stage")
    if not (isinstance(matrix, str) and f"needs.{lister}.outputs." in matrix and "fromJSON" in matrix):
        problems.append("ci: the stage matrix must come from the --list job's output (fromJSON)")
    if lister not in needs(job):
        problems.append("ci: the stage job must need the --list job")
    step_env = [s.get("env", {}).get("STAGE") for s in job["steps"] if "scripts/ci.sh" in s.get("run", "")]
    if step_env != ["${{ matrix.stage }}"]:
        problems.append("ci: STAGE must be passed from matrix.stage through env (no expression in run:)")
    if "setup.sh dev" not in runs(job):
        problems.append("ci: the stage job must install its tools with scripts/setup.sh dev, as .ci/run does")
    if not any(".github/check.sh advisories" in runs(j) for j in jobs.values()):
        problems.append("ci: no job checks the RustSec advisories (.github/check.sh advisories)")
    return problems


def cd_problems(doc: dict) -> list[str]:
    problems = pin_problems(doc, "cd")
    jobs = doc["jobs"]
    on = doc.get("on", {})
    if "main" not in on.get("push", {}).get("branches", []) or not on.get("push", {}).get("tags"):
        problems.append("cd: must run on pushes to main and on tags")
    top = doc.get("permissions", {})
    if top.get("id-token"):
        problems.append("cd: id-token must not be granted workflow-wide, only to jobs that assume a role")
    text = json.dumps(doc)
    for forbidden in ("aws-access-key-id", "aws-secret-access-key", "AWS_SECRET_ACCESS_KEY", "secrets.AWS"):
        if forbidden in text:
            problems.append(f"cd: long-lived AWS keys referenced ({forbidden})")

    # Built once, by a job that needs CI; nothing else compiles.
    builders = [n for n, j in jobs.items() if "scripts/release.sh" in runs(j)]
    if len(builders) != 1:
        problems.append(f"cd: exactly one job must build the release, found {builders}")
    else:
        build = builders[0]
        ci = [n for n, j in jobs.items() if j.get("uses") == "./.github/workflows/ci.yml"]
        if not ci or ci[0] not in needs(jobs[build]):
            problems.append("cd: the build job must need the CI workflow (./.github/workflows/ci.yml)")
    for name, job in jobs.items():
        if name not in builders and re.search(r"\bcargo (build|install)\b|release\.sh", runs(job)):
            problems.append(f"cd:{name}: rebuilds instead of promoting the built artifact")

    deployers = {n: deploy_env(j) for n, j in jobs.items() if deploy_env(j)}
    smokers = {n: smoke_env(jobs, n) for n in jobs if smoke_env(jobs, n)}
    staging_smoke = [n for n, e in smokers.items() if e == "staging"]
    if not staging_smoke:
        problems.append("cd: no job smoke-tests staging after deploying it")
    if not any(e == "production" for e in smokers.values()):
        problems.append("cd: no job smoke-tests production after deploying it")

    for name, env in deployers.items():
        job = jobs[name]
        # Same artifact: downloaded, checksum verified, before deploy.sh.
        # A rollback redeploys the previous release, already in the bucket.
        is_rollback = "PREVIOUS" in runs(job)
        if not is_rollback:
            body = runs(job)
            if not any(u.startswith("actions/download-artifact@") for u in uses(job)):
                problems.append(f"cd:{name}: does not download the built artifact")
            if "sha256sum -c" not in body or body.index("sha256sum -c") > body.index("scripts/deploy.sh"):
                problems.append(f"cd:{name}: does not verify the artifact's SHA-256 before deploying")
        # OIDC role assumption, and the right to ask for the token.
        creds = [s for s in job.get("steps", []) if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")]
        if not creds or "role-to-assume" not in creds[0].get("with", {}):
            problems.append(f"cd:{name}: must assume an AWS role (configure-aws-credentials role-to-assume)")
        if job.get("permissions", {}).get("id-token") != "write":
            problems.append(f"cd:{name}: needs permissions id-token: write for OIDC")
        if env == "production":
            # The gate: after staging's smoke test, behind the environment.
            anc = ancestors(jobs, name)
            if not any(s in anc for s in staging_smoke):
                problems.append(f"cd:{name}: deploys to production without staging's smoke test before it")
            if environment(job) not in ("production", "production-rollback"):
                problems.append(f"cd:{name}: deploys to production outside the production environments")
        elif environment(job) != env:
            problems.append(f"cd:{name}: deploys to {env} outside the {env} environment")

    forward = [n for n, e in deployers.items() if e == "production" and "PREVIOUS" not in runs(jobs[n])]
    if not forward:
        problems.append("cd: no job deploys the new release to production")
    for name in forward:
        if environment(jobs[name]) != "production":
            problems.append(f"cd:{name}: the production deploy must use the 'production' environment (manual approval)")
        if not set(needs(jobs[name])) & set(staging_smoke):
            problems.append(f"cd:{name}: the production deploy must need staging's smoke job directly")
    for name, job in jobs.items():
        if environment(job) == "production" and name not in forward:
            problems.append(f"cd:{name}: only the production deploy may use the 'production' environment")

    # No overlap: deploy, smoke and rollback of one environment share a queue.
    for name, env in {**deployers, **smokers}.items():
        conc = jobs[name].get("concurrency")
        if not isinstance(conc, dict) or conc.get("group") != f"deploy-{env}":
            problems.append(f"cd:{name}: must hold concurrency group deploy-{env}")
        elif conc.get("cancel-in-progress") is not False:
            problems.append(f"cd:{name}: a deploy must never be cancelled halfway (cancel-in-progress: false)")

    # id-token only where a role is assumed.
    for name, job in jobs.items():
        if job.get("permissions", {}).get("id-token") == "write" and name not in deployers:
            problems.append(f"cd:{name}: has id-token: write but assumes no role")

    # Rollback: runs when that environment's deploy or smoke test failed.
    for env in ("staging", "production"):
        rollbacks = [n for n, e in deployers.items() if e == env and "PREVIOUS" in runs(jobs[n])]
        if not rollbacks:
            problems.append(f"cd: no rollback job for {env}")
        for name in rollbacks:
            cond = str(jobs[name].get("if", ""))
            watched = [n for n in needs(jobs[name]) if n in deployers or n in smokers]
            if "always()" not in cond or not all(f"needs.{n}.result == 'failure'" in cond for n in watched) or len(watched) < 2:
                problems.append(f"cd:{name}: must run when {env}'s deploy or smoke job failed")
    return problems


class WorkflowTests(unittest.TestCase):
    def setUp(self) -> None:
        self.ci = load("ci.yml")
        self.cd = load("cd.yml")

    def assertProblem(self, problems: list[str], fragment: str) -> None:
        self.assertTrue(
            any(fragment in p for p in problems),
            f"expected a problem containing {fragment!r}, got {problems}",
        )

    # The real workflows.
    def test_ci_workflow(self) -> None:
        self.assertEqual(ci_problems(self.ci), [])

    def test_cd_workflow(self) -> None:
        self.assertEqual(cd_problems(self.cd), [])

    def test_gate_order_spelled_out(self) -> None:
        jobs = self.cd["jobs"]
        self.assertIn("smoke-staging", needs(jobs["deploy-production"]))
        self.assertEqual(environment(jobs["deploy-production"]), "production")
        self.assertIn("deploy-staging", needs(jobs["smoke-staging"]))
        self.assertIn("deploy-production", needs(jobs["smoke-production"]))
        self.assertEqual(
            ancestors(jobs, "deploy-production"),
            {"ci", "build", "deploy-staging", "smoke-staging"},
        )

    # The same rules catch broken workflows.
    def test_rejects_production_without_staging_smoke(self) -> None:
        self.cd["jobs"]["deploy-production"]["needs"] = ["build"]
        self.assertProblem(cd_problems(self.cd), "without staging's smoke test")

    def test_rejects_production_without_environment_gate(self) -> None:
        del self.cd["jobs"]["deploy-production"]["environment"]
        self.assertProblem(cd_problems(self.cd), "must use the 'production' environment")

    def test_rejects_overlapping_deploys(self) -> None:
        del self.cd["jobs"]["smoke-staging"]["concurrency"]
        self.assertProblem(cd_problems(self.cd), "smoke-staging: must hold concurrency group deploy-staging")
        self.cd["jobs"]["deploy-production"]["concurrency"]["cancel-in-progress"] = True
        self.assertProblem(cd_problems(self.cd), "never be cancelled halfway")

    def test_rejects_long_lived_keys_and_broad_oidc(self) -> None:
        step = next(s for s in self.cd["jobs"]["deploy-staging"]["steps"] if "configure-aws-credentials" in s.get("uses", ""))
        step["with"]["aws-access-key-id"] = "${{ secrets.AWS_ACCESS_KEY_ID }}"
        self.assertProblem(cd_problems(self.cd), "long-lived AWS keys")
        self.cd = load("cd.yml")
        self.cd["permissions"]["id-token"] = "write"
        self.assertProblem(cd_problems(self.cd), "not be granted workflow-wide")
        self.cd = load("cd.yml")
        del self.cd["jobs"]["deploy-production"]["permissions"]["id-token"]
        self.assertProblem(cd_problems(self.cd), "deploy-production: needs permissions id-token: write")

    def test_rejects_rebuilding_or_unverified_artifact(self) -> None:
        self.cd["jobs"]["deploy-production"]["steps"].insert(0, {"run": "cargo build --release"})
        self.assertProblem(cd_problems(self.cd), "deploy-production: rebuilds")
        self.cd = load("cd.yml")
        for s in self.cd["jobs"]["deploy-staging"]["steps"]:
            if "sha256sum -c" in s.get("run", ""):
                s["run"] = "true"
        self.assertProblem(cd_problems(self.cd), "deploy-staging: does not verify")

    def test_rejects_missing_rollback(self) -> None:
        self.cd["jobs"]["rollback-production"]["if"] = "failure()"
        self.assertProblem(cd_problems(self.cd), "rollback-production: must run when")
        del self.cd["jobs"]["rollback-staging"]
        self.assertProblem(cd_problems(self.cd), "no rollback job for staging")

    def test_rejects_unpinned_action(self) -> None:
        self.cd["jobs"]["build"]["steps"][0]["uses"] = "actions/checkout@v4"
        self.assertProblem(cd_problems(self.cd), "not pinned to a commit SHA")

    def test_rejects_hardcoded_stage_list(self) -> None:
        self.ci["jobs"]["stage"]["strategy"]["matrix"]["stage"] = ["fmt", "test"]
        self.assertProblem(ci_problems(self.ci), "must come from the --list job")

    def test_rejects_ci_without_advisories(self) -> None:
        del self.ci["jobs"]["advisories"]
        self.assertProblem(ci_problems(self.ci), "RustSec advisories")


if __name__ == "__main__":
    unittest.main()
