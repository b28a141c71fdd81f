"""Benchmark: thousands of supervised bot sessions in one process — memory, connect storms, recovery.

Run: ``python bench/sessions.py [--bots 2000] [--outage 30] [--rate 200] [--simulator process|inprocess]
[--clients 20] [--no-nudge] [--idle S] [--profile] [--dump FILE] [--burst N] [--gc-freeze]``; ``--smoke``
for a run of a few seconds that only checks it works (the test suite runs it).

One process, gevent patched first, psycopg2 made cooperative; the embedded PostgreSQL in a temporary
directory (or ``DATABASE_URL``/``DATABASE_OWNER_URL`` when set), migrated; the real supervision root
(``actors.supervision.Supervision``: lease keeper, one supervised ``BotSession`` per bot, each with
its pipeline actor) over the simulator transport. The simulator runs as its own process (``python
run.py simulator``, the default), so the sessions' process has its hub to itself and its RSS is the
bots' side alone; ``--simulator inprocess`` embeds it, and both ends of every socket share one hub.

1. Start ``--bots`` bots of one tenant: rows inserted in one statement (stopped), pre-paired by
   seeding the simulator's credentials (its state file) and each bot's device store
   (``DATA_DIR/devices/<bot>/simulator.json``), so they log in without a QR code. Supervision is
   started with nothing to run, then one UPDATE sets every bot running. Prints the time until all
   are connected and memory per session = (RSS after all connected − RSS just before the UPDATE) /
   bots, so supervision's one-time set-up is not counted; also the objects the cyclic collector
   tracks per session, by type. The lease keeper claims ``MAX_CLAIMS_PER_ROUND`` bots per round,
   rounds come every ``WA_LEASE_TTL / 6`` = 20 s; unless ``--no-nudge``, the bench sends a
   ``bot_commands`` NOTIFY every 0.5 s while bots are unclaimed (as the API does on each start),
   which runs a round at once.
2. ``outage()`` for ``--outage`` seconds, then ``recover()``. Every attempt's time is recorded
   through ``SessionDeps.on_attempt`` (also the slots ``reserve_connect`` hands out and the dials
   ``admit_connect`` admits); prints attempts per second during and after the outage, the most in
   any fixed second and in any sliding 1 s window (target: never more than ``WA_CONNECT_RATE``), the
   time from recovery until all are connected again (target: ≤ 1.2 × max(WA_RECONNECT_MAX_DELAY,
   bots / WA_CONNECT_RATE)), CPU, hub stalls (a 50 ms sleeper's lateness) and GC pauses.
3. In a fresh child process without gevent: neonize's one-time import cost and the RSS per idle
   ``neonize.client.NewClient`` (K clients, each with its own sqlite store; no connect, there is no
   internet), plus the cost per client after one offline dial attempt, which makes the Go side
   create the client and open its store.

Settings: WA_RECONNECT_BASE_DELAY=1, WA_RECONNECT_MAX_DELAY=10, WA_RECONNECT_MAX_ATTEMPTS=100,
WA_CONNECT_RATE=--rate, WA_LEASE_TTL=120 (lease rounds every 20 s, so they do not interfere).
``--burst`` and ``--gc-freeze`` are what-if experiments (a burst bound on the connect limiter;
``gc.freeze()`` once all are connected), not the shipped behaviour. Prints PASS/MISS per target and
exits 0 whatever the figures (a benchmark, not a test), non-zero when something fails to run (an
exception, the neonize child). ``--smoke`` (20 bots, a 1 s outage, neonize clients that never dial)
also fails when the bots do not all connect, before or after the outage, and judges no figure.
Results and how to run it: ``docs/performance.md`` ("Sessions").
"""

import sys

# Phase 3 runs this file again as a child that must see neonize without gevent's patches.
_NEONIZE_CHILD = "--neonize-child" in sys.argv

if not _NEONIZE_CHILD:
    from gevent import monkey

    monkey.patch_all()
    if "--no-greenlet-tree" in sys.argv:
        import gevent

        # What-if: gevent keeps no spawning stack (10 frames) per greenlet (GEVENT_TRACK_GREENLET_TREE).
        gevent.config.track_greenlet_tree = False

import os  # noqa: E402

# ``python bench/sessions.py`` puts bench/ on sys.path, not the project root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

if not _NEONIZE_CHILD:
    from db.green import make_psycopg2_green

    make_psycopg2_green()

import argparse  # noqa: E402
import array  # noqa: E402
import collections  # noqa: E402
import cProfile  # noqa: E402
import ctypes  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import pstats  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from bench._harness import (  # noqa: E402
    Bench,
    Child,
    Database,
    HubLag,
    Once,
    Root,
    SmokeFailure,
    Verdict,
    about,
    free_port_pair,
    proc_status,
    rss_kb,
    seed_paired_bots,
    self_cpu,
    simulator_settings,
)

MEMORY_TARGET_KB = 100.0
RECOVERY_FACTOR = 1.2
BASE_DELAY, MAX_DELAY, MAX_ATTEMPTS, LEASE_TTL = 1.0, 10.0, 100, 120.0


# -- measuring ------------------------------------------------------------------------------------


