"""Security properties seen from outside: response headers suited to a JSON
API, no CORS unless configured, secrets never printed, and no dates of birth
in the logs (they are personal data)."""

from __future__ import annotations

import re
import subprocess
import unittest

from harness import BIN, Response, Service, ServiceTestCase, put_dob, request, require, wait_until

SECRET = "SECRETPASS"
SECRET_URL = f"postgres://user:{SECRET}@127.0.0.1:1/db"

# Distinctive dates: none of them can appear in a log line by accident.
DATES = ["1911-11-11", "1937-03-17", "1964-08-29", "2001-02-28", "1988-12-31"]


class SecurityHeaders(ServiceTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.svc = self.sqlite_service().start()

    def responses(self) -> dict[str, Response]:
        p = self.svc.port
        return {
            "PUT 204": put_dob(p, "Alice", "1990-01-02"),
            "GET 200": request(p, "GET", "/hello/Alice"),
            "GET 404": request(p, "GET", "/hello/Nobody"),
            "GET 400": request(p, "GET", "/hello/not-a-name1"),
            "PUT 400": request(p, "PUT", "/hello/Alice", body=b"{", headers={"Content-Type": "application/json"}),
            "PUT 415": request(p, "PUT", "/hello/Alice", body=b"x", headers={"Content-Type": "text/plain"}),
            "POST 405": request(p, "POST", "/hello/Alice"),
            "route 404": request(p, "GET", "/nothing/here"),
            "healthz": request(p, "GET", "/healthz"),
            "readyz": request(p, "GET", "/readyz"),
        }

    def test_headers_on_every_response(self) -> None:
        for name, resp in self.responses().items():
            with self.subTest(name):
                self.assertEqual(resp.header("x-content-type-options"), "nosniff", name)
                self.assertIn("no-store", resp.header("cache-control") or "", name)
                server = resp.header("server")
                # A banner with a version tells an attacker which CVEs to try.
                self.assertFalse(server and re.search(r"\d", server), f"{name}: Server: {server}")
                self.assertIsNone(resp.header("x-powered-by"), name)

    def test_request_ids_tell_client_from_server(self) -> None:
        p = self.svc.port
        generated = re.compile(r"^hb:[0-9a-f]+-[0-9a-f]+$")
        # A well-formed client id is kept: tracing across the load balancer needs it.
        for mine in ("trace-1.2_3", "A" * 128):
            self.assertEqual(request(p, "GET", "/healthz", headers={"X-Request-Id": mine})
                             .header("x-request-id"), mine)
        # Anything else gets a generated id, which no client id can look like.
        ids = set()
        for theirs in (None, "hb:00000000-1", "a b", "x" * 129, "é"):
            headers = {} if theirs is None else {"X-Request-Id": theirs.encode("utf-8")}
            got = request(p, "GET", "/healthz", headers=headers).headers["x-request-id"]
            with self.subTest(theirs=theirs):
                self.assertRegex(got, generated)
                self.assertNotEqual(got, theirs)
            ids.add(got)
        self.assertEqual(len(ids), 5, "generated ids must be unique")

    def test_no_cors_by_default(self) -> None:
        p = self.svc.port
        origin = {"Origin": "https://evil.example"}
        preflight = request(p, "OPTIONS", "/hello/Alice", headers={
            **origin, "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type"})
        self.assertNotIn(preflight.status, (200, 204), "a CORS preflight must not succeed")
        for resp in (preflight, request(p, "GET", "/healthz", headers=origin),
                     request(p, "GET", "/hello/Alice", headers=origin)):
            cors = [h for h in resp.headers if h.startswith("access-control-")]
            self.assertEqual(cors, [], f"CORS headers present: {cors}")


class Secrets(ServiceTestCase):
    def test_password_not_in_help_or_version(self) -> None:
        require(BIN.exists(), f"service binary {BIN}")
        for args in (["--help"], ["--version"]):
            out = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=30,
                                 env={"DATABASE_URL": SECRET_URL, "PATH": "/usr/bin:/bin"})
            with self.subTest(args=args):
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertNotIn(SECRET, out.stdout + out.stderr)
        out = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, timeout=30)
        self.assertIn("DATABASE_URL", out.stdout, "--help should name the variable")

    def test_password_not_in_startup_failure(self) -> None:
        # Port 1 refuses connections: the service serves (not ready) and keeps
        # connecting, logging why at every attempt (docs/decisions.md).
        require(BIN.exists(), f"service binary {BIN}")
        log = self.tmp / "startup.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(BIN)], stdout=out, stderr=subprocess.STDOUT,
                                    env={"DATABASE_URL": SECRET_URL, "PORT": "0", "METRICS_PORT": "0",
                                         "BIND_ADDR": "127.0.0.1", "LOG_LEVEL": "debug",
                                         "DB_TIMEOUT_MS": "300", "PATH": "/usr/bin:/bin"})
        self.addCleanup(proc.kill)
        wait_until(lambda: log.read_text(errors="replace").count("127.0.0.1:1") >= 2, 20,
                   what="two connection attempts logged, naming the server")
        proc.terminate()
        proc.wait(timeout=30)
        self.assertNotIn(SECRET, log.read_text(errors="replace"))

    def test_password_not_in_logs_bodies_or_metrics(self) -> None:
        pg = self.postgres()  # trust authentication: any password is accepted
        url = pg.url.replace(":pw@", f":{SECRET}@")
        svc = Service(self.tmp, url, env={"LOG_LEVEL": "debug", "DB_TIMEOUT_MS": "300"})
        self.addCleanup(svc.stop)
        svc.start()
        self.assertEqual(put_dob(svc.port, "Alice", "1990-01-02").status, 204)
        pg.stop("immediate")  # every database path now fails and reports it
        bodies = []
        # A shared outage leaves readiness alone; every API path answers 503.
        self.assertEqual(request(svc.port, "GET", "/readyz").status, 200)
        for method, path, body in (("GET", "/hello/Alice", None),
                                   ("PUT", "/hello/Alice", {"dateOfBirth": "1990-01-02"}),
                                   ("DELETE", "/hello/Alice", None)):
            resp = request(svc.port, method, path, body=body)
            self.assertEqual(resp.status, 503, f"{method} {path} with the database down")
            bodies.append(resp.body.decode(errors="replace"))
        bodies.append(svc.metrics())
        svc.stop()
        logs = svc.logs()
        self.assertRegex(logs, r"(?i)error|warn", "expected the database errors to be logged")
        for where, text in (("logs", logs), ("responses and metrics", "\n".join(bodies))):
            with self.subTest(where):
                self.assertNotIn(SECRET, text)
        self.report(f"{len(logs.splitlines())} log lines and {len(bodies)} bodies free of the password")


