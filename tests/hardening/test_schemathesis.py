"""Property-based API tests generated from openapi.yaml by schemathesis,
against a running instance on each backend: no 5xx, every response conforms
to the documented status codes, headers, content type and schema, and every
error is problem+json (st_hooks.py)."""

from __future__ import annotations

import os
import re
import subprocess
import unittest
from pathlib import Path

from harness import ROOT, Service, ServiceTestCase, require

SCHEMATHESIS = ROOT / ".venv" / "bin" / "schemathesis"
MAX_EXAMPLES = int(os.environ.get("HARDENING_ST_EXAMPLES", "40"))
SEED = os.environ.get("HARDENING_ST_SEED", "20260916")

CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "allow_header_conformance",
    "use_after_free",
    "problem_json_on_errors",
    "security_headers",
])
# Left out on purpose: positive_data_acceptance (a date that matches the
# schema's pattern can still be in the future or not a real date: 400 by
# design, which no JSON Schema can express), ensure_resource_availability and
# missing_required_header/ignored_auth (no auth in this API).


class Schemathesis(ServiceTestCase):
    def run_schemathesis(self, svc: Service, label: str) -> None:
        require(SCHEMATHESIS.exists(), f"{SCHEMATHESIS} (scripts/setup.sh dev)")
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "st_hooks",
               "PYTHONPATH": str(Path(__file__).parent),
               # Keep hypothesis' example database out of the work tree.
               "HYPOTHESIS_STORAGE_DIRECTORY": str(self.tmp / "hypothesis")}
        cmd = [str(SCHEMATHESIS), "run", str(ROOT / "openapi.yaml"),
               "--url", f"http://127.0.0.1:{svc.port}",
               "--checks", CHECKS,
               "--max-examples", str(MAX_EXAMPLES), "--seed", SEED,
               "--phases", "examples,coverage,fuzzing,stateful",
               "--generation-database", "none",
               "--request-timeout", "10", "--workers", "2",
               "--no-color"]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=self.tmp, timeout=600)
        text = out.stdout + out.stderr
        m = re.search(r"^\s*(\d+) generated, (.*)$", text, re.M)
        cases = int(m.group(1)) if m else 0
        self.report(f"{label}: {cases} test cases generated ({m.group(2) if m else 'no summary'}; "
                    f"at most {MAX_EXAMPLES} examples per operation and phase, seed {SEED})")
        if out.returncode != 0:
            print(text[-12000:], flush=True)
        self.assertEqual(out.returncode, 0, f"schemathesis failed on {label} (output above)")
        self.assertGreater(cases, 0, "schemathesis generated no test case")
        logs = svc.logs()
        self.assertNotIn("panicked", logs, "a panic was logged during the run")

    def test_sqlite(self) -> None:
        svc = self.sqlite_service().start()
        self.run_schemathesis(svc, "sqlite")

    def test_postgres(self) -> None:
        pg = self.postgres()
        svc = Service(self.tmp, pg.url)
        self.addCleanup(svc.stop)
        svc.start()
        self.run_schemathesis(svc, "postgres")


if __name__ == "__main__":
    unittest.main()
