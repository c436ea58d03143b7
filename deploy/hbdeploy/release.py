"""The release: its label, and the artifact with its verified checksum."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from hbdeploy.steps import Console, DeployError

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A release binary on this machine whose SHA-256 matched its .sha256 file."""

    path: Path
    sha256: str


def verify_artifact(console: Console, path: Path, write_checksum: bool, dry_run: bool) -> Artifact:
    """PATH.sha256 (sha256sum format) must match the binary; when it is
    missing, --write-checksum creates it (a binary built here)."""
    if not path.is_file():
        raise DeployError(f"release artifact {path} does not exist")
    path = path.resolve()
    console.say(f"artifact {path}")
    got = sha256_file(path)
    sums = path.with_name(path.name + ".sha256")
    if sums.is_file():
        want = (sums.read_text().split() or [""])[0]
        if want != got:
            raise DeployError(f"checksum mismatch for {path}: {got}, but {sums} says {want}")
        console.say(f"sha256 {got} matches {sums.name}")
    elif write_checksum:
        if dry_run:
            console.say(f"sha256 {got} (dry run: {sums.name} not written)")
        else:
            sums.write_text(f"{got}  {path.name}\n")
            console.say(f"sha256 {got} written to {sums.name}")
    else:
        raise DeployError(
            f"no checksum file {sums} (publish one with the artifact, or pass --write-checksum for a binary built here)"
        )
    return Artifact(path, got)


def check_label(label: str) -> str:
    if not LABEL.match(label):
        raise DeployError(f"bad release label '{label}' (letters, digits, . _ -)")
    return label
