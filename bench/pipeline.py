"""Benchmark: the message pipeline end to end — inbound stored, answered by the AI, delivered.

Run: ``python bench/pipeline.py [--bots 50] [--customers 20] [--rates 100,300,1000] [--seconds 15]
[--closed 20] [--closed-customers N] [--drain 20] [--settle 60] [--simulator process|inprocess]
[--publish db|memory] [--receipts] [--pool-size 20] [--py-spy PHASE [--py-spy-dir DIR]]
[--what-if async-commit,lean-ai,no-events] [--no-breakdown] [--cpus split|shared]``; ``--smoke`` for a
run of a few seconds that only checks it works (the test suite runs it).

One process, gevent patched first, psycopg2 made cooperative (as ``run.py``); the embedded PostgreSQL
in a temporary directory (or ``DATABASE_URL``/``DATABASE_OWNER_URL`` when set), migrated; the real
supervision root (``actors.supervision.Supervision``: lease keeper, one supervised ``BotSession`` per
bot, each with its ``BotPipeline``, the shared ``AiClient`` from ``pipeline_deps``) over the simulator
transport, with the production event publishers (sessions: ``actors.event_bus.make_publisher``;
pipelines: the batched ``make_notice_publisher``, so every ``message.in``/``message.out`` is an
``events`` row, as under ``run.py supervisor``; ``--publish memory`` only counts them). No event bus
(no SSE subscribers) runs in this process.

The "outside world" — the simulator, a zero-latency OpenAI-compatible server and the customers —
runs by default in a child process (``--simulator process``): it drives customers through the
simulator's Python API (``Simulator.inbound``) and sees the answers where they land, in the
simulator's outbox (a subclass of ``simulator.server.Simulator`` is told of each new outbox record).
That leaves the bots' process's one hub (one core) to the bots, as in production where WhatsApp and
the AI provider are elsewhere, keeps the driver's pacing independent of how busy the bots' hub is,
and takes both timestamps of a latency from one clock. ``--simulator inprocess`` runs everything on
one hub (all of it then competes for one core).

Set-up: ``--bots`` bots of one tenant, pre-paired (the simulator's credentials and each bot's device
store are written to disk, as in ``bench/sessions.py``), AI on for every bot (``{"enabled": true,
"system_prompt": ..., "history": 10}``, no rules), AI_DEBOUNCE=0, AI_MAX_RETRIES=0, AI_TIMEOUT=10,
BOT_SEND_RATE=0 (no send rate limit), WA_LEASE_TTL=120 (lease rounds every 20 s), pool size
``--pool-size``; ``--customers`` customers per bot; receipts off unless ``--receipts``. The AI server
is a raw keep-alive HTTP/1.1 server on a gevent ``StreamServer`` answering every chat completion at
once with ``"a <tokens>"``, the ``q<seq>`` tokens of the last user message, so each delivered answer
names the inbound messages it answers (several, when the pipeline gathered a customer's messages
into one AI call).

Phases, each reported on its own; after each, the bench waits (up to ``--settle`` s) until the bots'
process has sent no statement for a second, so a phase that fell behind does not spill into the next,
and then (with the owner's URL, as with the embedded server) runs ``VACUUM (ANALYZE)`` on the
pipeline's tables, as pgbench vacuums before a run: the cleanup a phase leaves (two updated rows per
message) is then not done by autovacuum during the next phase, on the CPU that phase is measured on,
and the planner has statistics for the tables' current size:

* warm-up: 100 messages/s for 5 s (creates the contacts, opens keep-alive connections).
* closed loop for ``--closed`` s: ``--closed-customers`` customers (default 2 per bot) each send,
  wait for the answer in the simulator's outbox, and send again at once: the capacity.
* open loop at each of ``--rates`` for ``--seconds``: messages at evenly spaced times, round robin
  over all bot/customer pairs in a shuffled order (1,000 pairs at 1,000/s: one message per customer
  per second) whatever the answers do; then up to ``--drain`` s for the rest.

Measured per phase:

* throughput: inbound messages answered end to end (stored, answered, the answer recorded in the
  simulator's outbox) per second: open loop: answered / (last answer − first send); closed loop:
  answers recorded within the window / window.
* latency: per inbound message, the simulator's outbox record ``ts`` of the answer that covers it
  minus the time the driver called ``Simulator.inbound`` (same process, same clock): p50, p90, p99,
  max. Messages not answered within the drain are counted, not in the percentiles.
* database round trips per message, client side: each statement string psycopg2 sends and waits for
  (one call of its wait callback, which the bench wraps; ``BEGIN; set_config(); stmt`` sent as one
  string is one), from the bots' process (the bench's statistics connection excluded), divided by
  the phase's inbound messages; broken down by the calling function in ``db/`` (``[commit]``: the
  COMMIT of that function's transaction), with the mean time from sending to the answer (which
  includes waiting for the hub). Server side, as a cross-check: the delta of
  ``pg_stat_database.xact_commit + xact_rollback`` per message (transactions, not statements; the
  bench waits 1.5 s after a phase for the backends to flush their statistics).
* CPU per message: the bots' process, PostgreSQL (app backends, WAL writer, the rest), the outside
  world's process; the hub lag (a 50 ms sleeper's lateness) of the bots' process; pool waits; the
  bots' main thread's time on a CPU and time runnable but waiting for a CPU, per second (the two
  summing to ~1,000 ms means that thread is CPU-bound; the second is what the other processes on
  the machine take from it).

CPUs (``--cpus``): by default the bots' process runs on one CPU and PostgreSQL and the outside world
on the others (``split_cpus``), as in production, where the database, WhatsApp and the AI provider
are other machines. The bots' process is one hub thread; sharing every CPU with PostgreSQL's backends,
which wake for each statement, it was runnable but waiting for a CPU ~18 % of each second at
1,000/s. ``--cpus shared`` runs all three on all CPUs.

Targets: >= 1,000 inbound messages/s end to end with p99 <= 100 ms, checked at the open-loop rate
of 1,000/s (achieved >= 98 % of the offered rate, everything answered, p99 <= 100 ms); the closed
loop's throughput is reported as the capacity. Prints PASS/MISS and exits 0 whatever the figures (a
benchmark, not a test), non-zero when something fails to run. ``--smoke`` (2 bots, 1 s phases) fails
when a phase leaves a message unanswered and prints its figures without judging them.

Diagnostics: ``--py-spy PHASE`` (``closed`` or an open-loop rate such as ``1000``) records the bots'
process and the outside world's with py-spy (optional, not a dependency: ``pip install py-spy``;
skipped with a note without it; 100 Hz) during that phase and prints self and
inclusive time by function. ``--what-if`` runs experiments that are not the shipped code:
``async-commit`` (``ALTER DATABASE ... SET synchronous_commit = off``), ``lean-ai`` (the pipelines'
AI client swapped for a plain keep-alive HTTP client in this file: same request and answer, one
attempt, no breaker), ``no-events`` (= ``--publish memory``), ``outbox-index`` (``CREATE INDEX ... ON
messages (outbox_id)``, which ``mark_sent``'s update of the outgoing message row lacks).
Results and how to run it: ``docs/performance.md`` ("Pipeline").
"""