def malloc_trim() -> None:
    """Give freed heap back to the OS, so an RSS reading shows what is live rather than what the
    allocator keeps around after start-up peaks."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def max_in_window(times: list[float], width: float = 1.0) -> tuple[int, float]:
    """The most timestamps in any half-open window [t, t + width) and where it starts (sorted input)."""
    best, at, lo = 0, 0.0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= width:
            lo += 1
        if hi - lo + 1 > best:
            best, at = hi - lo + 1, times[lo]
    return best, at


# -- phase 3: neonize, in a child process without gevent --------------------------------------------


def neonize_child(clients: int, store_dir: str, dial: bool = True) -> None:
    """Prints one JSON line: RSS at each step (KiB). Without ``dial`` (``--smoke``) no client tries
    the network: the steps after creating the clients are left out."""
    logging.basicConfig(level=logging.ERROR)
    steps = {"baseline": proc_status()}
    started = time.perf_counter()
    from neonize.client import NewClient  # imported here: the import is what is measured

    steps["import_seconds"] = time.perf_counter() - started
    steps["imported"] = proc_status()
    made = [NewClient(os.path.join(store_dir, f"client-{i}.sqlite3"), uuid=f"bench-{i}") for i in range(clients + 1)]
    gc.collect()
    steps["created"] = proc_status()
    if not dial:
        print(json.dumps(steps), flush=True)
        os._exit(0)
    dial_errors = collections.Counter()

    def dial(client: Any) -> None:
        try:
            client.connect()  # offline: fails within tens of ms after Go created the client and its store
        except Exception as exc:  # noqa: BLE001 - expected: no internet
            dial_errors[str(exc).split(":")[0]] += 1

    dial(made[0])  # the first one also pays for the Go runtime's first dial (TLS, resolver, pools)
    gc.collect()
    steps["first_dialed"] = proc_status()
    for client in made[1:]:
        dial(client)
    gc.collect()
    time.sleep(0.5)
    steps["all_dialed"] = proc_status()
    steps["stores"] = sum(1 for name in os.listdir(store_dir) if name.endswith(".sqlite3"))
    steps["dial_errors"] = dict(dial_errors)
    print(json.dumps(steps), flush=True)
    sys.stdout.flush()
    os._exit(0)  # skip the finalizers' Stop() calls into Go at exit: not part of the measurement


def measure_neonize(clients: int, dial: bool = True) -> dict[str, Any] | None:
    """Phase 3's child (this file again, ``--neonize-child``) with its stores in a directory of its
    own; its JSON line, or None when it failed (said why)."""
    with Bench("bench-neonize-") as run:
        try:
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--neonize-child", "--clients", str(clients),
                 "--store-dir", run.work] + ([] if dial else ["--no-dial"]),
                capture_output=True, text=True, timeout=300, cwd=run.work,
            )
        except (subprocess.TimeoutExpired, OSError) as exc:
            print(f"  neonize child failed: {exc}")
            return None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        print(f"  neonize child failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
        return None
    return json.loads(lines[-1])


def report_neonize(steps: dict[str, Any], clients: int) -> list[str]:
    def delta(a: str, b: str, key: str = "VmRSS") -> int:
        return steps[b][key] - steps[a][key]

    per_new = delta("imported", "created") / (clients + 1)
    head = [
        (f"  import neonize: +{delta('baseline', 'imported') / 1024:.1f} MB RSS once "
         f"(anon +{delta('baseline', 'imported', 'RssAnon') / 1024:.1f} MB, file-backed "
         f"+{delta('baseline', 'imported', 'RssFile') / 1024:.1f} MB), {steps['import_seconds']:.2f} s"),
        (f"  NewClient, no connect ({clients + 1} clients): {per_new:.1f} KB per client "
         "(Python objects only: goneonize creates nothing until connect)"),
    ]
    if "all_dialed" not in steps:
        return head + ["  (no dial attempted: smoke run)"]
    per_dialed = delta("first_dialed", "all_dialed") / clients
    return head + [
        f"  first offline dial: +{delta('created', 'first_dialed') / 1024:.1f} MB once (Go runtime warm-up)",
        (f"  each further client after one offline dial (Go client + its sqlite store open): "
         f"{per_dialed:.0f} KB per client (anon {delta('first_dialed', 'all_dialed', 'RssAnon') / clients:.0f} KB); "
         f"stores created: {steps['stores']}; dial errors: {steps['dial_errors']}"),
        "  (a logged-in client also holds keys, app state and a websocket: not measurable offline)",
    ]


# -- phases 1 and 2 ---------------------------------------------------------------------------------


class Tracker:
    """The ``publish`` sink: the latest state of each bot and how many are connected; plus the time of
    every connection attempt (through ``on_attempt``)."""

    def __init__(self, bot_ids: list[str]) -> None:
        import gevent.event

        self.states: dict[str, str] = dict.fromkeys(bot_ids, "stopped")
        self.total = len(bot_ids)
        self.connected = 0
        self.counts: collections.Counter = collections.Counter({"stopped": len(bot_ids)})
        self.attempts = array.array("d")
        self.reasons: collections.Counter = collections.Counter()
        self.changed = gevent.event.Event()
        self.min_connected_since_mark = self.total

    def publish(self, tenant_id: str, bot_id: str | None, event_type: str, payload: dict) -> None:
        if event_type != "bot.state" or bot_id not in self.states:
            return
        new = payload["state"]
        old = self.states[bot_id]
        if new == old:
            return
        self.states[bot_id] = new
        self.counts[old] -= 1
        self.counts[new] += 1
        if old == "connected":
            self.connected -= 1
            self.min_connected_since_mark = min(self.min_connected_since_mark, self.connected)
        elif new == "connected":
            self.connected += 1
        self.changed.set()

    def on_attempt(self, reason: str) -> None:
        self.attempts.append(time.monotonic())
        self.reasons[reason.split(":")[0][:40]] += 1

    def wait_all_connected(self, timeout: float) -> float | None:
        """Monotonic time when all were connected, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.connected < self.total:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.changed.clear()
            self.changed.wait(min(remaining, 0.05))
        return time.monotonic()

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()) if v)


