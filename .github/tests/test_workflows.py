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
from typing import Any, TypeVar

import yaml

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
DEPLOY = re.compile(r"scripts/deploy\.sh\b[^\n]*--env\s+\"?([\w$]+)\"?")


T = TypeVar("T")


def found(value: T | None, what: str) -> T:
    """`value`, which the checked file must have: its absence is a finding."""
    if value is None:
        raise AssertionError(f"not found: {what}")
    return value


def load(name: str) -> dict[str, Any]:
    with open(WORKFLOWS / name, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    # YAML 1.1 (PyYAML) reads the key `on` as the boolean true.
    if True in doc:
        doc["on"] = doc.pop(True)
    # A JSON round trip turns anchors/aliases into independent copies, so a
    # test can break one job without changing the jobs that share its steps.
    copy: dict[str, Any] = json.loads(json.dumps(doc))
    return copy


def needs(job: dict[str, Any]) -> list[str]:
    n = job.get("needs", [])
    return [n] if isinstance(n, str) else list(n)


def ancestors(jobs: dict[str, Any], name: str) -> set[str]:
    seen: set[str] = set()
    todo = needs(jobs[name])
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += needs(jobs[n])
    return seen


def runs(job: dict[str, Any]) -> str:
    return "\n".join(s.get("run", "") for s in job.get("steps", []))


def uses(job: dict[str, Any]) -> list[str]:
    return [s["uses"] for s in job.get("steps", []) if "uses" in s]


def environment(job: dict[str, Any]) -> str | None:
    env = job.get("environment")
    return env.get("name") if isinstance(env, dict) else env


def deploy_env(job: dict[str, Any]) -> str | None:
    """The environment a job deploys to with scripts/deploy.sh, if any."""
    m = DEPLOY.search(runs(job))
    if not m:
        return None
    value = m.group(1)
    if value.startswith("$"):
        value = str(job.get("env", {}).get(value.lstrip("${").rstrip("}"), value))
    return value


def smoke_env(jobs: dict[str, Any], name: str) -> str | None:
    """The environment a smoke job tests: that of the deploy it needs."""
    if "scripts/smoke.sh" not in runs(jobs[name]):
        return None
    envs = {deploy_env(jobs[a]) for a in needs(jobs[name])} - {None}
    return envs.pop() if len(envs) == 1 else "ambiguous"


def pin_problems(doc: dict[str, Any], where: str) -> list[str]:
    problems = []
    for name, job in doc["jobs"].items():
        refs = uses(job) + ([job["uses"]] if "uses" in job else [])
        for ref in refs:
            if not ref.startswith("./") and not SHA_PIN.match(ref):
                problems.append(f"{where}:{name}: action {ref} is not pinned to a commit SHA")
    return problems


def ci_problems(doc: dict[str, Any]) -> list[str]:
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


REF_GUARD = "github.ref == 'refs/heads/main' || startsWith(github.ref, 'refs/tags/v')"
# The one rule for which refs reach which environment: the same in each
# role-taking job's `if:` (here), in the roles' trust policies
# (deploy/aws/templates/bootstrap.yaml) and in .github/PIPELINE.md's
# environment settings; test_refs.py checks the three agree.
REF_RULE = {"staging": ("refs/heads/main", "refs/tags/v*"), "production": ("refs/tags/v*",)}
SAMPLE_REFS = ("refs/heads/main", "refs/heads/feature", "refs/heads/vnext", "refs/tags/v1.4.0", "refs/tags/release-1",
               "refs/pull/7/merge")
ROOT = WORKFLOWS.parents[1]
# Worst case of one deploy job, in minutes (.github/PIPELINE.md, "Timeouts"):
# three stack waits that each reach the AWS CLI waiter's 60-minute bound
# (a database change, an app update that fails and is rolled back by
# CloudFormation, the job's own rollback), plus 16 for the other stacks'
# change sets, the smoke test and the staging load with its metrics wait.
WORST_CASE_DEPLOY_MINUTES = 3 * 60 + 16


def expr(value: object) -> str:
    v = str(value or "").strip()
    if v.startswith("${{") and v.endswith("}}"):
        v = v[3:-2].strip()
    return v


def admits(cond: str, ref: str, event: str = "push") -> bool:
    """GitHub's evaluation of an `if:` made of github.ref / github.event_name
    comparisons, startsWith, !, && and || (all the ref guards here use).
    An empty condition admits everything."""
    if not cond:
        return True
    text = cond
    text = re.sub(r"startsWith\(\s*github\.ref\s*,\s*'([^']*)'\s*\)", lambda m: str(ref.startswith(m.group(1))), text)
    text = re.sub(r"github\.ref\s*==\s*'([^']*)'", lambda m: str(ref == m.group(1)), text)
    text = re.sub(r"github\.ref\s*!=\s*'([^']*)'", lambda m: str(ref != m.group(1)), text)
    text = re.sub(r"github\.event_name\s*==\s*'([^']*)'", lambda m: str(event == m.group(1)), text)
    text = text.replace("&&", " and ").replace("||", " or ").replace("!", " not ")
    if not re.fullmatch(r"[\sA-Za-z()]*", text) or set(re.findall(r"[A-Za-z]+", text)) - {"True", "False", "and", "or",
                                                                                         "not"}:
        return True  # something this model cannot read: treat as admitting all, which fails the rule
    return bool(eval(text))  # noqa: S307 - only True/False/and/or/not remain


def rule_admits(env: str, ref: str) -> bool:
    return any(ref.startswith(p[:-1]) if p.endswith("*") else ref == p for p in REF_RULE[env])


def rule_env(job: dict[str, Any]) -> str:
    """staging or production: whose rule applies (production-plan is production's)."""
    return "production" if (environment(job) or "").startswith("production") else "staging"


def guarded(job: dict[str, Any]) -> bool:
    """The job's `if` admits exactly the refs of its environment's rule, on
    a push and on workflow_dispatch alike."""
    cond = expr(job.get("if"))
    env = rule_env(job)
    return all(admits(cond, ref, event) == rule_admits(env, ref)
               for ref in SAMPLE_REFS for event in ("push", "workflow_dispatch"))


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = job.get("steps", [])
    return out


def step_running(job: dict[str, Any], pattern: str) -> dict[str, Any] | None:
    return next((s for s in steps(job) if re.search(pattern, s.get("run", ""))), None)


def creds(job: dict[str, Any]) -> dict[str, Any] | None:
    return next((s for s in steps(job) if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")), None)


def slo_thresholds() -> tuple[str, str]:
    """(availability objective as a ratio, latency threshold in ms) from docs/slo.md."""
    text = (ROOT / "docs" / "slo.md").read_text(encoding="utf-8")
    avail = found(re.search(r"\| availability \|[^|]*\| ([\d.]+)% \|", text), "the availability SLO").group(1)
    latency = found(re.search(r"answered within (\d+) ms", text), "the latency SLO").group(1)
    return str(round(float(avail) / 100, 6)), latency


def cd_problems(doc: dict[str, Any]) -> list[str]:
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
        return problems
    build = builders[0]
    ci = [n for n, j in jobs.items() if j.get("uses") == "./.github/workflows/ci.yml"]
    if not ci or ci[0] not in needs(jobs[build]):
        problems.append("cd: the build job must need the CI workflow (./.github/workflows/ci.yml)")
    for name, job in jobs.items():
        if name not in builders and re.search(r"\bcargo (build|install)\b|release\.sh", runs(job)):
            problems.append(f"cd:{name}: rebuilds instead of promoting the built artifact")

    # Roles: OIDC only, and only for main and v* tags, checked in the workflow.
    role_jobs = [n for n, j in jobs.items() if creds(j)]
    for name, job in jobs.items():
        has_token = job.get("permissions", {}).get("id-token") == "write"
        if has_token and name not in role_jobs:
            problems.append(f"cd:{name}: has id-token: write but assumes no role")
        if name in role_jobs:
            if not has_token:
                problems.append(f"cd:{name}: needs permissions id-token: write for OIDC")
            if "role-to-assume" not in found(creds(job), "credentials step").get("with", {}):
                problems.append(f"cd:{name}: must assume an AWS role (configure-aws-credentials role-to-assume)")
            if not guarded(job):
                problems.append(f"cd:{name}: takes an AWS role without an `if:` admitting exactly "
                                f"{' and '.join(REF_RULE[rule_env(job)])} (.github/PIPELINE.md, Roles and refs)")

    # One job per environment deploys, tests and rolls back: nothing of
    # another run can land in between, and no separate job can be cancelled
    # while pending.
    units = {}
    for env in ("staging", "production"):
        forward = [n for n, j in jobs.items()
                   if re.search(rf"scripts/deploy\.sh\b[^\n]*--env \"?(\$DEPLOY_ENV|{env})\b", runs(j))
                   and (j.get("env", {}).get("DEPLOY_ENV", env) == env)
                   and re.search(r"--release |--execute-plan ", runs(j)) and "--plan " not in runs(j)]
        if len(forward) != 1:
            problems.append(f"cd: exactly one job must deploy {env}, found {forward}")
            continue
        name = forward[0]
        job = jobs[name]
        units[env] = name
        deploy_step = step_running(job, r"scripts/deploy\.sh\b[^\n]*(--release |--execute-plan )") or {}
        if not deploy_step.get("id"):
            problems.append(f"cd:{name}: the deploy step needs an id (the rollback step tests its outcome)")
        if "scripts/smoke.sh" not in runs(job):
            problems.append(f"cd:{name}: the {env} smoke test must run in the job that deployed it")
        rollback = step_running(job, r"scripts/deploy\.sh\b[^\n]*--rollback\b")
        if not rollback:
            problems.append(f"cd:{name}: the {env} rollback must run in the job that deployed it")
        else:
            cond = expr(rollback.get("if"))
            for needed in ("failure()", "cancelled()", f"steps.{deploy_step.get('id')}.outcome != 'skipped'"):
                if needed not in cond:
                    problems.append(f"cd:{name}: the rollback step must run on failure or cancellation "
                                    f"after the deploy started (missing {needed})")
            if '--version "$RELEASE"' not in rollback["run"]:
                problems.append(f"cd:{name}: the rollback must name this job's release (--version \"$RELEASE\") "
                                "so it never undoes another run's deploy")
            if "--no-rollback-triggers" not in rollback["run"]:
                problems.append(f"cd:{name}: the rollback must run without rollback triggers")
            if steps(job).index(rollback) != len(steps(job)) - 1:
                problems.append(f"cd:{name}: the rollback must be the last step")
        if re.search(r"\|\| true", runs(job)) or "PREVIOUS" in runs(job):
            problems.append(f"cd:{name}: the rollback target comes from the deployment record, not the live service")
        conc = job.get("concurrency")
        if not isinstance(conc, dict) or conc.get("group") != f"deploy-{env}":
            problems.append(f"cd:{name}: must hold concurrency group deploy-{env}")
        elif conc.get("cancel-in-progress") is not False:
            problems.append(f"cd:{name}: a deploy must never be cancelled halfway (cancel-in-progress: false)")
        if environment(job) != env:
            problems.append(f"cd:{name}: deploys to {env} outside the {env} environment")
        # Time: the job outlasts the deploy's bounded waits; the session outlasts the job.
        minutes = int(job.get("timeout-minutes", 360))
        job_creds = creds(job)
        session = int(job_creds.get("with", {}).get("role-duration-seconds", 3600)) if job_creds else 0
        if minutes < WORST_CASE_DEPLOY_MINUTES:
            problems.append(f"cd:{name}: timeout-minutes {minutes} below the worst case {WORST_CASE_DEPLOY_MINUTES}")
        if session < minutes * 60:
            problems.append(f"cd:{name}: role-duration-seconds {session} shorter than the job ({minutes} min)")
    for name, job in jobs.items():
        if name not in units.values() and re.search(r"scripts/(deploy|smoke)\.sh\b", runs(job)) \
                and "--plan " not in runs(job):
            problems.append(f"cd:{name}: deploys or tests an environment outside its deploy job")
    if set(units) != {"staging", "production"}:
        return problems
    staging, production = units["staging"], units["production"]

    # Staging: the artifact verified before the deploy; load against the SLOs.
    body = runs(jobs[staging])
    if not any(u.startswith("actions/download-artifact@") for u in uses(jobs[staging])):
        problems.append(f"cd:{staging}: does not download the built artifact")
    if "sha256sum -c" not in body or body.index("sha256sum -c") > body.index("scripts/deploy.sh"):
        problems.append(f"cd:{staging}: does not verify the artifact's SHA-256 before deploying")
    avail, latency = slo_thresholds()
    load = step_running(jobs[staging], r"\.github/scripts/staging_load\.py")
    if not load:
        problems.append(f"cd:{staging}: no load test on staging (.github/scripts/staging_load.py)")
    else:
        for needed in (f"--availability {avail}", f"--p99-ms {latency}", "--load-balancer"):
            if needed not in load["run"]:
                problems.append(f"cd:{staging}: the staging load must use {needed} (docs/slo.md)")
        deploy = step_running(jobs[staging], "scripts/deploy.sh")
        if deploy is None or steps(jobs[staging]).index(load) < steps(jobs[staging]).index(deploy):
            problems.append(f"cd:{staging}: the load runs before the deploy")

    # Production: planned before approval, executed exactly after it.
    planners = [n for n, j in jobs.items() if re.search(r"scripts/deploy\.sh\b[^\n]*--plan (\S+)", runs(j))]
    if len(planners) != 1:
        problems.append(f"cd: exactly one job must plan production (deploy.sh --plan), found {planners}")
        return problems
    plan = planners[0]
    pjob = jobs[plan]
    if pjob.get("env", {}).get("DEPLOY_ENV") != "production":
        problems.append(f"cd:{plan}: must plan production")
    if staging not in ancestors(jobs, plan):
        problems.append(f"cd:{plan}: plans production before staging's tests passed")
    if environment(pjob) == "production":
        problems.append(f"cd:{plan}: the plan must come before the approval, outside the 'production' environment")
    if "vars.AWS_PLAN_ROLE_ARN" not in str((creds(pjob) or {}).get("with", {}).get("role-to-assume")):
        problems.append(f"cd:{plan}: must plan with the plan role (vars.AWS_PLAN_ROLE_ARN), which cannot execute")
    summary = step_running(pjob, r"plan_summary\.py[^\n]*>> \"\$GITHUB_STEP_SUMMARY\"")
    if not summary or "STAGING_URL" not in summary["run"] or "needs." not in str(pjob.get("env", {}).get("STAGING_URL")):
        problems.append(f"cd:{plan}: the run summary must show the plan and the manual staging tests with the staging URL")
    plan_file = found(re.search(r"--plan (\S+)", runs(pjob)), f"cd:{plan}: a --plan file").group(1)
    uploads = [s for s in steps(pjob) if s.get("uses", "").startswith("actions/upload-artifact@")]
    if not uploads or uploads[0]["with"].get("path") != plan_file:
        problems.append(f"cd:{plan}: must upload the plan {plan_file}")
    job = jobs[production]
    if plan not in needs(job):
        problems.append(f"cd:{production}: must need the plan job")
    if environment(job) != "production":
        problems.append(f"cd:{production}: the production deploy must use the 'production' environment (manual approval)")
    if f"--execute-plan {plan_file}" not in runs(job):
        problems.append(f"cd:{production}: must execute the approved plan ({plan_file}), nothing else")
    downloads = [s for s in steps(job) if s.get("uses", "").startswith("actions/download-artifact@")]
    if not uploads or not any(d["with"].get("name") == uploads[0]["with"].get("name") for d in downloads):
        problems.append(f"cd:{production}: must download the plan artifact")
    if ".artifactSha256" not in runs(job) or "$SHA256" not in runs(job):
        problems.append(f"cd:{production}: must check that the plan is for the artifact built")
    if "vars.AWS_DEPLOY_ROLE_ARN" not in str((creds(job) or {}).get("with", {}).get("role-to-assume")):
        problems.append(f"cd:{production}: must execute with the deploy role (vars.AWS_DEPLOY_ROLE_ARN)")
    for name, j in jobs.items():
        if environment(j) == "production" and name != production:
            problems.append(f"cd:{name}: only the production deploy may use the 'production' environment")
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
        self.assertEqual(needs(jobs["staging"]), ["build"])
        self.assertEqual(ancestors(jobs, "plan-production"), {"ci", "build", "staging"})
        self.assertEqual(ancestors(jobs, "production"), {"ci", "build", "staging", "plan-production"})
        self.assertEqual(environment(jobs["production"]), "production")

    # The same rules catch broken workflows.
    def test_rejects_production_without_staging(self) -> None:
        self.cd["jobs"]["plan-production"]["needs"] = ["build"]
        self.assertProblem(cd_problems(self.cd), "plans production before staging's tests passed")

    def test_rejects_production_without_environment_gate(self) -> None:
        del self.cd["jobs"]["production"]["environment"]
        self.assertProblem(cd_problems(self.cd), "must use the 'production' environment")

    def test_rejects_deploy_test_and_rollback_in_separate_jobs(self) -> None:
        # Today's workflow before this rule: smoke and rollback jobs apart
        # from the deploy, each queueing on its own.
        job = self.cd["jobs"]["staging"]
        smoke = next(s for s in job["steps"] if "scripts/smoke.sh" in s.get("run", ""))
        job["steps"].remove(smoke)
        self.cd["jobs"]["smoke-staging"] = {"needs": ["staging"], "runs-on": "ubuntu-24.04", "steps": [smoke]}
        problems = cd_problems(self.cd)
        self.assertProblem(problems, "staging: the staging smoke test must run in the job that deployed it")
        self.assertProblem(problems, "smoke-staging: deploys or tests an environment outside its deploy job")

    def test_rejects_a_rollback_that_is_not_this_jobs_or_keeps_triggers(self) -> None:
        rollback = self.cd["jobs"]["production"]["steps"][-1]
        rollback["if"] = "${{ failure() }}"
        rollback["run"] = 'scripts/deploy.sh --target aws --env "$DEPLOY_ENV" --rollback'
        problems = cd_problems(self.cd)
        self.assertProblem(problems, "missing cancelled()")
        self.assertProblem(problems, "never undoes another run's deploy")
        self.assertProblem(problems, "without rollback triggers")

    def test_rejects_a_rollback_target_read_from_the_live_service(self) -> None:
        read_live = 'previous=$(curl -fsS "$BASE_URL/healthz" | jq -r .release || true)'
        self.cd["jobs"]["staging"]["steps"].insert(3, {"run": read_live})
        self.assertProblem(cd_problems(self.cd), "comes from the deployment record")

    def test_rejects_overlapping_deploys(self) -> None:
        del self.cd["jobs"]["staging"]["concurrency"]
        self.assertProblem(cd_problems(self.cd), "staging: must hold concurrency group deploy-staging")
        self.cd["jobs"]["production"]["concurrency"]["cancel-in-progress"] = True
        self.assertProblem(cd_problems(self.cd), "never be cancelled halfway")

    def test_rejects_roles_for_any_branch(self) -> None:
        for name in ("staging", "plan-production", "production"):
            self.cd = load("cd.yml")
            del self.cd["jobs"][name]["if"]
            self.assertProblem(cd_problems(self.cd), f"{name}: takes an AWS role without")
        self.cd = load("cd.yml")
        self.cd["jobs"]["staging"]["if"] = f"${{{{ {REF_GUARD} || github.event_name == 'workflow_dispatch' }}}}"
        self.assertProblem(cd_problems(self.cd), "staging: takes an AWS role without")
        # Production from main: the rule says release tags only.
        for name in ("plan-production", "production"):
            self.cd = load("cd.yml")
            self.cd["jobs"][name]["if"] = f"${{{{ {REF_GUARD} }}}}"
            self.assertProblem(cd_problems(self.cd), f"{name}: takes an AWS role without")

    def test_rejects_blind_approval(self) -> None:
        del self.cd["jobs"]["plan-production"]
        self.cd["jobs"]["production"]["needs"] = ["build", "staging"]
        self.assertProblem(cd_problems(self.cd), "exactly one job must plan production")
        self.cd = load("cd.yml")
        for s in self.cd["jobs"]["production"]["steps"]:
            if "--execute-plan" in s.get("run", ""):
                s["run"] = 'scripts/deploy.sh --target aws --env "$DEPLOY_ENV" --version "$RELEASE"'
        self.assertProblem(cd_problems(self.cd), "exactly one job must deploy production")
        self.cd = load("cd.yml")
        self.cd["jobs"]["plan-production"]["environment"]["name"] = "production"
        self.assertProblem(cd_problems(self.cd), "the plan must come before the approval")
        self.cd = load("cd.yml")
        step = found(creds(self.cd["jobs"]["plan-production"]), "credentials step")
        step["with"]["role-to-assume"] = "${{ vars.AWS_DEPLOY_ROLE_ARN }}"
        self.assertProblem(cd_problems(self.cd), "must plan with the plan role")
        self.cd = load("cd.yml")
        self.cd["jobs"]["plan-production"]["steps"] = [
            s for s in self.cd["jobs"]["plan-production"]["steps"] if "plan_summary" not in s.get("run", "")]
        self.assertProblem(cd_problems(self.cd), "the run summary must show the plan")

    def test_rejects_staging_tests_without_the_slo_load(self) -> None:
        job = self.cd["jobs"]["staging"]
        load_step = next(s for s in job["steps"] if "staging_load.py" in s.get("run", ""))
        load_step["run"] = load_step["run"].replace("--availability 0.999", "--availability 0.99")
        self.assertProblem(cd_problems(self.cd), "--availability 0.999")
        job["steps"].remove(load_step)
        self.assertProblem(cd_problems(self.cd), "no load test on staging")

    def test_rejects_short_timeouts_and_sessions(self) -> None:
        self.cd["jobs"]["staging"]["timeout-minutes"] = 45
        self.assertProblem(cd_problems(self.cd), "staging: timeout-minutes 45 below the worst case")
        self.cd = load("cd.yml")
        del found(creds(self.cd["jobs"]["production"]), "credentials step")["with"]["role-duration-seconds"]
        self.assertProblem(cd_problems(self.cd), "production: role-duration-seconds 3600 shorter than the job")

    def test_rejects_long_lived_keys_and_broad_oidc(self) -> None:
        step = found(creds(self.cd["jobs"]["staging"]), "credentials step")
        step["with"]["aws-access-key-id"] = "${{ secrets.AWS_ACCESS_KEY_ID }}"
        self.assertProblem(cd_problems(self.cd), "long-lived AWS keys")
        self.cd = load("cd.yml")
        self.cd["permissions"]["id-token"] = "write"
        self.assertProblem(cd_problems(self.cd), "not be granted workflow-wide")
        self.cd = load("cd.yml")
        del self.cd["jobs"]["production"]["permissions"]["id-token"]
        self.assertProblem(cd_problems(self.cd), "production: needs permissions id-token: write")

    def test_rejects_rebuilding_or_unverified_artifact(self) -> None:
        self.cd["jobs"]["production"]["steps"].insert(0, {"run": "cargo build --release"})
        self.assertProblem(cd_problems(self.cd), "production: rebuilds")
        self.cd = load("cd.yml")
        for s in self.cd["jobs"]["staging"]["steps"]:
            if "sha256sum -c" in s.get("run", ""):
                s["run"] = "true"
        self.assertProblem(cd_problems(self.cd), "staging: does not verify")
        self.cd = load("cd.yml")
        for s in self.cd["jobs"]["production"]["steps"]:
            if ".artifactSha256" in s.get("run", ""):
                s["run"] = "true"
        self.assertProblem(cd_problems(self.cd), "must check that the plan is for the artifact built")

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
