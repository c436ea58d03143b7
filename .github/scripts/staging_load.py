#!/usr/bin/env python3
"""Short load on staging, judged against the SLOs (docs/slo.md).

Sends GET and PUT requests on a few synthetic users at a fixed, modest rate
for a fixed time, then:

- availability: requests answered 5xx, or not answered at all (connection
  error, timeout), may be at most (1 - --availability) of those sent, the
  availability SLO (99.9% not 5xx); --availability 0.999 with 1,200 requests
  allows 1;
- latency: read at the server, never on this machine's clock (which adds the
  runner's Internet round trip): the load balancer's TargetResponseTime p99
  per minute over the load window, from CloudWatch, must stay within
  --p99-ms (the latency SLO's 100 ms). CloudWatch publishes a minute a
  little after it ends, so it is polled until every minute of the window is
  there, with a deadline.

Exit status 0 when both hold, 1 otherwise (each failure printed), 2 on bad
usage. The synthetic users are deleted at the end.

Usage: staging_load.py --url https://hello.staging.example.com
         [--rate 20] [--duration 60] [--availability 0.999]
         [--load-balancer app/NAME/ID --p99-ms 100 --metrics-wait 420]
Environment: AWS_CLI (default aws), with credentials and region for CloudWatch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import string
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def request(method: str, url: str, body: bytes | None, timeout: float) -> int:
    """HTTP status, or 0 when no answer came (connection error, timeout)."""
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            status: int = resp.status
            return status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return 0


def run_load(base: str, rate: float, duration: float, timeout: float) -> tuple[dict[int, int], int, float, float]:
    """Returns (count per status, requests planned, start, end) (unix seconds)."""
    users = ["load" + "".join(random.choices(string.ascii_lowercase, k=10)) for _ in range(20)]
    total = int(rate * duration)
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def one(i: int) -> None:
        user = users[i % len(users)]
        if i < len(users) or i % 3 == 0:
            status = request("PUT", f"{base}/hello/{user}", b'{"dateOfBirth": "1990-05-17"}', timeout)
        else:
            status = request("GET", f"{base}/hello/{user}", None, timeout)
        with lock:
            counts[status] = counts.get(status, 0) + 1

    start = time.time()
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        for i in range(total):
            # Fixed schedule: request i leaves at t0 + i/rate, however slow
            # earlier answers were (no coordinated omission).
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i)
    end = time.time()
    for user in users:
        request("DELETE", f"{base}/hello/{user}", None, timeout)
    return counts, total, start, end


def cloudwatch_p99(lb: str, start: float, end: float, wait: float) -> list[float]:
    """TargetResponseTime p99 of each whole minute the load covered."""
    aws = os.environ.get("AWS_CLI", "aws")
    first = math.floor(start / 60) * 60
    last = math.ceil(end / 60) * 60
    minutes = int((last - first) / 60)

    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    cmd = [aws, "cloudwatch", "get-metric-statistics", "--namespace", "AWS/ApplicationELB",
           "--metric-name", "TargetResponseTime", "--dimensions", f"Name=LoadBalancer,Value={lb}",
           "--start-time", iso(first), "--end-time", iso(last), "--period", "60",
           "--extended-statistics", "p99", "--output", "json"]
    deadline = time.monotonic() + wait
    while True:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed: {out.stderr.strip()}")
        points = json.loads(out.stdout or "{}").get("Datapoints", [])
        values = [p["ExtendedStatistics"]["p99"] for p in points if "p99" in p.get("ExtendedStatistics", {})]
        if len(values) >= minutes or time.monotonic() > deadline:
            print(f"load: CloudWatch TargetResponseTime p99 for {len(values)} of {minutes} minute(s)")
            return values
        time.sleep(min(20.0, max(0.5, wait / 20)))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    p.add_argument("--availability", type=float, default=0.999, help="SLO: share not 5xx (default 0.999)")
    p.add_argument("--load-balancer", help="LoadBalancerFullName (app/NAME/ID) for CloudWatch")
    p.add_argument("--p99-ms", type=float, default=100.0, help="SLO latency threshold (default 100)")
    p.add_argument("--metrics-wait", type=float, default=420.0, help="seconds to wait for CloudWatch (default 420)")
    a = p.parse_args(argv)
    if a.rate <= 0 or a.duration <= 0 or not 0 < a.availability < 1:
        p.error("--rate and --duration must be positive, --availability between 0 and 1")
    base = a.url.rstrip("/")
    print(f"load: {a.rate:g} req/s for {a.duration:g} s against {base}")
    counts, total, start, end = run_load(base, a.rate, a.duration, a.timeout)
    sent = sum(counts.values())
    bad = sum(n for s, n in counts.items() if s == 0 or s >= 500)
    allowed = math.floor(sent * (1 - a.availability) + 1e-9)
    print(f"load: {sent} requests in {end - start:.1f} s; status counts "
          + ", ".join(f"{s or 'no answer'}: {n}" for s, n in sorted(counts.items())))
    problems = []
    if sent < total:
        problems.append(f"only {sent} of {total} requests were sent")
    if bad > allowed:
        problems.append(f"{bad} requests answered 5xx or not at all; the {a.availability:.1%} availability SLO "
                        f"allows {allowed} of {sent}")
    other = sum(n for s, n in counts.items() if 0 < s < 500 and not 200 <= s < 300)
    if other:
        problems.append(f"{other} requests answered 4xx/3xx: the load itself is wrong")
    if a.load_balancer:
        try:
            p99 = cloudwatch_p99(a.load_balancer, start, end, a.metrics_wait)
        except (RuntimeError, ValueError, KeyError) as e:
            p99 = []
            problems.append(f"latency not read: {e}")
        if not p99:
            problems.append("no TargetResponseTime data in CloudWatch for the load window")
        elif max(p99) * 1000 > a.p99_ms:
            problems.append(f"server-side p99 {max(p99) * 1000:.0f} ms above the {a.p99_ms:g} ms latency SLO")
        else:
            print(f"load: server-side p99 per minute {', '.join(f'{v * 1000:.0f} ms' for v in p99)} "
                  f"(SLO {a.p99_ms:g} ms)")
    else:
        print("load: latency not checked (no --load-balancer)")
    for problem in problems:
        print(f"load: FAIL: {problem}", file=sys.stderr)
    if not problems:
        print(f"load: ok: {bad} of {sent} failed (allowed {allowed})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