class GcPauses:
    """Every cyclic garbage collection: generation, start, wall and CPU duration (gc.callbacks). The
    CPU time tells the collector's own cost apart from time lost to other processes on the machine."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float, float, float, int]] = []  # gen, start, wall, cpu, collected
        self.excluded: list[tuple[float, float]] = []  # windows of the bench's own collections
        self._started = self._cpu = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started, self._cpu = time.monotonic(), time.thread_time()
        else:
            self.pauses.append((info["generation"], self._started, time.monotonic() - self._started,
                                time.thread_time() - self._cpu, info.get("collected", 0)))

    def summary(self, since: float, origin: float) -> str:
        mine = [p for p in self.pauses
                if p[1] >= since and not any(a <= p[1] <= b for a, b in self.excluded)]
        if not mine:
            return "no collections"
        by_gen = collections.Counter(p[0] for p in mine)
        total = sum(p[2] for p in mine)
        gen2 = [p for p in mine if p[0] == 2]
        worst = sorted(mine, key=lambda p: -p[2])[:3]
        worst_txt = ", ".join(f"gen{g} +{t - origin:.1f}s {d * 1000:.0f}ms (cpu {c * 1000:.0f}ms)"
                              for g, t, d, c, _ in worst)
        gen2_txt = (f"; gen2 cpu median {sorted(p[3] for p in gen2)[len(gen2) // 2] * 1000:.0f} ms"
                    if gen2 else "")
        garbage = sum(p[4] for p in mine)
        gens = ", ".join(f"gen{g} x{n}" for g, n in sorted(by_gen.items()))
        return (f"{garbage:,} objects freed as cyclic garbage; {len(mine)} collections ({gens}), "
                f"{total * 1000:.0f} ms in all{gen2_txt}; longest: {worst_txt}")

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


class InProcessSim:
    kind = "embedded in this process"

    def __init__(self, state_file: str) -> None:
        from simulator.server import Simulator

        self.sim = Simulator("127.0.0.1", 0, False, qr_rotate=20, receipt_delay=None, state_file=state_file)
        self.sim.start()
        self.address = self.sim.address
        self.pid = None

    def outage(self) -> None:
        self.sim.outage()

    def recover(self) -> None:
        self.sim.recover()

    def connections(self) -> int:
        return self.sim.health()["connections"]

    def stop(self) -> None:
        self.sim.stop()


class ProcessSim(Child):
    kind = "its own process (python run.py simulator)"

    def __init__(self, data_dir: str) -> None:
        port = free_port_pair()
        self.address = f"127.0.0.1:{port}"
        self.control = f"http://127.0.0.1:{port + 1}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "WA_"))}
        env.update({"DATA_DIR": data_dir, "WA_SIMULATOR_ADDR": self.address, "LOG_LEVEL": "warning"})
        super().__init__("simulator", [sys.executable, os.path.join(ROOT, "run.py"), "simulator"], cwd=ROOT, env=env,
                         log=os.path.join(data_dir, "simulator.log"))

    def _call(self, method: str, path: str) -> dict:
        data = b"{}" if method == "POST" else None
        req = urllib.request.Request(self.control + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def health(self) -> dict:
        return self._call("GET", "/healthz")

    def outage(self) -> None:
        self._call("POST", "/outage")

    def recover(self) -> None:
        self._call("POST", "/recover")

    def connections(self) -> int:
        return self.health()["connections"]

    def stop(self, timeout: float = 10.0, sig: int | None = signal.SIGTERM) -> int:
        return super().stop(timeout, sig)


def histogram(times: list[float], origin: float, until: float, marks: dict[int, str], rate: float) -> list[str]:
    buckets = collections.Counter(math.floor(t - origin) for t in times if t >= origin)
    last = max([math.floor(until - origin)] + list(buckets))
    scale = max(1.0, max(buckets.values(), default=1) / 50)
    lines = []
    for second in range(last + 1):
        n = buckets.get(second, 0)
        bar = "#" * round(n / scale)
        flag = "  OVER" if n > rate else ""
        mark = f"  <- {marks[second]}" if second in marks else ""
        lines.append(f"  {second:>4}s {n:>5} {bar}{flag}{mark}")
    return lines


class Taps:
    """What the bench records through supervision's shared deps (every session reads them at dial
    time): each attempt (into the tracker), the slots the limiter hands out (``reserve_connect``), the
    dials it admits (``admit_connect``), and (``wire``, filled by the timed transport) when each
    transport's reader greenlet starts its socket dial. ``--burst`` swaps the limiter first."""

    def __init__(self, sup: Any, tracker: Tracker, args: argparse.Namespace, wire: array.array) -> None:
        from sansio.connect_rate import ConnectRateLimiter

        self.wire = wire
        original_on_attempt = sup.deps.on_attempt

        def on_attempt(reason: str) -> None:
            tracker.on_attempt(reason)
            if original_on_attempt is not None:
                original_on_attempt(reason)

        sup.deps.on_attempt = on_attempt  # every session reads the shared deps at dial time
        if args.burst:
            # What-if: the process-wide limiter with a burst bound (Supervision builds it without one).
            limiter = ConnectRateLimiter(args.rate, burst=args.burst)
            sup.deps.reserve_connect = lambda now: limiter.reserve(time.monotonic()) - time.monotonic() + now
            if getattr(sup.deps, "admit_connect", None) is not None:
                sup.deps.admit_connect = lambda: limiter.admit(time.monotonic())
        original_reserve = sup.deps.reserve_connect
        self.granted = array.array("d")  # the slots the limiter handed out, on the monotonic clock

        def reserve_connect(now: float) -> float:
            at = original_reserve(now)
            self.granted.append(at - now + time.monotonic())
            return at

        sup.deps.reserve_connect = reserve_connect
        self.admitted = array.array("d")  # when the limiter admitted a dial (its own check, at the dial)
        self.original_admit = getattr(sup.deps, "admit_connect", None)
        original_admit = self.original_admit
        if original_admit is not None:
            def admit_connect() -> float:
                wait = original_admit()
                if wait <= 0:
                    self.admitted.append(time.monotonic())
                return wait

            sup.deps.admit_connect = admit_connect
        self.marks = (0, 0, 0)

    def mark(self) -> None:
        """From here on: what ``since`` returns."""
        self.marks = (len(self.granted), len(self.admitted), len(self.wire))

    def since(self) -> tuple[list[float], list[float], list[float]]:
        """Slots granted, dials admitted and socket dials since ``mark``, sorted."""
        granted_mark, admitted_mark, wire_mark = self.marks
        return (sorted(self.granted[granted_mark:]), sorted(self.admitted[admitted_mark:]),
                sorted(self.wire[wire_mark:]))


