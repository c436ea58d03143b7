"""Target "local": the loopback stack of deploy/local/stack.sh.

Rolls a release across the stack's instances one slot at a time behind
HAProxy, the first slot as the canary. The platform calls are HAProxy's
runtime API (a Unix socket, spoken to directly) and the host side,
deploy/local/stack.sh, which installs releases and starts and stops the
instances (it is the only writer of the instance list). The deploy holds
STATE/lock for the whole run and hands it to stack.sh as fd 9.

State dir files read here are documented in deploy/local/README.md; this
target owns STATE/deploy-record.json (the release each slot ran before the
last deploy, for its rollback, and the fleet's previous release).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from canary.verdict import parse_haproxy
from hbdeploy.canary import CanarySettings, Look
from hbdeploy.release import sha256_file
from hbdeploy.steps import Console, DeployError, UsageError
from hbdeploy.targets import Mode, Options

ROOT = Path(__file__).resolve().parents[3]
STACK_SH = ROOT / "deploy" / "local" / "stack.sh"
BASE_WEIGHT = 100  # HAProxy weight of a normal server (haproxy.cfg.tmpl)
WINDOW_DEFAULT = 60.0  # seconds; the tests pass shorter windows
LOCK_FD = 9  # stack.sh's convention for the lock it was handed


def wait_until(seconds: float, condition: Callable[[], bool]) -> bool:
    """Checks every 0.1 s until the condition holds; False after the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def canary_weight_for(pct: int, others: int) -> int:
    """HAProxy weight that gives the canary PCT % of the traffic next to
    OTHERS servers of BASE_WEIGHT (round robin shares traffic by weight)."""
    return max(1, min(256, int(BASE_WEIGHT * others * pct / (100 - pct) + 0.5)))


def canary_interval(window: float) -> float:
    """A look every thirtieth of the window (at most 30 looks: ALPHA in
    verdict.py), at least every second, at most every 10 s."""
    return min(10.0, max(1.0, window / 30))


@dataclass(frozen=True)
class Instance:
    slot: str
    port: int
    metrics_port: int
    pid: int
    release: str


class Stack:
    """The stack's state dir, its HAProxy runtime API and its host-side
    script (deploy/local/stack.sh)."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.env: dict[str, str] = {}
        for line in (state / "stack.env").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#"):
                self.env[key] = value
        self.socket = state / "haproxy" / "admin.sock"
        self.log = state / "logs" / "haproxy.log"
        self.locked = False  # the deploy holds STATE/lock as fd LOCK_FD

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['HAPROXY_PORT']}"

    def instances(self) -> list[Instance]:
        out = []
        for line in (self.state / "instances").read_text().splitlines():
            f = line.split()
            if len(f) == 5 and not f[0].startswith("#"):
                out.append(Instance(f[0], int(f[1]), int(f[2]), int(f[3]), f[4]))
        return out

    def instance(self, slot: str) -> Instance:
        for i in self.instances():
            if i.slot == slot:
                return i
        raise DeployError(f"{slot}: not in {self.state}/instances")

    @staticmethod
    def alive(inst: Instance) -> bool:
        """The recorded pid is a living process started for this slot (a pid
        may have been reused: the instance is recognised by its PORT)."""
        if inst.pid <= 0:
            return False
        try:
            stat = Path(f"/proc/{inst.pid}/stat").read_text()
            env = Path(f"/proc/{inst.pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        return stat.rsplit(") ", 1)[-1][:1] != "Z" and f"PORT={inst.port}".encode() in env

    @staticmethod
    def reported_release(port: int) -> str:
        """The release the process on PORT reports on /healthz ('' when none)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return str(json.load(r).get("release", ""))
        except (OSError, ValueError):
            return ""

    def api(self, command: str) -> str:
        """One runtime API command; its answer (empty for a successful set)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(self.socket))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace").strip()

    def stat(self) -> dict[str, dict[str, str]] | None:
        """`show stat` of the backend's servers by name; None when HAProxy does not answer."""
        try:
            text = self.api("show stat")
        except OSError:
            return None
        lines = text.splitlines()
        if not lines or not lines[0].startswith("# "):
            return None
        cols = lines[0][2:].split(",")
        servers = {}
        for line in lines[1:]:
            row = dict(zip(cols, line.split(","), strict=False))
            if row.get("pxname") == "be" and row.get("svname") not in ("BACKEND", "FRONTEND"):
                servers[row["svname"]] = row
        return servers

    def field(self, slot: str, name: str) -> str | None:
        stat = self.stat()
        return None if stat is None or slot not in stat else stat[slot].get(name)

    def status_is(self, slot: str, want: str) -> bool:
        return self.field(slot, "status") == want

    def installed(self, label: str) -> bool:
        binary = self.state / "releases" / label / "hello-birthday"
        sums = binary.with_name("hello-birthday.sha256")
        if not (binary.is_file() and os.access(binary, os.X_OK) and sums.is_file()):
            return False
        return (sums.read_text().split() or [""])[0] == sha256_file(binary)

    def host(self, *args: str) -> bool:
        """deploy/local/stack.sh ARGS... (the host side); True when it succeeded.
        Its output goes straight to ours; it uses the lock this deploy holds."""
        cmd = [str(STACK_SH), *args, "--state-dir", str(self.state)]
        fds = (LOCK_FD,) if self.locked else ()
        return subprocess.run(cmd, pass_fds=fds, check=False).returncode == 0


