"""Stale reads across instances: a GET that starts after a PUT's 204, on any
instance, returns that write or a newer one (DESIGN.md, storage invariants).

A concurrent history (several clients, few users, every PUT a value of its
own) runs against two instances sharing one database: two processes on one
SQLite file, and two on one PostgreSQL. Every client PUTs on one instance and
then GETs the same user on the other, and reads random users besides. A
checker then looks for a read that returned a value already overwritten
before the read began. The same history against a build with a
write-through cache (`--features fault-stale-reads`, HELLO_FAULT_BIN) must
be caught, or the test could not fail.
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import random
import re
import threading
import time
import unittest
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

from harness import ROOT, Response, Service, ServiceTestCase, put_dob, request, require

# When an answer came: its monotonic time and the UTC days at send and answer.
Done = tuple[float, dt.date, dt.date]

FAULT_BIN = Path(os.environ.get("HELLO_FAULT_BIN",
                                ROOT / "target" / "debug" / "hello-birthday-faults"))
SECONDS = float(os.environ.get("HARDENING_STALE_SECONDS", "3"))
CLIENTS = 6
USERS = ["Ann", "Bob", "Cyd"]
# Every PUT of a user writes the next of 365 dates in 1990 (no Feb 29), so
# the greeting a GET returns names the date it read: today + N days.
BASE = dt.date(1990, 1, 1)
MESSAGE = re.compile(r"Hello, [A-Za-z]+! (?:Your birthday is in (\d+) days?|Happy birthday!)")


def value_of(k: int) -> tuple[int, int]:
    d = BASE + dt.timedelta(days=k % 365)
    return (d.month, d.day)


@dataclass
class Op:
    kind: str  # "put" or "get"
    user: str
    start: float
    end: float | None  # None: no answer, the outcome is unknown
    ok: bool
    # put: the value written; get: the values the answer may name (the UTC
    # day can change during a read), empty for 404.
    values: frozenset[tuple[int, int]]
    instance: int
    after_put_on: int | None = None  # the instance of this client's previous 204


def read_values(message: str, start_day: dt.date, end_day: dt.date) -> frozenset[tuple[int, int]]:
    m = MESSAGE.fullmatch(message)
    if not m:
        raise AssertionError(f"unexpected greeting {message!r}")
    n = int(m.group(1) or 0)
    return frozenset({((d := day + dt.timedelta(days=n)).month, d.day) for day in {start_day, end_day}})


def find_stale(history: list[Op]) -> list[str]:
    """Reads that returned a value overwritten before they began, or a value
    never written. Sound: a write whose outcome is unknown may have happened,
    and a read is stale only if every write it may have seen was followed,
    strictly (invoked after it was answered), by a write acknowledged before
    the read started."""
    problems = []
    for user in {op.user for op in history}:
        ops = [op for op in history if op.user == user]
        acked_at = sorted(((op.end, op) for op in ops if op.kind == "put" and op.ok and op.end is not None),
                          key=lambda end_op: end_op[0])
        acked = [op for _, op in acked_at]
        ends = [end for end, _ in acked_at]
        # latest[i]: the latest start among the first i acknowledged writes.
        latest = [float("-inf")]
        for op in acked:
            latest.append(max(latest[-1], op.start))
        puts = [op for op in ops if op.kind == "put"]
        for r in ops:
            if r.kind != "get" or not r.ok or r.end is None:
                continue
            done = bisect_left(ends, r.start)  # writes acknowledged before the read began
            newest_start = latest[done]
            if not r.values:
                if done:
                    problems.append(f"{user}: 404 at {r.start:.4f} on instance {r.instance} "
                                    f"after {done} acknowledged writes")
                continue
            seen = [w for w in puts if w.values & r.values and w.start < r.end]
            if not seen:
                problems.append(f"{user}: read {sorted(r.values)} on instance {r.instance}, never written")
            elif all(w.end is not None and newest_start > w.end for w in seen):
                problems.append(f"{user}: stale read of {sorted(r.values)} at {r.start:.4f} on instance "
                                f"{r.instance} (after a PUT on {r.after_put_on}): overwritten by a write "
                                f"started at {newest_start:.4f} and acknowledged before the read")
    return problems


class Clients:
    """CLIENTS threads with keep-alive connections to every instance."""

    def __init__(self, ports: list[int], seed: int) -> None:
        self.ports = ports
        self.seed = seed
        self.history: list[Op] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._next = dict.fromkeys(USERS, 0)
        self._stop = threading.Event()

    def _value(self, user: str) -> int:
        with self._lock:
            k = self._next[user]
            self._next[user] += 1
            return k

    def _run(self, n: int) -> None:
        rng = random.Random(self.seed * 100 + n)
        conns: dict[int, http.client.HTTPConnection] = {}

        def call(i: int, method: str, user: str, k: int | None) -> tuple[Response | None, float, Done | None]:
            conn = conns.get(i) or http.client.HTTPConnection("127.0.0.1", self.ports[i], timeout=10)
            conns[i] = conn
            start_day = dt.datetime.now(dt.UTC).date()
            start = time.monotonic()
            try:
                if method == "PUT":
                    d = BASE + dt.timedelta(days=(k or 0) % 365)
                    resp = put_dob(0, user, d.isoformat(), conn=conn)
                else:
                    resp = request(0, "GET", f"/hello/{user}", conn=conn)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conns.pop(i, None)
                self.errors.append(f"{method} {user} on {i}: {exc!r}")
                return None, start, None
            end = time.monotonic()
            end_day = dt.datetime.now(dt.UTC).date()
            return resp, start, (end, start_day, end_day)

        previous: int | None = None
        while not self._stop.is_set():
            user = rng.choice(USERS)
            i = rng.randrange(len(self.ports))
            k = self._value(user)
            resp, start, done = call(i, "PUT", user, k)
            ok = resp is not None and resp.status == 204
            if resp is not None and not ok:
                self.errors.append(f"PUT {user} on {i}: {resp.status} {resp.body[:200]!r}")
            self._record(Op("put", user, start, done[0] if done else None, ok, frozenset({value_of(k)}), i))
            previous = i if ok else None
            # The same user on the other instance, then anyone anywhere.
            for get_user, j in ((user, 1 - i), (rng.choice(USERS), rng.randrange(len(self.ports)))):
                resp, start, done = call(j, "GET", get_user, None)
                if resp is None or done is None:
                    self._record(Op("get", get_user, start, None, False, frozenset(), j))
                    continue
                if resp.status == 200:
                    values = read_values(resp.json()["message"], done[1], done[2])
                elif resp.status == 404:
                    values = frozenset()
                else:
                    self.errors.append(f"GET {get_user} on {j}: {resp.status} {resp.body[:200]!r}")
                    self._record(Op("get", get_user, start, done[0], False, frozenset(), j))
                    continue
                self._record(Op("get", get_user, start, done[0], True, values, j, previous))
                previous = None
        for conn in conns.values():
            conn.close()

    def _record(self, op: Op) -> None:
        with self._lock:
            self.history.append(op)

    def run(self, seconds: float) -> list[Op]:
        threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(seconds)  # the load's length, not a wait for a condition
        self._stop.set()
        for t in threads:
            t.join(30)
        return self.history


class CheckerSelfTest(unittest.TestCase):
    """The checker on hand-made histories: it finds what it must, and
    nothing in histories that are linearizable."""

    @staticmethod
    def put(k: int, start: float, end: float | None, ok: bool = True) -> Op:
        return Op("put", "Ann", start, end, ok, frozenset({value_of(k)}), 0)

    @staticmethod
    def get(k: int | None, start: float, end: float) -> Op:
        return Op("get", "Ann", start, end, True, frozenset({value_of(k)}) if k is not None else frozenset(), 1)

    def test_stale_value_is_found(self) -> None:
        h = [self.put(0, 0, 1), self.put(1, 2, 3), self.get(0, 4, 5)]
        self.assertEqual(len(find_stale(h)), 1)

    def test_404_after_a_write_is_found(self) -> None:
        self.assertEqual(len(find_stale([self.put(0, 0, 1), self.get(None, 2, 3)])), 1)

    def test_value_never_written_is_found(self) -> None:
        self.assertEqual(len(find_stale([self.put(0, 0, 1), self.get(5, 2, 3)])), 1)

    def test_concurrent_writes_may_be_read_either_way(self) -> None:
        # Two overlapping writes: either may be last.
        h = [self.put(0, 0, 3), self.put(1, 1, 2), self.get(0, 4, 5), self.get(1, 6, 7)]
        self.assertEqual(find_stale(h), [])

    def test_read_overlapping_a_write_may_see_the_old_value(self) -> None:
        h = [self.put(0, 0, 1), self.put(1, 2, 5), self.get(0, 3, 4), self.get(1, 3, 6)]
        self.assertEqual(find_stale(h), [])

    def test_write_with_unknown_outcome_may_have_happened(self) -> None:
        h = [self.put(0, 0, 1), self.put(1, 2, None, ok=False), self.get(1, 3, 4)]
        self.assertEqual(find_stale(h), [])


class StaleReads(ServiceTestCase):
    def history(self, services: list[Service], seed: int) -> tuple[list[Op], list[str]]:
        for s in services:
            s.start()
        clients = Clients([s.port for s in services], seed)
        history = clients.run(SECONDS)
        return history, clients.errors

    def check(self, label: str, history: list[Op], errors: list[str]) -> list[str]:
        self.assertEqual(errors, [], f"{label}: errors under load")
        puts = sum(op.kind == "put" for op in history)
        gets = sum(op.kind == "get" and op.ok for op in history)
        crossed = sum(op.after_put_on is not None for op in history)
        stale = find_stale(history)
        self.report(f"{label}: {puts} PUTs, {gets} GETs ({crossed} right after a 204 on the other "
                    f"instance), {len(stale)} stale")
        self.assertGreater(crossed, 100, f"{label}: too few cross-instance reads to mean anything")
        return stale

    def sqlite_pair(self, bin_path: Path | None = None) -> list[Service]:
        services = [self.sqlite_service("shared.sqlite") for _ in range(2)]
        for s in services:
            s.bin = bin_path
        return services

    def postgres_pair(self, bin_path: Path | None = None) -> list[Service]:
        pg = self.postgres()
        services = []
        for _ in range(2):
            s = Service(self.tmp, pg.url, env={"DB_POOL_SIZE": "4"}, bin=bin_path)
            self.addCleanup(s.stop)
            services.append(s)
        return services

    def test_sqlite_two_processes_one_file(self) -> None:
        stale = self.check("SQLite, two processes", *self.history(self.sqlite_pair(), 1))
        self.assertEqual(stale, [], "\n".join(stale[:10]))

    def test_postgres_two_instances(self) -> None:
        stale = self.check("PostgreSQL, two instances", *self.history(self.postgres_pair(), 2))
        self.assertEqual(stale, [], "\n".join(stale[:10]))

    def test_checker_catches_a_caching_store(self) -> None:
        """The same histories against the write-through cache build: the
        checker must find stale reads on both backends."""
        require(FAULT_BIN.exists(), f"fault build {FAULT_BIN} (tests/hardening/run.sh builds it)")
        for label, pair in (("SQLite", self.sqlite_pair), ("PostgreSQL", self.postgres_pair)):
            with self.subTest(label):
                stale = self.check(f"{label}, caching build", *self.history(pair(FAULT_BIN), 3))
                self.assertNotEqual(stale, [], f"{label}: the checker missed a store serving stale reads")
                self.report(f"{label}, caching build: first {stale[0]}")


if __name__ == "__main__":
    unittest.main()