@dataclasses.dataclass
class Outage:
    """Phase 2's measurements, on the monotonic clock."""

    cut: float
    recovered: float
    back: float | None  # all connected again (None: not within the wait)
    end: float  # ``back``, or when the wait gave up
    down_cpu: float
    up_cpu: float
    attempts: list[float]  # every connection attempt since the cut, sorted
    profiler: cProfile.Profile | None


@dataclasses.dataclass
class Run:
    """Phases 1 and 2: what they start and share."""

    args: argparse.Namespace
    verdict: Verdict
    db: Database
    pool: Any
    sim: Any
    settings: Any
    tenant_id: str
    tracker: Tracker
    verdicts: list[str] = dataclasses.field(default_factory=list)
    sup: Any = None
    stop_sup: Once | None = None
    lag: HubLag | None = None
    gcs: GcPauses | None = None
    taps: Taps | None = None
    rss_connected: int = 0  # KiB, with all connected


def run_sessions(args: argparse.Namespace, verdict: Verdict) -> list[str]:
    with Bench("bench-sessions-") as bench:
        run = start(bench, args, verdict)
        start_supervision(bench, run)
        if not phase_start(run):
            return run.verdicts
        if args.idle:
            _idle(args.idle, args.bots, run.rss_connected)
        if args.gc_freeze:
            gc.collect()
            gc.freeze()  # what-if: move everything alive now out of the collector's reach
            print(f"  what-if: gc.freeze() after start-up ({gc.get_freeze_count()} objects frozen)")
        outage = phase_outage(run)
        report_outage(run, outage)
        shutdown(run)
        return run.verdicts


def start(bench: Bench, args: argparse.Namespace, verdict: Verdict) -> Run:
    """The database, ``--bots`` seeded bots, the simulator and the settings; prints the run's header."""
    db = bench.database()
    pool = bench.pool(db.app_url)
    data_dir = bench.path("data")
    sim_dir = bench.path("sim")
    sim_state = os.path.join(sim_dir, "simulator", "state.json")
    t0 = time.monotonic()
    tenant_id, bot_ids = seed_paired_bots(pool, data_dir, sim_state, args.bots,
                                          tenant=f"bench-sessions-{os.getpid()}")
    seeded = time.monotonic() - t0
    if args.simulator == "process":
        sim = bench.stops(ProcessSim(sim_dir))
        sim.wait_answering(sim.control + "/healthz", 30)
    else:
        sim = bench.stops(InProcessSim(sim_state))
    settings = simulator_settings(
        db, data_dir, sim.address,
        WA_RECONNECT_BASE_DELAY=str(BASE_DELAY),
        WA_RECONNECT_MAX_DELAY=str(MAX_DELAY),
        WA_RECONNECT_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        WA_CONNECT_RATE=str(args.rate),
        WA_LEASE_TTL=str(LEASE_TTL),
    )
    print(f"{about(db)}  pool {pool.config.size}  "
          f"load average {os.getloadavg()[0]:.2f} (other processes share these CPUs)")
    print(f"bots {args.bots}  outage {args.outage:g} s  WA_CONNECT_RATE {args.rate:g}  "
          f"WA_RECONNECT_BASE_DELAY {BASE_DELAY:g}  WA_RECONNECT_MAX_DELAY {MAX_DELAY:g}  "
          f"WA_RECONNECT_MAX_ATTEMPTS {MAX_ATTEMPTS}  WA_LEASE_TTL {LEASE_TTL:g}")
    what_if = [name for name, on in (("burst " + str(args.burst), args.burst), ("gc.freeze", args.gc_freeze),
                                     ("no greenlet tree", args.no_greenlet_tree)) if on]
    if what_if:
        print(f"WHAT-IF experiments (not the shipped code): {', '.join(what_if)}")
    print(f"simulator: {sim.kind}, {sim.address}; {args.bots} bots seeded (rows, device stores, "
          f"credentials) in {seeded:.2f} s\n")
    return Run(args, verdict, db, pool, sim, settings, tenant_id, Tracker(bot_ids))


