"""The conventions operators bring from elsewhere, seen in the real binary:
request ids that match the load balancer's log (a real HAProxy from the
local stack's template; the ALB's X-Amzn-Trace-Id), RUST_LOG beside
LOG_LEVEL, the systemd notify protocol and its watchdog, secrets read from
files."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import ROOT, Service, ServiceTestCase, free_port, read_response, request, require, wait_until

# The fault build (tests/hardening/run.sh): its API accept loop can be wedged.
FAULT_BIN = Path(os.environ.get("HELLO_FAULT_BIN", ROOT / "target" / "debug" / "hello-birthday-faults"))


def json_lines(svc: Service) -> list[dict[str, Any]]:
    out = []
    for raw in svc.logs().splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out


class RequestIds(ServiceTestCase):
    def haproxy(self, backend_port: int) -> tuple[int, Callable[[], list[list[str]]]]:
        """HAProxy from deploy/local/haproxy.cfg.tmpl, one server; its port
        and a function returning its log's hb-req lines."""
        require(shutil.which("haproxy") is not None, "haproxy (scripts/setup.sh dev)")
        state = self.tmp / "state"
        (state / "haproxy").mkdir(parents=True)
        port = free_port()
        text = (ROOT / "deploy/local/haproxy.cfg.tmpl").read_text()
        for k, v in {"@STATE@": str(state), "@HAPROXY_PORT@": str(port),
                     "@HAPROXY_STATS_PORT@": str(free_port()),
                     "@SERVERS@": f"    server s1 127.0.0.1:{backend_port}"}.items():
            text = text.replace(k, v)
        cfg = state / "haproxy" / "haproxy.cfg"
        cfg.write_text(text)
        subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], check=True, timeout=30)
        log_path = self.tmp / "haproxy.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(proc.wait, 10)
        self.addCleanup(proc.terminate)  # cleanups run last-added first

        def served() -> bool:
            try:
                return request(port, "GET", "/readyz", timeout=1).status == 200
            except OSError:
                return False

        wait_until(served, 10, what="HAProxy to route to the service")
        return port, lambda: [line.split() for line in log_path.read_text().splitlines()
                              if line.startswith("hb-req")]

    def test_haproxys_logged_id_is_the_one_the_service_logs(self) -> None:
        svc = self.sqlite_service(REQUEST_LOG="all").start()
        port, hb_lines = self.haproxy(svc.port)
        # A client's own id is replaced: HAProxy's log must name the request.
        answers = [request(port, "GET", "/hello/Nobody", headers={"X-Request-Id": "client-chosen"})
                   for _ in range(3)]
        self.assertTrue(all(a.status == 404 for a in answers))
        ids = [a.headers["x-request-id"] for a in answers]  # a missing id fails here
        self.assertEqual(len(set(ids)), 3, ids)
        self.assertNotIn("client-chosen", ids)
        wait_until(lambda: len([f for f in hb_lines() if f[6] == "/hello/Nobody"]) == 3, 10,
                   what="HAProxy's log lines")
        logged_by_haproxy = [f[7] for f in hb_lines() if f[6] == "/hello/Nobody"]
        self.assertEqual(sorted(logged_by_haproxy), sorted(ids))
        svc.stop()
        logged_by_service = [e["request_id"] for e in json_lines(svc)
                             if e.get("message") == "request" and e.get("status") == 404]
        self.assertEqual(sorted(logged_by_service), sorted(ids))
        # The grammar the service accepts (else it would have made its own).
        self.assertTrue(all(not i.startswith("hb:") for i in ids), ids)

    def test_an_albs_trace_id_root_is_the_request_id(self) -> None:
        svc = self.sqlite_service().start()
        root = "1-67891233-abcdef012345678912345678"
        amzn = f"Self=1-67891234-12456789abcdef0123456789;Root={root};Parent=53995c3f42cd8ad8;Sampled=1"
        resp = request(svc.port, "GET", "/hello/Nobody",
                       headers={"X-Amzn-Trace-Id": amzn, "X-Request-Id": "client"})
        self.assertEqual(resp.status, 404)
        self.assertEqual(resp.header("x-request-id"), root)
        malformed = request(svc.port, "GET", "/hello/Nobody",
                            headers={"X-Amzn-Trace-Id": "Root=1-xyz", "X-Request-Id": "client"})
        self.assertEqual(malformed.header("x-request-id"), "client")
        svc.stop()
        logged = [e["request_id"] for e in json_lines(svc) if e.get("message") == "request"]
        self.assertEqual(logged, [root, "client"])


