"""The metrics port defended like the API port: its own small connection
cap and first-request deadline, file descriptors kept in reserve so the API
port can always accept (the load balancer's health check must not be
starved by a scraper or an attacker), a rate-limited accept-error line, and
a loopback address unless one is configured."""

from __future__ import annotations

import http.client
import os
import re
import resource
import socket
import subprocess
import time
import unittest

from harness import BIN, Service, ServiceTestCase, close_all, free_port, metric, raise_fd_limit, request, service_vars, wait_until

SLACK = 2.5  # seconds past a deadline for a close to be seen (debug build, shared host)


def closed_by_peer(s: socket.socket) -> bool:
    s.settimeout(0.001)
    try:
        return s.recv(4096) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def api_answers(tc: unittest.TestCase, port: int, rounds: int = 5) -> float:
    """GET, PUT, /healthz and /readyz from new clients, each answered within
    1 s with its usual status. Returns the slowest answer's time."""
    failures, slowest = [], 0.0
    for i in range(rounds):
        for method, path, body, want in (
            ("GET", "/hello/Alice", None, 200),
            ("PUT", f"/hello/Bob{'abcdefghij'[i]}", {"dateOfBirth": "1990-01-02"}, 204),
            ("GET", "/healthz", None, 200),
            ("GET", "/readyz", None, 200),
        ):
            try:
                resp = request(port, method, path, body=body, timeout=1.0)
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"{method} {path}: {exc!r}")
                continue
            slowest = max(slowest, resp.elapsed)
            if resp.status != want or resp.elapsed >= 1.0:
                failures.append(f"{method} {path}: {resp.status} after {resp.elapsed:.2f}s")
    tc.assertEqual(failures, [], f"{len(failures)} of {4 * rounds} API requests failed")
    return slowest