def start_supervision(bench: Bench, run: Run) -> None:
    """The hub-lag and GC probes, and the real supervision root with its deps tapped; nothing runs yet."""
    from actors.supervision import Supervision, transport_factory

    run.lag = bench.hub_lag()
    run.gcs = bench.stops(GcPauses())
    wire = array.array("d")  # when a transport's reader greenlet starts its socket dial
    factory = _timed_transport(transport_factory(run.settings), wire)
    run.sup = Supervision(Root(run.settings, run.pool, run.tracker.publish), listen_dsn=run.db.app_url,
                          factory=factory)
    run.stop_sup = bench.stopper(run.sup.stop, quiet=True)
    run.taps = Taps(run.sup, run.tracker, run.args, wire)


def phase_start(run: Run) -> bool:
    """Phase 1: every bot set running at once; the time until all are connected, then the memory per
    session. False when not all connected (the run ends there)."""
    import gevent

    from actors.supervision import MAX_CLAIMS_PER_ROUND
    from db import bots as bots_db

    args, tracker = run.args, run.tracker
    # Supervision is up with nothing to run (its one-time set-up is not part of the per-session
    # figure); now the bots are set running, as a user starting them would.
    gevent.sleep(1.0)
    gc.collect()
    malloc_trim()
    gevent.sleep(0.5)
    types_before = _type_counts()
    rss_before = proc_status()
    sim_rss_before = rss_kb(run.sim.pid) if run.sim.pid else None
    cpu0 = self_cpu()
    started = time.monotonic()
    run.pool.execute(run.tenant_id, "UPDATE bots SET desired_state = 'running'", repeatable=True)
    nudger = None
    if not args.no_nudge:
        nudger = gevent.spawn(_nudge, run.pool, bots_db.NOTIFY_CHANNEL, run.sup, args.bots)
    all_up = tracker.wait_all_connected(args.start_timeout)
    if nudger is not None:
        nudger.kill(block=False)
    cpu1 = self_cpu()
    print("1. start")
    if all_up is None:
        print(f"  not all connected within {args.start_timeout:g} s: {tracker.summary()}")
        if args.smoke:
            raise SmokeFailure(f"not all {args.bots} bots connected within {args.start_timeout:g} s: "
                               f"{tracker.summary()}")
        run.verdicts.append("start: MISS (not all connected)")
        return False
    start_time = all_up - started
    rounds = math.ceil(args.bots / MAX_CLAIMS_PER_ROUND)
    floor = args.bots / args.rate
    print(f"  all {args.bots} connected {start_time:.2f} s after they were set running "
          f"(connect-rate floor {floor:.1f} s; {rounds} lease rounds of {MAX_CLAIMS_PER_ROUND}"
          f"{'' if args.no_nudge else ', nudged by NOTIFY'}); attempts {len(tracker.attempts)}; "
          f"CPU {cpu1 - cpu0:.1f} s; hub lag max {run.lag.worst() * 1000:.0f} ms")
    report_memory(run, types_before, rss_before, sim_rss_before)
    return True


def report_memory(run: Run, types_before: collections.Counter, rss_before: dict[str, int],
                  sim_rss_before: int | None) -> None:
    """Phase 1's memory per session (RSS, the collector's objects by type, the simulator's side)."""
    import gevent

    args = run.args
    gevent.sleep(2.0)  # let start-up garbage (timers, one-off greenlets) go
    gc.collect()
    types = _type_counts()
    tracked = sum(types.values())
    rss_after = proc_status()
    malloc_trim()
    rss_trimmed = proc_status()
    per = (rss_after["VmRSS"] - rss_before["VmRSS"]) / args.bots
    per_trimmed = (rss_trimmed["VmRSS"] - rss_before["VmRSS"]) / args.bots
    print(f"  RSS {rss_before['VmRSS'] / 1024:.1f} MB before -> {rss_after['VmRSS'] / 1024:.1f} MB with all "
          f"connected: {per:.1f} KB per session (after malloc_trim: {per_trimmed:.1f} KB)  "
          f"target <= {MEMORY_TARGET_KB:g} KB  {run.verdict(per <= MEMORY_TARGET_KB)}")
    grown = sorted(((n, c - types_before.get(n, 0)) for n, c in types.items()), key=lambda g: -g[1])
    added = tracked - sum(types_before.values())
    print(f"  objects tracked by the cyclic collector: +{added:,} ({added / args.bots:.0f} per session); per "
          f"session: {', '.join(f'{n} {g / args.bots:.1f}' for n, g in grown[:10])}")
    if run.sim.pid:
        sim_after = rss_kb(run.sim.pid)
        print(f"  simulator process: {(sim_after - sim_rss_before) / args.bots:.1f} KB per connection "
              f"(not counted above)")
    else:
        print("  (includes the embedded simulator's side of every connection)")
    run.verdicts.append(f"memory per session {per:.1f} KB <= {MEMORY_TARGET_KB:g} KB: "
                        f"{run.verdict(per <= MEMORY_TARGET_KB)}")
    run.rss_connected = rss_after["VmRSS"]


