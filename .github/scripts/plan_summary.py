#!/usr/bin/env python3
"""Markdown for the run summary of the production plan: what reviewers
approve. The canary the execution runs before the fleet (or why there is
none), every stack's planned changes (from `deploy.sh --plan FILE`), the
provisional ones named as such, and what to try by hand on staging first.

Usage: plan_summary.py PLAN_FILE STAGING_URL [RUN_URL]
"""

from __future__ import annotations

import json
import sys
from typing import Any

MANUAL = [
    "open `{url}/healthz` in a browser: `release` is **{version}**",
    "`curl -X PUT -H 'Content-Type: application/json' -d '{{\"dateOfBirth\":\"2000-02-29\"}}' {url}/hello/YourName` "
    "answers 204; `curl {url}/hello/YourName` gives the day count you expect (a Feb 29 birthday is Feb 28 "
    "in a common year)",
    "a name with a digit (`{url}/hello/abc1`), a date in the future, a body that is not JSON: each is a "
    "400 problem+json that says what is wrong",
    "`curl -X DELETE {url}/hello/YourName` answers 204, then GET answers 404",
    "the staging dashboard (CloudWatch `hello-birthday-staging`): 5xx and latency flat since the deploy; "
    "no alarm in ALARM",
    "whatever this release changed (its commits): try that feature, by hand, as a user would",
]


def render(plan: dict[str, Any], staging_url: str, run_url: str = "") -> str:
    out = [f"## Production plan: release {plan['version']}", ""]
    out.append(f"Planned {plan['createdAt']} for **{plan['environment']}** in {plan['region']}; "
               f"artifact sha256 `{plan['artifactSha256']}`, already published (immutable). "
               "Nothing is executed before approval; the approved job executes exactly these change sets, "
               "or refuses if production changed since this plan.")
    out.append("")
    canary = plan.get("canary")
    if canary and canary["runs"]:
        out.append(f"**Canary first**: {canary['reason']}. It is compared with **{canary['baseline']}**, the release"
                   " production runs now; the fleet is changed only after its verdict passes.")
    elif canary:
        out.append(f"**No canary**: {canary['reason']}.")
    out.append("")
    out.append("| stack | change set | action | resource | type | replacement |")
    out.append("|---|---|---|---|---|---|")
    for s in plan["stacks"]:
        note = f" (provisional: computed before {s['after']}'s change runs; re-checked at execution)" \
            if s.get("provisional") and s["outcome"] != "none" else ""
        if s["outcome"] == "none":
            out.append(f"| {s['stack']} | - | no changes | | | |")
        elif s["outcome"] == "failed":
            out.append(f"| {s['stack']} | - | cannot be computed yet{note}: {s.get('reason', '')} | | | |")
        else:
            for i, c in enumerate(s["changes"]):
                first = i == 0
                out.append(f"| {s['stack'] if first else ''} | {s['changeSet'] + note if first else ''} | "
                           f"{c['action']} | {c['logicalId']} | {c['type']} | {c['replacement']} |")
    risky = [f"{s['stack']}: {c['logicalId']}" for s in plan["stacks"] for c in s.get("changes", [])
             if c["replacement"] in ("True", "Conditional") or c["action"] == "Remove"]
    out.append("")
    if risky:
        out.append("**Replacements or removals:** " + "; ".join(risky))
    else:
        out.append("No resource is replaced or removed.")
    out.append("")
    out.append(f"## Before approving: try it by hand on staging ({staging_url})")
    out.append("")
    out += [f"- [ ] {line.format(url=staging_url.rstrip('/'), version=plan['version'])}" for line in MANUAL]
    if run_url:
        out += ["", f"Automated staging results (smoke test, load against the SLOs): {run_url}"]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    with open(argv[0], encoding="utf-8") as f:
        plan = json.load(f)
    sys.stdout.write(render(plan, argv[1], argv[2] if len(argv) == 3 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