class HAProxyLog:
    """Metric source: HAProxy's per-request log ("hb-req" lines) since the
    canary came UP, canary vs the other servers; the canary must stay alive
    and UP in HAProxy throughout."""

    def __init__(self, stack: Stack, inst: Instance, offset: int, since: float, window: float) -> None:
        self.stack = stack
        self.inst = inst
        self.offset = offset
        self.since = since
        self._window = window

    @property
    def window(self) -> float:
        return self._window

    def schedule(self) -> Iterator[float]:
        # A fixed beat, the last look exactly at the end of the window.
        step = canary_interval(self._window)
        end = self.since + self._window
        at = self.since
        while at < end:
            at = min(at + step, end)
            yield at

    def look(self, last: bool) -> Look:
        elapsed = self._window if last else round(time.time() - self.since, 1)
        alive = self.stack.alive(self.inst)
        status = self.stack.field(self.inst.slot, "status")
        if not alive or status != "UP":
            state = "alive" if alive else "dead"
            return Look(elapsed, problem=f"canary {self.inst.slot} is {state}, HAProxy {status or 'unreachable'}")
        with self.stack.log.open("rb") as f:
            f.seek(self.offset)
            lines = f.read().decode("utf-8", "replace").splitlines()
        canary, baseline = parse_haproxy(lines, self.inst.slot, self.since)
        return Look(elapsed, [("haproxy", canary, baseline)])


class LocalCanary:
    def __init__(self, target: LocalTarget, slot: str, prev: str, source: HAProxyLog) -> None:
        self.target = target
        self.slot = slot
        self.prev = prev
        self._source = source

    @property
    def source(self) -> HAProxyLog:
        return self._source

    def event(self, name: str, detail: str) -> None:
        self.target.event(self.slot, name, self.target.version, detail)

    def promote(self) -> None:
        self.target.lb_weight(self.slot, BASE_WEIGHT)

    def abort(self, decision: str) -> None:
        t = self.target
        t.console.heading(f"canary: {decision}: {self.slot} back to {self.prev}")
        t.reset_weight(self.slot)
        t.stopped = True
        t.restore_slot(self.slot, self.prev)
        t.console.warn(f"{self.slot} is back on {self.prev}, the rest untouched; {t.version} is not deployed")