def phase_outage(run: Run) -> Outage:
    """Phase 2: the simulator's network down for ``--outage`` seconds, then up; until all are
    connected again."""
    import gevent

    args, tracker = run.args, run.tracker
    print(f"\n2. outage of {args.outage:g} s, then recovery")
    mark = len(tracker.attempts)
    run.taps.mark()
    tracker.reasons.clear()
    tracker.min_connected_since_mark = tracker.connected
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    gevent.sleep(1.0)  # the measuring above blocks the hub; keep that stall out of phase 2's figures
    cpu2 = self_cpu()
    cut = time.monotonic()
    run.sim.outage()
    if args.garbage and args.outage > 6:
        gevent.sleep(args.outage / 2)
        census_from = len(tracker.attempts)
        census_start = time.monotonic()
        census = _garbage_census(2.0, lambda: len(tracker.attempts) - census_from)
        census_window = (census_start, time.monotonic())
        run.lag.excluded.append(census_window)
        run.gcs.excluded.append(census_window)
        print(f"  cyclic garbage census (its own collections are left out of the figures below): {census}")
        gevent.sleep(max(0.0, cut + args.outage - time.monotonic()))
    else:
        gevent.sleep(args.outage)
    recovered = time.monotonic()
    down_cpu = self_cpu() - cpu2
    run.sim.recover()
    back = tracker.wait_all_connected(max(120.0, 10 * MAX_DELAY + 2 * args.bots / args.rate))
    if profiler is not None:
        profiler.disable()
    up_cpu = self_cpu() - cpu2 - down_cpu
    end = back if back is not None else time.monotonic()
    return Outage(cut, recovered, back, end, down_cpu, up_cpu, sorted(tracker.attempts[mark:]), profiler)


def report_outage(run: Run, o: Outage) -> None:
    """Phase 2's figures and verdicts."""
    fixed_max, sliding_max, sliding_at, after = report_attempts(run, o)
    report_limiter(run, o)
    args, tracker, verdict = run.args, run.tracker, run.verdict
    rate_ok = fixed_max <= args.rate and sliding_max <= args.rate
    print(f"  most attempts in one second: {fixed_max} (fixed seconds), {sliding_max} (any 1 s window, at "
          f"+{sliding_at - o.cut:.2f} s)  target <= {args.rate:g}  {verdict(rate_ok)}")
    run.verdicts.append(f"attempts per second max {max(fixed_max, sliding_max)} <= {args.rate:g}: {verdict(rate_ok)}")
    target = RECOVERY_FACTOR * max(MAX_DELAY, args.bots / args.rate)
    if o.back is None:
        print(f"  NOT all connected again: {tracker.summary()}  target <= {target:.1f} s  MISS")
        if args.smoke:
            raise SmokeFailure(f"not all connected again after the outage: {tracker.summary()}")
        run.verdicts.append(f"recovery: not all connected, target <= {target:.1f} s: MISS")
    else:
        recovery = o.back - o.recovered
        last = max(after) - o.recovered if after else float("nan")
        print(f"  all connected again {recovery:.2f} s after recovery (last attempt at +{last:.2f} s)  "
              f"target <= {target:.1f} s  {verdict(recovery <= target)}")
        run.verdicts.append(f"recovery {recovery:.2f} s <= {target:.1f} s: {verdict(recovery <= target)}")
    failed = tracker.counts.get("failed", 0)
    run.verdicts.append(f"sessions failed: {failed}: {verdict(failed == 0)}")
    if o.profiler is not None:
        out = io.StringIO()
        pstats.Stats(o.profiler, stream=out).sort_stats("tottime").print_stats(30)
        print("\n  cProfile of phase 2 (tottime):\n" + out.getvalue())


def report_attempts(run: Run, o: Outage) -> tuple[int, int, float, list[float]]:
    """The attempts per second around the outage, CPU, hub lag and GC; returns the most attempts in a
    fixed second and in any 1 s window (and where), and the attempts after recovery."""
    args, tracker, lag = run.args, run.tracker, run.lag
    cut, recovered, back, times = o.cut, o.recovered, o.back, o.attempts
    during = [t for t in times if t < recovered]
    after = [t for t in times if t >= recovered]
    marks = {0: "outage", math.floor(recovered - cut): "recover"}
    if back is not None:
        marks.setdefault(math.floor(back - cut), "all connected")
    print("  connection attempts per second (seconds from the cut):")
    for line in histogram(times, cut, o.end, marks, args.rate):
        print(line)
    fixed = collections.Counter(math.floor(t - cut) for t in times)
    fixed_max = max(fixed.values(), default=0)
    sliding_max, sliding_at = max_in_window(times)
    print(f"  attempts: {len(during)} during the outage ({len(during) / args.outage:.0f}/s), {len(after)} "
          f"after recovery; by reason: {dict(tracker.reasons.most_common(4))}")
    print(f"  connected dropped to {tracker.min_connected_since_mark}; sessions now: {tracker.summary()}")
    print(f"  CPU {o.down_cpu:.1f} s during the outage, {o.up_cpu:.1f} s recovering; hub lag max "
          f"{lag.worst(cut, recovered) * 1000:.0f} ms (p99 {lag.p99(cut, recovered) * 1000:.0f} ms) during, "
          f"{lag.worst(recovered) * 1000:.0f} ms (p99 {lag.p99(recovered) * 1000:.0f} ms) after")
    print(f"  hub stalls >= 100 ms (+s from the cut: length): during: {lag.stalls(cut, cut, recovered) or 'none'}; "
          f"after: {lag.stalls(cut, recovered) or 'none'}")
    print(f"  gc: {run.gcs.summary(cut, cut)}")
    return fixed_max, sliding_max, sliding_at, after


