#!/usr/bin/env python3
"""Check every PromQL expression of the Grafana dashboards and the Prometheus
rules against what really exists.

For each expression (dashboard targets, template variable queries, alert and
recording rules):
  1. it parses: all of them go through `promtool check rules` as recording
     rules, so Prometheus's own parser judges them;
  2. every metric it names is exported by the running service (the scraped
     /metrics files given with --metrics), produced by a recording rule, or
     (for `up`, `probe_*`, `prometheus_*`...) known to the live Prometheus
     (--prometheus-names, the /api/v1/label/__name__/values answer);
  3. every `label="value"` matcher on a service metric matches at least one
     scraped sample (catches a misspelt route or a bucket `le` formatted
     differently), job/instance aside (Prometheus adds those);
  4. with --prometheus-url, every dashboard expression runs without error on
     the live Prometheus, and the ones listed in --must-have-data return data.
Also checks the dashboard's structure: unique panel ids, panels inside the
24-column grid without overlap, datasource uid = the provisioned one.

Exit 1 on any failure; prints one line per check and a summary.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import yaml

# PromQL words that look like identifiers but are not metric names.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "atan2"}
# "file / panel / refId" of a dashboard expression -> the panel's title.
PANEL_OF: dict[str, str] = {}
LABEL_LIST_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Grafana variables replaced by something PromQL accepts.
GRAFANA_VARS = [
    (r"\$__rate_interval|\$\{__rate_interval\}", "1m"),
    (r"\$__interval|\$\{__interval\}", "1m"),
    (r"\$__range|\$\{__range\}", "1h"),
    (r"\$instance|\$\{instance(:\w+)?\}", ".*"),
]

TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<dur>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)
  | (?P<num>(?:0x[0-9a-fA-F]+|\d*\.?\d+(?:[eE][+-]?\d+)?))
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@:])
""", re.X)


def tokenize(expr: str) -> list[tuple[str, str]]:
    pos = 0
    out: list[tuple[str, str]] = []
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot tokenize at {expr[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group()))
    return out


Matcher = tuple[str, str, str]  # (label, op, value)


def selectors(expr: str) -> Iterator[tuple[str, list[Matcher]]]:
    """Yield (metric_name, [(label, op, value)]) for each vector selector."""
    toks = tokenize(expr)
    i, depth_brackets = 0, 0
    while i < len(toks):
        kind, val = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if val == "[":
            depth_brackets += 1
        elif val == "]":
            depth_brackets -= 1
        elif depth_brackets:
            pass  # durations and subquery steps
        elif kind == "ident" and val in LABEL_LIST_WORDS and nxt == "(":
            # by (a, b) / on (x) ...: label names, skip to the closing paren.
            i += 2
            while toks[i][1] != ")":
                i += 1
        elif kind == "ident" and val.lower() not in KEYWORDS and nxt != "(" and nxt not in LABEL_LIST_WORDS:
            name = val
            matchers: list[Matcher] = []
            if nxt == "{":
                i += 2
                while toks[i][1] != "}":
                    if toks[i][0] == "ident":
                        lab, op, v = toks[i][1], toks[i + 1][1], toks[i + 2][1]
                        matchers.append((lab, op, json.loads(v) if v[0] == '"' else v[1:-1]))
                        i += 3
                    else:
                        i += 1
            yield name, matchers
        elif val == "{":
            # A selector with no metric name ({__name__=...}): not used here.
            raise ValueError("selector without a metric name: give the name explicitly")
        i += 1


def grafana_to_promql(expr: str) -> str:
    for pat, rep in GRAFANA_VARS:
        expr = re.sub(pat, rep, expr)
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", expr, re.S)
    if m:  # Grafana's label_values(QUERY, label): check QUERY
        expr = m.group(1)
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable in {expr!r}")
    return expr


