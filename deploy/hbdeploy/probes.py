"""Synthetic requests through the load balancer, counted per side.

At low traffic a canary sees too few of the users' requests to be judged.
The probes send a steady, bounded stream of `GET /hello/<probe user>` (an
unknown user: 404 from the service, through its routing and database) to
each side: the load balancer routes a request carrying
`X-Canary-Probe: <token>-canary` to the canary's target group alone and
`<token>-baseline` to the main one (listener rules of the canary stack).
What the client saw is counted per side, the load balancer's own 502, 503
and 504 included, which no per-target-group metric of the load balancer
reports; no answer at all counts as an error too.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from dataclasses import dataclass

from canary.verdict import Group, groups_from_answers

HEADER = "X-Canary-Probe"
# Letters only: a valid username, so the probe takes the API's real path.
USERS = [f"canaryprobe{c}" for c in "abcdefghij"]


@dataclass(frozen=True)
class Answer:
    canary: bool
    sent: float  # time.time() when sent
    status: int  # 0: no answer (refused, reset, timed out)
    ms: float


class Probes:
    """Two threads, one per side, each sending `rate` requests a second on a
    fixed schedule (a slow answer does not slow the schedule down beyond one
    request in flight), for at most `duration` seconds."""

    def __init__(self, url: str, token: str, rate: float, timeout: float = 5.0) -> None:
        self.url = urllib.parse.urlsplit(url.rstrip("/"))
        if self.url.scheme not in ("http", "https") or not self.url.hostname:
            raise ValueError(f"probe URL {url} is not http(s)://host")
        self.token = token
        self.rate = rate
        self.timeout = timeout
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, duration: float) -> None:
        for canary in (True, False):
            t = threading.Thread(target=self._run, args=(canary, duration), daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 1)
        self._threads = []

    def answers(self, since: float = 0.0) -> list[Answer]:
        with self._lock:
            return [a for a in self._answers if a.sent >= since]

    def groups(self, since: float, until: float) -> tuple[Group, Group]:
        return groups_from_answers((a.canary, a.status, a.ms) for a in self.answers(since) if a.sent < until)

    def _connection(self) -> http.client.HTTPConnection:
        port = self.url.port
        host = self.url.hostname or ""
        if self.url.scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout)
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def _run(self, canary: bool, duration: float) -> None:
        side = "canary" if canary else "baseline"
        headers = {HEADER: f"{self.token}-{side}", "User-Agent": "hello-birthday-deploy-probe"}
        base = self.url.path
        start = time.monotonic()
        conn: http.client.HTTPConnection | None = None
        n = 0
        while not self._stop.is_set() and time.monotonic() - start < duration:
            sent, t0 = time.time(), time.monotonic()
            status = 0
            try:
                conn = conn or self._connection()
                conn.request("GET", f"{base}/hello/{USERS[n % len(USERS)]}", headers=headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            with self._lock:
                self._answers.append(Answer(canary, sent, status, 1000 * (time.monotonic() - t0)))
            n += 1
            self._stop.wait(max(0.0, start + n / self.rate - time.monotonic()))
        if conn is not None:
            conn.close()

    def summary(self) -> str:
        answers = self.answers()
        bad = {s: sum(1 for a in answers if a.canary == (s == "canary") and (a.status == 0 or a.status >= 500))
               for s in ("canary", "baseline")}
        sent = {s: sum(1 for a in answers if a.canary == (s == "canary")) for s in ("canary", "baseline")}
        return (f"synthetic probes: canary {sent['canary']} sent, {bad['canary']} answered 5xx or not at all;"
                f" baseline {sent['baseline']} sent, {bad['baseline']} (load balancer answers included)")