import sys

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

# ``python bench/pipeline.py`` puts bench/ on sys.path, not the project root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from db.green import gevent_wait_callback, make_psycopg2_green  # noqa: E402

make_psycopg2_green()

import argparse  # noqa: E402
import collections  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from bench._harness import (  # noqa: E402
    Bench,
    Child,
    Database,
    HubLag,
    Once,
    Root,
    Verdict,
    about,
    children,
    collapsed_stacks,
    nearest_rank,
    print_log_tails,
    proc_cpu,
    py_spy,
    seed_paired_bots,
    self_cpu,
    simulator_settings,
    smoke_check,
)

TARGET_RATE = 1000.0
TARGET_P99 = 0.100
KEEP_UP = 0.98  # achieved / offered that counts as keeping up
WARMUP_RATE, WARMUP_SECONDS = 100.0, 5.0
AI_CONFIG = {"enabled": True, "system_prompt": "You are the shop's assistant. Answer briefly.", "history": 10,
             "temperature": 0.2}
CHILD_PREFIX = "@@"


# -- the outside world: a zero-latency OpenAI-compatible server -------------------------------------


def _content_length(rfile: Any) -> int:
    """Read an HTTP message's header lines; its Content-Length (0 without one)."""
    length = 0
    while True:
        header = rfile.readline(65537)
        if not header or header in (b"\r\n", b"\n"):
            return length
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())


class FastAi:
    """``POST .../chat/completions`` answered at once, HTTP/1.1 keep-alive, on a gevent StreamServer.
    The answer is ``"a " + the q-tokens of the last user message``."""

    _HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
             b"Content-Length: %d\r\n\r\n")

    def __init__(self) -> None:
        from gevent.server import StreamServer

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        self.calls = 0
        self.bad = 0
        self._server = StreamServer(listener, self._handle)
        self._server.start()
        self.base_url = f"http://127.0.0.1:{self._server.server_port}/v1"
        created = int(time.time())
        self._prefix = (f'{{"id":"chatcmpl-bench","object":"chat.completion","created":{created},'
                        '"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":').encode()
        self._suffix = (b'},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,'
                        b'"total_tokens":2}}')

    def _answer(self, body: bytes) -> bytes:
        try:
            messages = json.loads(body)["messages"]
            last = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
            tokens = [t for t in last.split() if t.startswith("q")]
        except (ValueError, KeyError, TypeError, StopIteration):
            self.bad += 1
            tokens = []
        return self._prefix + json.dumps("a " + " ".join(tokens)).encode() + self._suffix

    def _handle(self, sock: Any, _peer: Any) -> None:
        rfile = sock.makefile("rb")
        try:
            while True:
                line = rfile.readline(65537)
                if not line:
                    return
                length = _content_length(rfile)
                body = rfile.read(length) if length else b""
                self.calls += 1
                payload = self._answer(body)
                sock.sendall(self._HEAD % len(payload) + payload)
        except (OSError, ValueError):
            pass
        finally:
            rfile.close()
            sock.close()

    def stop(self) -> None:
        self._server.stop(timeout=1)


# -- the outside world: the simulator, tapped, and the customers ------------------------------------


def tapped_simulator(state_file: str, receipts: bool, tap: Callable[[str, dict], None]) -> Any:
    """The simulator, telling ``tap(bot_id, record)`` about each new message a bot sends (a resend of
    the same id is not new) as the network records it."""
    from simulator.server import Simulator

    class Tapped(Simulator):
        def _record_outbound(self, bot: Any, frame: dict) -> dict:
            result = super()._record_outbound(bot, frame)
            if result.get("dup") is False:
                tap(bot.bot_id, bot.outbox[frame["id"]])
            return result

    sim = Tapped("127.0.0.1", 0, False, qr_rotate=20, receipt_delay=(0.0, 0.0) if receipts else None,
                 state_file=state_file)
    return sim.start()


