"""Personal data as a privacy auditor looks for it, in the real files: an
erased user (DELETE) or an overwritten date of birth (PUT) leaves no
readable copy in the live SQLite files once it is answered; the files are
for the service's user only whatever the umask, and the service refuses to
start on files others can read; backups get the same care; on PostgreSQL,
autovacuum removes dead rows without waiting for 50 of them."""

from __future__ import annotations

import http.client
import os
import shutil
import sqlite3
import stat
import subprocess
import time
import unittest
from pathlib import Path

from harness import BIN, ROOT, Service, ServiceTestCase, metric, request, require, wait_until

KEEP = 1200  # users that stay: enough rows for a B-tree several pages deep
GONE = 400  # users erased, spread over the key range so pages merge
CHANGED = 100  # users whose date changes


def name(prefix: str, i: int) -> str:
    """A username of letters only, unique and the same length for every i."""
    out = ""
    for _ in range(6):
        out = chr(97 + i % 26) + out
        i //= 26
    return prefix + out


def date(year: int, i: int) -> str:
    """A date unique to i within its year range (9 years x 12 months x 28 days)."""
    return f"{year + i // 336:04d}-{1 + i // 28 % 12:02d}-{1 + i % 28:02d}"


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def found(files: dict[str, bytes], needles: list[str]) -> list[str]:
    return [f"{n} in {f}" for n in needles for f, data in files.items() if n.encode() in data]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class PutMany:
    """PUT and DELETE over one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def put(self, user: str, dob: str) -> None:
        resp = request(0, "PUT", f"/hello/{user}", body={"dateOfBirth": dob}, conn=self.conn)
        assert resp.status == 204, (user, resp.status, resp.body)

    def delete(self, user: str) -> None:
        resp = request(0, "DELETE", f"/hello/{user}", conn=self.conn)
        assert resp.status == 204, (user, resp.status, resp.body)

    def close(self) -> None:
        self.conn.close()


class SqliteErasure(ServiceTestCase):
    """Erased users and overwritten dates against the bytes of the files."""

    def populate(self, port: int) -> tuple[list[str], list[str], list[str]]:
        client = PutMany(port)
        self.addCleanup(client.close)
        # Interleaved by key, so erasing one group empties parts of many pages.
        keep = [name("Keep", i) for i in range(KEEP)]
        gone = [name("Gone", i) for i in range(GONE)]
        changed = [name("Moved", i) for i in range(CHANGED)]
        for i, user in enumerate(keep):
            client.put(user, date(1960, i))
        for i, user in enumerate(gone):
            client.put(user, date(1901, i))  # years 1901-1902: no one else has them
        for i, user in enumerate(changed):
            client.put(user, date(1931, i))  # the old dates, 1931
        return keep, gone, changed

    def test_delete_and_date_change_leave_no_copy_in_the_live_files(self) -> None:
        svc = self.sqlite_service("data/hb.db").start()
        data = self.tmp / "data"
        keep, gone, changed = self.populate(svc.port)
        old_dates = [date(1901, i) for i in range(GONE)] + [date(1931, i) for i in range(CHANGED)]
        # The scan finds what is there: before the erasure, every value is.
        before = found(file_bytes(data), gone + old_dates)
        self.assertGreaterEqual(len(before), len(gone) + len(old_dates),
                                "the values to erase are not in the files: the scan proves nothing")

        client = PutMany(svc.port)
        self.addCleanup(client.close)
        for user in gone:
            client.delete(user)
        for i, user in enumerate(changed):
            client.put(user, date(1975, i))
        # At once after the last answer, the service still running.
        live = file_bytes(data)
        self.assertEqual(found(live, gone + old_dates), [],
                         "erased values readable in the live files after their 204")
        # What stays is still served.
        for user in (keep[0], keep[-1], changed[0]):
            self.assertEqual(request(svc.port, "GET", f"/hello/{user}").status, 200)
        for user in (gone[0], gone[-1]):
            self.assertEqual(request(svc.port, "GET", f"/hello/{user}").status, 404)
        self.assertEqual(metric(svc.metrics(), "hello_birthday_erasure_pending"), 0)

        self.assertEqual(svc.stop(), 0)
        after = file_bytes(data)
        self.assertEqual(found(after, gone + old_dates), [], "erased values readable after shutdown")
        kept = found(after, [keep[0], keep[-1], date(1975, 0)])
        self.assertEqual(len(kept), 3, f"the remaining users are not in the file: {kept}")
        self.report(f"{GONE} users erased and {CHANGED} dates changed among {KEEP}: none of their "
                    f"old values in {', '.join(live)} at the 204, nor in the file after shutdown")

    def test_an_erasure_blocked_by_a_reader_completes_when_it_lets_go(self) -> None:
        svc = self.sqlite_service("hb.db").start()
        client = PutMany(svc.port)
        self.addCleanup(client.close)
        for i in range(50):
            client.put(name("Keep", i), date(1960, i))
        client.put("Readerblocked", "1902-02-02")
        # A backup-like reader: a read transaction on a snapshot that still
        # holds the row, in another process (this one).
        reader = sqlite3.connect(self.tmp / "hb.db", isolation_level=None)
        self.addCleanup(reader.close)
        reader.execute("BEGIN")
        self.assertEqual(reader.execute("SELECT count(*) FROM users").fetchone()[0], 51)
        client.delete("Readerblocked")
        self.assertEqual(request(svc.port, "GET", "/hello/Readerblocked").status, 404)
        self.assertEqual(metric(svc.metrics(), "hello_birthday_erasure_pending"), 1,
                         "an erasure the reader blocks must be reported as pending")
        wait_until(lambda: "erased values may still be readable" in svc.logs(), 5, what="the warning")
        reader.execute("COMMIT")
        reader.close()
        wait_until(lambda: metric(svc.metrics(), "hello_birthday_erasure_pending") == 0, 5,
                   what="the pending erasure to complete once the reader let go")
        self.assertEqual(found(file_bytes(self.tmp), ["Readerblocked", "1902-02-02"]), [])


class FilePermissions(ServiceTestCase):
    """The database is for the service's user only, whatever the umask."""

    def setUp(self) -> None:
        super().setUp()
        old = os.umask(0o022)  # the usual default, which made everything 0644
        self.addCleanup(os.umask, old)

    def test_created_private_whatever_the_umask(self) -> None:
        svc = self.sqlite_service("data/db/hb.db").start()
        self.assertEqual(request(svc.port, "PUT", "/hello/Alice", body={"dateOfBirth": "1990-01-02"}).status,
                         204)
        files = {p: mode(p) for p in (self.tmp / "data", self.tmp / "data" / "db",
                                      *sorted((self.tmp / "data" / "db").iterdir()))}
        self.assertEqual({p.name for p in files}, {"data", "db", "hb.db", "hb.db-wal", "hb.db-shm"})
        want = {p: 0o700 if p.is_dir() else 0o600 for p in files}
        self.assertEqual({p.name: oct(m) for p, m in files.items()}, {p.name: oct(m) for p, m in want.items()})
        self.report("umask 022: " + ", ".join(f"{p.name} {m:04o}" for p, m in files.items()))

    def refused(self, svc: Service, because: str) -> str:
        with self.assertRaises(AssertionError, msg=f"the service started although {because}"):
            svc.start(ready_timeout=20)
        self.assertIsNotNone(svc.running().poll())
        self.assertNotEqual(svc.running().returncode, 0)
        return svc.logs()

    def test_refuses_files_and_directories_others_can_reach(self) -> None:
        db = self.tmp / "data" / "hb.db"
        svc = self.sqlite_service("data/hb.db").start()
        self.assertEqual(svc.stop(), 0)
        checks = [
            ("the database file is 0644", db, 0o644, "chmod 600"),
            ("the database file is 0660", db, 0o660, "chmod 600"),
            ("the directory is 0777", db.parent, 0o777, "chmod 700"),
            ("the directory is 0770", db.parent, 0o770, "chmod 700"),
        ]
        for because, path, bad, fix in checks:
            with self.subTest(because):
                good = mode(path)
                os.chmod(path, bad)
                try:
                    logs = self.refused(svc, because)
                    self.assertIn(str(path), logs)
                    self.assertIn(fix, logs)
                finally:
                    os.chmod(path, good)
        with self.subTest("a -wal file others can read"):
            wal = Path(f"{db}-wal")
            wal.touch(0o644)
            os.chmod(wal, 0o644)
            logs = self.refused(svc, "the -wal file is 0644")
            self.assertIn(str(wal), logs)
            wal.unlink()
        # A directory others may only list: it starts, and says so.
        os.chmod(db.parent, 0o755)
        svc.start()
        wait_until(lambda: "other users can list the SQLite database's directory" in svc.logs(), 5,
                   what="the warning about a listable directory")
        self.report(f"{len(checks) + 1} unsafe modes refused with exit status != 0; a listable directory warned")

    def test_backups_and_restores_are_private(self) -> None:
        for tool in ("sqlite3", "jq"):
            require(shutil.which(tool) is not None, tool)
        svc = self.sqlite_service("data/hb.db").start()
        self.assertEqual(request(svc.port, "PUT", "/hello/Alice", body={"dateOfBirth": "1990-01-02"}).status,
                         204)
        dest = self.tmp / "backups"
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BACKUP_DEST", "BACKUP_KEEP")}
        env["HELLO_BIRTHDAY_BIN"] = str(BIN)  # the binary under test reads the URL for the scripts
        subprocess.run([str(ROOT / "scripts" / "backup.sh"), "--database-url", f"sqlite://{self.tmp}/data/hb.db",
                        "--to", str(dest)], check=True, capture_output=True, env=env, timeout=60)
        written = {p.name: mode(p) for p in dest.iterdir()}
        self.assertEqual(len(written), 2, written)
        self.assertEqual(mode(dest), 0o700, "the backup directory it created")
        self.assertEqual(set(written.values()), {0o600}, {k: oct(v) for k, v in written.items()})
        # restore.sh shares backup.sh's settings: the restored database is
        # private too, so the service starts on it.
        restored = self.tmp / "restored" / "hb.db"
        subprocess.run([str(ROOT / "scripts" / "restore.sh"), "--from", str(dest)], check=True,
                       capture_output=True, env={**env, "DATABASE_URL": f"sqlite://{restored}"}, timeout=60)
        self.assertEqual(mode(restored), 0o600)
        self.assertEqual(mode(restored.parent), 0o700)
        other = self.sqlite_service("restored/hb.db").start()
        self.assertEqual(request(other.port, "GET", "/hello/Alice").status, 200)
        self.report(f"backup directory 0700, {', '.join(f'{k} {v:04o}' for k, v in written.items())}; "
                    f"restored database {mode(restored):04o}")


