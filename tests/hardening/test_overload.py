"""Overload and slow clients: a slowloris crowd must not starve normal
requests, and past MAX_CONCURRENT_REQUESTS the service sheds at once with
503 + Retry-After instead of queueing, then recovers immediately. (The
attacks tried under small caps are in test_attacks.)"""

from __future__ import annotations

import select
import socket
import sqlite3
import statistics
import threading
import time
import unittest

from harness import (
    ServiceTestCase,
    assert_problem,
    close_all,
    put_dob,
    raise_fd_limit,
    raw_request,
    read_response,
    request,
    wait_until,
)

SLOW_CLIENTS = 1000
# Above the time it takes to open the whole crowd (3 to 6 s here), so all of
# it is held while the normal requests run. A connection that has not sent a
# complete request head within FIRST_REQUEST_TIMEOUT_SECONDS is closed, silent
# or half-sent; hyper's own header-read timer (KEEPALIVE_SECONDS, 75 s, above
# the ALB's 60 s idle timeout) only runs between requests after that.
FIRST_REQUEST_TIMEOUT = 8
SLACK = 2.5
# Latency target for normal requests while the crowd is connected (debug build).
P99_TARGET = 0.5
SLOW_BODY = b'{"dateOfBirth": "1990-01-02"}'
SENT = 5  # bytes of SLOW_BODY sent up front


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setblocking(True)
    return s


def closed_by_peer(s: socket.socket) -> bool:
    """True once the server has closed (or reset) the connection."""
    s.settimeout(0.001)
    try:
        data = s.recv(4096)
    except TimeoutError:
        return False
    except OSError:
        return True
    # Either EOF or a final answer (e.g. 408) followed by a close.
    return data == b"" or data.startswith(b"HTTP/1.1 408") or data.startswith(b"HTTP/1.1 4")