class LocalTarget:
    name = "local"

    def __init__(self, console: Console, opts: Options) -> None:
        self.console = console
        self.opts = opts
        state = os.environ.get("STACK_STATE_DIR") or str(ROOT / ".state" / "local")
        self.ready_timeout = 30
        self.drain_timeout = 10
        self.events_file: Path | None = None
        self.report: Path | None = None
        args = list(opts.target_args)
        while args:
            opt = args.pop(0)
            if opt not in ("--state-dir", "--ready-timeout", "--drain-timeout", "--events", "--report"):
                raise UsageError(f"unknown option for --target local: {opt}")
            if not args:
                raise UsageError(f"{opt} needs a value")
            value = args.pop(0)
            if opt == "--state-dir":
                state = value
            elif opt in ("--ready-timeout", "--drain-timeout"):
                if not value.isdigit():
                    raise UsageError("timeouts are whole seconds")
                setattr(self, opt[2:].replace("-", "_"), int(value))
            elif opt == "--events":
                self.events_file = Path(value)
            else:
                self.report = Path(value)
        if opts.env != "staging":
            raise UsageError("the local stack is a staging environment (--env staging)")
        if opts.mode in (Mode.PLAN, Mode.EXECUTE):
            raise UsageError("--plan and --execute-plan are for the aws target")
        self.state = Path(state).resolve()
        if not (self.state / "stack.env").is_file():
            raise DeployError(f"no local stack in {self.state} (deploy/local/stack.sh up --state-dir {self.state})")
        self.stack = Stack(self.state)
        self.version = opts.version or ""
        if opts.mode is Mode.DEPLOY and opts.artifact is None and not self.stack.installed(self.version):
            raise DeployError(f"release {self.version} is not installed in {self.state}/releases (give --release PATH)")
        self.record_path = self.state / "deploy-record.json"
        self.stopped = False  # set by roll_slot: the slot's old process was stopped
        self.ready_at = 0.0  # set by roll_slot: when the slot came UP (time.time())
        self.todo: list[str] = []  # the slots this deploy rolls, in order (set by prepare)

    # ---- what a run prints and records -------------------------------------

    def window(self) -> float:
        return self.opts.canary.window or WINDOW_DEFAULT

    def canary_settings(self) -> CanarySettings:
        return self.opts.canary

    def event(self, slot: str, name: str, release: str = "", detail: str = "") -> None:
        """A timeline event (deploy/local/timeline.py): unix_s,slot,event,release,detail."""
        if self.events_file is None or self.opts.dry_run:
            return
        new = not self.events_file.is_file() or self.events_file.stat().st_size == 0
        with self.events_file.open("a") as f:
            if new:
                f.write("unix_s,slot,event,release,detail\n")
            f.write(f"{time.time():.6f},{slot},{name},{release},{detail.replace(',', ';')}\n")

    def url(self) -> str:
        return self.stack.url

    def describe(self) -> None:
        say = self.console.say
        say(f"stack {self.state}, HAProxy {self.url()}")
        if self.opts.mode is Mode.ROLLBACK:
            return
        for i in self.stack.instances():
            if i.release == self.version and self.stack.alive(i):
                say(f"{i.slot} (127.0.0.1:{i.port}, pid {i.pid}): already on {self.version}, skipped")
            else:
                say(f"{i.slot} (127.0.0.1:{i.port}, pid {i.pid}): {i.release} -> {self.version}: drain, wait for"
                    f" in-flight = 0, SIGTERM, start {self.version}, /readyz 200 within {self.ready_timeout}s,"
                    " HAProxy check UP, ready")
        total = len(self.stack.instances())
        if not self.opts.canary.enabled:
            say("canary: SKIPPED (--no-canary)")
        else:
            pct = self.opts.canary.weight
            say(f"canary: the first slot to roll takes {pct}% of the traffic (HAProxy weight"
                f" {canary_weight_for(pct, total - 1)} vs {BASE_WEIGHT}) for {self.window():g}s, judged every"
                f" {canary_interval(self.window()):g}s by deploy/canary/verdict.py; fail or inconclusive: it goes"
                " back, exit non-zero (skipped for a rollback to the previous release)")
        say("on failure: that slot goes back to its previous release, the others are untouched, exit non-zero")

    def dry_run(self) -> None:
        if self.opts.artifact is not None:
            self.console.say(f"would install {self.opts.artifact.path} as release {self.version}")
        self.console.say("would roll the slots above, one at a time, through HAProxy's runtime API")

    # ---- HAProxy ---------------------------------------------------------------

    def lb(self, command: str) -> None:
        """A runtime API command that must succeed (HAProxy answers nothing unless it refuses)."""
        self.console.say(f"$ haproxy: {command}")
        try:
            out = self.stack.api(command)
        except OSError as e:
            raise DeployError(f"HAProxy runtime API unreachable ({self.stack.socket}): {e}") from e
        if out:
            raise DeployError(f"HAProxy refused '{command}': {out}")

    def lb_state(self, slot: str, state: str) -> None:
        self.lb(f"set server be/{slot} state {state}")

    def lb_weight(self, slot: str, weight: int) -> None:
        self.lb(f"set weight be/{slot} {weight}")

    def reset_weight(self, slot: str) -> None:
        try:
            self.lb_weight(slot, BASE_WEIGHT)
        except DeployError as e:
            self.console.warn(f"{slot} keeps the canary weight ({e}): set it back"
                              f" (deploy/local/stack.sh haproxy set weight be/{slot} {BASE_WEIGHT})")

    # ---- the phases ------------------------------------------------------------

    def preflight(self) -> None:
        """The lock, then HAProxy's runtime API must answer and know every slot
        (no instance can be drained otherwise, so none is touched); a canary
        weight or a drained slot left by an interrupted run is put back."""
        lock = os.open(self.state / "lock", os.O_WRONLY | os.O_CREAT, 0o644)
        if not wait_until(60, lambda: self._try_lock(lock)):
            raise DeployError(f"another deploy holds {self.state}/lock")
        os.dup2(lock, LOCK_FD)
        os.close(lock)
        self.stack.locked = True
        stat = self.stack.stat()
        if stat is None:
            raise DeployError(f"HAProxy runtime API unreachable ({self.stack.socket}): no instance can be drained,"
                              " so none is touched")
        missing = [i.slot for i in self.stack.instances() if i.slot not in stat]
        if missing:
            raise DeployError(f"HAProxy has no server for {' '.join(missing)}; nothing touched")
        for i in self.stack.instances():
            row = stat[i.slot]
            weight = row.get("uweight") or row.get("weight")
            if weight and weight != str(BASE_WEIGHT):
                self.console.say(f"{i.slot}: weight {weight}, left by an interrupted canary: back to {BASE_WEIGHT}")
                self.lb_weight(i.slot, BASE_WEIGHT)
            if row.get("status") in ("DRAIN", "MAINT") and self.stack.alive(i):
                self.console.say(f"{i.slot}: {row['status']} in HAProxy, left by an interrupted run: back in rotation")
                self.lb_state(i.slot, "ready")
        self.console.say("HAProxy runtime API answers and lists every slot")

    @staticmethod
    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _record(self) -> dict[str, object]:
        try:
            doc = json.loads(self.record_path.read_text())
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_record(self, doc: dict[str, object]) -> None:
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.record_path)

    def prepare(self) -> None:
        if self.opts.artifact is not None:
            a = self.opts.artifact
            with self.console.step("install", f"install release {self.version}"):
                if not self.stack.host("install", self.version, str(a.path), "--sha256", a.sha256):
                    raise DeployError(f"cannot install {a.path} as release {self.version}")
        record = self._record()
        self._write_record({
            "before": {i.slot: i.release for i in self.stack.instances()},
            "previous": record.get("previous"),
            "previousBefore": record.get("previous"),
        })
        self.todo = [i.slot for i in self.stack.instances() if not (i.release == self.version and self.stack.alive(i))]
        for i in self.stack.instances():
            if i.slot not in self.todo:
                self.console.say(f"{i.slot}: already on {self.version} (pid {i.pid})")

    def canary_wanted(self) -> bool:
        first = self.stack.instances()[0].slot
        total = len(self.stack.instances())
        if not self.todo:
            return False
        if not self.opts.canary.enabled:
            self.console.warn(f"WARNING: --no-canary: {self.version} goes to every instance WITHOUT canary analysis")
            self.event(first, "canary-skipped", self.version, "--no-canary")
            return False
        if self.opts.restoring or self.version == self._record().get("previous"):
            self.console.say(f"{self.version} is the release this fleet ran before: a rollback, no canary step")
            self.event(first, "canary-skipped", self.version, "rollback to the previous release")
            return False
        if total < 2 or len(self.todo) < 2:
            self.console.warn(f"WARNING: no baseline to compare with ({total} instance(s), {len(self.todo)} to roll):"
                              " no canary analysis")
            self.event(first, "canary-skipped", self.version, "no baseline")
            return False
        return True

    def start_canary(self) -> LocalCanary:
        slot = self.todo.pop(0)
        prev = self.stack.instance(slot).release
        pct = self.opts.canary.weight
        weight = canary_weight_for(pct, len(self.stack.instances()) - 1)
        window = self.window()
        self.console.heading(f"canary: {slot} {prev} -> {self.version} with {pct}% of the traffic (weight {weight})"
                             f" for {window:g}s")
        self.event(slot, "canary-start", self.version, f"weight {weight} = {pct}% of traffic; window {window:g}s")
        # The weight first: the new process enters rotation at the canary's share.
        self.lb_weight(slot, weight)
        # The analysis reads the log from here on (the requests accepted
        # after the canary came UP).
        offset = self.stack.log.stat().st_size if self.stack.log.exists() else 0
        try:
            self.roll_slot(slot, self.version)
        except DeployError as e:
            self.console.warn(f"{slot}: release {self.version} did not become ready ({e})")
            self.reset_weight(slot)
            self.restore_slot(slot, prev)
            raise DeployError(f"deploy of {self.version} failed on the canary {slot}; {slot} is back on {prev},"
                              " the rest untouched") from e
        source = HAProxyLog(self.stack, self.stack.instance(slot), offset, self.ready_at, window)
        return LocalCanary(self, slot, prev, source)

    def roll_out(self) -> None:
        total = len(self.stack.instances())
        done = total - len(self.todo)
        for slot in list(self.todo):
            prev = self.stack.instance(slot).release
            self.console.heading(f"{slot}: {prev} -> {self.version}")
            try:
                self.roll_slot(slot, self.version)
            except DeployError as e:
                self.console.warn(f"{slot}: release {self.version} did not become ready ({e})")
                self.restore_slot(slot, prev)
                raise DeployError(f"deploy of {self.version} failed on {slot}; {slot} is back on {prev};"
                                  f" {done} of {total} slots on {self.version}, the rest untouched") from e
            done += 1

    def verify(self) -> None:
        """Every slot: process alive, /healthz reports the release, HAProxy UP."""
        bad = []
        for i in self.stack.instances():
            got = self.stack.reported_release(i.port)
            alive = self.stack.alive(i)
            # A check that fails once (a busy instance) is not a failed deploy:
            # allow HAProxy a few seconds to see the slot UP.
            if not (alive and got == self.version and wait_until(10, partial(self.stack.status_is, i.slot, "UP"))):
                state = "alive" if alive else "dead"
                bad.append(f"{i.slot}: pid {i.pid} {state}, reports '{got or '?'}', HAProxy"
                           f" {self.stack.field(i.slot, 'status')} (want {self.version}, UP)")
            else:
                self.console.say(f"{i.slot}: pid {i.pid} reports release {got}, HAProxy UP")
        if bad:
            raise DeployError("; ".join(bad))
        record = self._record()
        before = record.get("before")
        releases = set(before.values()) if isinstance(before, dict) else set()
        # A later deploy of the release the whole fleet ran counts as a rollback (no canary).
        if len(releases) == 1 and self.version not in releases:
            record["previous"] = releases.pop()
            self._write_record(record)

    def roll_back(self) -> None:
        """Every slot back to the release it ran before the last deploy; the
        record of the fleet's previous release as it was before it."""
        record = self._record()
        before = record.get("before")
        if not isinstance(before, dict):
            raise DeployError(f"no rollback record in {self.state}")
        for slot, prev in before.items():
            cur = self.stack.instance(slot).release
            if cur == prev:
                continue
            self.console.heading(f"{slot}: {cur} -> {prev} (rollback)")
            self.event(slot, "rollback", str(prev))
            self.roll_slot(slot, str(prev))
        record["previous"] = record.get("previousBefore")
        self._write_record(record)
        wrong = [f"{slot} reports '{got or '?'}', expected {prev}" for slot, prev in before.items()
                 if (got := self.stack.reported_release(self.stack.instance(slot).port)) != prev]
        if wrong:
            raise DeployError("after the rollback: " + "; ".join(wrong))

    def make_plan(self, path: Path) -> None:
        raise UsageError("--plan is for the aws target")

    # ---- one slot ----------------------------------------------------------------

    def roll_slot(self, slot: str, release: str) -> None:
        """Drain SLOT, stop it, start RELEASE on its ports, back in rotation.
        Raises when a step fails; self.stopped then says whether its old
        process was stopped (False: it still serves its old release)."""
        say = self.console.say
        inst = self.stack.instance(slot)
        self.stopped = False
        t0 = time.monotonic()
        self.lb_state(slot, "drain")
        self.event(slot, "drain", inst.release)
        # HAProxy sends a drained server no new requests; wait for the current ones.
        if wait_until(self.drain_timeout, lambda: self.stack.field(slot, "scur") == "0"):
            say(f"{slot}: no request in flight after {1000 * (time.monotonic() - t0):.0f} ms")
        else:
            scur = self.stack.field(slot, "scur")
            if scur is None:
                raise DeployError(f"{slot}: HAProxy stopped answering while {slot} drained; not stopping it")
            say(f"{slot}: still {scur} in-flight requests after {self.drain_timeout}s; stopping anyway")
        self.stopped = True
        if self.stack.alive(inst) and not self.stack.host("stop", slot):
            raise DeployError(f"{slot}: pid {inst.pid} does not exit")
        self.event(slot, "stopped")
        say(f"$ start {slot} {release} (127.0.0.1:{inst.port})")
        self.event(slot, "starting", release)
        if not self.stack.host("start", slot, "--release", release, "--ready-timeout", str(self.ready_timeout),
                               "--no-lb-wait"):
            self.event(slot, "failed", release)
            raise DeployError(f"{slot}: release {release} did not start")
        self.event(slot, "started", release)
        new = self.stack.instance(slot)
        # HAProxy's own health check passes before the slot takes traffic
        # again: in drain state a healthy server reports DRAIN.
        if not wait_until(10, partial(self.stack.status_is, slot, "DRAIN")):
            status = self.stack.field(slot, "status")
            self.stack.host("stop", slot)
            self.event(slot, "failed", release)
            raise DeployError(f"{slot}: HAProxy health check did not pass within 10s (status {status})")
        self.lb_state(slot, "ready")
        if not wait_until(5, partial(self.stack.status_is, slot, "UP")):
            raise DeployError(f"{slot}: HAProxy does not report UP")
        self.ready_at = time.time()
        self.event(slot, "ready", release)
        say(f"{slot}: pid {inst.pid} -> {new.pid}, release {release}, UP after {time.monotonic() - t0:.3f}s")

    def restore_slot(self, slot: str, prev: str) -> None:
        """After roll_slot failed: PREV serves on SLOT again, or this raises."""
        if not self.stopped:
            # Its old process never stopped: only put it back in rotation.
            try:
                self.lb_state(slot, "ready")
            except DeployError as e:
                raise DeployError(f"{slot} still serves {prev} but stays drained in HAProxy: re-enable it"
                                  f" (deploy/local/stack.sh haproxy set server be/{slot} state ready)") from e
            self.console.warn(f"{slot} was not stopped: still on {prev}")
            return
        self.console.warn(f"{slot}: putting {prev} back")
        self.event(slot, "rollback", prev)
        try:
            self.roll_slot(slot, prev)
        except DeployError as e:
            raise DeployError(f"ROLLBACK FAILED: {slot} could not be restored to {prev}; stack needs attention"
                              f" (deploy/local/stack.sh status): {e}") from e

    # ---- --report DIR: load for the whole roll-out, then a timeline --------------

    @contextmanager
    def deploying(self) -> Iterator[None]:
        if self.report is None or self.opts.dry_run:
            yield
            return
        report = self.report.resolve()
        report.mkdir(parents=True, exist_ok=True)
        for name in ("requests.csv", "events.csv", "summary.json", "timeline.png", "loadgen.log", "ready"):
            (report / name).unlink(missing_ok=True)
        self.events_file = report / "events.csv"
        loadgen = ROOT / "target" / "debug" / "loadgen"
        if not os.access(loadgen, os.X_OK):
            subprocess.run(["cargo", "build", "-q", "-p", "loadgen"], cwd=ROOT, check=True)
        rate = os.environ.get("REPORT_RATE", "200")
        self.console.heading(f"report: {rate} req/s through {self.url()} during the deploy, into {report}")
        with (report / "loadgen.log").open("w") as log:
            load = subprocess.Popen(
                [str(loadgen), "run", "--url", self.url(), "--rate", rate,
                 "--connections", os.environ.get("REPORT_CONNECTIONS", "16"), "--duration", "900",
                 "--max-failures", "1000000000", "--cleanup", "--ready-file", str(report / "ready"),
                 "--csv", str(report / "requests.csv"), "--summary", str(report / "summary.json")],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            if not wait_until(15, (report / "ready").exists):
                raise DeployError("report: the load did not start", step="report")
            (report / "ready").unlink()
            time.sleep(1)  # a baseline before the first drain
            yield
        finally:
            time.sleep(1)
            load.send_signal(signal.SIGINT)
            load.wait(60)
            for line in (report / "loadgen.log").read_text().splitlines():
                if line.startswith("loadgen: ") and (" requests" in line or "lost" in line):
                    self.console.say(line)
            py = ROOT / ".venv" / "bin" / "python"
            chart = subprocess.run(
                [str(py) if py.exists() else "python3", str(ROOT / "deploy" / "local" / "timeline.py"),
                 "--requests", str(report / "requests.csv"), "--events", str(self.events_file),
                 "--title", f"Deploy of {self.version}", "--out", str(report / "timeline.png")], check=False)
            if chart.returncode != 0:
                self.console.warn("report: no chart (matplotlib missing? scripts/setup.sh dev)")