def dashboard_exprs(path: str, problems: list[str], provisioned_uids: set[str]) -> list[tuple[str, str]]:
    d = json.load(open(path))
    out: list[tuple[str, str]] = []
    panels: list[dict[str, Any]] = []

    def walk(ps: list[dict[str, Any]]) -> None:
        for p in ps:
            panels.append(p)
            walk(p.get("panels", []))
    walk(d.get("panels", []))
    ids = [p["id"] for p in panels]
    if len(ids) != len(set(ids)):
        problems.append(f"{path}: duplicate panel ids")
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24:
            problems.append(f"{path}: panel {p['title']!r} is wider than the grid")
        for xx in range(g.get("x", 0), g.get("x", 0) + g.get("w", 0)):
            for yy in range(g.get("y", 0), g.get("y", 0) + g.get("h", 0)):
                if (xx, yy) in cells:
                    problems.append(f"{path}: panels {cells[(xx, yy)]!r} and {p['title']!r} overlap")
                    break
                cells[(xx, yy)] = p["title"]
            else:
                continue
            break
        for t in p.get("targets", []):
            ds = (t.get("datasource") or p.get("datasource") or {}).get("uid")
            if ds not in provisioned_uids:
                problems.append(f"{path}: panel {p['title']!r} uses datasource uid {ds!r}, "
                                f"not a provisioned one {sorted(provisioned_uids)}")
            where = f"{os.path.basename(path)} / {p['title']} / {t.get('refId')}"
            PANEL_OF[where] = p["title"]
            out.append((where, t["expr"]))
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            out.append((f"{os.path.basename(path)} / variable ${v['name']}", q))
    return out