class PostgresVacuum(ServiceTestCase):
    """A single DELETE gets its dead row vacuumed by autovacuum (the
    defaults wait for 50 dead rows plus 20 % of the table)."""

    def test_one_erased_row_is_vacuumed_at_the_next_autovacuum_round(self) -> None:
        pg = self.postgres()
        # A one-second round instead of the default minute, to keep the test short.
        pg.psql("ALTER SYSTEM SET autovacuum_naptime = '1s'")
        pg.psql("SELECT pg_reload_conf()")
        svc = Service(self.tmp, pg.url)
        self.addCleanup(svc.stop)
        svc.start()
        client = PutMany(svc.port)
        self.addCleanup(client.close)
        for i in range(20):
            client.put(name("Keep", i), date(1960, i))
        client.put("Vacuumedaway", "1903-03-03")
        # Wait for autovacuum's own pass over the new table (inserts), so the
        # pass that follows the DELETE is the one under test.
        settle = "SELECT coalesce(autovacuum_count, 0) FROM pg_stat_user_tables WHERE relname = 'users'"
        before = int(pg.psql(settle) or 0)
        client.delete("Vacuumedaway")
        deleted_at = time.monotonic()
        query = ("SELECT n_dead_tup, coalesce(autovacuum_count, 0) FROM pg_stat_user_tables "
                 "WHERE relname = 'users'")

        def vacuumed() -> bool:
            dead, count = (int(x) for x in pg.psql(query).strip().split("|"))
            return dead == 0 and count > before

        wait_until(vacuumed, 20, interval=0.5, what="autovacuum to remove the erased row")
        took = time.monotonic() - deleted_at
        options = pg.psql("SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname = 'users'")
        self.report(f"erased row vacuumed {took:.1f} s after its DELETE (autovacuum_naptime 1 s); "
                    f"table options {options.strip()}")


if __name__ == "__main__":
    unittest.main()