class Driver:
    """The customers: sends ``q<seq>`` texts through ``Simulator.inbound`` and matches the answers the
    simulator records (``"a q<seq> ..."``) back to the inbound messages they answer."""

    def __init__(self, sim: Any, bot_ids: list[str], customers: int, seed: int = 7) -> None:
        self.sim = sim
        self.pairs = [(bot_id, f"1999{b:04d}{c:04d}") for b, bot_id in enumerate(bot_ids) for c in range(customers)]
        self.rng = random.Random(seed)
        self.seq = 0
        self.pending: dict[int, tuple[float, int]] = {}  # seq -> (sent at, pair index)
        self.done: list[tuple[float, float]] = []  # (sent at, answer recorded at) of this phase
        self.waiters: dict[int, gevent.event.Event] = {}
        self.answers = 0
        self.batched = 0  # answers covering more than one inbound message
        self.unmatched = 0  # answers naming no pending message
        self.sent = 0
        self.send_errors = 0

    def on_record(self, bot_id: str, record: dict) -> None:
        self.answers += 1
        at = record["ts"]
        covered = 0
        for token in record["text"].split()[1:]:
            if not token.startswith("q"):
                continue
            item = self.pending.pop(int(token[1:]), None)
            if item is None:
                continue
            sent, index = item
            self.done.append((sent, at))
            covered += 1
            waiter = self.waiters.get(index)
            if waiter is not None:
                waiter.set()
        if covered == 0:
            self.unmatched += 1
        elif covered > 1:
            self.batched += 1

    def send(self, index: int) -> None:
        self.seq += 1
        seq = self.seq
        bot_id, customer = self.pairs[index]
        sent = time.time()
        self.pending[seq] = (sent, index)
        try:
            self.sim.inbound(bot_id, customer, f"q{seq}")
            self.sent += 1
        except Exception:  # noqa: BLE001 - counted; the bench goes on
            self.pending.pop(seq, None)
            self.send_errors += 1

    def phase(self, cmd: dict) -> dict:
        kind, seconds, drain = cmd["kind"], float(cmd["seconds"]), float(cmd.get("drain", 30.0))
        self.done = []
        answers0, batched0, unmatched0, sent0, errors0 = (self.answers, self.batched, self.unmatched, self.sent,
                                                         self.send_errors)
        leftover = len(self.pending)
        start = time.time()
        if kind == "open":
            self._open(float(cmd["rate"]), seconds, start)
        else:
            self._closed(seconds, start, drain, int(cmd.get("customers") or len(self.pairs)))
        sending_ended = time.time()
        while self.pending and time.time() < sending_ended + drain:
            gevent.sleep(0.01)
        sent = self.sent - sent0
        latencies = sorted(done - sent_at for sent_at, done in self.done)
        first = min((s for s, _ in self.done), default=start)
        last = max((d for _, d in self.done), default=start)
        if kind == "open":
            throughput = len(self.done) / (last - first) if last > first else 0.0
        else:
            throughput = sum(1 for _, d in self.done if d <= start + seconds) / seconds
        result = {
            "kind": kind, "rate": cmd.get("rate"), "seconds": seconds, "sent": sent,
            "offered": sent / (sending_ended - start) if sending_ended > start else 0.0,
            "answered": len(self.done), "unanswered": len(self.pending), "leftover_before": leftover,
            "throughput": throughput, "p50": nearest_rank(latencies, 0.50),
            "p90": nearest_rank(latencies, 0.90), "p99": nearest_rank(latencies, 0.99),
            "max": latencies[-1] if latencies else float("nan"),
            "mean": sum(latencies) / len(latencies) if latencies else float("nan"),
            "answers": self.answers - answers0, "batched": self.batched - batched0,
            "unmatched": self.unmatched - unmatched0, "send_errors": self.send_errors - errors0,
            "drain": max(0.0, last - sending_ended), "wall": time.time() - start,
        }
        self.pending.clear()  # whatever did not come back within the drain is not waited for again
        return result

    def _open(self, rate: float, seconds: float, start: float) -> None:
        order = list(range(len(self.pairs)))
        self.rng.shuffle(order)
        total = int(rate * seconds)
        k = 0
        while k < total:
            due = min(total, int((time.time() - start) * rate) + 1)
            while k < due:
                self.send(order[k % len(order)])
                k += 1
            wait = start + k / rate - time.time()
            if wait > 0:
                gevent.sleep(wait)
            else:
                gevent.sleep(0)  # let the answers in even when behind

    def _closed(self, seconds: float, start: float, drain: float, customers: int) -> None:
        deadline = start + seconds
        order = list(range(len(self.pairs)))
        self.rng.shuffle(order)

        def customer(index: int) -> None:
            waiter = self.waiters[index] = gevent.event.Event()
            try:
                while time.time() < deadline:
                    waiter.clear()
                    self.send(index)
                    if not waiter.wait(timeout=max(0.0, deadline - time.time()) + drain):
                        return
            finally:
                self.waiters.pop(index, None)

        gevent.joinall([gevent.spawn(customer, i) for i in order[:customers]])


class OutsideWorld:
    """Simulator, AI server and driver in this process (``--simulator inprocess``)."""

    kind = "in this process (one hub for everything)"

    def __init__(self, state_file: str, bot_ids: list[str], customers: int, receipts: bool) -> None:
        self.ai = FastAi()
        self.driver: Driver | None = None
        self.sim = tapped_simulator(state_file, receipts, lambda bot, record: self.driver.on_record(bot, record))
        self.driver = Driver(self.sim, bot_ids, customers)
        self.sim_address = self.sim.address
        self.ai_url = self.ai.base_url
        self.pid = None

    def ready(self) -> None:
        """Serving already (the child's ``ready`` waits for its first line)."""

    def phase(self, cmd: dict) -> dict:
        result = self.driver.phase(cmd)
        result["ai_calls"] = self.ai.calls
        return result

    def stop(self) -> int:
        self.sim.stop()
        self.ai.stop()
        return 0


class ChildWorld(Child):
    """Simulator, AI server and driver in a child process (``--simulator process``); one JSON line
    each way per command. Its stderr goes to ``child.log`` in the run's directory."""

    kind = "its own process (simulator + AI server + customers)"

    def __init__(self, work: str, state_file: str, bot_ids: list[str], customers: int, receipts: bool) -> None:
        config_path = os.path.join(work, "child.json")
        with open(config_path, "w", encoding="utf-8") as fh:
            json.dump({"state_file": state_file, "bot_ids": bot_ids, "customers": customers, "receipts": receipts}, fh)
        super().__init__("the outside world's process", [sys.executable, os.path.abspath(__file__), "--child",
                                                         config_path],
                         log=os.path.join(work, "child.log"), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.sim_address = self.ai_url = ""

    def ready(self) -> None:
        """Until the child says where its simulator and AI server listen."""
        hello = self._read(timeout=60)
        self.sim_address, self.ai_url = hello["sim"], hello["ai"]

    def _read(self, timeout: float) -> dict:
        with gevent.Timeout(timeout, RuntimeError(f"the child did not answer in {timeout:g} s; see {self.log.name}")):
            while True:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"the child exited ({self.proc.poll()}); see {self.log.name}")
                text = line.decode().strip()
                if text.startswith(CHILD_PREFIX):
                    return json.loads(text[len(CHILD_PREFIX):])

    def phase(self, cmd: dict) -> dict:
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        return self._read(timeout=float(cmd["seconds"]) + float(cmd.get("drain", 30)) + 120)

    def stop(self, timeout: float = 10.0, sig: int | None = None) -> int:
        """Asks the child to end (a kill after ``timeout``); its exit code."""
        if self.proc.poll() is None and sig is None:
            try:
                self.proc.stdin.write(b'{"kind": "stop"}\n')
                self.proc.stdin.flush()
            except OSError:  # gone already: the wait below reads its exit code
                pass
        return super().stop(timeout, sig)


def child_main(config_path: str) -> int:
    from gevent.fileobject import FileObjectPosix

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    with open(config_path, encoding="utf-8") as fh:
        config = json.load(fh)
    world = OutsideWorld(config["state_file"], config["bot_ids"], config["customers"], config["receipts"])
    out = sys.stdout

    def say(data: dict) -> None:
        out.write(CHILD_PREFIX + json.dumps(data) + "\n")
        out.flush()

    say({"sim": world.sim_address, "ai": world.ai_url, "pid": os.getpid()})
    commands = FileObjectPosix(sys.stdin.fileno(), "rb")  # cooperative: the simulator keeps serving
    for line in commands:
        cmd = json.loads(line)
        if cmd["kind"] == "stop":
            break
        say(world.phase(cmd))
    world.stop()
    return 0