def report_limiter(run: Run, o: Outage) -> None:
    """When the limiter handed out slots and admitted dials, and when sockets dialled, against the
    attempts; ``--dump`` writes them all."""
    cut, times = o.cut, o.attempts
    slots, admits, socket_dials = run.taps.since()
    # 1 ms narrower: the slots pass through a wall/monotonic clock conversion (microseconds of noise).
    slots_max, slots_at = max_in_window(slots, 0.999)
    late = _lateness(slots, times)
    print(f"  limiter slots granted: most in any 1 s window {slots_max} (at +{slots_at - cut:.2f} s); "
          f"dials after their slot (k-th dial vs k-th slot): median {late[0] * 1000:.0f} ms, "
          f"p99 {late[1] * 1000:.0f} ms, max {late[2] * 1000:.0f} ms")
    if run.args.dump:
        with open(run.args.dump, "w", encoding="utf-8") as fh:
            json.dump({"cut": cut, "recovered": o.recovered, "back": o.back, "dials": times, "slots": slots,
                       "admitted": admits, "wire": socket_dials,
                       "lag": [x for x in run.lag.samples if x[0] >= cut],
                       "gc": [p for p in run.gcs.pauses if p[1] >= cut]}, fh)
    if run.taps.original_admit is not None:
        admits_max, admits_at = max_in_window(admits)
        gap = _lateness(admits, times)
        print(f"  dials admitted at dial time (SessionDeps.admit_connect): most in any 1 s window {admits_max} "
              f"(at +{admits_at - cut:.2f} s); on_attempt after admission: median {gap[0] * 1000:.1f} ms, "
              f"max {gap[2] * 1000:.1f} ms")
    if socket_dials:
        wire_max, wire_at = max_in_window(socket_dials)
        print(f"  socket dials (the transport's reader greenlet starts its dial): most in any 1 s window "
              f"{wire_max} (at +{wire_at - cut:.2f} s)  [what the network sees; not the target's measure]")


def shutdown(run: Run) -> None:
    """Supervision stopped, for the record: how long until it returned and the last session ended."""
    stopping = time.monotonic()
    run.stop_sup()  # gives up after SHUTDOWN_TIMEOUT; sessions may still be stopping then
    returned = time.monotonic() - stopping
    left = _wait_sessions_gone(60.0)
    print(f"\n  Supervision.stop() returned after {returned:.2f} s (SHUTDOWN_TIMEOUT "
          f"{run.settings.shutdown_timeout:g} s); the last session ended {time.monotonic() - stopping:.2f} s after "
          f"the stop{f', {left} still alive' if left else ''}; load average {os.getloadavg()[0]:.2f}")


def _timed_transport(base: Any, record: array.array) -> Any:
    """The transport class, timing the moment each connection's socket dial starts (the simulator
    transport's reader greenlet), which is later than the session's attempt when the hub is busy."""
    if not hasattr(base, "_dial"):
        return base

    class Timed(base):  # type: ignore[misc, valid-type]
        def _dial(self, *args: Any, **kwargs: Any) -> Any:
            record.append(time.monotonic())
            return super()._dial(*args, **kwargs)

    Timed.__name__ = Timed.__qualname__ = f"Timed{base.__name__}"
    return Timed


def _garbage_census(seconds: float, attempts: Callable[[], int]) -> str:
    """Keep everything the collector finds unreachable for ``seconds`` (DEBUG_SAVEALL), then count it
    by type: which objects the hot path leaves in reference cycles."""
    import gevent

    gc.collect()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gevent.sleep(seconds)
        gc.collect()
    finally:
        gc.set_debug(0)
    found = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    total = len(gc.garbage)
    gc.garbage.clear()
    gc.collect()
    n = max(1, attempts())
    return (f"{total:,} objects in cycles over {seconds:g} s, {n} attempts ({total / n:.0f} per attempt): "
            + ", ".join(f"{name} {count / n:.1f}" for name, count in found.most_common(12)))


def _wait_sessions_gone(timeout: float) -> int:
    """Wait until no session actor is alive (so the pool is not closed under them); how many are left."""
    import gevent
    import pykka

    from actors.session import BotSession

    deadline = time.monotonic() + timeout
    while True:
        alive = len(pykka.ActorRegistry.get_by_class(BotSession))
        if not alive or time.monotonic() > deadline:
            return alive
        gevent.sleep(0.05)


