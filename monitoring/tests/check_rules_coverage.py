#!/usr/bin/env python3
"""Every alert is complete and tested.

For each alerting rule in RULES_DIR:
  - labels: severity is `page` or `ticket`;
  - annotations: summary, description and runbook_url, where runbook_url is a
    repository path docs/runbooks/*.md that exists;
  - the promtool unit tests in TESTS_DIR have at least one case where it
    fires (an alert_rule_test with exp_alerts) and one where it must stay
    quiet (exp_alerts: []).
Prints a table of the counts; exit 1 on any gap, and on nothing to check
(no rule file, no alert, no test file, no alert test case): a check that
found nothing to look at has proved nothing.

    check_rules_coverage.py RULES_DIR TESTS_DIR REPO_ROOT
"""
import glob
import os
import sys

import yaml


def main() -> int:
    if len(sys.argv) != 4 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2
    rules_dir, tests_dir, root = sys.argv[1:]
    problems = []
    alerts = {}
    rule_files = sorted(glob.glob(os.path.join(rules_dir, "*.yml")))
    test_files = sorted(glob.glob(os.path.join(tests_dir, "*.test.yml")))
    if not rule_files:
        problems.append(f"no rule files (*.yml) in {rules_dir}")
    if not test_files:
        problems.append(f"no test files (*.test.yml) in {tests_dir}")
    for f in rule_files:
        for g in (yaml.safe_load(open(f)) or {}).get("groups", []):
            for r in g["rules"]:
                if "alert" not in r:
                    continue
                name = r["alert"]
                if name in alerts:
                    problems.append(f"{name}: defined twice")
                alerts[name] = {"fires": 0, "quiet": 0, "severity": r.get("labels", {}).get("severity")}
                if alerts[name]["severity"] not in ("page", "ticket"):
                    problems.append(f"{name}: severity must be page or ticket, not {alerts[name]['severity']!r}")
                ann = r.get("annotations", {})
                for key in ("summary", "description", "runbook_url"):
                    if not ann.get(key):
                        problems.append(f"{name}: no {key} annotation")
                url = ann.get("runbook_url", "")
                if url and not (url.startswith("docs/runbooks/") and url.endswith(".md")
                                and os.path.isfile(os.path.join(root, url))):
                    problems.append(f"{name}: runbook_url {url!r} is not an existing docs/runbooks/*.md file")

    for f in test_files:
        for t in (yaml.safe_load(open(f)) or {}).get("tests", []):
            for a in t.get("alert_rule_test", []):
                name = a["alertname"]
                if name not in alerts:
                    problems.append(f"{os.path.basename(f)}: tests unknown alert {name}")
                    continue
                alerts[name]["fires" if a.get("exp_alerts") else "quiet"] += 1

    print(f"{'alert':32s} {'severity':8s} {'fires':>5s} {'quiet':>5s}")
    for name, c in alerts.items():
        print(f"{name:32s} {c['severity'] or '-':8s} {c['fires']:5d} {c['quiet']:5d}")
        if not c["fires"]:
            problems.append(f"{name}: no test case where it fires")
        if not c["quiet"]:
            problems.append(f"{name}: no test case where it stays quiet")
    total_f = sum(c["fires"] for c in alerts.values())
    total_q = sum(c["quiet"] for c in alerts.values())
    print(f"{len(alerts)} alerts, {total_f} firing and {total_q} quiet alert test cases")
    if not alerts:
        problems.append("no alerting rules found")
    if not total_f + total_q:
        problems.append("no alert_rule_test cases found")
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