class RustLog(ServiceTestCase):
    """RUST_LOG, when set, is the filter; else LOG_LEVEL; else info."""

    def debug_lines(self, svc: Service) -> list[dict[str, Any]]:
        return [e for e in json_lines(svc) if e.get("level") == "DEBUG"]

    def test_rust_log_takes_precedence_over_log_level(self) -> None:
        # The harness sets LOG_LEVEL=info: debug lines appear only by RUST_LOG.
        svc = self.sqlite_service().start()
        svc.stop()
        self.assertEqual(self.debug_lines(svc), [])
        svc = self.sqlite_service("b.sqlite", RUST_LOG="hello_birthday=debug").start()
        svc.stop()
        self.assertTrue(self.debug_lines(svc), "RUST_LOG=hello_birthday=debug gives debug lines")
        self.assertTrue(any(e.get("message") == "RUST_LOG takes precedence over LOG_LEVEL"
                            for e in json_lines(svc)))
        svc = self.sqlite_service("c.sqlite", RUST_LOG="warn", LOG_LEVEL="debug").start()
        svc.stop()
        levels = {e.get("level") for e in json_lines(svc)}
        self.assertNotIn("DEBUG", levels)
        self.assertNotIn("INFO", levels, "RUST_LOG=warn silences LOG_LEVEL=debug")

    def test_an_invalid_filter_names_its_variable_and_exits_2(self) -> None:
        from harness import BIN
        env = {"PATH": os.environ["PATH"], "RUST_LOG": "hello_birthday=loud",
               "DATABASE_URL": f"sqlite://{self.tmp / 'x.sqlite'}", "PORT": "0", "METRICS_PORT": "0"}
        out = subprocess.run([str(BIN)], env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 2)
        self.assertIn("RUST_LOG", out.stderr)


