"""Benchmark: live SSE streams (``GET /api/v1/events``) at 1,000 / 5,000 / 10,000 subscribers, against a
bare gevent SSE server as the ceiling.

Run: ``python bench/streams.py [--subscribers 1000,5000,10000] [--events 100] [--concurrency 200]
[--event-timeout 60] [--skip-bare] [--profile] [--profile-rate 100] [--profile-native]``; ``--smoke`` for a
run of a few seconds that only checks it works (the test suite runs it).

Processes (all on 127.0.0.1, all gevent):

* this one (the orchestrator): starts the embedded PostgreSQL in a temporary directory (or uses
  ``DATABASE_URL`` as the app role and ``DATABASE_OWNER_URL`` for migrations when set), migrates,
  creates one tenant with an API key, and publishes every event through ``db.events.publish`` for that
  tenant (the payload carries ``{"s": seq, "t": time.time()}`` taken just before the publish);
* the server: ``python run.py web`` as an operator runs it (``SSE_HEARTBEAT=3600`` so heartbeats never
  interfere, ``SSE_BUFFER`` and the pool at their defaults), a fresh process for every subscriber count;
  or the bare server (``--role bare``): gevent's ``WSGIServer`` with a queue per connection and nothing
  else, that broadcasts each event it reads on stdin, encoded once, to every connection's queue;
* the client (``--role client``, spawned with ``subprocess``): one process holding all connections,
  gevent raw sockets, a greenlet per connection; it opens them ``--concurrency`` at a time (each counts
  as open once ``: connected`` arrives, i.e. after the server registered the subscriber), parses
  frames, and records ``receive time - t`` for every delivery (one machine, one clock).

Every server and count follows the same steps: start; warm up with 20 subscribers and 2 events, close
them and send 2 more events so the server reclaims them (the project's server is checked through
``/metrics`` to have 0 subscribers left); baseline RSS; open N subscribers (RSS again); then 100 events,
closed loop: each event is published once the client has seen the previous one at all N subscribers
(``--event-timeout`` bounds the wait), so latency is the fan-out of one event to N subscribers, not a
queue of 100 piling up; RSS again; close everything; stop the server.

Figures: delivery latency p50/p99/max over all N x 100 deliveries; delivered/s = deliveries / (last
receive - first publish); server RSS per subscriber = (RSS after the events - baseline) / N (also shown
right after connecting); CPU seconds of the server, the client and everything else on the machine
during the 100 events, and server CPU per delivery (the figure least moved by other load). Both ends
share a 2-core machine: the client process competes with the server for CPU (its share is printed), and
the bare server's figure is partly the client's own ceiling.

Targets at 10,000 subscribers (or the largest count run): p99 <= 1 s, <= 40 KB per subscriber,
delivered/s >= 0.7 x the bare server. Prints PASS/MISS and exits 0 whatever the figures (a benchmark,
not a test), non-zero when something fails to run (a process, a connection that does not open).
``--smoke`` (5 subscribers, 3 events) also fails when an event does not reach every subscriber, and
judges no figure. ``--profile`` records the project server with py-spy during the events at the
largest count and prints the top functions (py-spy is optional, not a dependency: ``pip install
py-spy``; without it the profile is skipped with a note). Results and how to run it are recorded in
``docs/performance.md`` ("Streams").
"""

import sys

ROLE = sys.argv[sys.argv.index("--role") + 1] if "--role" in sys.argv else "bench"

from gevent import monkey  # noqa: E402

monkey.patch_all()

import os  # noqa: E402

# ``python bench/streams.py`` puts bench/ on sys.path, not the project root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import argparse  # noqa: E402
import array  # noqa: E402
import collections  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.lock  # noqa: E402
import gevent.queue  # noqa: E402
from gevent.fileobject import FileObjectPosix  # noqa: E402

