"""Shared fixtures for the hardening tests: a throwaway service, a throwaway
PostgreSQL server, and small HTTP helpers.

Everything binds to 127.0.0.1 on free ports, lives in a temporary directory
and is torn down by the caller's cleanup, even when a test fails.
"""

from __future__ import annotations

import atexit
import functools
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "lib"))
from pg_throwaway import ThrowawayPostgres, pg_bin  # noqa: E402

BIN = Path(os.environ.get("HELLO_BIN", ROOT / "target" / "debug" / "hello-birthday"))
CI = os.environ.get("CI") == "true"
T = TypeVar("T")



@functools.cache
def service_vars() -> frozenset[str]:
    """The variables the service reads, from its own `--help` (clap prints
    `[env: NAME=...]` for each): the list cannot drift from `src/config.rs`.
    Every one is cleared from the caller's environment before a start, so a
    developer's exported PORT cannot change what a test exercises."""
    require(BIN.exists(), f"service binary {BIN} (run cargo build --bin hello-birthday)")
    out = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, check=True,
                         timeout=30, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}).stdout
    names = frozenset(re.findall(r"\[env: ([A-Z0-9_]+)", out))
    if not names:
        raise AssertionError(f"no [env: ...] entries in `{BIN} --help`")
    return names | STANDARD_VARS


# Variables the service reads that are not its own flags: other ecosystems'
# conventions (tracing, systemd, OpenTelemetry), documented in the README.
STANDARD_VARS = frozenset({
    "RUST_LOG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY",
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER",
})


def require(condition: bool, what: str) -> None:
    """A missing prerequisite fails under CI=true and skips (loudly) elsewhere."""
    if condition:
        return
    if CI:
        raise AssertionError(f"missing prerequisite (CI=true): {what}")
    raise unittest.SkipTest(f"missing prerequisite: {what}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raise_fd_limit(want: int) -> int:
    """Raise the soft fd limit (inherited by children) towards `want`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def close_all(socks: list[socket.socket]) -> None:
    """A cleanup for the sockets a test opened (the list may grow after it is registered)."""
    for s in socks:
        s.close()


class Fatal(Exception):
    """Raised by a polled condition that can never become true: stop polling."""


def wait_until(predicate: Callable[[], T | None], timeout: float, interval: float = 0.05,
               what: str = "condition") -> T:
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Fatal as exc:
            raise AssertionError(f"while waiting for {what}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - polled conditions may raise while not ready
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")


def letters(n: int, width: int = 8) -> str:
    """A username made of ASCII letters only (the API forbids digits)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    out = []
    for _ in range(width):
        out.append(alphabet[n % 26])
        n //= 26
    return "".join(reversed(out))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


def request(port: int, method: str, path: str, body: dict[str, Any] | list[Any] | bytes | str | None = None,
            headers: Mapping[str, str | bytes] | None = None,
            timeout: float = 10.0, conn: http.client.HTTPConnection | None = None) -> Response:
    """One HTTP request. With `conn` the caller's keep-alive connection is used."""
    own = conn is None
    if conn is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    hdrs: dict[str, str | bytes] = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    start = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data,
                        time.monotonic() - start)
    finally:
        if own:
            conn.close()


def read_response(s: socket.socket) -> Response:
    """Read one answer from a raw socket: status line, headers, and a body
    framed by Content-Length or ended by the server's close."""
    start = time.monotonic()
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                # A server that answers before reading all we sent may reset
                # the connection after its answer: keep what arrived.
                if b"\r\n\r\n" not in buf:
                    raise
                break
            if not chunk:
                break
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1."):
            raise AssertionError(f"no HTTP answer: {buf[:200]!r}")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        status = int(lines[0].split()[1])
        length = 0 if status in (204, 304) else int(headers.get("content-length", "-1"))
        while length < 0 or len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    except (TimeoutError, ConnectionResetError) as exc:
        raise AssertionError(f"{exc!r} after {buf[:200]!r}") from None
    return Response(status, headers, body, time.monotonic() - start)


