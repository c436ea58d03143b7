"""The harness itself: the variables it sets and clears are the ones the
service reads, taken from `hello-birthday --help`, so a renamed or removed
setting fails here instead of silently leaving a test without its knob."""

from __future__ import annotations

import re
import unittest
from pathlib import Path

from harness import ROOT, STANDARD_VARS, Service, ServiceTestCase, service_vars


class ServiceVariables(ServiceTestCase):
    def test_the_list_is_the_services_config(self) -> None:
        # Each `env = "NAME"` in src/config.rs, read independently of --help.
        source = (ROOT / "src" / "config.rs").read_text()
        declared = set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', source))
        self.assertTrue(declared, "no env = \"...\" in src/config.rs")
        # Plus the other ecosystems' variables (RUST_LOG, NOTIFY_SOCKET, ...).
        self.assertEqual(service_vars() - STANDARD_VARS, declared)
        for name in ("MAX_CONNECTIONS", "DATABASE_CA_FILE", "FIRST_REQUEST_TIMEOUT_SECONDS",
                     "BODY_TIMEOUT_SECONDS"):
            self.assertIn(name, service_vars())

    def test_an_unknown_variable_fails_the_start(self) -> None:
        svc = Service(Path(self.tmp), f"sqlite://{self.tmp / 'db.sqlite'}",
                      env={"HEADER_READ_TIMEOUT_SECONDS": "8"})
        self.addCleanup(svc.stop)
        with self.assertRaisesRegex(AssertionError, "HEADER_READ_TIMEOUT_SECONDS"):
            svc.start()
        self.assertIsNone(svc.proc, "the service was started anyway")


if __name__ == "__main__":
    unittest.main()
