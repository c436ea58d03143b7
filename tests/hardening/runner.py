"""Runs the hardening tests in a fixed order (cheap and fast first) and ends
with one summary line: `hardening: N passed, N failed, N skipped`.

Usage: python3 runner.py [MODULE_OR_TEST_ID ...]
"""

from __future__ import annotations

import sys
import time
import unittest
from typing import TYPE_CHECKING, Any

# The systemd unit's exposure is checked once, by deploy/systemd/check.sh.
MODULES = ["test_harness", "test_security", "test_privacy", "test_logging", "test_conventions", "test_attacks",
           "test_metrics_port", "test_overload", "test_faults", "test_stale_reads", "test_fsync", "test_crash",
           "test_schemathesis"]


# The runner hands its result class any stream with writeln; typeshed's
# TextTestResult is generic over that stream, the runtime class is not.
if TYPE_CHECKING:
    _TextTestResult = unittest.TextTestResult[Any]
else:
    _TextTestResult = unittest.TextTestResult


class TimedResult(_TextTestResult):
    def startTest(self, test: unittest.TestCase) -> None:
        self._t0 = time.monotonic()
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        self.stream.write(f"    ({time.monotonic() - self._t0:.1f}s)\n")
        self.stream.flush()
        super().stopTest(test)


def main(argv: list[str]) -> int:
    names = argv or MODULES
    suite = unittest.defaultTestLoader.loadTestsFromNames(names)
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=TimedResult)
    t0 = time.monotonic()
    result = runner.run(suite)
    # A failed subtest is reported under its parent test: count tests, not subtests.
    failed = len({getattr(t, "test_case", t).id() for t, _ in result.failures + result.errors}
                 | {t.id() for t in result.unexpectedSuccesses})
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    print(f"hardening tests took {time.monotonic() - t0:.0f}s")
    print(f"hardening: {passed} passed, {failed} failed, {skipped} skipped", flush=True)
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
