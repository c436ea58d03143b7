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
import time

from harness import ROOT, ServiceTestCase, free_port, request, require, wait_until


def json_lines(svc) -> list[dict]:
    out = []
    for raw in svc.logs().splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out


class RequestIds(ServiceTestCase):
    def haproxy(self, backend_port: int) -> tuple[int, object]:
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
        self.addCleanup(lambda: (proc.terminate(), proc.wait(10)))

        def served() -> bool:
            try:
                return request(port, "GET", "/readyz", timeout=1).status == 200
            except OSError:
                return False

        wait_until(served, 10, what="HAProxy to route to the service")
        return port, lambda: [l.split() for l in log_path.read_text().splitlines()
                              if l.startswith("hb-req")]

    def test_haproxys_logged_id_is_the_one_the_service_logs(self):
        svc = self.sqlite_service(REQUEST_LOG="all").start()
        port, hb_lines = self.haproxy(svc.port)
        # A client's own id is replaced: HAProxy's log must name the request.
        answers = [request(port, "GET", "/hello/Nobody", headers={"X-Request-Id": "client-chosen"})
                   for _ in range(3)]
        self.assertTrue(all(a.status == 404 for a in answers))
        ids = [a.header("x-request-id") for a in answers]
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

    def test_an_albs_trace_id_root_is_the_request_id(self):
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

    def debug_lines(self, svc) -> list[dict]:
        return [e for e in json_lines(svc) if e.get("level") == "DEBUG"]

    def test_rust_log_takes_precedence_over_log_level(self):
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

    def test_an_invalid_filter_names_its_variable_and_exits_2(self):
        from harness import BIN
        env = {"PATH": os.environ["PATH"], "RUST_LOG": "hello_birthday=loud",
               "DATABASE_URL": f"sqlite://{self.tmp / 'x.sqlite'}", "PORT": "0", "METRICS_PORT": "0"}
        out = subprocess.run([str(BIN)], env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 2)
        self.assertIn("RUST_LOG", out.stderr)