class Notify(ServiceTestCase):
    """Type=notify: a datagram socket bound by the test stands in for systemd."""

    def listener(self) -> tuple[str, list[tuple[float, str]]]:
        path = str(self.tmp / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.2)
        got: list[tuple[float, str]] = []
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                try:
                    got.append((time.monotonic(), sock.recv(4096).decode()))
                except TimeoutError:
                    continue
                except OSError:
                    return

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.addCleanup(sock.close)
        self.addCleanup(t.join, 2)
        self.addCleanup(stop.set)  # cleanups run last-added first
        return path, got

    PERIOD_S = 0.6

    def watched(self, svc: Service) -> tuple[Service, list[tuple[float, str]]]:
        """Starts `svc` under the test's notify socket and a watchdog, and
        returns it fed three times."""
        path, got = self.listener()
        svc.env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC=str(int(self.PERIOD_S * 1e6)))
        svc.start()
        wait_until(lambda: len(self.feeds(got)) >= 3, 10, what="three watchdog feeds")
        return svc, got

    @staticmethod
    def feeds(got: list[tuple[float, str]]) -> list[float]:
        return [t for t, m in got if m == "WATCHDOG=1"]

    def starved(self, got: list[tuple[float, str]], wedged_at: float) -> float:
        """Waits for three whole periods without a feed; the last feed's time."""
        wait_until(lambda: time.monotonic() - max(self.feeds(got)) > 3 * self.PERIOD_S, 10,
                   what="the watchdog to go unfed")
        starved_from = max(self.feeds(got))
        # A check already past the wedged part when it wedged may still feed.
        self.assertLess(starved_from, wedged_at + 2 * self.PERIOD_S, "the feeds stop at once")
        return starved_from

    def fed_again(self, got: list[tuple[float, str]], starved_from: float) -> None:
        wait_until(lambda: max(self.feeds(got)) > starved_from + 3 * self.PERIOD_S, 10,
                   what="the watchdog to be fed again")

    def test_ready_watchdog_stopping_in_order_and_a_wedged_writer_starves_the_watchdog(self) -> None:
        db = self.tmp / "db.sqlite"
        svc, got = self.watched(self.sqlite_service(DB_TIMEOUT_MS="30000"))
        self.assertTrue(got[0][1].startswith("READY=1"), got[:2])

        # Wedge the store writer: another process holds SQLite's write lock
        # and a PUT makes the writer wait on it (busy_timeout 30 s).
        lock = sqlite3.connect(db, timeout=5, isolation_level=None)
        self.addCleanup(lock.close)
        lock.execute("BEGIN IMMEDIATE")
        put_status: list[int] = []
        writer = threading.Thread(target=lambda: put_status.append(request(
            svc.port, "PUT", "/hello/Alice", body={"dateOfBirth": "1990-01-02"}, timeout=60).status))
        writer.start()
        # Starved: no feed for three whole periods while the writer waits.
        starved_from = self.starved(got, wedged_at=time.monotonic())
        self.assertTrue(writer.is_alive(), "the PUT is still waiting on the writer")

        # Unwedged: the PUT completes and the feeds resume.
        lock.execute("COMMIT")
        writer.join(30)
        self.assertEqual(put_status, [204])
        self.fed_again(got, starved_from)

        svc.stop()
        wait_until(lambda: any(m.startswith("STOPPING=1") for _, m in got), 5, what="STOPPING=1")
        kinds = [m.split("=")[0] for _, m in got]
        stopping = kinds.index("STOPPING")
        self.assertEqual(kinds[0], "READY")
        self.assertEqual(kinds.count("READY"), 1)
        self.assertNotIn("WATCHDOG", kinds[stopping:], "no feed after the drain starts")
        warned = [e for e in json_lines(svc) if e.get("message", "").startswith("watchdog not fed")]
        self.assertEqual(len(warned), 1, "one warning per wedge, not one per check")

    def test_a_wedged_accept_loop_starves_the_watchdog(self) -> None:
        require(FAULT_BIN.exists(), f"fault build {FAULT_BIN} (tests/hardening/run.sh builds it)")
        wedge = self.tmp / "wedge-accept"
        svc = self.sqlite_service()
        svc.bin = FAULT_BIN
        svc.process_env = {"HELLO_FAULT_WEDGE_ACCEPT": str(wedge)}
        svc, got = self.watched(svc)

        # Wedge the API accept loop: the next probe finds it stuck.
        wedge.touch()
        starved_from = self.starved(got, wedged_at=time.monotonic())
        # What the watchdog is for: the process is alive (its metrics
        # listener answers) but takes no new API connection; a request
        # waits in the kernel's queue, unanswered.
        self.assertEqual(request(svc.metrics_port, "GET", "/metrics", timeout=5).status, 200)
        waiting = socket.create_connection(("127.0.0.1", svc.port), timeout=5)
        self.addCleanup(waiting.close)
        waiting.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        waiting.settimeout(1)
        with self.assertRaises(TimeoutError, msg="a wedged accept loop answered"):
            waiting.recv(1)

        # Unwedged: the waiting request is answered and the feeds resume.
        wedge.unlink()
        waiting.settimeout(10)
        self.assertEqual(read_response(waiting).status, 200)
        self.fed_again(got, starved_from)
        warned = [e for e in json_lines(svc) if e.get("message", "").startswith("watchdog not fed")]
        self.assertEqual(len(warned), 1, "one warning per wedge, not one per check")

    def test_without_notify_socket_nothing_is_sent_and_it_still_serves(self) -> None:
        path, got = self.listener()
        svc = self.sqlite_service(WATCHDOG_USEC="200000").start()
        self.assertEqual(request(svc.port, "GET", "/healthz").status, 200)
        svc.stop()
        self.assertEqual(got, [])


