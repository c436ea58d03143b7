"""Crash consistency: kill -9 under sustained PUT load, again and again.
After every restart the SQLite file passes its integrity check and every PUT
that was acknowledged with 204 is present (a 204 promises stable storage)."""

from __future__ import annotations

import os
import random
import sqlite3
import time
import unittest

from harness import ServiceTestCase, Writers, request, wait_until

CYCLES = int(os.environ.get("HARDENING_CRASH_CYCLES", "20"))


class KillNine(ServiceTestCase):
    def check_db(self, db: str) -> set[str]:
        # A second connection, as the running service holds the file: WAL
        # readers see every committed transaction.
        con = sqlite3.connect(db, timeout=10)
        try:
            self.assertEqual(con.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
            return {r[0] for r in con.execute("SELECT username FROM users")}
        finally:
            con.close()

    def test_kill9_under_put_load(self) -> None:
        rng = random.Random(9)  # reproducible kill times
        db = str(self.tmp / "crash.sqlite")
        svc = self.sqlite_service("crash.sqlite")
        acked: set[str] = set()
        statuses: dict[int, int] = {}
        conn_errors = 0
        for cycle in range(CYCLES):
            svc.start()
            # Everything acknowledged before the previous kill survived it.
            present = self.check_db(db)
            missing = acked - present
            self.assertEqual(missing, set(), f"cycle {cycle}: {len(missing)} acknowledged PUTs lost")
            load = Writers(lambda: svc.port, threads=4, prefix="c" + "abcdefghijklmnopqrstuvwxyz"[cycle % 26]
                           + "abcdefghijklmnopqrstuvwxyz"[cycle // 26]).start()

            def load_started(w: Writers = load) -> bool:
                return w.count(204) >= 20

            wait_until(load_started, 10, what="PUT load to start")
            time.sleep(rng.uniform(0.2, 0.8))  # kill at a random point of a running load
            svc.kill9()
            load.stop()
            self.assertEqual(load.bad_errors, [], f"cycle {cycle}")
            acked |= load.acked
            for st, n in load.statuses.items():
                statuses[st] = statuses.get(st, 0) + n
            conn_errors += load.conn_errors

        svc.start()
        present = self.check_db(db)
        extra = len(present - acked)
        # The API sees the same rows after the last restart.
        sample = sorted(acked)[:: max(1, len(acked) // 100)]
        for name in sample:
            self.assertEqual(request(svc.port, "GET", f"/hello/{name}").status, 200, name)
        self.report(f"{CYCLES} kill -9 cycles: acknowledged {len(acked)}, present {len(acked & present)} "
                    f"(+{extra} committed but unacknowledged when killed); statuses {statuses}; "
                    f"{conn_errors} connection errors at the kills; {len(sample)} checked through the API")
        self.assertEqual(acked - present, set())
        self.assertEqual(set(statuses), {204}, statuses)
        self.assertGreater(len(acked), CYCLES * 20)


if __name__ == "__main__":
    unittest.main()