class SlowClients(ServiceTestCase):
    def test_slowloris_does_not_starve_normal_requests(self) -> None:
        limit = raise_fd_limit(4 * SLOW_CLIENTS + 256)
        self.assertGreater(limit, 2 * SLOW_CLIENTS + 64, "fd limit too low for this test")
        svc = self.sqlite_service(FIRST_REQUEST_TIMEOUT_SECONDS=FIRST_REQUEST_TIMEOUT).start()
        self.assertEqual(put_dob(svc.port, "Alice", "1990-01-02").status, 204)

        idle: list[socket.socket] = []
        partial: list[socket.socket] = []
        self.addCleanup(close_all, partial)
        self.addCleanup(close_all, idle)
        t0 = time.monotonic()
        for i in range(SLOW_CLIENTS):
            s = connect(svc.port)
            if i % 2:
                # Half a request: a line of headers and then silence.
                s.sendall(b"GET /hello/Alice HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                partial.append(s)
            else:
                idle.append(s)
        last_sent = time.monotonic()
        opened = last_sent - t0

        # Normal traffic while all of them are held open.
        latencies = []
        for i in range(200):
            path = "/hello/Alice" if i % 2 else "/healthz"
            resp = request(svc.port, "GET", path, timeout=5)
            self.assertEqual(resp.status, 200, path)
            latencies.append(resp.elapsed)
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        self.report(f"{len(idle)} idle + {len(partial)} half-sent connections (opened in {opened:.2f}s); "
                    f"200 normal requests p50={p50 * 1000:.1f}ms p99={p99 * 1000:.1f}ms max={latencies[-1] * 1000:.1f}ms")
        self.assertLess(p99, P99_TARGET)

        # The first-request deadline frees both kinds (holding them is the attack).
        for kind, socks in (("half-sent", partial), ("idle", idle)):
            def all_closed(socks: list[socket.socket] = socks) -> bool:
                return all(closed_by_peer(s) for s in socks)

            wait_until(all_closed, last_sent + FIRST_REQUEST_TIMEOUT + SLACK - time.monotonic(),
                       interval=0.2,
                       what=f"{kind} connections to be closed (FIRST_REQUEST_TIMEOUT_SECONDS={FIRST_REQUEST_TIMEOUT})")
            self.report(f"{kind} connections all closed {time.monotonic() - last_sent:.1f}s after the last was "
                        f"opened (first-request deadline {FIRST_REQUEST_TIMEOUT}s)")
        self.assertEqual(request(svc.port, "GET", "/hello/Alice").status, 200)


class Limits(ServiceTestCase):
    """Every input is bounded: body size, header size and header count."""

    def setUp(self) -> None:
        super().setUp()
        self.svc = self.sqlite_service().start()

    def test_body_over_4k_is_413_and_stores_nothing(self) -> None:
        p = self.svc.port
        big = b'{"dateOfBirth": "1990-01-02", "pad": "' + b"x" * 5000 + b'"}'
        assert_problem(self, request(p, "PUT", "/hello/Big", body=big,
                                     headers={"Content-Type": "application/json"}), (413,))
        # Chunked, so no Content-Length announces the size up front.
        chunks = b"".join(b"%x\r\n%s\r\n" % (1000, b" " * 1000) for _ in range(6)) + b"0\r\n\r\n"
        resp = raw_request(p, b"PUT /hello/Big HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
        self.assertEqual(resp.status, 413)
        # A huge announced length is refused before any byte of it is read.
        t0 = time.monotonic()
        resp = raw_request(p, b"PUT /hello/Big HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 1000000000\r\n\r\n")
        self.assertEqual(resp.status, 413)
        self.assertLess(time.monotonic() - t0, 2)
        self.assertEqual(request(p, "GET", "/hello/Big").status, 404, "a rejected PUT stored something")

    def test_header_size_and_count_are_bounded(self) -> None:
        p = self.svc.port
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        huge = b"X-Big: " + b"a" * (128 * 1024) + b"\r\n"
        for name, extra in (("200 headers", many), ("128 KiB header", huge)):
            with self.subTest(name):
                resp = raw_request(p, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
                # hyper answers this itself, before the application: no body.
                self.assertEqual(resp.status, 431, name)
        self.assertEqual(request(p, "GET", "/healthz").status, 200)


class Shedding(ServiceTestCase):
    """Slots are held by handlers that overrun: PUTs waiting on a SQLite
    write lock that another process holds. (A slow body no longer holds a
    slot: test_attacks.SlowBodies.)"""

    LIMIT = 8

    def lock_writes(self) -> sqlite3.Connection:
        """Another process's write transaction: the service's writer waits
        (busy_timeout = DB_TIMEOUT_MS); readers go on (WAL)."""
        db = sqlite3.connect(self.tmp / "db.sqlite", timeout=10, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        self.addCleanup(db.close)
        return db

    def hold_blocked_puts(self, port: int, n: int) -> list[socket.socket]:
        """Complete PUTs whose handlers wait on the lock: each holds a slot."""
        socks = []
        for i in range(n):
            s = connect(port)
            s.sendall(b"PUT /hello/Slow%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                      % (bytes([97 + i % 26]), len(SLOW_BODY)) + SLOW_BODY)
            socks.append(s)
        return socks

    def test_sheds_with_503_and_recovers(self) -> None:
        svc = self.sqlite_service(MAX_CONCURRENT_REQUESTS=self.LIMIT, REQUEST_TIMEOUT_SECONDS=30,
                                  DB_TIMEOUT_MS=30000).start()
        self.assertEqual(put_dob(svc.port, "Alice", "1990-01-02").status, 204)

        lock = self.lock_writes()
        slow = self.hold_blocked_puts(svc.port, self.LIMIT + 4)
        self.addCleanup(close_all, slow)

        # Wait for the 4 PUTs beyond the limit to be shed before sending
        # anything else: a GET sent while the PUTs are still being accepted
        # could hold a slot for a moment, have a fifth PUT shed, and leave
        # only LIMIT - 1 slots held.
        def shed_puts() -> bool:
            readable, _, _ = select.select(slow, [], [], 0)
            return len(readable) >= 4

        wait_until(shed_puts, 10, what="the PUTs beyond the limit to be shed")
        self.assertEqual(len(select.select(slow, [], [], 0.2)[0]), 4, "exactly the excess PUTs are shed")
        self.assertEqual(request(svc.port, "GET", "/hello/Alice", timeout=5).status, 503,
                         "the concurrency limit is reached")
        shed = []
        for _ in range(50):
            resp = request(svc.port, "GET", "/hello/Alice", timeout=5)
            assert_problem(self, resp, (503,), retry_after=True)
            shed.append(resp.elapsed)
        shed.sort()
        self.report(f"{self.LIMIT + 4} blocked PUTs held; 50/50 extra requests shed with 503, "
                    f"median {statistics.median(shed) * 1000:.1f}ms, max {shed[-1] * 1000:.1f}ms")
        self.assertLess(shed[-1], 0.5, "shedding must be fast, not queued")

        # Parallel bursts while full: 503 or nothing else, never 500.
        statuses: list[int] = []
        mutex = threading.Lock()

        def burst() -> None:
            for _ in range(10):
                st = request(svc.port, "PUT", "/hello/Bob", body={"dateOfBirth": "1990-01-02"}).status
                with mutex:
                    statuses.append(st)

        threads = [threading.Thread(target=burst) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(set(statuses), {503}, f"while full: {sorted(set(statuses))}")

        # Release the lock: the held requests finish and capacity comes back.
        lock.execute("COMMIT")
        t0 = time.monotonic()
        wait_until(lambda: request(svc.port, "GET", "/hello/Alice").status == 200, 2,
                   interval=0.01, what="recovery after the blocked requests completed")
        self.report(f"recovered {1000 * (time.monotonic() - t0):.0f}ms after the lock was released")
        for s in slow:
            s.settimeout(5)
            head = s.recv(4096)
            self.assertRegex(head, rb"^HTTP/1.1 (204|503)", "a held request must not end in 500")
        for _ in range(20):
            self.assertEqual(request(svc.port, "GET", "/hello/Alice").status, 200)
        m = svc.metrics()
        shed_lines = [line for line in m.splitlines() if line.startswith("hello_birthday_http_requests_shed_total")]
        self.assertTrue(shed_lines, "hello_birthday_http_requests_shed_total missing from /metrics")
        self.assertGreaterEqual(float(shed_lines[0].split()[-1]), 50 + len(statuses))
        self.assertNotRegex(m, r'http_server_request_duration_seconds_count\{[^}]*http_response_status_code="500"')

    def test_handler_overrunning_its_deadline_is_503(self) -> None:
        svc = self.sqlite_service(REQUEST_TIMEOUT_SECONDS=1, DB_TIMEOUT_MS=10000).start()
        self.lock_writes()
        (s,) = self.hold_blocked_puts(svc.port, 1)
        self.addCleanup(s.close)
        s.settimeout(10)
        t0 = time.monotonic()
        resp = read_response(s)
        waited = time.monotonic() - t0
        self.report(f"a handler past its deadline is answered after {waited:.1f}s: {resp.status}")
        assert_problem(self, resp, (503,), retry_after=True)
        self.assertEqual(resp.json()["type"], "urn:hello-birthday:problem:timeout")
        self.assertLess(waited, 5)

    def test_stalled_body_is_408_not_503(self) -> None:
        svc = self.sqlite_service(BODY_TIMEOUT_SECONDS=1, REQUEST_TIMEOUT_SECONDS=30).start()
        s = connect(svc.port)
        self.addCleanup(s.close)
        s.sendall(b"PUT /hello/Slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(SLOW_BODY) + SLOW_BODY[:SENT])
        s.settimeout(10)
        t0 = time.monotonic()
        resp = read_response(s)
        waited = time.monotonic() - t0
        self.report(f"a body that never completes is answered after {waited:.1f}s: {resp.status}")
        assert_problem(self, resp, (408,))
        self.assertLess(waited, 1 + SLACK)


if __name__ == "__main__":
    unittest.main()
