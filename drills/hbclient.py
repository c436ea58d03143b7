#!/usr/bin/env python3
"""HTTP client for the drills: seeds users, keeps PUT traffic going, and
checks what a restored or failed-over service returns.

Every request is stamped with time.time() (the clock the drill scripts read
as $EPOCHREALTIME), so "acknowledged before the backup started" or "before
the primary was stopped" is a comparison of two stamps on one clock.

  seed    PUT N users, all must be 204; writes {username: dateOfBirth}
  load    PUT new users until a stop file appears; writes one JSON line per
          request and a status file the drill polls
  verify  every expected user reads back (GET 200, same body as a reference
          service) and is in the database rows with its exact date
  window  failover figures from a load record: acknowledged writes missing
          from the database, failed requests, the error window
Only loopback addresses are accepted.
"""

import argparse
import datetime
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def name_for(prefix, n, width=5):
    """Usernames are letters only, so counters are written in base 26."""
    digits = []
    for _ in range(width):
        n, r = divmod(n, 26)
        digits.append(LETTERS[r])
    return prefix + "".join(reversed(digits))


def dob_for(n):
    """A spread of past dates, Feb 29 included (n % 97 == 0)."""
    if n % 97 == 0:
        return "%04d-02-29" % (1952 + 4 * (n % 12))
    return (datetime.date(1940, 1, 1) + datetime.timedelta(days=(n * 7919) % 29000)).isoformat()


class Client:
    """One keep-alive connection per thread; reconnects after any error."""

    def __init__(self, base, timeout):
        u = urllib.parse.urlsplit(base)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            sys.exit("refusing a non-loopback address: %s" % base)
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self.local = threading.local()

    def request(self, method, path, body=None):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                self.local.conn = None
            return resp.status, data
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            self.local.conn = None
            return None, type(e).__name__

    def put(self, user, dob):
        return self.request("PUT", "/hello/" + user, json.dumps({"dateOfBirth": dob}).encode())

    def get(self, user):
        return self.request("GET", "/hello/" + user)


def cmd_seed(a):
    c = Client(a.base, a.timeout)
    users = {name_for(a.prefix, i): dob_for(i) for i in range(a.count)}

    def one(item):
        status, body = c.put(*item)
        return item[0], status, body

    t0 = time.time()
    with ThreadPoolExecutor(a.concurrency) as ex:
        bad = [(u, s, b) for u, s, b in ex.map(one, users.items()) if s != 204]
    took = time.time() - t0
    if bad:
        sys.exit("seed: %d of %d PUTs failed, first: %r" % (len(bad), len(users), bad[0]))
    with open(a.out, "w") as f:
        json.dump(users, f)
    print("seed: %d users acknowledged in %.2f s (%.0f PUT/s)" % (len(users), took, len(users) / took))


def cmd_load(a):
    c = Client(a.base, a.timeout)
    records, lock = [], threading.Lock()
    state = {"ok": 0, "err": 0, "last_ok": 0.0, "last_err": 0.0}
    deadline = time.time() + a.max_seconds
    stop = threading.Event()

    def worker(w):
        i = 0
        while not stop.is_set() and time.time() < deadline:
            user = name_for(a.prefix + LETTERS[w], i)
            dob = dob_for(i * 31 + w)
            t_start = time.time()
            status, body = c.put(user, dob)
            t_end = time.time()
            ok = status == 204
            rec = {"user": user, "dob": dob, "t_start": t_start, "t_end": t_end, "status": status}
            if not ok:
                rec["error"] = body.decode(errors="replace")[:200] if isinstance(body, bytes) else body
            with lock:
                records.append(rec)
                key = "ok" if ok else "err"
                state[key] += 1
                state["last_" + key] = t_end
            i += 1
            if not ok:
                time.sleep(0.01)  # do not spin while the database is away

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(a.concurrency)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        with lock:
            snapshot = dict(state)
        tmp = a.status + ".tmp"
        with open(tmp, "w") as f:
            json.dump(snapshot, f)
        os.replace(tmp, a.status)
        if os.path.exists(a.stop_file):
            stop.set()
        time.sleep(0.05)
    with open(a.out, "w") as f:
        for r in sorted(records, key=lambda r: r["t_start"]):
            f.write(json.dumps(r) + "\n")
    print("load: %d PUTs acknowledged, %d failed" % (state["ok"], state["err"]))
    if time.time() >= deadline and not os.path.exists(a.stop_file):
        sys.exit("load: stopped by its own deadline (%ss), not by the drill" % a.max_seconds)


def read_expected(a):
    """{user: dob} from a seed file and/or the load records acknowledged
    strictly before --acked-before."""
    want = {}
    for path in a.seed or []:
        with open(path) as f:
            want.update(json.load(f))
    for path in a.load or []:
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r["status"] == 204 and r["t_end"] < a.acked_before:
                    want[r["user"]] = r["dob"]
    return want


def read_rows(path):
    rows = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                user, dob = line.split("|")
                rows[user] = dob
    return rows


