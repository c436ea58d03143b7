#!/usr/bin/env python3
"""Load benchmark of hello-birthday against a bare hyper ceiling and a Flask anchor.

Started by bench/run.sh, which builds the binaries first. Every server runs
pinned to one core (--server-cpu) and wrk to another (--load-cpu). Rounds are
interleaved: in each round every target is started afresh, checked, loaded
phase after phase (warm-up, then a measured window) and stopped, so a slow
minute on a shared machine hits every target instead of one. Medians over the
rounds are reported. The server CPU time per request and the interference
of other processes come from psutil, the peak RSS from VmHWM in
/proc/PID/status (psutil has no peak on Linux), and the time to ready from
spawning the process to the first 200 from /readyz.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "scripts" / "lib"))
from pg_throwaway import PostgresError, ThrowawayPostgres, pg_bin  # noqa: E402

TARGET_NAMES = ["ceiling", "ceiling-sqlite", "ceiling-postgres", "sqlite", "sqlite-1m",
                "postgres", "flask"]
LABELS = {
    "ceiling": "ceiling (bare hyper)",
    "ceiling-sqlite": "ceiling + the service's store, SQLite",
    "ceiling-postgres": "ceiling + the service's store, PostgreSQL",
    "sqlite": "service, SQLite",
    "sqlite-1m": "service, SQLite, scale",
    "postgres": "service, PostgreSQL",
    "flask": "Flask anchor (SQLite)",
}


# Targets that read and write the throwaway PostgreSQL cluster.
PG_TARGETS = ("postgres", "ceiling-postgres")


def uses_pg(targets: list[str]) -> bool:
    return any(t in PG_TARGETS for t in targets)


class BenchError(Exception):
    """A failure that makes the run invalid: a server did not start, a check failed."""


def log(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def user_name(i: int) -> str:
    """User i: "user" and i in base 26 as five letters (same rule as wrk/users.lua)."""
    letters = []
    for _ in range(5):
        letters.append(chr(97 + i % 26))
        i //= 26
    return "user" + "".join(reversed(letters))


def sql_user_name(col: str) -> str:
    digits = [f"97 + ({col} / {26 ** k}) % 26" for k in range(4, -1, -1)]
    return "'user' || char(" + ", ".join(digits) + ")"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


NICE = 0  # set from --nice; applied in every child before it drops privileges


def _set_nice() -> None:
    if NICE:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)


def _die_with_parent() -> None:
    # If the harness itself is killed, its servers must not outlive it.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _in_child() -> None:
    _set_nice()
    _die_with_parent()


def proc_cpu_seconds(pid: int, include_children: bool = False) -> float:
    t = psutil.Process(pid).cpu_times()
    total = float(t.user + t.system)
    if include_children:
        total += t.children_user + t.children_system
    return total


def proc_status_kib(pid: int, key: str) -> int:
    # Only for VmHWM (peak RSS), which psutil does not report on Linux.
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


def rss_kib(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss) // 1024


def children_of(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def cpu_list(spec: str) -> list[int]:
    """CPU numbers of a taskset list such as "0", "0,2" or "0-1"."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


class Interference:
    """CPU used during a window by anything but the benchmark, in % of one core.

    Pinning keeps the benchmark's processes apart, not other work off those
    cores. This sums, over user processes outside the benchmark's own tree
    (the harness, the server, PostgreSQL and their children), the CPU time
    they used between two snapshots, plus the hypervisor's steal time on the
    pinned CPUs. Kernel threads are left out: they do the benchmark's network
    and disk work. A window with much of it measured the neighbours.
    """

    def __init__(self, cpus: list[int], ours: set[int]) -> None:
        self.cpus, self.ours = cpus, ours
        self.t0 = time.monotonic()
        self.procs, self.steal = self._procs(), self._steal()

    def _steal(self) -> float:
        per_cpu = psutil.cpu_times(percpu=True)
        return sum(getattr(per_cpu[c], "steal", 0.0) for c in self.cpus if c < len(per_cpu))

    def _procs(self) -> dict[int, float]:
        parent, used = {}, {}
        for p in psutil.process_iter(["ppid", "cpu_times"]):
            t = p.info["cpu_times"]
            if t is None:
                continue  # exited meanwhile, or not ours to read
            parent[p.pid] = p.info["ppid"]
            used[p.pid] = t.user + t.system + t.children_user + t.children_system
        out = {}
        for pid, t in used.items():
            p, ours, depth = pid, False, 0
            while p > 1 and depth < 64:
                if p in self.ours:
                    ours = True
                    break
                p, depth = parent.get(p, 0), depth + 1
            # pid 2 (kthreadd) is the parent of every kernel thread.
            if not ours and pid != 2 and parent.get(pid) != 2:
                out[pid] = t
        return out

    def percent(self) -> float:
        seconds = time.monotonic() - self.t0
        procs, steal = self._procs(), self._steal()
        used = steal - self.steal
        for pid, t in procs.items():
            used += t - self.procs.get(pid, 0.0) if pid in self.procs else t
        pct = 100 * max(used, 0.0) / seconds if seconds > 0 else 0.0
        # A parent reaping a long-lived child adds all of the child's CPU at
        # once; no more than every core can have been used.
        return min(pct, 100.0 * (os.cpu_count() or 1))