def _type_counts() -> collections.Counter:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def _idle(seconds: float, bots: int, rss_start: int) -> None:
    """Stay idle with everything connected; print RSS growth and which object types grew."""
    import gevent

    gc.collect()
    cpu = time.thread_time()
    gc.collect()
    full = time.thread_time() - cpu
    gc.freeze()
    cpu = time.thread_time()
    gc.collect()
    frozen = time.thread_time() - cpu
    gc.unfreeze()
    print(f"  a full collection with all connected: {full * 1000:.0f} ms CPU; after gc.freeze(): "
          f"{frozen * 1000:.0f} ms")
    before = _type_counts()
    started = time.monotonic()
    step = max(5.0, seconds / 6)
    while time.monotonic() - started < seconds:
        gevent.sleep(min(step, seconds - (time.monotonic() - started)))
        gc.collect()
        rss = rss_kb()
        print(f"  idle +{time.monotonic() - started:5.0f} s: RSS {rss / 1024:.1f} MB "
              f"({(rss - rss_start) / bots:+.1f} KB per session since all connected)")
    after = _type_counts()
    grown = [(name, after[name] - before.get(name, 0)) for name in after]
    grown = sorted((g for g in grown if g[1] > 0), key=lambda g: -g[1])[:8]
    print(f"  object types that grew while idle: {', '.join(f'{n} +{g}' for n, g in grown) or 'none'}")


def _lateness(slots: list[float], dials: list[float]) -> tuple[float, float, float]:
    """Median, p99 and max of (k-th dial − k-th slot): how late dials run after the slot they got."""
    gaps = sorted(d - s for s, d in zip(slots, dials, strict=False))  # the shorter decides
    if not gaps:
        return 0.0, 0.0, 0.0
    return gaps[len(gaps) // 2], gaps[int(len(gaps) * 0.99)], gaps[-1]


def _nudge(pool: Any, channel: str, sup: Any, bots: int) -> None:
    """While some bots are unclaimed, NOTIFY the keeper (as the API does on a start) every 0.5 s."""
    import gevent

    while sup.deps.counters.get("sessions_started", 0) < bots:
        try:
            pool.query(None, "SELECT pg_notify(%s, %s)", (channel, "bench-nudge"))
        except Exception as exc:  # noqa: BLE001 - a nudge is best effort
            print(f"  nudge failed: {exc!r}")
        gevent.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bots", type=int, default=2000, help="sessions to run (default 2000)")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the network is down (default 30)")
    parser.add_argument("--rate", type=float, default=200.0, help="WA_CONNECT_RATE (default 200)")
    parser.add_argument("--simulator", choices=("process", "inprocess"), default="process",
                        help="run the simulator as its own process (default) or embedded in this one")
    parser.add_argument("--clients", type=int, default=20, help="neonize clients for phase 3 (default 20)")
    parser.add_argument("--skip-neonize", action="store_true", help="skip phase 3")
    parser.add_argument("--skip-sessions", action="store_true", help="skip phases 1 and 2")
    parser.add_argument("--no-nudge", action="store_true",
                        help="do not NOTIFY the lease keeper during start-up (claims then wait for lease rounds)")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="give up phase 1 after this (s)")
    parser.add_argument("--profile", action="store_true", help="cProfile phase 2 and print the top functions")
    parser.add_argument("--burst", type=int, default=0,
                        help="what-if: build the connect limiter with this burst bound (default: none, as shipped)")
    parser.add_argument("--no-greenlet-tree", action="store_true",
                        help="what-if: gevent.config.track_greenlet_tree = False (no spawning stacks kept)")
    parser.add_argument("--gc-freeze", action="store_true", help="what-if: gc.freeze() once all are connected")
    parser.add_argument("--idle", type=float, default=0.0,
                        help="after phase 1, stay idle this long and report RSS growth (default 0)")
    parser.add_argument("--garbage", action="store_true",
                        help="mid-outage, count by type the objects left in reference cycles for 2 s")
    parser.add_argument("--dump", help="write phase 2's dial, slot, hub-lag and gc times to this JSON file")
    parser.add_argument("--smoke", action="store_true",
                        help="a few seconds with tiny counts (20 bots, a 1 s outage, 2 neonize clients that never "
                             "dial; overrides --bots, --outage, --clients, --start-timeout): checks that every "
                             "phase runs through (all bots connect, reconnect after the outage; the simulator and "
                             "neonize child processes work), exits non-zero on any failure; the figures mean "
                             "nothing and the verdicts are not judged")
    parser.add_argument("--neonize-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-dial", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.neonize_child:
        neonize_child(args.clients, args.store_dir, dial=not args.no_dial)
        return 0
    if args.smoke:
        args.bots, args.outage, args.clients, args.start_timeout = 20, 1.0, 2, 60.0
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")

    verdicts: list[str] = []
    failed: list[str] = []  # what did not run (not figures): a non-zero exit
    if not args.skip_sessions:
        verdicts += run_sessions(args, Verdict(not args.smoke))
    if not args.skip_neonize:
        print(f"\n3. neonize clients (child process without gevent, {args.clients} clients)")
        # The smoke run never dials: with internet access a dial would reach WhatsApp's servers.
        steps = measure_neonize(args.clients, dial=not args.smoke)
        if steps is None:
            failed.append("the neonize child process failed")
        else:
            for line in report_neonize(steps, args.clients):
                print(line)
    if verdicts:
        print("\nsummary" + (" (smoke run: figures from tiny counts)" if args.smoke else "") + ":")
        for line in verdicts:
            print(f"  {line}")
    for line in failed:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