from bench._harness import (  # noqa: E402
    UNREACHED_LIMITS,
    Bench,
    Child,
    Database,
    Teardown,
    collapsed_stacks,
    percentile,
    print_log_tails,
    proc_cpu,
    py_spy,
    rss_kb,
    smoke_check,
)

P99_TARGET_S = 1.0
MEMORY_TARGET_KB = 40.0
THROUGHPUT_FACTOR = 0.7
WARMUP_SUBSCRIBERS = 20
EVENT_TYPE = "bench.tick"
PATH = "/api/v1/events"
LISTENING = re.compile(r"listening on http://([^:/\s]+):(\d+)")


def raise_nofile() -> int:
    """Raise the open-files limit as far as allowed (root may lift the hard limit too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (max(hard, 65536), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            continue
    return soft


def send_line(obj: dict) -> None:
    os.write(1, (json.dumps(obj) + "\n").encode())


def stdin_lines() -> Any:
    return FileObjectPosix(0, "rb", close=False)


# -- the client process ---------------------------------------------------------------------------

_FRAME = re.compile(rb'"s":(-?\d+),"t":([0-9.eE+-]+)')


class Client:
    """All SSE connections of the benchmark, one greenlet each; commands on stdin, answers on stdout."""

    def __init__(self) -> None:
        self.conns: dict[int, tuple[gevent.Greenlet, list]] = {}
        self.next_id = 0
        self.expected = 0
        self.record = False
        self.counts: collections.Counter = collections.Counter()
        self.latencies = array.array("d")
        self.first_recv = float("inf")
        self.last_recv = 0.0
        self.closed_notices = 0
        self.dropped = 0

    # connections

    def _connection(self, cid: int, host: str, port: int, request: bytes, ready: gevent.event.AsyncResult,
                    holder: list) -> None:
        sock = None
        try:
            sock = socket.create_connection((host, port), timeout=30)
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST: no TIME_WAIT
            holder.append(sock)
            sock.sendall(request)
            buf = b""
            with gevent.Timeout(30, TimeoutError("no ': connected' within 30 s")):
                while b": connected\n\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError(f"closed before connected: {buf[:80]!r}")
                    buf += data
            if not buf.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(buf.split(b"\r\n", 1)[0].decode(errors="replace"))
            buf = buf.split(b": connected\n\n", 1)[1]
            ready.set(True)
            frame = _FRAME
            while True:
                data = sock.recv(65536)
                now = time.time()
                if not data:
                    break
                buf += data
                end = buf.rfind(b"\n\n")
                if end < 0:
                    continue
                complete, buf = buf[:end], buf[end + 2:]
                if now < self.first_recv:
                    self.first_recv = now
                if now > self.last_recv:
                    self.last_recv = now
                # Looked up per read: ``expect`` replaces them between phases.
                record, counts, latencies = self.record, self.counts, self.latencies
                for match in frame.finditer(complete):
                    seq = int(match.group(1))
                    if record:
                        latencies.append(now - float(match.group(2)))
                    counts[seq] += 1
                    if counts[seq] == self.expected:
                        send_line({"done": seq, "at": now})
                if b"stream.closed" in complete:
                    self.closed_notices += 1
        except Exception as exc:  # noqa: BLE001 - reported as a failed connection
            if not ready.ready():
                ready.set(exc)
            else:
                self.dropped += 1
        finally:
            self.conns.pop(cid, None)
            if sock is not None:
                sock.close()

    def open(self, n: int, host: str, port: int, key: str, concurrency: int) -> dict:
        request = (
            f"GET {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()
        started = time.monotonic()
        errors: collections.Counter = collections.Counter()
        slots = gevent.lock.BoundedSemaphore(concurrency)
        waits = []

        def one() -> None:
            with slots:
                cid = self.next_id
                self.next_id += 1
                ready: gevent.event.AsyncResult = gevent.event.AsyncResult()
                holder: list = []
                greenlet = gevent.spawn(self._connection, cid, host, port, request, ready, holder)
                self.conns[cid] = (greenlet, holder)
                result = ready.get()
                if result is not True:
                    errors[repr(result)[:160]] += 1

        for _ in range(n):
            waits.append(gevent.spawn(one))
        gevent.joinall(waits)
        return {
            "opened": n - sum(errors.values()), "failed": sum(errors.values()),
            "seconds": time.monotonic() - started, "errors": errors.most_common(3), "open_now": len(self.conns),
        }

    def close(self) -> dict:
        greenlets = [g for g, _ in list(self.conns.values())]
        gevent.killall(greenlets, block=True, timeout=30)
        return {"closed": len(greenlets), "open_now": len(self.conns)}

    # measuring

    def expect(self, record: bool) -> dict:
        self.expected = len(self.conns)
        self.record = record
        self.counts = collections.Counter()
        self.latencies = array.array("d")
        self.first_recv, self.last_recv = float("inf"), 0.0
        self.closed_notices = self.dropped = 0
        return {"expected": self.expected}

    def report(self) -> dict:
        lat = sorted(self.latencies) or [0.0]
        p50, p90, p99 = (percentile(lat, q) for q in (50, 90, 99))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "delivered": len(self.latencies), "p50": p50, "p90": p90, "p99": p99,
            "max": lat[-1], "first_recv": self.first_recv, "last_recv": self.last_recv,
            "closed_notices": self.closed_notices, "dropped": self.dropped, "open_now": len(self.conns),
            "per_seq": dict(self.counts), "cpu": usage.ru_utime + usage.ru_stime,
            "rss_kb": usage.ru_maxrss,
        }


def client_main() -> int:
    raise_nofile()
    client = Client()
    for raw in stdin_lines():
        cmd = json.loads(raw)
        op = cmd.pop("cmd")
        if op == "exit":
            break
        if op == "open":
            send_line(client.open(**cmd))
        elif op == "close":
            send_line(client.close())
        elif op == "expect":
            send_line(client.expect(**cmd))
        elif op == "report":
            send_line(client.report())
    return 0


# -- the bare server process ----------------------------------------------------------------------


def bare_main() -> int:
    """gevent's WSGIServer, a queue per connection, each event encoded once and put in every queue."""
    from gevent.pywsgi import WSGIServer

    raise_nofile()
    queues: set = set()

    def app(environ: dict, start_response: Any) -> Any:
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        queue: gevent.queue.Queue = gevent.queue.Queue()
        queues.add(queue)
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])

        def stream() -> Any:
            try:
                yield b"retry: 3000\n\n: connected\n\n"
                while True:
                    yield queue.get()
            finally:
                queues.discard(queue)

        return stream()

    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
    for raw in stdin_lines():
        event = json.loads(raw)
        # The same frame the project writes: id, event type, and StoredEvent.as_json() as data.
        data = {
            "id": event["id"], "type": EVENT_TYPE, "bot_id": None, "payload": event["payload"],
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        frame = f"id: {event['id']}\nevent: {EVENT_TYPE}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        encoded = frame.encode()
        for queue in list(queues):
            queue.put(encoded)
    server.stop(timeout=1)
    return 0


# -- the orchestrator -----------------------------------------------------------------------------


def machine_busy_s() -> float:
    """CPU seconds all processes of the machine have used (user, system, irq, steal), from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class ClientProc(Child):
    def __init__(self, log_path: str) -> None:
        super().__init__("client", [sys.executable, os.path.abspath(__file__), "--role", "client"], log=log_path,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        self.replies: gevent.queue.Queue = gevent.queue.Queue()
        self.done: gevent.queue.Queue = gevent.queue.Queue()
        self.reader = gevent.spawn(self._read)

    def _read(self) -> None:
        for raw in self.proc.stdout:
            msg = json.loads(raw)
            (self.done if "done" in msg else self.replies).put(msg)
        self.replies.put({"error": f"client exited with {self.proc.wait()}"})

    def call(self, cmd: str, timeout: float = 600, **kwargs: Any) -> dict:
        self.proc.stdin.write((json.dumps({"cmd": cmd, **kwargs}) + "\n").encode())
        self.proc.stdin.flush()
        reply = self.replies.get(timeout=timeout)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def wait_done(self, seq: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                msg = self.done.get(timeout=left)
            except gevent.queue.Empty:
                return False
            if msg["done"] == seq:
                return True

    def drain_done(self) -> None:
        while not self.done.empty():
            self.done.get_nowait()

    def stop(self, timeout: float = 30.0, sig: int | None = None) -> int:
        """Ends the client process (told to on its stdin); its exit code."""
        try:
            self.proc.stdin.write(b'{"cmd": "exit"}\n')
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass  # gone already
        return super().stop(timeout, sig)


class Server(Child):
    """A server process under test: the project's (``run.py web``) or the bare one. Once started it is
    ``wait_listening()`` for, which learns its address."""

    def __init__(self, kind: str, env: "Env") -> None:
        self.kind = kind
        self.env = env
        if kind == "project":
            child_env = {k: v for k, v in os.environ.items() if not k.startswith(("SSE_", "SENTRY_"))}
            child_env.update(
                DATABASE_URL=env.app_url, DATA_DIR=os.path.join(env.work_dir, "server"), HOST="127.0.0.1",
                PORT="0", SSE_HEARTBEAT="3600", LOG_LEVEL="warning", PYTHONUNBUFFERED="1", **UNREACHED_LIMITS,
            )
            child_env.pop("DATABASE_OWNER_URL", None)  # migrated already; the server only checks
            cmd = [sys.executable, "run.py", "web"]
        else:
            child_env = dict(os.environ)
            cmd = [sys.executable, os.path.abspath(__file__), "--role", "bare"]
        super().__init__(
            f"{kind} server", cmd, log=os.path.join(env.work_dir, f"{kind}-server.log"), cwd=ROOT, env=child_env,
            stdin=subprocess.PIPE if kind == "bare" else subprocess.DEVNULL, stdout=subprocess.PIPE,
            preexec_fn=raise_nofile,
        )
        self.host, self.port = "", 0
        self.next_id = 1_000_000

    def wait_listening(self) -> None:
        self.host, self.port = self._wait_listening()
        self.drainer = gevent.spawn(self._drain)

    def _wait_listening(self) -> tuple[str, int]:
        with gevent.Timeout(60, RuntimeError(f"{self.kind} server did not start; see {self.log.name}")):
            for raw in self.proc.stdout:
                match = LISTENING.search(raw.decode(errors="replace"))
                if match:
                    return match.group(1), int(match.group(2))
        raise RuntimeError(f"{self.kind} server exited with {self.proc.wait()}; see {self.log.name}")

    def _drain(self) -> None:
        for _ in self.proc.stdout:
            pass

    def publish(self, seq: int) -> float:
        """Publish one event carrying its publish time; returns that time."""
        sent = time.time()
        payload = {"s": seq, "t": sent}
        if self.kind == "project":
            from db import events as events_db

            events_db.publish(self.env.pool, self.env.tenant, None, EVENT_TYPE, payload)
        else:
            self.next_id += 1
            self.proc.stdin.write((json.dumps({"id": self.next_id, "payload": payload}) + "\n").encode())
            self.proc.stdin.flush()
        return sent

    def subscribers(self) -> int | None:
        if self.kind != "project":
            return None
        with urllib.request.urlopen(f"http://{self.host}:{self.port}/metrics", timeout=30) as resp:
            text = resp.read().decode()
        match = re.search(r'^stream_subscribers\{kind="sse"\} ([0-9.e+]+)$', text, re.M)
        return int(float(match.group(1))) if match else None

    def stop(self, timeout: float = 60.0, sig: int | None = signal.SIGTERM) -> int:
        """Ends the server process: the project's as an operator does (SIGTERM), the bare one by closing
        its stdin (it has no signal handling); its exit code."""
        if self.kind == "bare":
            try:
                self.proc.stdin.close()
                sig = None
            except OSError:
                pass
        return super().stop(timeout, sig)


class Env:
    def __init__(self, work_dir: str, app_url: str, pool: Any, tenant: str, key: str) -> None:
        self.work_dir, self.app_url, self.pool, self.tenant, self.key = work_dir, app_url, pool, tenant, key


def setup(bench: Bench) -> tuple[Database, Env]:
    from db import tenants

    db = bench.database()
    pool = bench.pool(db.app_url, 2)
    tenant, key = tenants.create_tenant(pool, f"bench-streams-{os.getpid()}")
    return db, Env(bench.work, db.app_url, pool, tenant, key)


def broadcast(server: Server, client: ClientProc, seqs: list[int], timeout: float, expect: bool) -> tuple[float, int]:
    """Publish each event once the previous one reached every subscriber; returns (first publish time,
    events that timed out)."""
    first = 0.0
    missed = 0
    client.drain_done()
    for i, seq in enumerate(seqs):
        sent = server.publish(seq)
        if i == 0:
            first = sent
        if expect and not client.wait_done(seq, timeout):
            missed += 1
    return first, missed


def run_one(kind: str, n: int, env: Env, client: ClientProc, args: Any, profile: bool) -> dict:
    result: dict[str, Any] = {"kind": kind, "n": n}
    with Teardown() as teardown:
        server = Server(kind, env)
        stop_server = teardown.stopper(server.stop)
        server.wait_listening()
        warm_up(server, client, env, args)
        result["rss_base"] = rss_kb(server.pid)

        opened = client.call("open", n=n, host=server.host, port=server.port, key=env.key,
                             concurrency=args.concurrency)
        result.update(opened=opened["opened"], failed=opened["failed"], connect_s=opened["seconds"],
                      errors=opened["errors"])
        gevent.sleep(1.0)
        result["rss_connected"] = rss_kb(server.pid)
        result["server_subscribers"] = server.subscribers()

        client.call("expect", record=True)
        client_cpu0 = client.call("report")["cpu"]
        server_cpu0 = proc_cpu(server.pid)
        busy0 = machine_busy_s()
        spy = start_spy(server.pid, env.work_dir, args.profile_rate, args.profile_native) if profile else None
        stop = teardown.stopper(lambda: stop_spy(spy))
        wall0 = time.monotonic()
        first, missed = broadcast(server, client, list(range(args.events)), args.event_timeout, True)
        result["wall_s"] = time.monotonic() - wall0
        if spy is not None:
            result["profile"] = stop()
        result["server_cpu_s"] = proc_cpu(server.pid) - server_cpu0
        busy = machine_busy_s() - busy0
        result["load"] = os.getloadavg()[0]
        gevent.sleep(0.5)
        report = client.call("report")
        result["client_cpu_s"] = report["cpu"] - client_cpu0
        # Everything else: PostgreSQL, this process, and whatever else runs on the machine.
        result["other_cpu_s"] = max(0.0, busy - result["server_cpu_s"] - result["client_cpu_s"])
        result["rss_after"] = rss_kb(server.pid)
        result["events_missed"] = missed
        result.update({k: report[k] for k in ("delivered", "p50", "p90", "p99", "max", "closed_notices", "dropped")})
        span = report["last_recv"] - first
        result["per_s"] = report["delivered"] / span if span > 0 else 0.0
        result["expected"] = opened["open_now"] * args.events
        client.call("close")
    code = stop_server()  # its exit code, from the teardown
    if code:
        raise RuntimeError(f"the {kind} server exited with {code}")
    return result


def warm_up(server: Server, client: ClientProc, env: Env, args: Any) -> None:
    """The first requests import and allocate what every later one reuses: 20 subscribers and 2 events;
    then they close, and 2 more events let the server notice (the project's must have none left)."""
    opened = client.call("open", n=WARMUP_SUBSCRIBERS, host=server.host, port=server.port, key=env.key,
                         concurrency=WARMUP_SUBSCRIBERS)
    if opened["failed"]:
        raise RuntimeError(f"warm-up connections failed: {opened['errors']}")
    client.call("expect", record=False)
    broadcast(server, client, [-1, -2], args.event_timeout, True)
    client.call("close")
    # Closed clients are noticed on the next writes: two events with nobody listening.
    for seq in (-3, -4):
        server.publish(seq)
        gevent.sleep(0.3)
    left = None
    deadline = time.monotonic() + 10
    while server.kind == "project" and time.monotonic() < deadline:
        left = server.subscribers()
        if left == 0:
            break
        gevent.sleep(0.2)
    if left:
        print(f"    note: {left} warm-up subscribers still registered", flush=True)
    gevent.sleep(0.5)


# -- profiling (py-spy, outside the server process) -----------------------------------------------


def start_spy(pid: int, work_dir: str, rate: int, native: bool) -> Any:
    out = os.path.join(work_dir, f"py-spy-{pid}.txt")
    proc = py_spy(pid, out, "-r", str(rate), "--native" if native else "--nonblocking", stderr=subprocess.PIPE)
    if proc is None:
        print("    --profile: py-spy not found (pip install py-spy); skipping", flush=True)
        return None
    gevent.sleep(1.0)  # let it attach
    return proc, out


def stop_spy(spy: Any) -> str:
    if spy is None:
        return ""
    proc, out = spy
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if not os.path.exists(out):
        return f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"
    keep = os.path.join(tempfile.gettempdir(), "bench-streams-py-spy.txt")
    shutil.copy(out, keep)
    return summarize_profile(out) + f"\n  (raw collapsed stacks kept in {keep})"


def summarize_profile(path: str, top: int = 25) -> str:
    total, own, inclusive = collapsed_stacks(path, _short)
    if not total:
        return "  no samples"
    lines = [f"  {total} samples (non-idle)", "  self time:"]
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines.append("  inclusive time:")
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top + 15)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"; site-packages prefixes dropped.
    match = re.match(r"(.*) \((.*?):?(\d*)\)$", frame)
    if not match:
        return frame
    func, path = match.group(1), match.group(2)
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    path = path.replace(ROOT + "/", "")
    return f"{func} ({path})"


# -- report ---------------------------------------------------------------------------------------


def table(results: list[dict]) -> str:
    head = (
        f"{'server':<8}{'subs':>7}{'conn s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'delivered':>11}"
        f"{'deliv/s':>10}{'KB/sub':>8}{'KB/sub':>8}{'srv CPU':>9}{'cli CPU':>9}{'oth CPU':>9}{'wall':>7}"
        f"{'srv CPU':>9}"
    )
    sub = (
        f"{'':<8}{'':>7}{'':>8}{'':>9}{'':>9}{'':>9}{'':>11}{'':>10}{'conn':>8}{'after':>8}{'s':>9}{'s':>9}{'s':>9}"
        f"{'s':>7}{'us/deliv':>9}"
    )
    lines = [head, sub, "-" * len(head)]
    for r in results:
        n = max(r["opened"], 1)
        lines.append(
            f"{r['kind']:<8}{r['opened']:>7,}{r['connect_s']:>8.1f}{1000 * r['p50']:>9.0f}{1000 * r['p99']:>9.0f}"
            f"{1000 * r['max']:>9.0f}{r['delivered']:>11,}{r['per_s']:>10,.0f}"
            f"{(r['rss_connected'] - r['rss_base']) / n:>8.1f}{(r['rss_after'] - r['rss_base']) / n:>8.1f}"
            f"{r['server_cpu_s']:>9.1f}{r['client_cpu_s']:>9.1f}{r['other_cpu_s']:>9.1f}{r['wall_s']:>7.1f}"
            f"{1e6 * r['server_cpu_s'] / max(r['delivered'], 1):>9.1f}"
        )
    return "\n".join(lines)


def targets(results: list[dict], top: int) -> str:
    mine = next((r for r in results if r["kind"] == "project" and r["n"] == top), None)
    bare = next((r for r in results if r["kind"] == "bare" and r["n"] == top), None)
    if mine is None:
        return "no project run at the top count"
    lines = [f"targets at {top:,} subscribers:"]
    p99 = mine["p99"]
    lines.append(f"  p99 latency {1000 * p99:,.0f} ms  (target <= {1000 * P99_TARGET_S:,.0f} ms)  "
                 f"{'PASS' if p99 <= P99_TARGET_S else 'MISS'}")
    kb = (mine["rss_after"] - mine["rss_base"]) / max(mine["opened"], 1)
    lines.append(f"  server RSS per subscriber {kb:.1f} KB  (target <= {MEMORY_TARGET_KB:g} KB)  "
                 f"{'PASS' if kb <= MEMORY_TARGET_KB else 'MISS'}")
    if bare is None or not bare["per_s"]:
        lines.append("  delivered/s vs bare: no bare run")
    else:
        ratio = mine["per_s"] / bare["per_s"]
        lines.append(f"  delivered/s {mine['per_s']:,.0f} = {ratio:.2f} x bare {bare['per_s']:,.0f}  "
                     f"(target >= {THROUGHPUT_FACTOR:g} x)  {'PASS' if ratio >= THROUGHPUT_FACTOR else 'MISS'}")
        mine_us = 1e6 * mine["server_cpu_s"] / max(mine["delivered"], 1)
        bare_us = 1e6 * bare["server_cpu_s"] / max(bare["delivered"], 1)
        lines.append(f"  (server CPU per delivery, far less affected by contention: {mine_us:.0f} us vs "
                     f"bare {bare_us:.0f} us, bare/project = {bare_us / mine_us:.2f})")
    return "\n".join(lines)


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    import gevent as gv
    import greenlet

    return (f"{datetime.date.today()}  {platform.system()} {platform.release()}  {model}  cpus {os.cpu_count()}  "
            f"python {platform.python_version()}  gevent {gv.__version__}  greenlet {greenlet.__version__}")


def check_smoke(r: dict) -> None:
    """``--smoke``: that the run happened (connections, deliveries), never how fast."""
    problems = []
    if r["failed"] or r["opened"] != r["n"]:
        problems.append(f"opened {r['opened']} of {r['n']} ({r['errors']})")
    if r["events_missed"]:
        problems.append(f"{r['events_missed']} events did not reach every subscriber")
    if r["delivered"] != r["expected"]:
        problems.append(f"delivered {r['delivered']} of {r['expected']}")
    if r["dropped"]:
        problems.append(f"{r['dropped']} connections dropped")
    smoke_check(f"{r['kind']} server", problems)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", default="1000,5000,10000", help="comma-separated counts")
    parser.add_argument("--events", type=int, default=100, help="events broadcast per count (default 100)")
    parser.add_argument("--concurrency", type=int, default=200, help="connections opening at once (default 200)")
    parser.add_argument("--event-timeout", type=float, default=60.0, help="seconds to wait for one event's fan-out")
    parser.add_argument("--skip-bare", action="store_true", help="only the project's server")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the project server at the largest count (optional: py-spy is not a "
                             "dependency, `pip install py-spy`; without it the profile is skipped with a note)")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second (default 100)")
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native: C frames too (GC, gevent)")
    parser.add_argument("--smoke", action="store_true",
                        help="a few seconds with tiny counts (5 subscribers, 3 events; overrides --subscribers, "
                             "--events, --concurrency, --event-timeout): checks that the benchmark runs end to "
                             "end, exits non-zero on any failure (a connection, an event not delivered to every "
                             "subscriber, a process); its figures mean nothing and the targets are not judged")
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.subscribers, args.events, args.concurrency, args.event_timeout = "5", 3, 5, 20.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(c) for c in args.subscribers.split(",")]
    logging.basicConfig(level=logging.WARNING)
    limit = raise_nofile()

    results: list[dict] = []
    with Bench("bench-streams-") as bench:
        bench.on_failure(lambda: print_log_tails(bench.work))
        db, env = setup(bench)
        print(machine())
        print(f"{db.label}; open files limit {limit}; "
              f"{args.events} events per count, closed loop (next event once the previous reached all); "
              f"server and client share {os.cpu_count()} cores\n", flush=True)
        client = ClientProc(bench.path("client.log"))
        stop_client = bench.stopper(client.stop, quiet=True)
        for n in counts:
            for kind in ("project",) if args.skip_bare else ("project", "bare"):
                profile = args.profile and kind == "project" and n == max(counts)
                print(f"  {kind} server, {n:,} subscribers ...", flush=True)
                r = run_one(kind, n, env, client, args, profile)
                results.append(r)
                if args.smoke:
                    check_smoke(r)
                print_run(r)
        report(results, args, counts)
        code = stop_client()
        if code:
            raise RuntimeError(f"the client process exited with {code}")
    return 0