def cmd_verify(a):
    want = read_expected(a)
    if not want:
        sys.exit("verify: nothing to verify")
    problems = []
    if a.db_rows:
        rows = read_rows(a.db_rows)
        for user, dob in want.items():
            if rows.get(user) != dob:
                problems.append("%s: database has %r, acknowledged %r" % (user, rows.get(user), dob))
    c = Client(a.base, a.timeout)
    ref = Client(a.reference, a.timeout) if a.reference else None

    def one(user):
        status, body = c.get(user)
        if status != 200:
            return "%s: GET answered %s %r" % (user, status, body[:100])
        if ref is not None:
            rstatus, rbody = ref.get(user)
            if (rstatus, rbody) != (status, body):
                return "%s: GET %r differs from the reference %s %r" % (user, body, rstatus, rbody)
        return None

    t0 = time.time()
    with ThreadPoolExecutor(a.concurrency) as ex:
        problems += [p for p in ex.map(one, sorted(want)) if p]
    if problems:
        for p in problems[:20]:
            print("  " + p, file=sys.stderr)
        sys.exit("verify: %d problems among %d users" % (len(problems), len(want)))
    print("verify: %d users read back identically%s%s in %.2f s" % (
        len(want), " (database rows checked)" if a.db_rows else "",
        " (bodies equal to the reference)" if ref else "", time.time() - t0))


def cmd_window(a):
    recs = [json.loads(line) for line in open(a.load)]
    rows = read_rows(a.db_rows)
    acked = [r for r in recs if r["status"] == 204]
    missing = [r["user"] for r in acked if rows.get(r["user"]) != r["dob"]]
    failed = [r for r in recs if r["status"] != 204]
    early = [r for r in failed if r["t_end"] < a.failover_at]
    # Started once the old primary was gone: only the new one can have
    # acknowledged these.
    on_new = [r for r in acked if r["t_start"] > a.down_at]
    out = {
        "requests": len(recs),
        "acknowledged": len(acked),
        "acknowledged_before_failover": sum(r["t_end"] < a.failover_at for r in acked),
        "acknowledged_by_new_primary": len(on_new),
        "acknowledged_missing": len(missing),
        "failed_requests": len(failed),
        "failed_before_failover": len(early),
        "failed_statuses": sorted({str(r["status"]) for r in failed}),
        "error_window_seconds": 0.0,
        "first_failure_after_stop_seconds": None,
        "last_failure_after_stop_seconds": None,
        "first_write_on_new_primary_seconds": None,
    }
    if failed:
        first, last = min(r["t_start"] for r in failed), max(r["t_end"] for r in failed)
        out["error_window_seconds"] = round(last - first, 3)
        out["first_failure_after_stop_seconds"] = round(first - a.failover_at, 3)
        out["last_failure_after_stop_seconds"] = round(last - a.failover_at, 3)
    if on_new:
        out["first_write_on_new_primary_seconds"] = round(min(r["t_end"] for r in on_new) - a.failover_at, 3)
    print(json.dumps(out))
    if missing:
        sys.exit("window: %d acknowledged PUTs are missing, first: %s" % (len(missing), missing[:5]))
    if early:
        sys.exit("window: %d PUTs failed before the primary was stopped, first: %r" % (len(early), early[0]))
    if not out["acknowledged_before_failover"] or not on_new:
        sys.exit("window: need acknowledged writes both before and after the failover")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout, seconds")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("seed", help="PUT COUNT users; every one must be acknowledged")
    s.add_argument("--base", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--prefix", default="seed")
    s.add_argument("--concurrency", type=int, default=8)
    s.add_argument("--out", required=True)

    s = sub.add_parser("load", help="PUT new users until --stop-file exists")
    s.add_argument("--base", required=True)
    s.add_argument("--prefix", default="load")
    s.add_argument("--concurrency", type=int, default=4)
    s.add_argument("--stop-file", required=True)
    s.add_argument("--status", required=True, help="JSON counters, rewritten every 50 ms")
    s.add_argument("--max-seconds", type=float, default=120, help="safety stop")
    s.add_argument("--out", required=True)

    s = sub.add_parser("verify", help="expected users read back and are in the database")
    s.add_argument("--base", required=True)
    s.add_argument("--reference", help="a service whose GET bodies must be identical")
    s.add_argument("--seed", action="append", help="seed output (repeatable)")
    s.add_argument("--load", action="append", help="load records (repeatable)")
    s.add_argument("--acked-before", type=float, default=float("inf"))
    s.add_argument("--db-rows", help="'username|YYYY-MM-DD' lines from the database")
    s.add_argument("--concurrency", type=int, default=8)

    s = sub.add_parser("window", help="failover figures from load records")
    s.add_argument("--load", required=True)
    s.add_argument("--db-rows", required=True)
    s.add_argument("--failover-at", type=float, required=True, help="when stopping the primary began")
    s.add_argument("--down-at", type=float, required=True, help="when the primary was gone")

    a = p.parse_args()
    {"seed": cmd_seed, "load": cmd_load, "verify": cmd_verify, "window": cmd_window}[a.cmd](a)


if __name__ == "__main__":
    main()
