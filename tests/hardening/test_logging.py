"""The request log policy, seen in the real binary's output: by default every
error and every slow request gets a line, fast successes do not, error lines
are capped at 100 a second with the rest counted, and a summary line counts
every request; REQUEST_LOG=all writes one line per request."""

from __future__ import annotations

import json
import socket
import time
import unittest

from harness import ServiceTestCase, put_dob, request, wait_until


def lines(svc) -> list[dict]:
    out = []
    for raw in svc.logs().splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out


def request_lines(svc) -> list[dict]:
    return [e for e in lines(svc) if e.get("message") == "request"]


def summaries(svc) -> list[dict]:
    return [e for e in lines(svc) if e.get("message") == "request summary"]


class RequestLogPolicy(ServiceTestCase):
    def test_default_logs_errors_and_slow_requests_and_counts_the_rest(self):
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

    def test_error_lines_are_capped_and_what_is_left_out_is_counted(self):
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

    def test_all_writes_a_line_per_request(self):
        svc = self.sqlite_service(REQUEST_LOG="all").start()
        p = svc.port
        self.assertEqual(put_dob(p, "Alice", "1990-01-02").status, 204)
        for _ in range(20):
            self.assertEqual(request(p, "GET", "/hello/Alice").status, 200)
        svc.stop()
        gets = [e for e in request_lines(svc) if e["method"] == "GET" and e["route"] == "/hello/{username}"]
        self.assertEqual(len(gets), 20)


if __name__ == "__main__":
    unittest.main()