# -- measuring in the bots' process ---------------------------------------------------------------


class RoundTrips:
    """Counts psycopg2 wait-callback calls (one per statement string sent and answered) and, with
    ``breakdown``, attributes each to the calling function in ``db/`` (walking up the stack)."""

    def __init__(self, breakdown: bool) -> None:
        from psycopg2 import extensions

        self.total = 0
        self.by_caller: collections.Counter = collections.Counter()
        self.waited: collections.Counter = collections.Counter()  # seconds from sent to answered, by caller
        self.breakdown = breakdown
        self.excluded: set[int] = set()  # id() of connections not counted (the bench's own)
        self._db_dir = os.path.join(ROOT, "db") + os.sep
        self._pool_file = os.path.join(ROOT, "actors", "pool.py")
        extensions.set_wait_callback(self._callback)

    def _callback(self, conn: Any, timeout: Any = None) -> None:
        if id(conn) in self.excluded:
            return gevent_wait_callback(conn, timeout)
        self.total += 1
        if not self.breakdown:
            return gevent_wait_callback(conn, timeout)
        caller = self._caller()
        self.by_caller[caller] += 1
        started = time.perf_counter()
        try:
            return gevent_wait_callback(conn, timeout)
        finally:
            self.waited[caller] += time.perf_counter() - started

    def _caller(self) -> str:
        frame = sys._getframe(2)
        commit = False
        fallback = None
        depth = 0
        while frame is not None and depth < 25:
            code = frame.f_code
            filename = code.co_filename
            if filename == self._pool_file:
                if code.co_name == "__exit__":
                    commit = True
            elif filename.startswith(self._db_dir):
                name = f"{os.path.basename(filename)[:-3]}.{code.co_name}"
                return name + (" [commit]" if commit else "")
            elif fallback is None and filename.startswith(ROOT) and not filename.endswith("retry.py"):
                fallback = f"{os.path.relpath(filename, ROOT)}:{code.co_name}"
            frame = frame.f_back
            depth += 1
        return (fallback or "other") + (" [commit]" if commit else "")


class WarningCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: collections.Counter = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        error = getattr(record, "error", None)
        detail = f" ({str(error)[:100]})" if error else ""
        self.counts[f"{record.levelname} {record.name}: {record.getMessage()[:80]}{detail}"] += 1


def main_thread_sched() -> tuple[float, float]:
    """The bots' main thread (the hub's): seconds on a CPU and seconds runnable but waiting for one
    (``/proc/self/task/<tid>/schedstat``); (0, 0) where the kernel does not keep them."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/schedstat") as fh:  # the main thread: its id is the pid
            on_cpu, waiting, _ = fh.read().split()
        return int(on_cpu) / 1e9, int(waiting) / 1e9
    except (OSError, ValueError, TypeError):
        return 0.0, 0.0


def _tasks(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def split_cpus(postmaster: int | None, child: int | None) -> str:
    """The bots' process on a CPU of its own; PostgreSQL (the postmaster, its processes, and the
    backends it forks from now on) and the outside world's process on the others — as in production,
    where the database, WhatsApp and the AI provider are other machines. Sharing, the three crowd out
    the hub's single thread (see ``main_thread_sched``). Returns what was done, for the report."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return "CPUs shared (only one CPU)"
    mine, others = {allowed[0]}, set(allowed[1:])
    for tid in _tasks(os.getpid()):  # threads started later inherit from the main thread
        os.sched_setaffinity(tid, mine)
    moved = []
    if postmaster is not None:
        for pid in [postmaster, *children(postmaster)]:
            for tid in _tasks(pid):
                os.sched_setaffinity(tid, others)
        moved.append("PostgreSQL")
    if child is not None:
        for tid in _tasks(child):
            os.sched_setaffinity(tid, others)
        moved.append("the outside world")
    where = ", ".join(str(c) for c in sorted(others))
    return (f"CPUs split: the bots' process on CPU {allowed[0]}, {' and '.join(moved) or 'nothing else'} on CPU "
            f"{where}" + ("" if postmaster is not None else " (DATABASE_URL: PostgreSQL not moved)"))


def postgres_cpu(postmaster: int | None) -> collections.Counter:
    """CPU seconds of the postmaster and its children now alive, by kind: the app's backends, the WAL
    writer, everything else (checkpointer, autovacuum, the bench's statistics connection...)."""
    cpu: collections.Counter = collections.Counter()
    if postmaster is None:
        return cpu
    from db import embedded

    cpu["other"] += proc_cpu(postmaster)
    for pid in children(postmaster):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                title = fh.read().decode(errors="replace")
        except OSError:
            continue
        kind = "backends" if embedded.APP_ROLE in title else "walwriter" if "walwriter" in title else "other"
        cpu[kind] += proc_cpu(pid)
    return cpu


class Publisher:
    """The ``publish`` sink: counts events by type, tracks bot states, then hands on (to the database,
    as production does, or nowhere)."""

    def __init__(self, forward: Callable[..., Any] | None) -> None:
        self.forward = forward
        self.counts: collections.Counter = collections.Counter()
        self.states: dict[str, str] = {}
        self.changed = gevent.event.Event()

    def publish(self, tenant_id: str, bot_id: str | None, event_type: str, payload: dict) -> Any:
        self.counts[event_type] += 1
        if event_type == "bot.state" and bot_id is not None:
            self.states[bot_id] = payload.get("state")
            self.changed.set()
        if self.forward is not None:
            return self.forward(tenant_id, bot_id, event_type, payload)
        return None

    def counting(self, forward: Callable[..., Any] | None) -> Callable[..., None]:
        """The pipelines' notice publisher, counted here too."""

        def publish(tenant_id: str, bot_id: str | None, event_type: str, payload: dict) -> None:
            self.counts[event_type] += 1
            if forward is not None:
                forward(tenant_id, bot_id, event_type, payload)

        return publish

    def connected(self, bot_ids: list[str]) -> int:
        return sum(1 for b in bot_ids if self.states.get(b) == "connected")


