"""Dependabot covers every dependency manifest the repository holds, and
names nothing that is not there: a new lock file (another Cargo workspace, a
second requirements file) without an update entry fails here, and so does an
entry whose directory was moved away. actionlint does not read this file."""

from __future__ import annotations

import unittest
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SKIP = {"target", ".venv", ".git", "node_modules"}


def manifests() -> set[tuple[str, str]]:
    """(ecosystem, directory) of every manifest in the tree."""
    found = set()
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if SKIP & set(rel.parts) or not path.is_file():
            continue
        where = "/" + str(rel.parent) if str(rel.parent) != "." else "/"
        if path.name == "Cargo.lock":
            found.add(("cargo", where))
        elif path.name.startswith("requirements") and path.suffix in (".txt", ".in"):
            found.add(("pip", where))
        elif rel.parts[:2] == (".github", "workflows") and path.suffix in (".yml", ".yaml"):
            found.add(("github-actions", "/"))
    return found


class Dependabot(unittest.TestCase):
    def setUp(self) -> None:
        self.config = yaml.safe_load((ROOT / ".github/dependabot.yml").read_text())

    def test_every_manifest_has_an_update_entry_and_every_entry_a_manifest(self) -> None:
        self.assertEqual(self.config["version"], 2)
        entries = {(u["package-ecosystem"], u["directory"]) for u in self.config["updates"]}
        want = manifests()
        self.assertTrue({("cargo", "/"), ("cargo", "/fuzz"), ("pip", "/"), ("github-actions", "/")} <= want)
        self.assertEqual(want - entries, set(), "manifests Dependabot does not update")
        self.assertEqual(entries - want, set(), "entries naming no manifest")

    def test_every_entry_has_a_schedule(self) -> None:
        for u in self.config["updates"]:
            self.assertIn(u["schedule"]["interval"], {"daily", "weekly", "monthly"}, u)


if __name__ == "__main__":
    unittest.main()