class MetricsPort(ServiceTestCase):
    IDLE = 300  # silent connections to the metrics port
    NOFILE = 256  # the service's open-files limit

    def test_idle_connections_to_the_metrics_port_cannot_starve_the_api(self) -> None:
        raise_fd_limit(4 * self.IDLE)
        svc = Service(self.tmp, f"sqlite://{self.tmp / 'db.sqlite'}", nofile=self.NOFILE,
                      env={"FIRST_REQUEST_TIMEOUT_SECONDS": "60"})
        self.addCleanup(svc.stop)
        svc.start()
        self.assertEqual(request(svc.port, "PUT", "/hello/Alice", body={"dateOfBirth": "1990-01-02"}).status,
                         204)
        idle: list[socket.socket] = []
        self.addCleanup(close_all, idle)
        t0 = time.monotonic()
        for _ in range(self.IDLE):
            idle.append(socket.create_connection(("127.0.0.1", svc.metrics_port), timeout=5))
        slowest = api_answers(self, svc.port)
        # The connections past the cap were accepted and closed (the oldest
        # silent one makes room for each newcomer), not left to pile up.
        wait_until(lambda: sum(closed_by_peer(s) for s in idle) >= self.IDLE - 8, 10, interval=0.2,
                   what="the metrics port to hold no more than its cap")
        # A scraper still gets in: it takes the place of a silent connection.
        t = time.monotonic()
        scrape = request(svc.metrics_port, "GET", "/metrics", timeout=2)
        self.assertEqual(scrape.status, 200)
        scrape_s = time.monotonic() - t
        text = scrape.body.decode()
        evicted = metric(text, "hello_birthday_http_connections_closed_total", listener="metrics", reason="evicted")
        self.assertGreaterEqual(evicted, self.IDLE - 8)
        self.assertEqual(metric(text, "hello_birthday_http_accept_errors_total"), 0, "an accept failed: no fds in reserve")
        self.assertNotIn("accept failed", svc.logs())
        self.report(f"ulimit -n {self.NOFILE}, {self.IDLE} silent connections to the metrics port in "
                    f"{time.monotonic() - t0:.1f}s: {evicted:.0f} closed for room, API GET/PUT/healthz/readyz "
                    f"answered (slowest {slowest * 1000:.0f}ms), a scrape in {scrape_s * 1000:.0f}ms")

    def test_metrics_port_first_request_deadline_and_one_request_per_connection(self) -> None:
        svc = self.sqlite_service(FIRST_REQUEST_TIMEOUT_SECONDS=1).start()
        silent = socket.create_connection(("127.0.0.1", svc.metrics_port))
        half = socket.create_connection(("127.0.0.1", svc.metrics_port))
        self.addCleanup(silent.close)
        self.addCleanup(half.close)
        half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        t0 = time.monotonic()
        wait_until(lambda: closed_by_peer(silent) and closed_by_peer(half), 1 + SLACK, interval=0.1,
                   what="silent connections to the metrics port to be closed (FIRST_REQUEST_TIMEOUT_SECONDS=1)")
        took = time.monotonic() - t0
        # A scrape is answered, and its connection is not kept open for an
        # attacker to idle on.
        conn = http.client.HTTPConnection("127.0.0.1", svc.metrics_port, timeout=5)
        self.addCleanup(conn.close)
        resp = request(svc.metrics_port, "GET", "/metrics", conn=conn)
        self.assertEqual(resp.status, 200)
        self.assertEqual((resp.header("connection") or "").lower(), "close")
        self.assertGreaterEqual(metric(resp.body.decode(), "hello_birthday_http_connections_closed_total", listener="metrics",
                                       reason="first_request_timeout"), 2)
        self.report(f"silent and half-sent metrics connections closed after {took:.1f}s")

    def test_accept_errors_are_logged_at_a_bounded_rate(self) -> None:
        # The open-files limit lowered under a running service (as if some
        # other part of the process held the files): accepts fail with EMFILE.
        raise_fd_limit(4096)
        svc = self.sqlite_service().start()
        self.assertEqual(request(svc.port, "GET", "/healthz").status, 200)
        fds = int(metric(svc.metrics(), "process_open_fds"))
        resource.prlimit(svc.running().pid, resource.RLIMIT_NOFILE, (fds + 20, fds + 20))
        socks: list[socket.socket] = []
        self.addCleanup(close_all, socks)
        t0 = time.monotonic()
        for _ in range(200):
            socks.append(socket.create_connection(("127.0.0.1", svc.port), timeout=5))

        def failing() -> bool:
            return svc.logs().count("accept failed") >= 1

        wait_until(failing, 5, what="accepts to fail with EMFILE")
        time.sleep(3)  # the interval whose log volume is measured, not a wait for a condition
        seconds = time.monotonic() - t0
        lines = svc.logs().count('"accept failed"')
        for s in socks:
            s.close()
        socks.clear()
        wait_until(lambda: request(svc.port, "GET", "/healthz", timeout=1).status == 200, 10,
                   what="the API to answer once files are free again")
        failed = metric(svc.metrics(), "hello_birthday_http_accept_errors_total", listener="api")
        self.report(f"{failed:.0f} failed accepts in {seconds:.1f}s, {lines} log lines")
        self.assertGreater(failed, lines, "every failed accept is counted, not every one logged")
        self.assertLessEqual(lines, seconds + 2, "at most one accept-error line a second")


class MetricsAddress(ServiceTestCase):
    def test_metrics_listen_on_loopback_unless_configured(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in service_vars()}
        port, mport = free_port(), free_port()
        # The API on another loopback address: the metrics listener does not follow it.
        log = self.tmp / "out.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(BIN)], stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp,
                                    env={**env, "PORT": str(port), "METRICS_PORT": str(mport),
                                         "BIND_ADDR": "127.0.0.2", "DATABASE_URL": f"sqlite://{self.tmp}/db",
                                         "LOG_FORMAT": "json", "DRAIN_SECONDS": "0"})
        self.addCleanup(proc.wait, 10)
        self.addCleanup(proc.terminate)
        found = wait_until(lambda: re.search(r'"metrics_addr":"([^"]+)"', log.read_text()), 10,
                           what="the listening line")
        self.assertEqual(found.group(1), f"127.0.0.1:{mport}")
        self.assertEqual(request(mport, "GET", "/metrics").status, 200)
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex(("127.0.0.2", mport)), 0, "metrics reachable on BIND_ADDR")


if __name__ == "__main__":
    unittest.main()