@dataclass
class Run:
    """A service started by hand (SecretsFromFiles) and the port it serves on."""

    proc: subprocess.Popen[bytes]
    port: int


class SecretsFromFiles(ServiceTestCase):
    """DATABASE_URL_FILE and systemd's LoadCredential= (CREDENTIALS_DIRECTORY)."""

    def run_with(self, env: dict[str, str]) -> Run:
        from harness import BIN, service_vars
        port = free_port()
        base = {k: v for k, v in os.environ.items() if k not in service_vars()}
        base.update({"PORT": str(port), "METRICS_PORT": str(free_port()), "BIND_ADDR": "127.0.0.1",
                     "LOG_FORMAT": "json", "DRAIN_SECONDS": "0"})
        base.update(env)
        log = open(self.tmp / f"svc-{port}.log", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen([str(BIN)], env=base, stdout=log, stderr=subprocess.STDOUT,
                                cwd=self.tmp)
        log.close()
        def stop() -> None:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(15)

        self.addCleanup(stop)
        return Run(proc, port)

    def stored(self, db: Path) -> list[str]:
        with sqlite3.connect(db) as c:
            return [r[0] for r in c.execute("SELECT username FROM users")]

    def put_through(self, run: Run) -> None:
        proc = run.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode}")
            try:
                return request(run.port, "GET", "/readyz", timeout=1).status == 200
            except OSError:
                return False
        wait_until(ready, 20, what="the service to be ready")
        resp = request(run.port, "PUT", "/hello/Alice", body={"dateOfBirth": "1990-01-02"})
        self.assertEqual(resp.status, 204)

    def test_the_url_file_and_the_credential_name_the_database(self) -> None:
        via_file, via_cred = self.tmp / "from-file.sqlite", self.tmp / "from-cred.sqlite"
        url_file = self.tmp / "database-url.txt"
        url_file.write_text(f"sqlite://{via_file}\n")
        creds = self.tmp / "credentials"
        creds.mkdir()
        (creds / "database-url").write_text(f"sqlite://{via_cred}")

        self.put_through(self.run_with({"DATABASE_URL_FILE": str(url_file)}))
        self.assertEqual(self.stored(via_file), ["Alice"])
        self.put_through(self.run_with({"CREDENTIALS_DIRECTORY": str(creds)}))
        self.assertEqual(self.stored(via_cred), ["Alice"])
        # An env file that still sets DATABASE_URL wins over the credential, with a warning.
        via_env = self.tmp / "from-env.sqlite"
        run = self.run_with({"CREDENTIALS_DIRECTORY": str(creds), "DATABASE_URL": f"sqlite://{via_env}"})
        self.put_through(run)
        self.assertEqual(self.stored(via_env), ["Alice"])
        wait_until(lambda: "credential database-url is not read"
                   in (self.tmp / f"svc-{run.port}.log").read_text(), 5, what="the warning")

    def test_two_sources_of_the_secret_are_refused(self) -> None:
        url_file = self.tmp / "database-url.txt"
        url_file.write_text("postgres://u:s3cret@127.0.0.1:1/db")
        run = self.run_with({"DATABASE_URL_FILE": str(url_file),
                             "DATABASE_URL": f"sqlite://{self.tmp / 'x.sqlite'}"})
        self.assertEqual(run.proc.wait(15), 2)
        out = (self.tmp / f"svc-{run.port}.log").read_text()
        self.assertIn("both set", out)
        self.assertNotIn("s3cret", out)
