"""Database faults under load: a PostgreSQL outage (the server crashes and
comes back), a locked table (query deadline -> 503), and a full disk under
SQLite. During a fault the service answers 503/507 problem+json, never 500;
afterwards it recovers by itself and every acknowledged PUT is present.
Readiness stays 200 through a PostgreSQL outage: the database is shared, so
its outage is no reason for a load balancer to take this instance out."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time
import unittest

from harness import Response, Service, ServiceTestCase, Writers, assert_problem, put_dob, request, require, wait_until

OUTAGE_SECONDS = 3


def readyz(port: int) -> int:
    return request(port, "GET", "/readyz", timeout=3).status


class PostgresOutage(ServiceTestCase):
    def test_outage_under_load(self) -> None:
        pg = self.postgres()
        svc = Service(self.tmp, pg.url, env={"DB_TIMEOUT_MS": "500", "DB_POOL_SIZE": "4"})
        self.addCleanup(svc.stop)
        svc.start()
        load = Writers(lambda: svc.port, threads=4, prefix="pg").start()
        self.addCleanup(load.stop)
        wait_until(lambda: load.count(204) >= 200, 20, what="200 acknowledged PUTs before the outage")

        # -m immediate is a crash: no clean shutdown, recovery from the WAL.
        pg.stop("immediate")
        down_at = time.monotonic()
        wait_until(lambda: load.count(503) >= 20, 10, what="PUTs answered 503 during the outage")
        first_503_after = time.monotonic() - down_at
        self.assertEqual(readyz(svc.port), 200, "a shared database outage leaves readiness alone")
        resp = put_dob(svc.port, "During", "1990-01-02")
        assert_problem(self, resp, (503,), retry_after=True)
        get = request(svc.port, "GET", "/hello/During")
        assert_problem(self, get, (503,), retry_after=True)
        self.assertEqual(request(svc.port, "GET", "/healthz").status, 200, "liveness needs no database")
        # Keep the database away for a while under load, not just an instant.
        # Readiness is sampled all along: not one 503 from a shared outage.
        ready_statuses: list[int] = []

        def outage_lasted() -> bool:
            ready_statuses.append(readyz(svc.port))
            return time.monotonic() - down_at >= OUTAGE_SECONDS
        wait_until(outage_lasted, OUTAGE_SECONDS + 2, interval=0.1, what="the outage to last")
        self.assertEqual(set(ready_statuses), {200}, f"/readyz during the outage: {ready_statuses}")
        outage = time.monotonic() - down_at

        acked_before = load.count(204)
        pg.start()
        up_at = time.monotonic()
        try:
            wait_until(lambda: load.count(204) > acked_before, 15, interval=0.02,
                       what="acknowledged PUTs after recovery")
        except AssertionError:
            print(svc.logs()[-3000:], load.statuses, load.conn_errors)
            raise
        write_after = time.monotonic() - up_at
        wait_until(lambda: load.count(204) >= acked_before + 200, 20, what="load to continue")
        load.stop()

        self.assertEqual(load.bad_errors, [], "non-503 or malformed errors under load")
        self.assertEqual(set(load.statuses) - {204, 503}, set(), load.statuses)
        self.assertLess(write_after, 10)

        present = set(pg.psql("SELECT username FROM users").split())
        missing = load.acked - present
        self.report(f"outage {outage:.1f}s (20 PUTs answered 503 after {first_503_after:.2f}s, /readyz 200 throughout); "
                    f"recovered: first 204 {write_after:.2f}s after restart; "
                    f"statuses {dict(sorted(load.statuses.items()))}, connection errors {load.conn_errors}; "
                    f"acknowledged {len(load.acked)}, present {len(load.acked & present)}")
        self.assertEqual(missing, set(), f"{len(missing)} acknowledged PUTs lost")
        # The API agrees with the table.
        for name in sorted(load.acked)[:: max(1, len(load.acked) // 50)]:
            self.assertEqual(request(svc.port, "GET", f"/hello/{name}").status, 200, name)

    def test_locked_table_hits_the_deadline_with_503(self) -> None:
        pg = self.postgres()
        svc = Service(self.tmp, pg.url, env={"DB_TIMEOUT_MS": "500", "DB_POOL_SIZE": "2"})
        self.addCleanup(svc.stop)
        svc.start()
        self.assertEqual(put_dob(svc.port, "Alice", "1990-01-02").status, 204)

        hold = 3
        locker = subprocess.Popen(
            ["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "hello", "-d", "postgres", "-Xq",
             "-c", f"BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({hold}); COMMIT;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(locker.kill)
        wait_until(lambda: pg.psql("SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' "
                                   "AND relation = 'users'::regclass").strip() != "0",
                   5, what="the table lock")

        # More concurrent requests than pool connections: some wait for the
        # pool, some for the lock; all must hit the deadline, not hang.
        results: list[Response] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            r = (request(svc.port, "GET", "/hello/Alice", timeout=10) if i % 2
                 else put_dob(svc.port, "Alice", "1991-01-02", timeout=10))
            with lock:
                results.append(r)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        self.assertEqual(len(results), 8)
        for r in results:
            assert_problem(self, r, (503,), retry_after=True)
        slowest = max(r.elapsed for r in results)
        self.report(f"8 requests against a locked table (pool 2, DB_TIMEOUT_MS 500): all 503, "
                    f"slowest {slowest * 1000:.0f}ms")
        self.assertLess(slowest, 3.0, "the deadline must bound the wait")
        locker.wait(hold + 10)
        wait_until(lambda: request(svc.port, "GET", "/hello/Alice").status == 200, 5,
                   what="recovery once the lock is released")


class SqliteDiskFull(ServiceTestCase):
    def mount_tmpfs(self, size: str) -> str:
        require(os.geteuid() == 0, "root, to mount a small tmpfs")
        mnt = self.tmp / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mnt)],
                       check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", str(mnt)], check=False)
        return str(mnt)

    def fill(self, mnt: str) -> str:
        """Fill the file system to the last byte (unbuffered: every write is
        one syscall, so ENOSPC shows up here and not at close)."""
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb", buffering=0) as f:
            for size in (1 << 16, 1 << 12, 1):
                chunk = b"\0" * size
                try:
                    while True:
                        f.write(chunk)
                except OSError:
                    pass
        return filler

    def test_disk_full(self) -> None:
        mnt = self.mount_tmpfs("4m")
        db = os.path.join(mnt, "db.sqlite")
        svc = Service(self.tmp, f"sqlite://{db}")
        self.addCleanup(svc.stop)
        svc.start()
        acked = set()
        for i in range(50):
            name = "Before" + "abcdefghijklmnopqrstuvwxyz"[i % 26] * (1 + i // 26)
            self.assertEqual(put_dob(svc.port, name, "1990-01-02").status, 204)
            acked.add(name)

        filler = self.fill(mnt)
        # Long distinct names so each PUT needs new pages; WAL space freed by a
        # checkpoint can absorb a few commits before the disk really refuses.
        failures, writes_after_full = [], 0
        for i in range(3000):
            name = "Full" + "".join("abcdefghijklmnopqrstuvwxyz"[(i // 26 ** k) % 26] for k in range(3)) + "x" * 50
            resp = put_dob(svc.port, name, "1990-01-02")
            if resp.status == 204:
                acked.add(name)
                writes_after_full += 1
                continue
            assert_problem(self, resp, (503, 507))
            failures.append(resp.status)
            if len(failures) >= 20:
                break
        self.assertGreaterEqual(len(failures), 20, "the full disk never refused a PUT")
        for name in sorted(acked)[:10]:
            self.assertEqual(request(svc.port, "GET", f"/hello/{name}").status, 200, "GET must keep working")
        self.assertEqual(request(svc.port, "GET", "/healthz").status, 200)

        os.unlink(filler)
        t0 = time.monotonic()
        wait_until(lambda: put_dob(svc.port, "Afterwards", "1990-01-02").status == 204, 10,
                   what="PUT to succeed once space returns")
        recovered = time.monotonic() - t0
        acked.add("Afterwards")
        svc.stop()

        con = sqlite3.connect(db)
        try:
            self.assertEqual(con.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
            present = {r[0] for r in con.execute("SELECT username FROM users")}
        finally:
            con.close()
        self.report(f"disk full: {writes_after_full} PUTs still fit, then {len(failures)} refused "
                    f"with {sorted(set(failures))}; recovered {recovered * 1000:.0f}ms after space returned; "
                    f"integrity_check ok; acknowledged {len(acked)}, present {len(acked & present)}")
        self.assertEqual(acked - present, set())


if __name__ == "__main__":
    unittest.main()
