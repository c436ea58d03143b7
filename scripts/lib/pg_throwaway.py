"""A throwaway PostgreSQL cluster for Python callers: the one class that the
benchmark (bench/bench.py) and the hardening tests (tests/hardening/harness.py)
use. It drives scripts/pg-throwaway.sh, so initdb, the free port, running as
the postgres user when root and finding the programs (pg_bin) stay in one place,
scripts/lib/pg.sh.

    pg = ThrowawayPostgres(workdir / "pg", user="hello")
    pg.start()                     # initdb (or copy a template), start, wait
    pg.psql("SELECT 1")            # over TCP, as the superuser
    pg.dsn("bench")                # postgres://USER@127.0.0.1:PORT/bench
    pg.stop()                      # fast; stop("immediate") is a crash

Callers import it with scripts/lib on sys.path.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PG_THROWAWAY = ROOT / "scripts" / "pg-throwaway.sh"


class PostgresError(RuntimeError):
    """scripts/pg-throwaway.sh or psql failed; the message holds its stderr."""


def pg_bin(name: str) -> str | None:
    """The path of a PostgreSQL program (initdb, psql, ...), or None."""
    out = subprocess.run([str(PG_THROWAWAY), "bin", name], capture_output=True, text=True,
                         timeout=30, check=False)
    return (out.stdout.strip() or None) if out.returncode == 0 else None


class ThrowawayPostgres:
    """A cluster in DIR on 127.0.0.1, on a free port. `prefix` runs in front
    of the helper (e.g. taskset and nice): the server inherits it."""

    def __init__(self, directory: Path, user: str = "postgres", password: str = "",
                 copy_of: Path | None = None, settings: Sequence[str] = (),
                 prefix: Sequence[str] = ()) -> None:
        self.dir = directory
        self.user = user
        self.password = password
        self.copy_of = copy_of
        self.settings = list(settings)
        self.prefix = list(prefix)
        self.port = 0
        self.started = False

    @staticmethod
    def helper(*argv: str, prefix: Sequence[str] = (), check: bool = True,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*prefix, str(PG_THROWAWAY), *argv], capture_output=True,
                             text=True, timeout=timeout, check=False)
        if check and out.returncode != 0:
            raise PostgresError(f"pg-throwaway.sh {argv[0]} failed: {out.stderr[-2000:]}")
        return out

    def start(self) -> None:
        argv = ["start", str(self.dir), "--user", self.user]
        if self.password:
            argv += ["--password", self.password]
        if self.copy_of is not None:
            argv += ["--copy-of", str(self.copy_of)]
        for s in self.settings:
            argv += ["--set", s]
        url = self.helper(*argv, prefix=self.prefix).stdout.strip()
        self.port = int(url.rsplit(":", 1)[1].split("/")[0])
        self.started = True

    def stop(self, mode: str = "fast") -> None:
        if self.started:
            self.helper("stop", str(self.dir), "--mode", mode, check=False)
            self.started = False

    def destroy(self) -> None:
        self.helper("destroy", str(self.dir), check=False)
        self.started = False

    def postmaster_pid(self) -> int:
        return int(self.helper("pid", str(self.dir)).stdout)

    def dsn(self, db: str = "postgres") -> str:
        auth = f"{self.user}:{self.password}" if self.password else self.user
        return f"postgres://{auth}@127.0.0.1:{self.port}/{db}"

    def psql(self, sql: str, db: str = "postgres", check: bool = True,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """psql over TCP as the superuser; unaligned, tuples only. Raises
        PostgresError when check and psql fails."""
        psql = pg_bin("psql") or "psql"
        out = subprocess.run([psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                              "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                              "-d", db, "-c", sql],
                             input=stdin, capture_output=True, text=True, timeout=120,
                             check=False)
        if check and out.returncode != 0:
            raise PostgresError(f"psql failed: {out.stderr[-2000:]}")
        return out