def print_run(r: dict) -> None:
    print(
        f"    opened {r['opened']:,} in {r['connect_s']:.1f}s (failed {r['failed']}"
        f"{', ' + str(r['errors']) if r['errors'] else ''}); server sees {r['server_subscribers']}; "
        f"delivered {r['delivered']:,}/{r['expected']:,}; p50 {1000 * r['p50']:.0f} ms, "
        f"p90 {1000 * r['p90']:.0f} ms, p99 {1000 * r['p99']:.0f} ms; {r['per_s']:,.0f}/s; "
        f"RSS {r['rss_base'] / 1024:.0f} -> {r['rss_connected'] / 1024:.0f} -> "
        f"{r['rss_after'] / 1024:.0f} MB; server CPU {r['server_cpu_s']:.1f}s, "
        f"client CPU {r['client_cpu_s']:.1f}s, other CPU {r['other_cpu_s']:.1f}s over "
        f"{r['wall_s']:.1f}s (load {r['load']:.1f})"
        f"{'; events timed out ' + str(r['events_missed']) if r['events_missed'] else ''}"
        f"{'; dropped ' + str(r['dropped']) if r['dropped'] else ''}",
        flush=True,
    )


def report(results: list[dict], args: argparse.Namespace, counts: list[int]) -> None:
    print()
    print(table(results))
    print(
        "\nlatency: publish timestamp in the payload -> client receive time; delivered/s: deliveries / "
        "(last receive - first publish);\nKB/sub: server RSS delta over the pre-connect baseline / "
        "subscribers, right after connecting and after the events;\nCPU: seconds used during the events by the "
        "server, the client, and everything else (PostgreSQL, this process, other users of the machine).\n"
        f"Client and server share {os.cpu_count()} cores ({os.cpu_count()} x wall CPU-seconds in all): the client "
        "competes with the server, and when client CPU ~ wall the client is the limit."
    )
    busy = [r for r in results if r["other_cpu_s"] > 0.5 * r["wall_s"]]
    if busy:
        print(
            f"\nnote: other processes used more than half a core during {len(busy)} of {len(results)} runs "
            "(oth CPU): wall-clock figures (latency, delivered/s) are worse than on a quiet machine; "
            "srv CPU us/deliv much less so."
        )
    print()
    if args.smoke:
        print("smoke run: every connection opened, every event reached every subscriber; the figures are "
              "from tiny counts and the targets are not judged")
    else:
        print(targets(results, max(counts)))
    for r in results:
        if r.get("profile"):
            print(f"\npy-spy profile of the project server during the events at {r['n']:,} subscribers:")
            print(r["profile"])

if __name__ == "__main__":
    if ROLE == "client":
        sys.exit(client_main())
    if ROLE == "bare":
        sys.exit(bare_main())
    sys.exit(main())
