"""The request log policy, seen in the real binary's output: by default every
error and every slow request gets a line, fast successes do not, error lines
are capped at 100 a second with the rest counted, and a summary line counts
every request, the last partial window's at shutdown; REQUEST_LOG=all writes
one line per request. No write without a trace: a request whose client
half-closes or resets is still answered or counted, and one cut off at the
shutdown deadline is counted and logged as 499."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import struct
import time
import unittest
from typing import Any

from harness import Service, ServiceTestCase, metric, put_dob, read_response, request, wait_until


def lines(svc: Service) -> list[dict[str, Any]]:
    out = []
    for raw in svc.logs().splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out


def request_lines(svc: Service) -> list[dict[str, Any]]:
    return [e for e in lines(svc) if e.get("message") == "request"]


def summaries(svc: Service) -> list[dict[str, Any]]:
    return [e for e in lines(svc) if e.get("message") == "request summary"]


class RequestLogPolicy(ServiceTestCase):
    def test_default_logs_errors_and_slow_requests_and_counts_the_rest(self) -> None:
        svc = self.sqlite_service(LOG_SUMMARY_SECONDS="1", SLOW_REQUEST_MS="300").start()
        p = svc.port
        self.assertEqual(put_dob(p, "Alice", "1990-01-02").status, 204)
        for _ in range(50):
            self.assertEqual(request(p, "GET", "/hello/Alice").status, 200)
        self.assertEqual(request(p, "GET", "/hello/Nobody").status, 404)
        self.assertEqual(put_dob(p, "Alice", "1990-02-30").status, 400)
        # A success that is slow because its body trickles in: it gets a line.
        body = b'{"dateOfBirth":"1990-01-03"}'
        with socket.create_connection(("127.0.0.1", p), timeout=5) as s:
            s.sendall(b"PUT /hello/Slowpoke HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
            s.sendall(body[:5])
            time.sleep(0.5)  # the delay under test, not a wait for a condition
            s.sendall(body[5:])
            self.assertIn(b" 204 ", s.recv(200))
        # Every request since start: /readyz polls, the PUTs, the GETs.
        wait_until(lambda: sum(e.get("ok", 0) for e in summaries(svc)) >= 52, 10,
                   what="a summary line counting the successes")
        svc.stop()
        got = {(e["method"], e["status"]) for e in request_lines(svc)}
        self.assertEqual(got, {("GET", 404), ("PUT", 400), ("PUT", 204)},
                         "only the errors and the slow PUT get a line")
        slow = [e for e in request_lines(svc) if e["status"] == 204]
        self.assertGreaterEqual(slow[0]["latency_us"], 300_000)
        total = {k: sum(e.get(k, 0) for e in summaries(svc)) for k in ("ok", "client_errors", "slow")}
        self.assertGreaterEqual(total["ok"], 52)
        self.assertEqual(total["client_errors"], 2)
        self.assertEqual(total["slow"], 1)

    def test_error_lines_are_capped_and_what_is_left_out_is_counted(self) -> None:
        svc = self.sqlite_service(LOG_SUMMARY_SECONDS="1").start()
        p = svc.port
        started = time.monotonic()
        n = 400
        for _ in range(n):
            request(p, "GET", "/hello/Nobody")
        seconds = time.monotonic() - started
        wait_until(lambda: sum(e.get("client_errors", 0) for e in summaries(svc)) >= n, 10,
                   what="the summary to count every 404")
        svc.stop()
        written = len([e for e in request_lines(svc) if e["status"] == 404])
        # 100 lines in each one-second window the burst touched.
        self.assertLessEqual(written, 100 * (int(seconds) + 2))
        suppressed = sum(e.get("lines_suppressed", 0) for e in summaries(svc))
        self.assertEqual(written + suppressed, n, f"{written} written + {suppressed} suppressed")
        if seconds < 0.9:
            self.assertGreater(suppressed, 0, "a burst within one second must be capped")
        self.report(f"{n} 404s in {seconds:.2f} s: {written} lines, {suppressed} counted")

    def test_the_last_partial_window_is_summarised_at_shutdown(self) -> None:
        svc = self.sqlite_service(LOG_SUMMARY_SECONDS="3600").start()
        p = svc.port
        self.assertEqual(put_dob(p, "Alice", "1990-01-02").status, 204)
        for _ in range(5):
            self.assertEqual(request(p, "GET", "/hello/Alice").status, 200)
        self.assertEqual(request(p, "GET", "/hello/Nobody").status, 404)
        self.assertEqual(svc.stop(), 0)
        got = summaries(svc)
        self.assertEqual(len(got), 1, "one summary line, for the window cut short by SIGTERM")
        self.assertGreaterEqual(got[0]["ok"], 6)
        self.assertEqual(got[0]["client_errors"], 1)

    def test_all_writes_a_line_per_request(self) -> None:
        svc = self.sqlite_service(REQUEST_LOG="all").start()
        p = svc.port
        self.assertEqual(put_dob(p, "Alice", "1990-01-02").status, 204)
        for _ in range(20):
            self.assertEqual(request(p, "GET", "/hello/Alice").status, 200)
        svc.stop()
        gets = [e for e in request_lines(svc) if e["method"] == "GET" and e["route"] == "/hello/{username}"]
        self.assertEqual(len(gets), 20)


PUT = b"PUT /hello/%s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
BODY = b'{"dateOfBirth":"1990-01-03"}'


def put_bytes(user: str) -> bytes:
    return PUT % (user.encode(), len(BODY), BODY)


class RequestTraces(ServiceTestCase):
    """Every request that reached a handler is counted, and logged when it
    fails or is cut off, whatever the client does with its connection."""

    HALF = 10

    def test_half_closed_writes_are_answered_counted_and_logged(self) -> None:
        svc = self.sqlite_service(REQUEST_LOG="all").start()
        p = svc.port
        for i in range(self.HALF):
            with socket.create_connection(("127.0.0.1", p), timeout=5) as s:
                s.sendall(put_bytes(f"Half{'abcdefghij'[i]}"))
                s.shutdown(socket.SHUT_WR)  # sent everything; still reading
                self.assertEqual(read_response(s).status, 204)
        with socket.create_connection(("127.0.0.1", p), timeout=5) as s:
            s.sendall(b"DELETE /hello/Halfa HTTP/1.1\r\nHost: t\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(read_response(s).status, 204)
        self.assertEqual(request(p, "GET", "/hello/Halfb").status, 200)
        self.assertEqual(request(p, "GET", "/hello/Halfa").status, 404)
        m = svc.metrics()
        answered = "http_server_request_duration_seconds_count"
        self.assertEqual(metric(m, answered, http_request_method="PUT", http_response_status_code="204"), self.HALF)
        self.assertEqual(metric(m, answered, http_request_method="DELETE", http_response_status_code="204"), 1)
        wait_until(lambda: len([e for e in request_lines(svc) if e["method"] in ("PUT", "DELETE")]) == self.HALF + 1,
                   5, what="a log line for each half-closed write (REQUEST_LOG=all)")

    def hold_the_write_lock(self) -> sqlite3.Connection:
        """Another process's write transaction on the service's SQLite file:
        the service's writes wait on it (busy_timeout) until it ends."""
        lock = sqlite3.connect(self.tmp / "db.sqlite", isolation_level=None, timeout=0)
        self.addCleanup(lock.close)
        lock.execute("BEGIN IMMEDIATE")
        return lock

    def in_flight(self, svc: Service, n: int) -> None:
        wait_until(lambda: metric(svc.metrics(), "http_server_active_requests") >= n, 10,
                   what=f"{n} request(s) in flight")

    def test_a_write_whose_client_resets_is_applied_and_counted(self) -> None:
        svc = self.sqlite_service(DB_TIMEOUT_MS=20000, REQUEST_TIMEOUT_SECONDS=30).start()
        self.assertEqual(put_dob(svc.port, "Alice", "1990-01-02").status, 204)
        lock = self.hold_the_write_lock()
        s = socket.create_connection(("127.0.0.1", svc.port), timeout=5)
        s.sendall(put_bytes("Reset"))
        self.in_flight(svc, 1)
        # Close with a reset (SO_LINGER 0) while the write waits for the lock.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        lock.execute("ROLLBACK")
        wait_until(lambda: metric(svc.metrics(), "http_server_active_requests") == 0, 10, what="the PUT to end")
        self.assertEqual(request(svc.port, "GET", "/hello/Reset").status, 200, "the write was applied")
        m = svc.metrics()
        self.assertEqual(metric(m, "http_server_request_duration_seconds_count", http_request_method="PUT"), 2,
                         "an applied write whose client reset its connection is not counted")

    def test_requests_cut_off_at_the_shutdown_deadline_are_counted_and_logged_as_499(self) -> None:
        svc = self.sqlite_service(DB_TIMEOUT_MS=10000, REQUEST_TIMEOUT_SECONDS=30, SHUTDOWN_TIMEOUT_SECONDS=1,
                                  DRAIN_SECONDS=0).start()
        self.assertEqual(put_dob(svc.port, "Alice", "1990-01-02").status, 204)
        lock = self.hold_the_write_lock()
        s = socket.create_connection(("127.0.0.1", svc.port), timeout=5)
        self.addCleanup(s.close)
        s.sendall(put_bytes("Cutoff"))
        self.in_flight(svc, 1)
        svc.running().send_signal(signal.SIGTERM)

        def cut() -> list[dict[str, Any]]:
            return [e for e in request_lines(svc) if e["status"] == 499]

        found = wait_until(cut, 10, what="a 499 line for the PUT cut off at the shutdown deadline")
        lock.execute("ROLLBACK")
        self.assertEqual(svc.running().wait(15), 0)
        self.assertEqual([(e["method"], e["route"]) for e in found], [("PUT", "/hello/{username}")])
        # Its write was queued before the cut and applied afterwards: the
        # 499 line is the only trace of it, which is why it must be there.
        with sqlite3.connect(self.tmp / "db.sqlite") as db:
            self.assertEqual(db.execute("SELECT count(*) FROM users WHERE username = 'Cutoff'").fetchone()[0], 1)
        self.report("a PUT cut off at SHUTDOWN_TIMEOUT_SECONDS=1: one 499 line; its write was applied")


if __name__ == "__main__":
    unittest.main()