class PersonalData(ServiceTestCase):
    def test_no_date_of_birth_in_logs(self) -> None:
        # Every request gets a line here: the test is about what a line may hold.
        svc = self.sqlite_service(LOG_LEVEL="debug", REQUEST_LOG="all").start()
        p = svc.port
        for i, dob in enumerate(DATES):
            user = "Person" + "abcdefghij"[i]
            self.assertEqual(put_dob(p, user, dob).status, 204)
            self.assertEqual(request(p, "GET", f"/hello/{user}").status, 200)
        # Rejected dates are personal data too (and show what a parser error logs).
        self.assertEqual(put_dob(p, "Someone", "1922-02-30").status, 400)
        self.assertEqual(put_dob(p, "Someone", "2999-01-02").status, 400)
        svc.stop()
        logs = svc.logs()
        self.assertGreater(len(logs.splitlines()), len(DATES), "expected a log line per request")
        for dob in DATES + ["1922-02-30", "2999-01-02"]:
            with self.subTest(dob):
                self.assertNotIn(dob, logs)
                self.assertNotIn(dob.replace("-", ""), logs)
        self.report(f"{len(logs.splitlines())} log lines at debug level, no date of birth")

    def test_production_logs_name_routes_not_users(self) -> None:
        # At the production level a request line carries the route template,
        # so neither usernames nor dates reach the log pipeline.
        svc = self.sqlite_service(LOG_LEVEL="info", REQUEST_LOG="all").start()
        p = svc.port
        self.assertEqual(put_dob(p, "Zebulonqx", "1911-11-11").status, 204)
        self.assertEqual(request(p, "GET", "/hello/Zebulonqx").status, 200)
        self.assertEqual(request(p, "DELETE", "/hello/Zebulonqx").status, 204)
        self.assertEqual(request(p, "GET", "/hello/Zebulonqx").status, 404)
        svc.stop()
        logs = svc.logs()
        self.assertIn("/hello/{username}", logs, "expected request lines with the route template")
        self.assertNotIn("Zebulonqx", logs)
        self.assertNotIn("1911-11-11", logs)


if __name__ == "__main__":
    unittest.main()
