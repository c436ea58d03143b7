"""`systemd-analyze security` exposure score of the shipped unit. The score
is reported; the test fails only above a ceiling (MAX_EXPOSURE) so that a
change that strips the unit's sandboxing cannot land unnoticed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import unittest

from harness import ROOT, ServiceTestCase, require

UNIT = ROOT / "deploy" / "systemd" / "hello-birthday.service"
# systemd rates 0-10: below 2 "OK", below 5 "MEDIUM", above 9 "UNSAFE".
MAX_EXPOSURE = float(os.environ.get("HARDENING_MAX_EXPOSURE", "3.0"))


class SystemdUnit(ServiceTestCase):
    def test_exposure_score(self):
        require(shutil.which("systemd-analyze") is not None, "systemd-analyze (systemd)")
        if not UNIT.exists():
            self.skipTest(f"{UNIT.relative_to(ROOT)} not in this tree")
        # --offline reads the unit file itself: no running systemd needed.
        out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
                             capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", text)
        self.assertIsNotNone(m, f"no score in output:\n{text[-3000:]}")
        score, rating = float(m.group(1)), m.group(2)
        worst = [line.strip() for line in text.splitlines() if line.startswith("✗")]
        self.report(f"{UNIT.name}: exposure {score} {rating} ({len(worst)} settings not hardened)")
        for line in worst[:40]:
            print(f"        {line}")
        self.assertLessEqual(score, MAX_EXPOSURE)


if __name__ == "__main__":
    unittest.main()