def raw_request(port: int, data: bytes, timeout: float = 5.0) -> Response:
    """Send raw bytes (a request `http.client` would not write) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may answer and close while we are still sending
        return read_response(s)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def put_dob(port: int, username: str, dob: str, **kw: Any) -> Response:
    return request(port, "PUT", f"/hello/{username}", body={"dateOfBirth": dob}, **kw)


def assert_problem(tc: unittest.TestCase, resp: Response, statuses: Collection[int], retry_after: bool = False) -> None:
    """An error answer is RFC 9457 problem+json with the documented members."""
    tc.assertIn(resp.status, statuses, f"unexpected status {resp.status}: {resp.body[:300]!r}")
    ctype = resp.header("content-type") or ""
    tc.assertTrue(ctype.startswith("application/problem+json"),
                  f"status {resp.status} has content-type {ctype!r}")
    doc = resp.json()
    for member in ("type", "title", "status"):
        tc.assertIn(member, doc, f"problem body lacks {member}: {doc}")
    tc.assertEqual(doc["status"], resp.status)
    if retry_after:
        ra = resp.header("retry-after")
        if ra is None:
            tc.fail(f"{resp.status} without Retry-After")
        tc.assertTrue(ra.strip().isdigit(), f"Retry-After is not delta-seconds: {ra!r}")


@dataclass
class Service:
    """The real binary on free ports, logging to a file in `workdir`."""

    workdir: Path
    database_url: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    metrics_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    starts: int = 0
    nofile: int | None = None  # the child's open-files limit (soft and hard), if set
    bin: Path | None = None  # another build of the service (default BIN)
    # Variables for the process that the service itself does not read
    # (LD_PRELOAD and a shim's settings); `env` is checked against --help.
    process_env: dict[str, str] = field(default_factory=dict)

    def start(self, ready_timeout: float = 20.0, expect_ready: bool = True) -> Service:
        binary = self.bin or BIN
        require(binary.exists(), f"service binary {binary} (run cargo build --bin hello-birthday)")
        # A fresh port per start: a killed instance's port may linger in TIME_WAIT.
        unknown = sorted(set(self.env) - service_vars())
        if unknown:
            # A variable the service does not read would make a test exercise
            # something other than what it claims.
            raise AssertionError(f"the service reads no variable named {', '.join(unknown)}")
        self.port, self.metrics_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k not in service_vars()}
        env.update({
            "PORT": str(self.port),
            "METRICS_PORT": str(self.metrics_port),
            "BIND_ADDR": "127.0.0.1",
            "DATABASE_URL": self.database_url,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            "DRAIN_SECONDS": "0",
            "SHUTDOWN_TIMEOUT_SECONDS": "3",
        })
        env.update(self.env)
        env.update(self.process_env)
        self.starts += 1
        self.log_path = self.workdir / f"service-{self.starts}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        limit = self.nofile
        preexec = None if limit is None else (
            lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
        self.proc = proc = subprocess.Popen([str(binary)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=self.workdir, preexec_fn=preexec)
        log.close()

        def up() -> bool:
            if proc.poll() is not None:
                raise Fatal(f"service exited with {proc.returncode}:\n{self.logs()[-2000:]}")
            path = "/readyz" if expect_ready else "/healthz"
            return request(self.port, "GET", path, timeout=1).status == 200

        wait_until(up, ready_timeout, what=f"service on :{self.port} to answer")
        return self

    def logs(self) -> str:
        text = ""
        for i in range(1, self.starts + 1):
            p = self.workdir / f"service-{i}.log"
            if p.exists():
                text += p.read_text(errors="replace")
        return text

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it outlives its own shutdown deadline."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None

    def metrics(self) -> str:
        return request(self.metrics_port, "GET", "/metrics").body.decode()

    def running(self) -> subprocess.Popen[bytes]:
        """The started process (a test that has not started the service fails)."""
        if self.proc is None:
            raise AssertionError("the service was never started")
        return self.proc

    def rss_mib(self) -> float:
        with open(f"/proc/{self.running().pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS for the service")


class Postgres(ThrowawayPostgres):
    """The shared throwaway cluster (scripts/lib/pg_throwaway.py). initdb runs
    once per test process; each instance starts from a copy of that template
    cluster."""

    _template: Path | None = None

    def __init__(self, workdir: Path) -> None:
        require(pg_bin("initdb") is not None, "PostgreSQL server binary initdb")
        require(shutil.which("runuser") is not None or os.geteuid() != 0, "runuser (util-linux)")
        if Postgres._template is None:
            Postgres._template = Path(tempfile.mkdtemp(prefix="pg-template-")) / "t"
            # atexit runs last-registered first: stop the server, then delete.
            atexit.register(shutil.rmtree, Postgres._template.parent, ignore_errors=True)
            atexit.register(self.helper, "destroy", str(Postgres._template), check=False)
            os.chmod(Postgres._template.parent, 0o755)
        os.chmod(workdir, 0o755)
        parent = Path(tempfile.mkdtemp(prefix="pg-", dir=workdir))
        os.chmod(parent, 0o755)
        super().__init__(parent / "c", user="hello", copy_of=Postgres._template,
                         settings=["max_connections=100", "shared_buffers=32MB"])

    @property
    def url(self) -> str:
        return f"postgres://hello:pw@127.0.0.1:{self.port}/postgres"

    def psql(self, sql: str) -> str:  # type: ignore[override]
        require(pg_bin("psql") is not None, "psql (postgresql-client)")
        return super().psql(sql).stdout


class ServiceTestCase(unittest.TestCase):
    """Gives each test a temp dir; cleanups registered later run first."""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="hardening-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def sqlite_service(self, name: str = "db.sqlite", **env: str | int) -> Service:
        svc = Service(self.tmp, f"sqlite://{self.tmp / name}", env={k: str(v) for k, v in env.items()})
        self.addCleanup(svc.stop)
        return svc

    def postgres(self) -> Postgres:
        pg = Postgres(self.tmp)
        self.addCleanup(pg.stop, "immediate")
        pg.start()
        return pg

    def report(self, text: str) -> None:
        """Figures the suite prints (and the CI log keeps)."""
        print(f"    [{self.id().split('.')[-1]}] {text}", flush=True)


class Writers:
    """Sustained PUT load of unique users from `threads` keep-alive clients.

    Records every acknowledged (204) username, the status counts, malformed
    error answers, and connection failures; stops on `stop()`.
    """

    def __init__(self, port_fn: Callable[[], int], threads: int = 4, prefix: str = "", dob: str = "1990-01-02",
                 timeout: float = 10.0) -> None:
        self.port_fn = port_fn  # a callable: the port may change across restarts
        self.prefix = prefix
        self.dob = dob
        self.timeout = timeout
        self.acked: set[str] = set()
        self.statuses: dict[int, int] = {}
        self.bad_errors: list[str] = []
        self.conn_errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next = 0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _name(self) -> str:
        with self._lock:
            n = self._next
            self._next += 1
        return self.prefix + letters(n)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            name = self._name()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port_fn(), timeout=self.timeout)
                resp = request(0, "PUT", f"/hello/{name}", body={"dateOfBirth": self.dob}, conn=conn)
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                with self._lock:
                    self.conn_errors += 1
                time.sleep(0.01)  # back off a little while the server is away
                continue
            with self._lock:
                self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                if resp.status == 204:
                    self.acked.add(name)
                else:
                    ctype = resp.header("content-type") or ""
                    ok = ctype.startswith("application/problem+json")
                    if resp.status == 503:
                        ok = ok and (resp.header("retry-after") or "").strip().isdigit()
                    if not ok or resp.status not in (503, 507):
                        self.bad_errors.append(f"{resp.status} {ctype} {resp.body[:200]!r}")
            if resp.header("connection") == "close":
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def start(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def count(self, status: int) -> int:
        with self._lock:
            return self.statuses.get(status, 0)

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