def rule_exprs(rules_dir: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    out: list[tuple[str, str]] = []
    recorded: dict[str, str] = {}
    for f in sorted(glob.glob(os.path.join(rules_dir, "*.yml"))):
        for g in yaml.safe_load(open(f))["groups"]:
            for r in g["rules"]:
                what = r.get("alert") or r.get("record")
                out.append((f"{os.path.basename(f)} / {what}", r["expr"]))
                if "record" in r:
                    recorded[r["record"]] = os.path.basename(f)
    return out, recorded


def parse_with_promtool(exprs: list[tuple[str, str]], promtool: str) -> list[str]:
    """All expressions as recording rules of one file; on failure, one by one
    to name the culprit."""
    def check(items: list[tuple[str, str]]) -> tuple[bool, str]:
        doc = {"groups": [{"name": "check", "rules": [
            {"record": f"check_expr_{i}", "expr": e} for i, (_, e) in enumerate(items)]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as fh:
            yaml.safe_dump(doc, fh)
        try:
            r = subprocess.run([promtool, "check", "rules", fh.name], capture_output=True, text=True)
            return r.returncode == 0, (r.stdout + r.stderr).strip()
        finally:
            os.unlink(fh.name)
    ok, _ = check(exprs)
    if ok:
        return []
    bad: list[str] = []
    for item in exprs:
        ok, msg = check([item])
        if not ok:
            bad.append(f"{item[0]}: promtool: {msg.splitlines()[-1]}")
    return bad


def read_scrapes(paths: list[str]) -> dict[str, list[dict[str, str]]]:
    """{sample_name: [labels dict, ...]} from Prometheus/OpenMetrics text."""
    samples: dict[str, list[dict[str, str]]] = {}
    line_re = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+\S+')
    lab_re = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for p in paths:
        for line in open(p):
            if line.startswith("#") or not line.strip():
                continue
            m = line_re.match(line)
            if m:
                samples.setdefault(m.group(1), []).append(dict(lab_re.findall(m.group(3) or "")))
    return samples


def prom_query(url: str, expr: str) -> dict[str, Any]:
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=10) as r:
        answer: dict[str, Any] = json.load(r)
        return answer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dashboards", required=True, help="directory of dashboard JSON files")
    ap.add_argument("--datasources", required=True, help="Grafana datasource provisioning directory")
    ap.add_argument("--rules-dir", required=True)
    ap.add_argument("--metrics", nargs="+", required=True, help="scraped /metrics files of the service")
    ap.add_argument("--prometheus-names", help="JSON answer of /api/v1/label/__name__/values")
    ap.add_argument("--prometheus-url", help="run every dashboard expression on this Prometheus")
    ap.add_argument("--must-have-data", nargs="*", default=[],
                    help="dashboard panel titles whose queries must return data on --prometheus-url")
    ap.add_argument("--promtool", default="promtool")
    a = ap.parse_args()

    problems: list[str] = []
    uids: set[str] = set()
    for f in glob.glob(os.path.join(a.datasources, "*.yml")):
        for ds in yaml.safe_load(open(f)).get("datasources", []):
            uids.add(ds.get("uid"))
    dash: list[tuple[str, str]] = []
    for f in sorted(glob.glob(os.path.join(a.dashboards, "*.json"))):
        dash += dashboard_exprs(f, problems, uids)
    if not dash:
        problems.append(f"no dashboard expression found in {a.dashboards}")
    rules, recorded = rule_exprs(a.rules_dir)

    promql: list[tuple[str, str]] = []
    for where, e in dash:
        try:
            promql.append((where, grafana_to_promql(e)))
        except ValueError as err:
            problems.append(f"{where}: {err}")
    all_exprs = promql + rules
    problems += parse_with_promtool(all_exprs, a.promtool)

    service = read_scrapes(a.metrics)
    prom_names = set(json.load(open(a.prometheus_names))["data"]) if a.prometheus_names else set()
    sources: dict[str, str] = {}
    for where, e in all_exprs:
        try:
            sels = list(selectors(e))
        except (ValueError, IndexError) as err:
            problems.append(f"{where}: {err}")
            continue
        for name, matchers in sels:
            if name in service:
                src = "service"
            elif name in recorded:
                src = f"recording rule ({recorded[name]})"
            elif name in prom_names:
                src = "prometheus (not the service)"
            else:
                problems.append(f"{where}: metric {name} is neither exported by the service, "
                                f"nor recorded by a rule, nor known to Prometheus")
                continue
            sources[name] = src
            if src != "service":
                continue
            for lab, op, v in matchers:
                if op != "=" or lab in ("job", "instance"):
                    continue
                if not any(s.get(lab) == v for s in service[name]):
                    seen = sorted({s.get(lab, "") for s in service[name]})
                    problems.append(f"{where}: {name}{{{lab}=\"{v}\"}} matches no scraped sample "
                                    f"(values seen: {seen})")

    ran = with_data = 0
    if a.prometheus_url:
        titles_with_data = set()
        for where, e in promql:
            try:
                r = prom_query(a.prometheus_url, e)
            except Exception as err:  # noqa: BLE001 - report any failure as a problem
                problems.append(f"{where}: query failed on {a.prometheus_url}: {err}")
                continue
            if r.get("status") != "success":
                problems.append(f"{where}: query error: {r}")
                continue
            ran += 1
            if r["data"]["result"]:
                with_data += 1
                titles_with_data.add(PANEL_OF.get(where))
        for t in a.must_have_data:
            if t not in titles_with_data:
                problems.append(f"dashboard panel {t!r} returned no data on the live Prometheus")

    print(f"check_queries: {len(dash)} dashboard expressions, {len(rules)} rule expressions "
          f"({sum(1 for w, _ in rules if w.split(' / ', 1)[1] not in recorded)} alerts), all parsed by promtool")
    for name in sorted(sources):
        print(f"  {name:55s} {sources[name]}")
    if a.prometheus_url:
        print(f"check_queries: {ran}/{len(promql)} dashboard expressions ran on the live Prometheus, "
              f"{with_data} returned data")
    if problems:
        for p in problems:
            print(f"FAIL: {p}", file=sys.stderr)
        print(f"check_queries: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_queries: OK ({len(sources)} metric names, all accounted for)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