class Stats:
    """Server-side figures over a connection of the bench's own (not counted as a round trip)."""

    def __init__(self, url: str, rts: RoundTrips) -> None:
        import psycopg2

        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True
        rts.excluded.add(id(self.conn))

    def xacts(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
            return int(cur.fetchone()[0])

    def settings(self) -> str:
        with self.conn.cursor() as cur:
            cur.execute("SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit',"
                        " 'shared_buffers', 'max_connections', 'wal_level') ORDER BY name")
            return ", ".join(f"{n}={s}" for n, s in cur.fetchall())

    def close(self) -> None:
        self.conn.close()


def settle(rts: RoundTrips, limit: float) -> None:
    """Wait until the bots' process has sent no statement for a second (a phase that fell behind
    leaves work queued in the pipelines), so the next phase starts from quiet; at most ``limit`` s."""
    started = time.monotonic()
    last, quiet_since = rts.total, time.monotonic()
    while time.monotonic() - started < limit:
        gevent.sleep(0.25)
        if rts.total != last:
            last, quiet_since = rts.total, time.monotonic()
        elif time.monotonic() - quiet_since >= 1.0:
            break
    waited = time.monotonic() - started
    if waited > 2.0:
        print(f"  (the bots' process went quiet {waited:.1f} s after the phase's report"
              f"{'; still busy, going on' if waited >= limit else ''})\n")


def set_async_commit(superuser_url: str) -> None:
    """What-if: commits do not wait for the WAL flush (``synchronous_commit = off`` for the database)."""
    import psycopg2

    conn = psycopg2.connect(superuser_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("ALTER DATABASE wabot SET synchronous_commit = off")
    finally:
        conn.close()


def vacuum_between_phases(owner_url: str) -> None:
    """VACUUM (ANALYZE) the pipeline's tables, as pgbench does before a run: the cleanup a phase left
    behind (two updated rows per message, the events) is then not done by autovacuum during the next
    phase, on the CPU the next phase is measured on."""
    import psycopg2

    started = time.monotonic()
    conn = psycopg2.connect(owner_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM (ANALYZE) messages, outbox, events, contacts")
    finally:
        conn.close()
    print(f"  (vacuumed the pipeline's tables in {time.monotonic() - started:.1f} s)\n")


def add_outbox_index(owner_url: str) -> None:
    """What-if: an index for ``mark_sent``'s ``UPDATE messages ... WHERE outbox_id IN (...)``, which
    otherwise reads every message row of the tenant for each message sent."""
    import psycopg2

    conn = psycopg2.connect(owner_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE INDEX IF NOT EXISTS bench_messages_outbox_idx ON messages (outbox_id)"
                        " WHERE outbox_id IS NOT NULL")
    finally:
        conn.close()


class LeanAi:
    """What-if: the same chat-completions request and answer as ``core.ai.AiClient`` (one attempt, a
    whole-attempt timeout), over a plain HTTP/1.1 keep-alive connection pool on gevent sockets, without
    the openai SDK, httpx and httpcore. No retries or breaker: this only prices the client."""

    enabled = True

    def __init__(self, base_url: str, api_key: str, model: str, timeout: float) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(base_url)
        self.address = (parts.hostname, parts.port or 80)
        self.path = parts.path.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = timeout
        self._head = (f"POST {self.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {api_key}\r\n"
                      "Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: %d\r\n\r\n")
        self._idle: list[tuple[Any, Any]] = []

    def breaker_state(self) -> str:
        return "closed"

    def reply(self, messages: list, model: str | None = None, temperature: float | None = 0.7) -> str:
        payload: dict[str, Any] = {"model": model or self.model, "messages": list(messages)}
        if temperature is not None:
            payload["temperature"] = temperature
        body = json.dumps(payload).encode()
        conn = self._idle.pop() if self._idle else None
        with gevent.Timeout(self.timeout):
            if conn is None:
                sock = socket.create_connection(self.address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = (sock, sock.makefile("rb"))
            sock, rfile = conn
            try:
                sock.sendall((self._head % len(body)).encode() + body)
                status = rfile.readline(65537).split(None, 2)
                length = _content_length(rfile)
                data = rfile.read(length)
            except BaseException:
                rfile.close()
                sock.close()
                raise
        self._idle.append(conn)
        if len(status) < 2 or status[1] != b"200":
            raise RuntimeError(f"AI answered {status[1:2]}")
        return json.loads(data)["choices"][0]["message"]["content"].strip()


# -- py-spy -----------------------------------------------------------------------------------------


def start_py_spy(pid: int, seconds: float, out: str) -> subprocess.Popen | None:
    """py-spy recording ``pid`` for ``seconds`` at 100 Hz (None, with a note, without py-spy)."""
    spy = py_spy(pid, out, "-d", str(max(1, int(seconds))), "-r", "100")
    if spy is None:
        print("  (py-spy not found)")
    return spy


def summarize_py_spy(path: str, title: str, top: int = 25) -> None:
    """Self time (leaf frame) and inclusive time by function from py-spy's collapsed stacks."""
    try:
        total, own, inclusive = collapsed_stacks(path, _frame_name)
    except OSError:
        print(f"  {title}: no py-spy output")
        return
    if not total:
        print(f"  {title}: no samples")
        return
    print(f"\n  py-spy, {title}: {total} samples; self time (leaf function):")
    for name, n in own.most_common(top):
        print(f"    {100 * n / total:5.1f}%  {name}")
    print(f"  inclusive time (function on the stack), top {top + 15}:")
    for name, n in inclusive.most_common(top + 15):
        print(f"    {100 * n / total:5.1f}%  {name}")


def _frame_name(frame: str) -> str:
    # "function (path/file.py:123)" -> "function (path/file.py)"
    head, _, rest = frame.partition(" (")
    where = rest.rstrip(")").rsplit(":", 1)[0]
    return f"{head} ({where})" if where else head


# -- the run ---------------------------------------------------------------------------------------

WHAT_IFS = ("async-commit", "lean-ai", "no-events", "outbox-index")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options; ``--smoke``'s tiny counts applied. Adds ``rate_list``, ``experiments`` (the
    ``--what-if`` set), ``warmup_rate``, ``warmup_seconds``, ``idle_seconds``; ``closed_customers``
    resolved (2 per bot by default)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bots", type=int, default=50)
    parser.add_argument("--customers", type=int, default=20, help="customers per bot (default 20)")
    parser.add_argument("--rates", default="100,300,1000", help="open-loop rates, messages/s (default 100,300,1000)")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per open-loop phase (default 15)")
    parser.add_argument("--closed", type=float, default=20.0, help="seconds of the closed loop; 0 skips it")
    parser.add_argument("--closed-customers", type=int, default=0,
                        help="customers in the closed loop (default 2 per bot)")
    parser.add_argument("--drain", type=float, default=20.0,
                        help="seconds to wait for answers after a phase (default 20)")
    parser.add_argument("--simulator", choices=("process", "inprocess"), default="process")
    parser.add_argument("--publish", choices=("db", "memory"), default="db",
                        help="events to the database as in production (default) or only counted")
    parser.add_argument("--receipts", action="store_true", help="the simulator sends delivered/read receipts")
    parser.add_argument("--pool-size", type=int, default=20, help="DATABASE_MAX_CONNECTIONS (default 20)")
    parser.add_argument("--py-spy", default="",
                        help="phase to profile with py-spy: 'closed' or an open-loop rate (optional: py-spy is not "
                             "a dependency, `pip install py-spy`; without it the profile is skipped with a note)")
    parser.add_argument("--py-spy-dir", default="", help="keep py-spy's raw output here (default: discarded)")
    parser.add_argument("--no-breakdown", action="store_true", help="count round trips without attributing them")
    parser.add_argument("--what-if", default="",
                        help="experiments, not the shipped code (comma-separated): async-commit (the database's "
                             "synchronous_commit off), lean-ai (a plain keep-alive HTTP client instead of the "
                             "openai SDK), no-events (= --publish memory), outbox-index (an index on "
                             "messages.outbox_id)")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="after a phase, wait up to this long for the bots' process to go quiet (default 60)")
    parser.add_argument("--cpus", choices=("split", "shared"), default="split",
                        help="split (default): the bots' process on one CPU, PostgreSQL and the outside world "
                             "on the others, as on separate machines; shared: all on all CPUs")
    parser.add_argument("--smoke", action="store_true",
                        help="a few seconds with tiny counts (2 bots x 2 customers; warm-up, closed loop and one "
                             "open loop at 20/s, 1 s each; overrides --bots, --customers, --rates, --seconds, "
                             "--closed, --closed-customers, --drain, --settle): checks that every phase runs and "
                             "every message is answered end to end, exits non-zero on any failure; the figures "
                             "mean nothing and the targets are not judged")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.warmup_rate, args.warmup_seconds, args.idle_seconds = WARMUP_RATE, WARMUP_SECONDS, 3.0
    if args.smoke:
        args.bots, args.customers, args.rates, args.seconds = 2, 2, "20", 1.0
        args.closed, args.closed_customers, args.drain, args.settle = 1.0, 2, 15.0, 5.0
        args.warmup_rate, args.warmup_seconds, args.idle_seconds = 20.0, 1.0, 1.0
    args.rate_list = [float(r) for r in args.rates.split(",") if r.strip()]
    args.experiments = {w.strip() for w in args.what_if.split(",") if w.strip()}
    unknown = args.experiments - set(WHAT_IFS)
    if unknown:
        parser.error(f"unknown --what-if: {', '.join(sorted(unknown))}")
    if "no-events" in args.experiments:
        args.publish = "memory"
    args.closed_customers = args.closed_customers or 2 * args.bots
    return args


def count_warnings() -> WarningCounter:
    """Log warnings counted (and reported per phase), errors printed."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")
    warnings = WarningCounter()
    logging.getLogger().addHandler(warnings)
    logging.getLogger().setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if handler is not warnings:
            handler.setLevel(logging.ERROR)
    return warnings


@dataclasses.dataclass
class Run:
    """What the phases share."""

    args: argparse.Namespace
    bench: Bench
    db: Database
    pool: Any
    world: "ChildWorld | OutsideWorld"
    stop_world: Once
    rts: RoundTrips
    stats: Stats
    publisher: Publisher
    warnings: WarningCounter
    metrics: Any
    settings: Any
    bot_ids: list[str]
    postmaster: int | None
    lag: HubLag | None = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when the output goes to a file
    warnings = count_warnings()
    with Bench("bench-pipeline-") as bench:
        bench.on_failure(lambda: print_log_tails(bench.work))  # the outside world's log, before it goes
        run = start(bench, args, warnings)
        start_supervision(run)
        idle_baseline(run)
        phases = plan(args)
        results = run_phases(run, phases)
        summarize(args, phases, results)
        code = run.stop_world()
        if code:
            raise RuntimeError(f"the outside world's process exited with {code}")
    return 0


def start(bench: Bench, args: argparse.Namespace, warnings: WarningCounter) -> Run:
    """The database (what-ifs applied), the pool, the seeded bots, the outside world, the settings and
    the event publishers; prints the run's header."""
    from actors.event_bus import make_publisher
    from core.metrics import Metrics

    rts = RoundTrips(breakdown=not args.no_breakdown)  # the wait callback, before any connection opens
    db = bench.database()
    stats_url = db.superuser_url or db.owner_url or db.app_url
    if "async-commit" in args.experiments:
        set_async_commit(stats_url)  # before the pool opens its connections
    if "outbox-index" in args.experiments:
        add_outbox_index(db.owner_url or stats_url)
    pool = bench.pool(db.app_url, args.pool_size)
    data_dir = bench.path("data")
    sim_state = bench.path("sim", "simulator", "state.json")
    _tenant_id, bot_ids = seed_paired_bots(pool, data_dir, sim_state, args.bots, tenant=f"bench-pipeline-{os.getpid()}",
                                           running=True, ai=AI_CONFIG)
    if args.simulator == "process":
        world: ChildWorld | OutsideWorld = ChildWorld(bench.work, sim_state, bot_ids, args.customers, args.receipts)
    else:
        world = OutsideWorld(sim_state, bot_ids, args.customers, args.receipts)
    stop_world = bench.stopper(world.stop, quiet=True)
    world.ready()
    settings = simulator_settings(
        db, data_dir, world.sim_address,
        DATABASE_MAX_CONNECTIONS=str(args.pool_size), WA_LEASE_TTL="120",
        AI_BASE_URL=world.ai_url, AI_API_KEY="bench-key", AI_MODEL="bench-model", AI_TIMEOUT="10",
        AI_MAX_RETRIES="0", AI_DEBOUNCE="0", BOT_SEND_RATE="0",
    )
    postmaster = db.postmaster_pid()
    cpus = (split_cpus(postmaster, world.pid or None) if args.cpus == "split"
            else "CPUs shared by the bots' process, PostgreSQL and the outside world")
    metrics = Metrics()
    publisher = Publisher(make_publisher(pool, metrics.events_published) if args.publish == "db" else None)
    stats = Stats(stats_url, rts)
    bench.stopper(stats.close)
    run = Run(args, bench, db, pool, world, stop_world, rts, stats, publisher, warnings, metrics, settings, bot_ids,
              postmaster)
    print_header(run, cpus)
    return run


def print_header(run: Run, cpus: str) -> None:
    args = run.args
    print(f"{about(run.db, minutes=True)} ({run.stats.settings()})  "
          f"load average {os.getloadavg()[0]:.2f} (other processes share these CPUs)")
    print(f"bots {args.bots} x customers {args.customers} = {args.bots * args.customers} conversations; "
          f"pool {args.pool_size}; AI_DEBOUNCE 0, AI_MAX_RETRIES 0, BOT_SEND_RATE 0 (no limit); AI history "
          f"{AI_CONFIG['history']}; events published to {'the database' if args.publish == 'db' else 'memory only'}; "
          f"receipts {'on' if args.receipts else 'off'}")
    print(f"simulator + AI server + customers: {run.world.kind}; AI at {run.world.ai_url}")
    print(cpus)


def start_supervision(run: Run) -> None:
    """The real supervision root, its pipelines publishing as under ``run.py``; until every bot is
    connected; then the hub-lag probe."""
    from actors.event_bus import make_notice_publisher
    from actors.supervision import Supervision
    from core import heap

    args = run.args
    started = time.monotonic()
    root = Root(run.settings, run.pool, run.publisher.publish, run.metrics)
    notices = make_notice_publisher(run.pool, run.metrics.events_published)
    sup = Supervision(root, listen_dsn=run.db.app_url)
    run.bench.stopper(sup.stop, quiet=True)
    # The pipelines publish through the batched notice publisher, as under run.py.
    sup.pipeline_deps.publish = run.publisher.counting(notices if args.publish == "db" else None)
    if "lean-ai" in args.experiments:
        # Every pipeline reads deps.ai at call time: this swaps the client for all bots.
        sup.pipeline_deps.ai = LeanAi(run.world.ai_url, "bench-key", "bench-model", 10.0)
    if args.experiments:
        print(f"WHAT-IF experiments (not the shipped code): {', '.join(sorted(args.experiments))}")
    with gevent.Timeout(120, RuntimeError("bots did not all connect within 120 s")):
        while run.publisher.connected(run.bot_ids) < len(run.bot_ids):
            run.publisher.changed.clear()
            run.publisher.changed.wait(0.1)
    print(f"all {len(run.bot_ids)} bots connected {time.monotonic() - started:.2f} s after supervision started")
    heap.settle()  # as run.py does once the process has started
    run.lag = run.bench.hub_lag()


def idle_baseline(run: Run) -> None:
    """What runs without messages (lease rounds every 20 s, keep-alives)."""
    gevent.sleep(1.5)
    rt0, x0 = run.rts.total, run.stats.xacts()
    gevent.sleep(run.args.idle_seconds)
    print(f"idle baseline: {(run.rts.total - rt0) / run.args.idle_seconds:.1f} round trips/s, "
          f"{(run.stats.xacts() - x0) / run.args.idle_seconds:.1f} transactions/s (not subtracted below)\n")


def plan(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """The phases, each a name and the outside world's command. The closed loop runs first, on a quiet
    system; open-loop rates above capacity leave backlogs."""
    phases = [("warm-up", {"kind": "open", "rate": args.warmup_rate, "seconds": args.warmup_seconds,
                           "drain": args.drain})]
    if args.closed > 0:
        phases.append(("closed loop", {"kind": "closed", "seconds": args.closed, "drain": args.drain,
                                       "customers": args.closed_customers}))
    phases += [(f"open {r:g}/s", {"kind": "open", "rate": r, "seconds": args.seconds, "drain": args.drain})
               for r in args.rate_list]
    return phases


def profiled(args: argparse.Namespace, name: str, cmd: dict) -> bool:
    """Whether ``--py-spy`` names this phase."""
    if not args.py_spy:
        return False
    if cmd["kind"] == "closed":
        return args.py_spy == "closed"
    return name != "warm-up" and args.py_spy.replace("/s", "") == f"{cmd['rate']:g}"


def run_phases(run: Run, phases: list[tuple[str, dict]]) -> dict[str, dict]:
    """Each phase, reported; then quiet again and (with the owner's URL) vacuumed before the next."""
    results: dict[str, dict] = {}
    for name, cmd in phases:
        profile_dir = (run.args.py_spy_dir or run.bench.work) if profiled(run.args, name, cmd) else None
        results[name] = run_phase(run, name, cmd, profile_dir)
        if run.args.smoke:
            check_phase(name, results[name])
        settle(run.rts, run.args.settle)
        if run.db.owner_url and name != phases[-1][0]:
            vacuum_between_phases(run.db.owner_url)
    return results


def summarize(args: argparse.Namespace, phases: list[tuple[str, dict]], results: dict[str, dict]) -> None:
    """The verdicts: the open loop at the target rate, the closed loop's capacity."""
    verdict = Verdict(not args.smoke)
    verdicts: list[str] = []
    print("\nsummary:")
    at_target = next((results[n] for n, c in phases if c["kind"] == "open" and c["rate"] == TARGET_RATE
                      and n != "warm-up"), None)
    if at_target is not None:
        kept = at_target["throughput"] >= KEEP_UP * TARGET_RATE and at_target["unanswered"] == 0
        verdicts.append(f"open loop at {TARGET_RATE:g}/s: {at_target['throughput']:.0f} messages/s answered end to "
                        f"end (target >= {TARGET_RATE:g}): {verdict(kept)}")
        verdicts.append(f"open loop at {TARGET_RATE:g}/s: p99 {at_target['p99'] * 1000:.0f} ms (target <= "
                        f"{TARGET_P99 * 1000:g} ms): {verdict(at_target['p99'] <= TARGET_P99)}")
    else:
        verdicts.append(f"(no open-loop phase at {TARGET_RATE:g}/s: the targets were not checked)")
    if "closed loop" in results:
        closed = results["closed loop"]
        verdicts.append(f"closed loop (capacity): {closed['throughput']:.0f} messages/s, p99 "
                        f"{closed['p99'] * 1000:.0f} ms with {args.closed_customers} "
                        f"customers waiting on their answers: {verdict(closed['throughput'] >= TARGET_RATE)} "
                        f"(>= {TARGET_RATE:g})")
    for line in verdicts:
        print(f"  {line}")
    if args.smoke:
        print("smoke run: every phase ran and every message was answered end to end; the figures are from "
              "tiny counts")


def check_phase(name: str, result: dict) -> None:
    """``--smoke``: that the phase ran end to end (messages sent, every one answered), never how fast."""
    problems = []
    if not result["sent"]:
        problems.append("no message sent")
    if result["send_errors"]:
        problems.append(f"{result['send_errors']} sends failed")
    if result["unanswered"]:
        problems.append(f"{result['unanswered']} of {result['sent']} messages not answered within the drain")
    smoke_check(f"phase {name}", problems)


# -- one phase ---------------------------------------------------------------------------------------


def snapshot(run: Run) -> dict:
    """The counters a phase's figures are deltas of."""
    rts = run.rts
    return {
        "rt": rts.total, "callers": collections.Counter(rts.by_caller), "waited": collections.Counter(rts.waited),
        "xacts": run.stats.xacts(),
        "cpu_self": self_cpu(), "cpu_pg": postgres_cpu(run.postmaster),
        "cpu_child": proc_cpu(run.world.pid) if run.world.pid else 0.0, "pool": run.pool.stats(),
        "events": collections.Counter(run.publisher.counts), "warnings": collections.Counter(run.warnings.counts),
        "mono": time.monotonic(), "load": os.getloadavg()[0], "sched": main_thread_sched(),
    }


def run_phase(run: Run, name: str, cmd: dict, profile_dir: str | None) -> dict:
    """One phase through the outside world, its figures printed; the outside world's result with the
    round trips and transactions per message added."""
    before = snapshot(run)
    spies = start_spies(run, cmd, profile_dir) if profile_dir is not None else []
    result = run.world.phase(cmd)
    ended = time.monotonic()
    gevent.sleep(1.5)  # PostgreSQL backends flush their statistics within a second of going idle
    after = snapshot(run)
    messages = max(1, result["sent"])
    rt = after["rt"] - before["rt"]
    xacts = after["xacts"] - before["xacts"]
    report_phase(run, name, cmd, result, before, after)
    report_cpu(run, result, before, after, ended)
    new_warnings = after["warnings"] - before["warnings"]
    if new_warnings:
        print(f"  log warnings: {dict(new_warnings.most_common(5))}")
    finish_spies(spies)
    print()
    result.update(round_trips=rt / messages, xacts=xacts / messages)
    return result


def report_phase(run: Run, name: str, cmd: dict, result: dict, before: dict, after: dict) -> None:
    """Messages, throughput, latency, answers, events and database round trips."""
    messages = max(1, result["sent"])
    rt = after["rt"] - before["rt"]
    xacts = after["xacts"] - before["xacts"]
    events = after["events"] - before["events"]
    offered = f"{result['offered']:.0f}/s offered" if cmd["kind"] == "open" else \
        f"{cmd.get('customers') or 'all'} customers"
    print(f"{name}: {result['sent']} sent in {result['seconds']:g} s ({offered}); {result['answered']} answered, "
          f"{result['unanswered']} not answered within {cmd.get('drain', 30):g} s")
    print(f"  throughput {result['throughput']:.0f} messages/s end to end; latency p50 {result['p50'] * 1000:.1f} ms, "
          f"p90 {result['p90'] * 1000:.1f} ms, p99 {result['p99'] * 1000:.1f} ms, max {result['max'] * 1000:.0f} ms; "
          f"last answer {result['drain']:.2f} s after the last send")
    print(f"  answers {result['answers']} (covering several messages: {result['batched']}; naming none: "
          f"{result['unmatched']}); send errors {result['send_errors']}; events published: "
          f"{dict(sorted(events.items()))}")
    print(f"  database: {rt / messages:.2f} round trips/message from this process ({rt} in all), "
          f"{xacts / messages:.2f} transactions/message on the server ({xacts})")
    if run.rts.breakdown:
        callers = after["callers"] - before["callers"]
        rt_waited = after["waited"] - before["waited"]
        parts = ", ".join(f"{k} {v / messages:.2f} ({rt_waited[k] / v * 1000:.2f} ms)"
                          for k, v in callers.most_common())
        print(f"    per message by caller (mean time from sending the statement to its answer, including waiting "
              f"for this process's hub): {parts}")


def report_cpu(run: Run, result: dict, before: dict, after: dict, ended: float) -> None:
    """CPU per message and busy cores by process, the hub's lag, pool waits, the hub thread's time."""
    messages = max(1, result["sent"])
    wall = ended - before["mono"]
    cpu_self = after["cpu_self"] - before["cpu_self"]
    pg_kinds = after["cpu_pg"] - before["cpu_pg"]
    cpu_pg = sum(pg_kinds.values())
    cpu_child = after["cpu_child"] - before["cpu_child"]
    child = bool(run.world.pid)
    pg_parts = ", ".join(f"{k} {pg_kinds.get(k, 0.0) / messages * 1000:.2f}"
                         for k in ("backends", "walwriter", "other"))
    cpu_line = (f"  CPU per message: this process {cpu_self / messages * 1000:.2f} ms, PostgreSQL "
                f"{cpu_pg / messages * 1000:.2f} ms ({pg_parts})")
    if child:
        cpu_line += f", simulator/AI/customers {cpu_child / messages * 1000:.2f} ms"
    total_cpu = cpu_self + cpu_pg + cpu_child
    print(cpu_line + f"; CPU busy over the phase: this process {cpu_self / wall:.2f}, PostgreSQL {cpu_pg / wall:.2f}"
          + (f", outside world {cpu_child / wall:.2f}" if child else "")
          + f" cores (sum {total_cpu / wall:.2f} of {os.cpu_count()}); load average {after['load']:.2f}")
    lag_p99, lag_max = run.lag.between(before["mono"], ended)
    waited = after["pool"]["waited_total"] - before["pool"]["waited_total"]
    wait_s = after["pool"]["acquire_wait_seconds_total"] - before["pool"]["acquire_wait_seconds_total"]
    on_cpu = after["sched"][0] - before["sched"][0]
    runnable = after["sched"][1] - before["sched"][1]
    print(f"  hub lag p99 {lag_p99 * 1000:.0f} ms, max {lag_max * 1000:.0f} ms; pool waits {waited} "
          f"({wait_s * 1000:.0f} ms in all); the hub's thread per second: {on_cpu / wall * 1000:.0f} ms on a CPU, "
          f"{runnable / wall * 1000:.0f} ms runnable but waiting for one")


def start_spies(run: Run, cmd: dict, profile_dir: str) -> list[tuple[str, str, subprocess.Popen | None]]:
    """py-spy on the bots' process and the outside world's, for the phase's length less a second."""
    seconds = float(cmd["seconds"]) - 1
    spies = []
    for title, pid, file in (("the bots' process", os.getpid(), "self.txt"),
                             ("the simulator/AI process", run.world.pid, "child.txt")):
        if pid:
            path = os.path.join(profile_dir, file)
            spies.append((title, path, start_py_spy(pid, seconds, path)))
    return spies


def finish_spies(spies: list[tuple[str, str, subprocess.Popen | None]]) -> None:
    """Wait for each py-spy to write its profile (SIGINT after 30 s), then print it."""
    for title, path, spy in spies:
        if spy is not None:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.send_signal(signal.SIGINT)
                spy.wait(10)
            summarize_py_spy(path, title)


if __name__ == "__main__":
    sys.exit(main())