def http_status(port: int, path: str, timeout: float = 1.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


class OtlpSink:
    """An OTLP/HTTP receiver that accepts and counts trace exports without
    decoding them (tests/traces.rs checks their content): the cost measured
    is the service's, not a collector's. It runs in this process, off the
    server's core."""

    def __init__(self) -> None:
        import http.server
        import threading

        sink = self
        self.requests = 0
        self.bytes = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                sink.requests += 1
                sink.bytes += n
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"


class Server:
    """One server process pinned to the server core, started and stopped per round."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int,
                 log_path: Path, cpu: str, cwd: Path | None = None) -> None:
        self.name, self.argv, self.env, self.port = name, argv, env, port
        self.log_path, self.cpu, self.cwd = log_path, cpu, cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, deadline_s: float) -> float:
        """Spawn and poll /readyz; returns milliseconds from spawn to the first 200."""
        # Traces are exported only when --traces says so, never because the
        # caller's shell happens to set OTEL_*.
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(self.env)
        logf = open(self.log_path, "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(["taskset", "-c", self.cpu, *self.argv], env=env,
                                     cwd=self.cwd, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     preexec_fn=_in_child)
        logf.close()
        RUNNING.append(self)
        deadline = t0 + deadline_s
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} before it was "
                                 f"ready; log tail:\n{tail(self.log_path)}")
            try:
                if http_status(self.port, "/readyz", timeout=0.5) == 200:
                    return (time.monotonic() - t0) * 1000
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} not ready within {deadline_s}s; log tail:\n"
                                 f"{tail(self.log_path)}")
            time.sleep(0.001)  # poll interval, bounded by the deadline above

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"{self.name} died (exit {code}); log tail:\n{tail(self.log_path)}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                if self in RUNNING:
                    RUNNING.remove(self)
                raise BenchError(f"{self.name} ignored SIGTERM for {timeout}s") from None
        if self in RUNNING:
            RUNNING.remove(self)
        code = self.proc.returncode
        self.proc = None
        return code


class Postgres(ThrowawayPostgres):
    """The shared throwaway cluster (scripts/lib/pg_throwaway.py), pinned to
    the server CPU, with the benchmark's database and CPU accounting."""

    def __init__(self, workdir: Path, cpu: str) -> None:
        super().__init__(workdir / "pg")
        self.cpu = cpu
        self.pid: int | None = None

    def start(self) -> None:
        os.chmod(self.dir.parent, 0o755)  # the postgres user must reach its cluster
        if pg_bin("initdb") is None:
            raise BenchError("PostgreSQL server binaries (initdb) not found")
        log(f"initdb PostgreSQL cluster in {self.dir}")
        # The server inherits the CPU pinning and niceness of the helper.
        # Durable settings stay at their defaults (fsync, synchronous_commit on)
        # so a PUT's 204 means the same thing as on SQLite.
        self.prefix = ["taskset", "-c", self.cpu, "nice", "-n", str(NICE)]
        try:
            super().start()
        except PostgresError as e:
            raise BenchError(f"PostgreSQL did not start:\n{e}") from None
        self.pid = self.postmaster_pid()
        self.psql("CREATE DATABASE bench")
        log(f"PostgreSQL ready on 127.0.0.1:{self.port}")

    @property
    def url(self) -> str:
        return self.dsn("bench")

    def cpu_seconds(self) -> float:
        assert self.pid is not None
        total = proc_cpu_seconds(self.pid, include_children=True)
        for child in children_of(self.pid):
            try:
                total += proc_cpu_seconds(child)
            except OSError:
                pass  # a backend that just exited is in the parent's cutime
        return total

    def stop(self, mode: str = "fast") -> None:
        super().stop(mode)
        self.pid = None


RUNNING: list[Server] = []


class Target:
    """A server under test and how to seed it."""

    def __init__(self, name: str, method_phases: list[str], users: int) -> None:
        self.name, self.phases, self.users = name, method_phases, users
        self.server: Server | None = None
        self.ready_ms: list[float] = []
        self.peak_rss_kib = 0
        self.exit_codes: list[int | None] = []
        self.db_cpu: Postgres | None = None


def seed_sqlite(db: Path, n: int, service_schema: bool) -> None:
    name = sql_user_name("i")
    dob = "date('1950-01-01', '+' || (i % 20000) || ' days')"
    if service_schema:
        # The service writes RFC 3339 UTC timestamps; the columns are NOT NULL.
        insert = (f"INSERT INTO users (username, date_of_birth, created_at, updated_at) "
                  f"SELECT {name}, {dob}, t, t FROM seq, "
                  f"(SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now') AS t)")
    else:
        insert = f"INSERT INTO users (username, date_of_birth) SELECT {name}, {dob} FROM seq"
    sql = (f"BEGIN; WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq "
           f"WHERE i + 1 < {n}) {insert}; COMMIT;")
    run(["sqlite3", "-bail", str(db), sql])
    count = run(["sqlite3", str(db), "SELECT count(*) FROM users"], capture_output=True,
                text=True).stdout.strip()
    if count != str(n):
        raise BenchError(f"seeding {db} left {count} users, expected {n}")


def seed_postgres(pg: Postgres, n: int) -> None:
    # COPY is the fast path for bulk loads; created_at/updated_at take defaults.
    rows = "".join(f"{user_name(i)}\t{dt.date(1950, 1, 1) + dt.timedelta(days=i % 20000)}\n"
                   for i in range(n))
    # Targets share the cluster's database, so each seeds it afresh.
    pg.psql("TRUNCATE users", db="bench")
    pg.psql("COPY users (username, date_of_birth) FROM STDIN", db="bench", stdin=rows)
    pg.psql("ANALYZE users", db="bench")
    count = pg.psql("SELECT count(*) FROM users", db="bench").stdout.strip()
    if count != str(n):
        raise BenchError(f"seeding PostgreSQL left {count} users, expected {n}")


def run_wrk(args: argparse.Namespace, port: int, method: str, users: int, seconds: int) -> dict[str, Any]:
    script = HERE / "wrk" / ("get.lua" if method == "GET" else "put.lua")
    env = dict(os.environ, BENCH_USERS=str(users), BENCH_LUA_DIR=str(HERE / "wrk"))
    cmd = ["taskset", "-c", args.load_cpu, "wrk", "-t1", f"-c{args.connections}",
           f"-d{seconds}s", "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60,
              preexec_fn=_set_nice).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for line in out.splitlines():
        if line.startswith("BENCH_RESULT "):
            res: dict[str, Any] = json.loads(line[len("BENCH_RESULT "):])
            # wrk is the only child reaped meanwhile: its CPU shows when the
            # load generator, not the server, is the limit.
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            res["wrk_cpu_pct"] = 100 * cpu / (res["duration_us"] / 1e6)
            return res
    raise BenchError(f"wrk printed no result:\n{out}")


def measure_phase(args: argparse.Namespace, target: Target, method: str, pg: Postgres | None) -> dict[str, Any]:
    server = target.server
    assert server is not None
    warm = run_wrk(args, server.port, method, target.users, args.warmup)
    server.check_alive()
    ours = {os.getpid(), server.pid} | ({pg.pid} if pg and pg.pid else set())
    cpus = cpu_list(args.server_cpu) + cpu_list(args.load_cpu)
    attempts = 0
    best = None
    while True:
        # A window disturbed by other work is measured again, a few times at
        # most; the cleanest one is kept and its disturbance is recorded.
        attempts += 1
        noise = Interference(cpus, ours)
        cpu0 = proc_cpu_seconds(server.pid)
        db0 = pg.cpu_seconds() if pg else None
        res = run_wrk(args, server.port, method, target.users, args.duration)
        cpu1 = proc_cpu_seconds(server.pid)
        db1 = pg.cpu_seconds() if pg else None
        res["interference_pct"] = noise.percent()
        server.check_alive()
        if best is None or res["interference_pct"] < best[0]["interference_pct"]:
            best = (res, cpu0, cpu1, db0, db1)
        if res["interference_pct"] <= args.max_interference or attempts > args.retries:
            break
        log(f"{target.name} {method}: {res['interference_pct']:.0f}% of a core used by other "
            f"processes or stolen; measuring again")
    res, cpu0, cpu1, db0, db1 = best
    n = res["requests"]
    seconds = res["duration_us"] / 1e6
    lat = res["latency_us"]
    out = {
        "requests": n,
        "rps": n / seconds if seconds else 0.0,
        "p50_ms": lat["p50"] / 1000, "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000, "max_ms": lat["max"] / 1000,
        "errors": res["errors"],
        "error_count": sum(res["errors"].values()),
        "warmup_errors": sum(warm["errors"].values()),
        "cpu_us_per_req": (cpu1 - cpu0) * 1e6 / n if n else None,
        "rss_kib": rss_kib(server.pid),
        "wrk_cpu_pct": res["wrk_cpu_pct"],
        "interference_pct": res["interference_pct"],
        "attempts": attempts,
    }
    if db0 is not None and db1 is not None and n:
        out["db_cpu_us_per_req"] = (db1 - db0) * 1e6 / n
    return out


def fsync_probe(directory: Path, count: int = 200) -> dict[str, Any]:
    """Median and p99 of a 4 KiB write + fsync in the work directory, in microseconds."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    block = os.urandom(4096)
    samples = []
    try:
        for i in range(count):
            t0 = time.perf_counter()
            os.pwrite(fd, block, (i % 64) * 4096)
            os.fsync(fd)
            samples.append((time.perf_counter() - t0) * 1e6)
    finally:
        os.close(fd)
        path.unlink()
    samples.sort()
    return {"median_us": round(statistics.median(samples)),
            "p99_us": round(samples[int(len(samples) * 0.99) - 1])}


def cmd_output(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unavailable"
    return done.stdout.strip() or done.stderr.strip() or "unavailable"


def machine_description(workdir: Path) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mount = cmd_output(["findmnt", "-no", "SOURCE,FSTYPE,OPTIONS", "-T", str(workdir)]).split()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model.group(1) if model else platform.processor(),
        "kernel": platform.release(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "disk": {
            "device": mount[0] if mount else "unknown",
            "fstype": mount[1] if len(mount) > 1 else "unknown",
            "fsync_4k": fsync_probe(workdir),
        },
        "os": cmd_output(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "loadavg_at_start": [f"{x:.2f}" for x in os.getloadavg()],
    }


def versions(args: argparse.Namespace) -> dict[str, Any]:
    v = {
        "service": cmd_output([str(Path(args.bin_dir) / "hello-birthday"), "--version"])
        if "sqlite" in args.targets or "sqlite-1m" in args.targets or "postgres" in args.targets
        else "not run",
        "repo_revision": cmd_output(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"]),
        "rustc": cmd_output(["rustc", "-V"]),
        "wrk": cmd_output(["wrk", "-v"]).splitlines()[0],
        "sqlite3": cmd_output(["sqlite3", "--version"]).split(" ")[0],
        "python": platform.python_version(),
        "profile": args.profile,
    }
    if uses_pg(args.targets):
        v["postgres"] = cmd_output([pg_bin("postgres") or "postgres", "--version"])
    if "flask" in args.targets:
        import importlib.metadata as md
        v["flask"] = md.version("flask")
    return v


def make_targets(args: argparse.Namespace, workdir: Path, pg: Postgres | None) -> list[Target]:
    service = str(Path(args.bin_dir) / "hello-birthday")
    targets = []
    for name in args.targets:
        if name == "ceiling":
            t = Target(name, ["GET", "PUT"], args.users)
            port = free_port()
            t.server = Server(name, [str(Path(args.bin_dir) / "ceiling")],
                              {"PORT": str(port), "BIND_ADDR": "127.0.0.1"}, port,
                              workdir / "ceiling.log", args.server_cpu)
        elif name in ("ceiling-sqlite", "ceiling-postgres"):
            # The service's store behind the bare server, configured by the
            # service's own variables (bench/ceiling/src/bin/ceiling-store.rs).
            t = Target(name, ["GET", "PUT"], args.users)
            port = free_port()
            url = pg.url if name == "ceiling-postgres" and pg else \
                f"sqlite://{workdir / (name + '.db')}"
            t.server = Server(name, [str(Path(args.bin_dir) / "ceiling-store")],
                              {"PORT": str(port), "BIND_ADDR": "127.0.0.1",
                               "DATABASE_URL": url, "LOG_LEVEL": "warn"}, port,
                              workdir / f"{name}.log", args.server_cpu)
            if name == "ceiling-postgres":
                t.db_cpu = pg
        elif name in ("sqlite", "sqlite-1m", "postgres"):
            users = args.scale_users if name == "sqlite-1m" else args.users
            t = Target(name, ["GET"] if name == "sqlite-1m" else ["GET", "PUT"], users)
            port = free_port()
            url = pg.url if name == "postgres" and pg else \
                f"sqlite://{workdir / (name + '.db')}"
            env = {"PORT": str(port), "METRICS_PORT": str(free_port()),
                   "BIND_ADDR": "127.0.0.1", "DATABASE_URL": url,
                   "LOG_FORMAT": "json", "LOG_LEVEL": args.log_level,
                   "REQUEST_LOG": args.request_log,
                   "DRAIN_SECONDS": "0", "SHUTDOWN_TIMEOUT_SECONDS": "10",
                   "RELEASE": "bench"}
            if args.traces_endpoint:
                # Every request traced and exported: the cost at its highest.
                env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": args.traces_endpoint,
                            "OTEL_TRACES_SAMPLER": "always_on"})
            t.server = Server(name, [service], env, port, workdir / f"service-{name}.log",
                              args.server_cpu)
            if name == "postgres":
                t.db_cpu = pg
        elif name == "flask":
            t = Target(name, ["GET", "PUT"], args.users)
            port = free_port()
            t.server = Server(name, [sys.executable, str(HERE / "flask" / "app.py")],
                              {"PORT": str(port), "DATABASE": str(workdir / "flask.db")},
                              port, workdir / "flask.log", args.server_cpu, cwd=workdir)
        else:
            raise BenchError(f"unknown target {name}")
        targets.append(t)
    return targets


def prepare(args: argparse.Namespace, target: Target, workdir: Path, pg: Postgres | None) -> None:
    """Create the schema by starting the server once, then seed while it is stopped.

    The service runs its own migrations, so the benchmark never duplicates its
    schema; seeding happens with the server stopped so no cache can go stale.
    """
    if target.name == "ceiling":
        return
    server = target.server
    assert server is not None
    server.start(args.ready_deadline)
    code = server.stop()
    log(f"{target.name}: schema created (exit {code}); seeding {target.users:,} users")
    t0 = time.monotonic()
    if target.name in PG_TARGETS:
        assert pg is not None
        seed_postgres(pg, target.users)
    elif target.name == "flask":
        seed_sqlite(workdir / "flask.db", target.users, service_schema=False)
    else:
        seed_sqlite(workdir / f"{target.name}.db", target.users, service_schema=True)
    log(f"{target.name}: seeded in {time.monotonic() - t0:.1f}s")


def preflight(target: Target) -> None:
    """A seeded user must be found before any load, or every GET would be a 404."""
    server = target.server
    assert server is not None
    if target.name == "ceiling":
        return
    for i in (0, target.users - 1):
        status = http_status(server.port, f"/hello/{user_name(i)}", timeout=5)
        if status != 200:
            raise BenchError(f"{target.name}: GET /hello/{user_name(i)} answered {status}, "
                             f"expected 200 (seeding not visible)")


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(results: dict[str, Any], targets: list[Target]) -> None:
    for phase in results["phases"]:
        runs = phase["runs"]
        phase["median"] = {k: median([r[k] for r in runs]) for k in
                           ("rps", "p50_ms", "p90_ms", "p99_ms", "cpu_us_per_req",
                            "wrk_cpu_pct", "interference_pct")}
        if any("db_cpu_us_per_req" in r for r in runs):
            phase["median"]["db_cpu_us_per_req"] = median(
                [r.get("db_cpu_us_per_req") for r in runs])
        phase["max_ms"] = max(r["max_ms"] for r in runs)
        phase["errors_total"] = sum(r["error_count"] + r["warmup_errors"] for r in runs)
    results["servers"] = {t.name: {"ready_ms": [round(x, 1) for x in t.ready_ms],
                                   "ready_ms_median": median(t.ready_ms),
                                   "peak_rss_kib": t.peak_rss_kib,
                                   "exit_codes": t.exit_codes, "users": t.users}
                          for t in targets}
    by_id = {p["id"]: p for p in results["phases"]}
    ceiling = {m: by_id.get(f"ceiling {m}") for m in ("GET", "PUT")}
    flask = {m: by_id.get(f"flask {m}") for m in ("GET", "PUT")}
    for phase in results["phases"]:
        med, ref = phase["median"], ceiling.get(phase["method"])
        if ref and phase["target"] != "ceiling":
            phase["vs_ceiling_rps"] = med["rps"] / ref["median"]["rps"]
            if med["cpu_us_per_req"] and ref["median"]["cpu_us_per_req"]:
                phase["vs_ceiling_cpu"] = med["cpu_us_per_req"] / ref["median"]["cpu_us_per_req"]
        fref = flask.get(phase["method"])
        if fref and phase["target"] not in ("flask", "ceiling"):
            phase["vs_flask_rps"] = med["rps"] / fref["median"]["rps"]
    results["targets"] = evaluate_targets(by_id, results["servers"])


def evaluate_targets(by_id: dict[str, Any], servers: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value; absent inputs are skipped."""
    out: list[dict[str, Any]] = []

    def add(name: str, measured: object, goal: object, met: object, unit: str = "") -> None:
        out.append({"target": name, "measured": measured, "goal": goal, "met": bool(met),
                    "unit": unit})

    get, put = by_id.get("sqlite GET"), by_id.get("sqlite PUT")
    scale = by_id.get("sqlite-1m GET")
    if get and "vs_ceiling_rps" in get:
        add("GET req/s vs ceiling", round(get["vs_ceiling_rps"], 3), ">= 0.70",
            get["vs_ceiling_rps"] >= 0.70)
    if get and "vs_ceiling_cpu" in get:
        add("GET server CPU/request vs ceiling", round(get["vs_ceiling_cpu"], 2), "<= 1.5",
            get["vs_ceiling_cpu"] <= 1.5)
    if get:
        add("GET p99", round(get["median"]["p99_ms"], 3), "<= 2", get["median"]["p99_ms"] <= 2,
            "ms")
        add("GET errors", get["errors_total"], "0", get["errors_total"] == 0)
    if put and "vs_ceiling_rps" in put:
        add("PUT (durable) req/s vs ceiling", round(put["vs_ceiling_rps"], 3), ">= 0.40",
            put["vs_ceiling_rps"] >= 0.40)
    if put:
        add("PUT errors", put["errors_total"], "0", put["errors_total"] == 0)
    if get and scale:
        ratio = scale["median"]["p99_ms"] / get["median"]["p99_ms"]
        add(f"GET p99 with {servers['sqlite-1m']['users']:,} users vs "
            f"{servers['sqlite']['users']:,}", round(ratio, 2), "<= 1.5", ratio <= 1.5)
    if "sqlite" in servers:
        rss = servers["sqlite"]["peak_rss_kib"] / 1024
        add("peak RSS under load", round(rss, 1), "<= 20", rss <= 20, "MiB")
        ready = servers["sqlite"]["ready_ms_median"]
        add("start to ready", round(ready, 1), "<= 100", ready <= 100, "ms")
    pg_get = by_id.get("postgres GET")
    if pg_get and pg_get["median"]["cpu_us_per_req"]:
        # The service's own CPU; PostgreSQL's is reported beside it ("db").
        cpu = pg_get["median"]["cpu_us_per_req"]
        add("PostgreSQL GET service CPU/request", round(cpu, 1), "<= 25", cpu <= 25, "us")
    for method, phase in (("GET", get), ("PUT", put)):
        if phase and "vs_flask_rps" in phase:
            add(f"{method} req/s vs Flask anchor", round(phase["vs_flask_rps"], 1), ">= 50",
                phase["vs_flask_rps"] >= 50, "x")
    return out


def fmt(v: object, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def markdown(results: dict[str, Any]) -> str:
    m, v, c = results["machine"], results["versions"], results["config"]
    lines = [
        f"Run {results['timestamp']} ({results['mode']} mode, {c['runs']} interleaved "
        f"run(s) of {c['warmup_s']} s warm-up + {c['duration_s']} s, {c['connections']} "
        f"connections, medians).",
        "",
        f"Machine: {m['nproc']} x {m['cpu_model']}, {m['memory_gib']} GiB, kernel "
        f"{m['kernel']}, {m['os']}; disk {m['disk']['device']} ({m['disk']['fstype']}), "
        f"4 KiB write+fsync median {m['disk']['fsync_4k']['median_us']} us, p99 "
        f"{m['disk']['fsync_4k']['p99_us']} us; load average at start "
        f"{' '.join(m['loadavg_at_start'])}, at end {' '.join(m['loadavg_at_end'])}. "
        f"Server on CPU {c['server_cpu']}, wrk on CPU {c['load_cpu']}"
        f"{', niceness ' + str(c['nice']) if c.get('nice') else ''}. "
        f"Service `{v['service']}` ({v['profile']} build), {v['rustc']}"
        f"{'; LOG_LEVEL ' + c['log_level'] + ', REQUEST_LOG ' + c['request_log'] if c.get('request_log') else ''}.",
        "",
        "| phase | users | req/s | p50 ms | p99 ms | max ms | errors | server CPU us/req "
        "| req/s vs ceiling | CPU vs ceiling | peak RSS MiB | start to ready ms | wrk CPU % "
        "| other load % median / max |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in results["phases"]:
        med, srv = p["median"], results["servers"][p["target"]]
        cpu = fmt(med["cpu_us_per_req"])
        if med.get("db_cpu_us_per_req") is not None:
            cpu += f" (+{fmt(med['db_cpu_us_per_req'])} db)"
        lines.append(
            f"| {LABELS[p['target']]} {p['method']} | {p['users']:,} | {fmt(med['rps'], 0)} "
            f"| {fmt(med['p50_ms'], 3)} | {fmt(med['p99_ms'], 3)} | {fmt(p['max_ms'], 2)} "
            f"| {p['errors_total']} | {cpu} | {fmt(p.get('vs_ceiling_rps'), 2)} "
            f"| {fmt(p.get('vs_ceiling_cpu'), 2)} | {fmt(srv['peak_rss_kib'] / 1024)} "
            f"| {fmt(srv['ready_ms_median'])} | {fmt(med.get('wrk_cpu_pct'), 0)} "
            f"| {fmt(med.get('interference_pct'), 1)} / "
            f"{fmt(max((r.get('interference_pct') or 0) for r in p['runs']), 1)} |")
    if results["targets"]:
        lines += ["", "| target | measured | goal | met |", "|---|--:|--:|:-:|"]
        for t in results["targets"]:
            unit = f" {t['unit']}" if t["unit"] else ""
            lines.append(f"| {t['target']} | {fmt(t['measured'], 2)}{unit} | {t['goal']}{unit} "
                         f"| {'yes' if t['met'] else '**no**'} |")
    if results["failures"]:
        lines += ["", "Failures:", *[f"- {f}" for f in results["failures"]]]
    return "\n".join(lines) + "\n"


def update_readme(table_md: str, chart_rel: str) -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    begin, end = "<!-- bench:latest:begin -->", "<!-- bench:latest:end -->"
    if begin not in text or end not in text:
        log("bench/README.md has no result markers; not updated")
        return
    head, rest = text.split(begin, 1)
    _, tail_text = rest.split(end, 1)
    body = f"{begin}\n{table_md}\n![benchmark chart]({chart_rel})\n{end}"
    readme.write_text(head + body + tail_text)
    log("bench/README.md updated with the latest table")


def write_outputs(results: dict[str, Any], json_path: Path, readme: bool) -> None:
    """The Markdown table next to the JSON, the chart, and the README's copy."""
    out_dir = json_path.parent
    table = markdown(results)
    json_path.with_suffix(".md").write_text(f"# Benchmark {results['timestamp']}\n\n{table}")
    import chart  # noqa: E402  (matplotlib is slow to import; only when needed)
    png = out_dir / "latest.png"
    chart.render(results, png)
    if png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise BenchError(f"{png} is not a PNG")
    print("\n" + table, flush=True)
    log(f"results: {json_path}, {json_path.with_suffix('.md')}, {png}")
    if readme and out_dir.resolve() == HERE / "results":
        update_readme(table, "results/latest.png")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="seconds-long smoke: 1 run, 1 s phases; fails only on errors")
    p.add_argument("--runs", type=int, help="interleaved runs per phase (5; quick 1)")
    p.add_argument("--duration", type=int, help="measured seconds per phase (10; quick 1)")
    p.add_argument("--warmup", type=int, help="warm-up seconds per phase (3; quick 1)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--users", type=int, default=1000, help="seeded users (1000)")
    p.add_argument("--scale-users", type=int,
                   help="users for the scale phase (1000000; quick 100000)")
    p.add_argument("--targets", default=",".join(TARGET_NAMES),
                   help="comma list of " + ",".join(TARGET_NAMES))
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--load-cpu", default="1")
    p.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    p.add_argument("--profile", default="release", help="label of the build (for the record)")
    p.add_argument("--out", help="results directory (bench/results; quick: a temp dir)")
    p.add_argument("--log-level", default="info", help="service LOG_LEVEL (info)")
    p.add_argument("--request-log", default="errors", choices=["errors", "all", "off"],
                   help="service REQUEST_LOG (errors, the default: no line for a fast success)")
    p.add_argument("--traces", action="store_true",
                   help="export OpenTelemetry traces (every request sampled) to an OTLP "
                        "sink the benchmark runs on loopback")
    p.add_argument("--ready-deadline", type=float, default=60.0)
    p.add_argument("--nice", type=int, default=0,
                   help="niceness of servers, PostgreSQL and wrk (0; negative needs root)")
    p.add_argument("--max-interference", type=float,
                   help="%% of a core other processes may use in a window before it is "
                        "measured again (5; quick: no limit)")
    p.add_argument("--retries", type=int, default=3,
                   help="extra attempts for a disturbed window (3)")
    p.add_argument("--render", metavar="RESULTS_JSON",
                   help="only redraw the table, chart and README from a results file")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--no-readme", action="store_true", help="do not update bench/README.md")
    a = p.parse_args(argv)
    quick = a.quick
    a.runs = a.runs or (1 if quick else 5)
    a.duration = a.duration or (1 if quick else 10)
    a.warmup = a.warmup or (1 if quick else 3)
    a.scale_users = a.scale_users or (100_000 if quick else 1_000_000)
    if a.max_interference is None:
        a.max_interference = float("inf") if quick else 5.0
    a.targets = [t for t in a.targets.split(",") if t]
    unknown = set(a.targets) - set(TARGET_NAMES)
    if unknown:
        p.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if a.runs < 1 or a.duration < 1 or a.warmup < 1 or a.users < 2 or a.scale_users < 2:
        p.error("runs, duration and warm-up must be at least 1, users at least 2")
    return a


def main(argv: list[str]) -> int:
    global NICE
    args = parse_args(argv)
    NICE = args.nice
    if args.render:
        path = Path(args.render).resolve()
        results = json.loads(path.read_text())
        # Judged against today's targets, so a target added later shows up.
        results["targets"] = evaluate_targets({p["id"]: p for p in results["phases"]},
                                              results["servers"])
        path.write_text(json.dumps(results, indent=2) + "\n")
        write_outputs(results, path, readme=not args.no_readme)
        return 0
    for tool in ("wrk", "taskset", "sqlite3") + (("psql",) if uses_pg(args.targets) else ()):
        if not shutil.which(tool):
            raise BenchError(f"{tool} not found (scripts/setup.sh dev installs it)")
    # /var/tmp is disk-backed by convention; fsync on a tmpfs would flatter PUT.
    parent = os.environ.get("BENCH_TMPDIR", "/var/tmp")
    workdir = Path(tempfile.mkdtemp(prefix="hello-birthday-bench-", dir=parent))
    os.chmod(workdir, 0o755)  # the postgres user must reach its cluster inside
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(args.out) if args.out else (workdir / "results" if args.quick
                                               else HERE / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"work directory {workdir}; results to {out_dir}")
    results = {"timestamp": stamp, "mode": "quick" if args.quick else "full",
               "config": {"runs": args.runs, "duration_s": args.duration,
                          "warmup_s": args.warmup, "connections": args.connections,
                          "users": args.users, "scale_users": args.scale_users,
                          "server_cpu": args.server_cpu, "load_cpu": args.load_cpu,
                          "targets": args.targets, "wrk_threads": 1, "nice": args.nice,
                          "log_level": args.log_level, "request_log": args.request_log,
                          "traces": "otlp" if args.traces else "off",
                          "max_interference_pct": args.max_interference
                          if args.max_interference != float("inf") else None,
                          "retries": args.retries},
               "failures": []}
    pg: Postgres | None = None
    targets: list[Target] = []
    try:
        sink = OtlpSink() if args.traces else None
        args.traces_endpoint = sink.endpoint if sink else None
        results["machine"] = machine_description(workdir)
        results["versions"] = versions(args)
        if uses_pg(args.targets):
            pg = Postgres(workdir, args.server_cpu)
            pg.start()
        targets = make_targets(args, workdir, pg)
        for t in targets:
            prepare(args, t, workdir, pg)
        phases: dict[tuple[str, str], dict[str, Any]] = {}
        for t in targets:
            for m in t.phases:
                phases[(t.name, m)] = {"id": f"{t.name} {m}", "target": t.name, "method": m,
                                       "users": t.users, "runs": []}
        results["phases"] = list(phases.values())
        for r in range(1, args.runs + 1):
            for t in targets:
                assert t.server is not None
                ready = t.server.start(args.ready_deadline)
                t.ready_ms.append(ready)
                preflight(t)
                for m in t.phases:
                    res = measure_phase(args, t, m, t.db_cpu)
                    phases[(t.name, m)]["runs"].append(res)
                    log(f"run {r}/{args.runs} {t.name:9} {m}: {res['rps']:>9,.0f} req/s  "
                        f"p50 {res['p50_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms  "
                        f"errors {res['error_count'] + res['warmup_errors']}  "
                        f"cpu {fmt(res['cpu_us_per_req'])} us/req  "
                        f"other load {res['interference_pct']:.1f}%")
                t.peak_rss_kib = max(t.peak_rss_kib, proc_status_kib(t.server.pid, "VmHWM"))
                code = t.server.stop()
                t.exit_codes.append(code)
                if t.name != "flask" and code != 0:
                    results["failures"].append(f"{t.name} exited {code} after SIGTERM")
        results["machine"]["loadavg_at_end"] = [f"{x:.2f}" for x in os.getloadavg()]
        if sink:
            results["traces_exported"] = {"requests": sink.requests, "bytes": sink.bytes}
            log(f"OTLP sink received {sink.requests} export requests, {sink.bytes:,} bytes")
            if not sink.requests:
                results["failures"].append("--traces: the OTLP sink received nothing")
        summarise(results, targets)
        for p in results["phases"]:
            if p["errors_total"]:
                results["failures"].append(f"{p['id']}: {p['errors_total']} errors "
                                           f"(non-2xx or socket)")
        results["ok"] = not results["failures"]
        json_path = out_dir / f"{stamp}.json"
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        write_outputs(results, json_path, readme=not args.quick and not args.no_readme)
        for f in results["failures"]:
            print(f"FAILED: {f}", file=sys.stderr)
        return 0 if results["ok"] else 1
    finally:
        for server in list(RUNNING):
            try:
                server.stop(timeout=15)
            except BenchError:
                pass
        if pg:
            pg.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _terminate(signum: int, _frame: FrameType | None) -> NoReturn:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
