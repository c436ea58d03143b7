#!/usr/bin/env python3
"""Send a bounded mix of API requests to one or more base URLs (127.0.0.1
only) and print the status codes seen: PUT (204), GET (200), GET of an
unknown user (404), a bad username (400), DELETE (204).

    traffic.py --seconds 5 http://127.0.0.1:PORT [...]

Stops after --seconds or --max-requests, whichever comes first. Exit 1 when
--expect CODE is given and any answer had another code.
"""
import argparse
import collections
import http.client
import sys
import time
import urllib.parse


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("urls", nargs="+")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--max-requests", type=int, default=20000)
    ap.add_argument("--expect", type=int, action="append", default=[],
                    help="allowed status code (repeatable); others fail the run")
    a = ap.parse_args()

    conns = []
    for u in a.urls:
        p = urllib.parse.urlsplit(u)
        if p.hostname not in ("127.0.0.1", "localhost"):
            sys.exit(f"traffic.py: refusing non-loopback target {u}")
        conns.append((p.hostname, p.port))
    clients = [http.client.HTTPConnection(h, port, timeout=5) for h, port in conns]
    mix = [
        ("PUT", "/hello/{name}", b'{"dateOfBirth":"1990-05-17"}'),
        ("GET", "/hello/{name}", None),
        ("GET", "/hello/nobodyhere", None),
        ("GET", "/hello/bad123", None),
        ("GET", "/hello/{name}", None),
        ("DELETE", "/hello/{name}", None),
    ]
    codes = collections.Counter()
    deadline = time.monotonic() + a.seconds
    n = 0
    while time.monotonic() < deadline and n < a.max_requests:
        c = clients[n % len(clients)]
        method, path, body = mix[n % len(mix)]
        path = path.format(name="user" + "abcdefghij"[(n // len(mix)) % 10])
        headers = {"Content-Type": "application/json"} if body else {}
        try:
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            r.read()
            codes[r.status] += 1
        except (OSError, http.client.HTTPException) as e:
            codes[type(e).__name__] += 1
            c.close()
        n += 1
    print("traffic.py: %d requests in %.1fs: %s" % (
        n, a.seconds, ", ".join(f"{k}={v}" for k, v in sorted(codes.items(), key=str))))
    if a.expect and any(k not in a.expect for k in codes):
        print(f"traffic.py: unexpected answers (allowed: {a.expect})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
