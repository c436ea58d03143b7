"""Checks schemathesis adds to its own for this API (loaded through
SCHEMATHESIS_HOOKS by test_schemathesis.py)."""

import json
from typing import Any

import schemathesis
from schemathesis import CheckContext, Response


def _header(response: Response, name: str) -> str:
    values = response.headers.get(name.lower()) or [""]
    return values[0]


@schemathesis.check
def problem_json_on_errors(ctx: CheckContext, response: Response, case: Any) -> bool | None:
    """Every error is an RFC 9457 document whose `status` is the real status."""
    if response.status_code < 400:
        return None
    ctype = _header(response, "content-type")
    if not ctype.startswith("application/problem+json"):
        raise AssertionError(f"{response.status_code} with Content-Type {ctype!r}, not problem+json")
    doc = json.loads(response.content)
    if doc.get("status") != response.status_code:
        raise AssertionError(f"problem status {doc.get('status')!r} != {response.status_code}")
    if response.status_code == 503 and not _header(response, "retry-after").isdigit():
        raise AssertionError("503 without a Retry-After in seconds")
    return None


@schemathesis.check
def security_headers(ctx: CheckContext, response: Response, case: Any) -> bool | None:
    """Headers that suit a JSON API, on every answer."""
    if _header(response, "x-content-type-options") != "nosniff":
        raise AssertionError("missing X-Content-Type-Options: nosniff")
    if "no-store" not in _header(response, "cache-control"):
        raise AssertionError("missing Cache-Control: no-store")
    if any(ch.isdigit() for ch in _header(response, "server")):
        raise AssertionError(f"Server header discloses a version: {_header(response, 'server')!r}")
    return None
