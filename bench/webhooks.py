"""Benchmark: outbound webhook deliveries — from a fact's commit to the receiver's 2xx.

Run: ``python bench/webhooks.py [--endpoints 100] [--hanging 1] [--rate 1000] [--seconds 15]
[--batch-ms 5] [--warmup 2] [--drain 20] [--pending 50000] [--capacity-timeout 60] [--pool-size 20] [--vacuum]
[--cpus split|shared]``;
``--smoke`` for a run of a few seconds that only checks it works (the test suite runs it).

The system under test runs in this process, gevent patched first and psycopg2 made cooperative (as
``run.py``): one ``actors.webhooks.WebhookDispatcher`` with the real ``WebhookDeps`` (``listen_dsn`` set,
so the triggers' NOTIFY wakes it; its ``WebhookMetrics``; default settings — ``WEBHOOK_TIMEOUT`` 15 s,
``WEBHOOK_MAX_IN_FLIGHT`` 4, ``WEBHOOK_CONCURRENCY`` 500 — except ``WEBHOOKS_ALLOW_HTTP`` and
``WEBHOOKS_ALLOW_PRIVATE``, on for receivers at ``http://127.0.0.1``), over this project's pool, against
the embedded PostgreSQL in a temporary directory (or ``DATABASE_URL``/``DATABASE_OWNER_URL``), migrated.
Nothing else of the platform runs here.

The outside world runs in a child process (started as a new interpreter, not forked): the receivers —
one raw HTTP server on a gevent ``StreamServer`` per endpoint, ``--endpoints`` answering 200 at once
(``Connection: close``, as the dispatcher asks) and ``--hanging`` that accept and read the request and
never answer — and the driver, which commits the facts. Each receiver records when a request has
arrived whole (its 200 goes out right after) and the body's ``data.message_id``; the driver records
when each message's commit returned: both in one process, one clock.

Set-up: one tenant, ``--endpoints`` bots, one contact per bot; endpoint i (healthy) wants the events
of bot i only (``bot_ids = [bot i]``), so each event goes to exactly one healthy endpoint; the hanging
endpoints want every bot's events, so they get every event too and their backlog grows through the
run. Facts: inbound messages, inserted as the pipeline's batched store does (one multi-row ``INSERT
... SELECT FROM unnest(...)`` per batch, under the tenant, through the pool; the messages' trigger
writes the deliveries in the same transaction and notifies), round robin over the bots.

Phases:

* warm-up: ``--rate``/5 for ``--warmup`` s (not judged).
* steady: an open loop at ``--rate`` messages/s for ``--seconds`` (a batch every ``--batch-ms``: the
  messages due by then), then up to ``--drain`` s for the healthy receivers to get the rest.
  Measured: deliveries/s at the healthy receivers while the driver sends (arrivals in the sending
  window / its length) and over the whole phase (deliveries / (last arrival − first commit));
  latency per delivery = receiver's arrival − the message's commit: p50, p90, p99, max; deliveries
  not at their receiver after the drain, and healthy deliveries not ``delivered`` in the database;
  attempts per healthy delivery; the hanging endpoints' requests held at once (at the receiver, and
  ``delivering`` rows sampled twice a second: both must stay at ``WEBHOOK_MAX_IN_FLIGHT``); database
  round trips per delivery from this process (calls of psycopg2's wait callback, which the bench
  wraps: one per statement sent and answered; attributed to ``db/webhook_deliveries``'s functions),
  ``pg_stat_database`` transactions per delivery; CPU per delivery of this process, PostgreSQL (app
  backends, WAL writer, the rest) and the child; this process's hub lag.
* pending: every receiver now hangs. A first fill (5 messages per endpoint) takes every endpoint's
  slots (``WEBHOOK_MAX_IN_FLIGHT`` requests each, held); then ``--pending`` more deliveries are
  committed (messages of ``1 + --hanging`` deliveries each) and wait. RSS per pending delivery = this
  process's RSS after the second fill − after the first, over the deliveries added (the first fill's
  share — requests in flight, each a greenlet and a socket — is shown apart, per request in flight),
  against the table's growth in PostgreSQL (``pg_total_relation_size``) per delivery: where pending
  deliveries live.
* capacity: the healthy receivers answer again (the held requests first) and the dispatcher works
  through the backlog the pending phase left (one delivery per message for the healthy endpoints):
  deliveries/s until all arrived (at most ``--capacity-timeout`` s), with CPU and round trips per
  delivery — what it can do when it never waits for the facts.

The database is new: no phase is preceded by a ``VACUUM (ANALYZE)`` unless ``--vacuum`` (after the
warm-up); ``webhook_deliveries``' live and dead rows and autovacuum's last visits are printed after each
phase, since the claim's plans depend on them.

CPUs (``--cpus``): by default this process (the dispatcher: one hub thread) runs on one CPU and
PostgreSQL and the child on the others, as in production where the database and the receivers are
other machines; ``--cpus shared`` runs all on all CPUs.

Targets (the issue's): >= 1,000 deliveries/s (at 1,000/s offered: >= 98 % of it delivered during the
sending window, none left after the drain) and p99 <= 200 ms commit to 2xx for healthy endpoints,
both in the steady phase with an endpoint hanging. Prints PASS/MISS and exits 0 whatever the figures
(a benchmark, not a test), non-zero when something fails to run. ``--smoke`` (5 endpoints, 100
messages in 1 s, 500 pending) fails when a delivery to a healthy receiver is missing and prints the
figures without judging them. Results and how to run it: ``docs/performance.md`` ("Webhooks").
"""

import sys

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

# ``python bench/webhooks.py`` puts bench/ on sys.path, not the project root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from db.green import gevent_wait_callback, make_psycopg2_green  # noqa: E402

make_psycopg2_green()

import argparse  # noqa: E402
import collections  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from bench._harness import (  # noqa: E402
    Bench,
    Child,
    Database,
    HubLag,
    Once,
    Verdict,
    about,
    nearest_rank,
    postgres_cpu,
    print_log_tails,
    proc_cpu,
    proc_status,
    self_cpu,
    smoke_check,
    split_cpus,
)

TARGET_RATE = 1000.0
TARGET_P99 = 0.200
KEEP_UP = 0.98  # delivered / offered during the sending window that counts as keeping up
CHILD_PREFIX = "@@"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

_INSERT = (
    "INSERT INTO messages (bot_id, contact_id, direction, wa_message_id, body)"
    " SELECT i.bot, i.contact, 'in', i.wa, i.body"
    "   FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::text[]) AS i (bot, contact, wa, body)"
    " RETURNING id"
)


# -- the outside world (the child process): receivers ---------------------------------------------


class Receivers:
    """One raw HTTP/1.1 server per endpoint on 127.0.0.1. A healthy one answers 200 as soon as the
    request has arrived whole; a hanging one (and every one after ``hang_all``) reads the request and
    holds the connection until the client gives up (or ``release`` answers the healthy ones)."""

    def __init__(self, healthy: int, hanging: int) -> None:
        from gevent.server import StreamServer

        self.servers = []
        self.healthy: list[int] = []
        self.hanging: list[int] = []
        for n in range(healthy + hanging):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1024)
            port = listener.getsockname()[1]
            server = StreamServer(listener, functools.partial(self._handle, port))
            server.start()
            self.servers.append(server)
            (self.healthy if n < healthy else self.hanging).append(port)
        self._hanging = set(self.hanging)
        self.hang_all = False
        self.arrivals: dict[str, float] = {}  # message id -> first arrival at its healthy receiver
        self.duplicates = 0  # a message's delivery arriving again at a healthy receiver
        self.bad = 0  # requests that were not a webhook of ours
        self.held: collections.Counter = collections.Counter()  # port -> requests held now
        self.max_held: collections.Counter = collections.Counter()  # port -> most held at once
        self.hung_requests = 0  # requests that arrived at a hanging receiver
        self._holding: dict[int, tuple[Any, int, bytes]] = {}  # id(sock) -> (sock, port, body)

    def _handle(self, port: int, sock: Any, _peer: Any) -> None:
        try:
            body = self._read(sock)
            if body is None:
                return
            arrived = time.time()
            if port in self._hanging or self.hang_all:
                self._hold(sock, port, body)
                return
            sock.sendall(OK)
            self._arrived(body, arrived)
        except OSError:
            pass
        finally:
            sock.close()

    @staticmethod
    def _read(sock: Any) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            body += chunk
        return body

    def _arrived(self, body: bytes, arrived: float) -> None:
        try:
            message_id = json.loads(body)["data"]["message_id"]
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            return
        if message_id in self.arrivals:
            self.duplicates += 1
        else:
            self.arrivals[message_id] = arrived

    def _hold(self, sock: Any, port: int, body: bytes) -> None:
        if port in self._hanging:
            self.hung_requests += 1
        self.held[port] += 1
        self.max_held[port] = max(self.max_held[port], self.held[port])
        self._holding[id(sock)] = (sock, port, body)
        try:
            while sock.recv(65536):  # until the client gives up (or release() shuts the socket)
                pass
        finally:
            self._holding.pop(id(sock), None)
            self.held[port] -= 1

    def release(self) -> int:
        """Healthy receivers answer again: the requests they hold get their 200 now (recorded as
        arriving now), and new ones at once. Returns how many were answered."""
        self.hang_all = False
        answered = 0
        for sock, port, body in list(self._holding.values()):
            if port in self._hanging:
                continue
            try:
                sock.sendall(OK)
                self._arrived(body, time.time())
                sock.shutdown(socket.SHUT_RDWR)  # the holding greenlet's recv returns; it closes
                answered += 1
            except OSError:
                pass
        return answered

    def held_now(self) -> dict:
        return {"healthy": sum(self.held[p] for p in self.healthy), "hanging": sum(self.held[p] for p in self.hanging)}

    def stop(self) -> None:
        for server in self.servers:
            server.close()  # no new connections
        for sock, _port, _body in list(self._holding.values()):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # its holding greenlet's recv returns
            except OSError:
                pass
        for server in self.servers:
            server.stop(timeout=0.5)


# -- the outside world: the driver ---------------------------------------------------------------


class Driver:
    """Commits inbound messages (the fact), round robin over the bots, in multi-row inserts under the
    tenant through the pool; records when each commit returned."""

    def __init__(self, pool: Any, receivers: Receivers, tenant: str, bots: list[str], contacts: list[str]) -> None:
        self.pool = pool
        self.receivers = receivers
        self.tenant = tenant
        self.bots = bots
        self.contacts = contacts
        self.seq = 0

    def insert(self, n: int) -> tuple[list[str], float, float]:
        """Commit ``n`` messages in one statement; (their ids, when the statement was sent, when its
        commit returned)."""
        bots, contacts, was, bodies = [], [], [], []
        for _ in range(n):
            k = self.seq % len(self.bots)
            self.seq += 1
            bots.append(self.bots[k])
            contacts.append(self.contacts[k])
            was.append(f"bench-{os.getpid()}-{self.seq}")
            bodies.append(f"hello {self.seq}")
        sent = time.time()
        rows = self.pool.query(self.tenant, _INSERT, (bots, contacts, was, bodies), repeatable=False)
        return [str(r[0]) for r in rows], sent, time.time()

    def open_loop(self, rate: float, seconds: float, batch_ms: float, drain: float) -> dict:
        """Messages at ``rate`` for ``seconds`` (each batch: what came due since the last), then up to
        ``drain`` s for every one to reach its healthy receiver; the phase's figures."""
        arrivals = self.receivers.arrivals
        duplicates0, hung0 = self.receivers.duplicates, self.receivers.hung_requests
        for port in self.receivers.hanging:
            self.receivers.max_held[port] = self.receivers.held[port]
        commits: dict[str, float] = {}
        statements: list[float] = []
        batches: list[int] = []
        total = int(rate * seconds)
        interval = batch_ms / 1000.0
        start = time.time()
        k = 0
        tick = start
        while k < total:
            due = min(total, int((time.time() - start) * rate) + 1)
            if due > k:
                ids, sent, committed = self.insert(due - k)
                statements.append(committed - sent)
                batches.append(due - k)
                for message_id in ids:
                    commits[message_id] = committed
                k = due
            tick += interval
            wait = tick - time.time()
            if wait > 0:
                gevent.sleep(wait)
            else:
                tick = time.time()
                gevent.sleep(0)
        sending_ended = time.time()
        deadline = sending_ended + drain
        while time.time() < deadline and any(m not in arrivals for m in commits):
            gevent.sleep(0.05)
        missing = [m for m in commits if m not in arrivals]
        delivered = [(commits[m], arrivals[m]) for m in commits if m in arrivals]
        latencies = sorted(a - c for c, a in delivered)
        first_commit = min(commits.values(), default=start)
        last_arrival = max((a for _, a in delivered), default=start)
        in_window = sum(1 for _, a in delivered if a <= sending_ended)
        statements.sort()
        return {
            "sent": len(commits), "seconds": seconds, "offered": len(commits) / max(1e-9, sending_ended - start),
            "delivered": len(delivered), "missing": len(missing),
            "in_window": in_window / max(1e-9, sending_ended - start),
            "overall": len(delivered) / (last_arrival - first_commit) if last_arrival > first_commit else 0.0,
            "p50": nearest_rank(latencies, 0.50), "p90": nearest_rank(latencies, 0.90),
            "p99": nearest_rank(latencies, 0.99), "max": latencies[-1] if latencies else float("nan"),
            "negative": sum(1 for x in latencies if x < 0),
            "worst_second_p99": _worst_second(delivered, start),
            "drain": max(0.0, last_arrival - sending_ended),
            "duplicates": self.receivers.duplicates - duplicates0,
            "hung_requests": self.receivers.hung_requests - hung0,
            "hanging_max_held": max((self.receivers.max_held[p] for p in self.receivers.hanging), default=0),
            "batches": len(batches), "batch_mean": sum(batches) / max(1, len(batches)),
            "insert_p50": nearest_rank(statements, 0.50), "insert_p99": nearest_rank(statements, 0.99),
            "insert_max": statements[-1] if statements else float("nan"),
            "message_ids_missing": missing[:5],
        }

    def fill(self, messages: int, batch: int) -> dict:
        """``messages`` committed as fast as one connection goes, ``batch`` per statement."""
        started = time.time()
        done = 0
        while done < messages:
            n = min(batch, messages - done)
            self.insert(n)
            done += n
        return {"messages": done, "seconds": time.time() - started}

    def wait_arrivals(self, since: int, expected: int, within: float) -> dict:
        """Until ``expected`` more first arrivals at the healthy receivers than ``since`` (or ``within`` s);
        the count, and the times of the first and last."""
        started = time.time()
        arrivals = self.receivers.arrivals
        while len(arrivals) - since < expected and time.time() - started < within:
            gevent.sleep(0.05)
        times = list(arrivals.values())[since:]
        return {"arrived": len(times), "first": min(times, default=started), "last": max(times, default=started),
                "started": started}


def _worst_second(delivered: list[tuple[float, float]], start: float) -> float:
    """The highest p99 of one second's deliveries (by commit second)."""
    by_second: dict[int, list[float]] = collections.defaultdict(list)
    for committed, arrived in delivered:
        by_second[int(committed - start)].append(arrived - committed)
    return max((nearest_rank(sorted(v), 0.99) for v in by_second.values()), default=float("nan"))


def child_main(config_path: str) -> int:
    from gevent.fileobject import FileObjectPosix

    from actors.pool import Pool, PoolConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    with open(config_path, encoding="utf-8") as fh:
        config = json.load(fh)
    receivers = Receivers(config["healthy"], config["hanging"])
    pool = Pool(PoolConfig(dsn=config["dsn"], size=4))
    out = sys.stdout

    def say(data: dict) -> None:
        out.write(CHILD_PREFIX + json.dumps(data) + "\n")
        out.flush()

    try:
        if not pool.wait_ready(10):
            raise RuntimeError(f"the driver's pool did not connect: {pool.stats()['last_connect_error']}")
        driver = Driver(pool, receivers, config["tenant"], config["bots"], config["contacts"])
        say({"pid": os.getpid(), "healthy": receivers.healthy, "hanging": receivers.hanging})
        commands = FileObjectPosix(sys.stdin.fileno(), "rb")  # cooperative: the receivers keep serving
        for line in commands:
            cmd = json.loads(line)
            kind = cmd.pop("kind")
            if kind == "stop":
                break
            if kind == "open":
                say(driver.open_loop(**cmd))
            elif kind == "fill":
                say(driver.fill(**cmd))
            elif kind == "hang_all":
                receivers.hang_all = True
                say({})
            elif kind == "release":
                say({"answered": receivers.release(), "arrivals": len(receivers.arrivals)})
            elif kind == "held":
                say(receivers.held_now())
            elif kind == "wait_arrivals":
                say(driver.wait_arrivals(**cmd))
            else:
                raise ValueError(f"unknown command {kind!r}")
    finally:
        receivers.stop()
        pool.stop()
    return 0


class World(Child):
    """The receivers and the driver in a child process; one JSON line each way per command. Its stderr
    goes to ``world.log`` in the run's directory."""

    def __init__(self, work: str, config: dict) -> None:
        config_path = os.path.join(work, "world.json")
        with open(config_path, "w", encoding="utf-8") as fh:
            json.dump(config, fh)
        super().__init__("the receivers' process", [sys.executable, os.path.abspath(__file__), "--child", config_path],
                         log=os.path.join(work, "world.log"), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        hello = self._read(60)
        self.healthy: list[int] = hello["healthy"]
        self.hanging: list[int] = hello["hanging"]

    def _read(self, timeout: float) -> dict:
        with gevent.Timeout(timeout, RuntimeError(f"the child did not answer in {timeout:g} s; see {self.log.name}")):
            while True:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"the child exited ({self.proc.poll()}); see {self.log.name}")
                text = line.decode().strip()
                if text.startswith(CHILD_PREFIX):
                    return json.loads(text[len(CHILD_PREFIX):])

    def call(self, kind: str, timeout: float = 60.0, **args: Any) -> dict:
        self.proc.stdin.write((json.dumps({"kind": kind, **args}) + "\n").encode())
        self.proc.stdin.flush()
        return self._read(timeout)

    def stop(self, timeout: float = 10.0, sig: int | None = None) -> int:
        """Asks the child to end (a kill after ``timeout``); its exit code."""
        if self.proc.poll() is None and sig is None:
            try:
                self.proc.stdin.write(b'{"kind": "stop"}\n')
                self.proc.stdin.flush()
            except OSError:  # gone already: the wait below reads its exit code
                pass
        return super().stop(timeout, sig)


# -- measuring in the dispatcher's process --------------------------------------------------------


class RoundTrips:
    """Counts psycopg2 wait-callback calls (one per statement string sent and answered), each
    attributed to the calling function in ``db/`` (walking up the stack)."""

    def __init__(self) -> None:
        from psycopg2 import extensions

        self.total = 0
        self.by_caller: collections.Counter = collections.Counter()
        self.excluded: set[int] = set()  # id() of connections not counted (the bench's own)
        self._db_dir = os.path.join(ROOT, "db") + os.sep
        extensions.set_wait_callback(self._callback)

    def _callback(self, conn: Any, timeout: Any = None) -> None:
        if id(conn) not in self.excluded:
            self.total += 1
            self.by_caller[self._caller()] += 1
        return gevent_wait_callback(conn, timeout)

    def _caller(self) -> str:
        frame = sys._getframe(2)
        depth = 0
        while frame is not None and depth < 25:
            filename = frame.f_code.co_filename
            if filename.startswith(self._db_dir):
                return f"{os.path.basename(filename)[:-3]}.{frame.f_code.co_name}"
            frame = frame.f_back
            depth += 1
        return "other (connects, pings)"


class Stats:
    """Server-side figures over a connection of the bench's own (not counted as a round trip)."""

    def __init__(self, url: str, tenant: str, rts: RoundTrips) -> None:
        import psycopg2

        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True
        rts.excluded.add(id(self.conn))
        with self.conn.cursor() as cur:  # under the app role, row-level security shows this tenant's rows
            cur.execute("SELECT set_config('app.current_tenant', %s, false)", (tenant,))

    def one(self, sql: str, params: Any = None) -> Any:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]

    def xacts(self) -> int:
        return int(self.one("SELECT xact_commit + xact_rollback FROM pg_stat_database"
                            " WHERE datname = current_database()"))

    def states(self, endpoints: list[str] | None = None) -> collections.Counter:
        """Deliveries by state (of ``endpoints``, or all)."""
        with self.conn.cursor() as cur:
            if endpoints is None:
                cur.execute("SELECT state, count(*) FROM webhook_deliveries GROUP BY state")
            else:
                cur.execute("SELECT state, count(*) FROM webhook_deliveries WHERE endpoint_id = ANY (%s::uuid[])"
                            " GROUP BY state", (endpoints,))
            return collections.Counter(dict(cur.fetchall()))

    def attempts(self, endpoints: list[str]) -> int:
        return int(self.one("SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id"
                            " WHERE d.endpoint_id = ANY (%s::uuid[])", (endpoints,)))

    def table_health(self) -> str:
        """webhook_deliveries' live and dead rows and when autovacuum last vacuumed and analysed it (the
        claim's plans depend on the statistics)."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT n_live_tup, n_dead_tup, last_autovacuum, last_autoanalyze, last_vacuum, last_analyze"
                        " FROM pg_stat_user_tables WHERE relname = 'webhook_deliveries'")
            row = cur.fetchone()
        if row is None:
            return "webhook_deliveries: no statistics row"
        live, dead, *times = row
        last = [f"{t:%H:%M:%S}" if t is not None else "never" for t in times]
        return (f"webhook_deliveries: {live} live rows, {dead} dead; autovacuum {last[0]}, autoanalyze {last[1]}, "
                f"vacuum {last[2]}, analyze {last[3]}")

    def table_bytes(self) -> int:
        return int(self.one("SELECT pg_total_relation_size('webhook_deliveries')"))

    def settings(self) -> str:
        with self.conn.cursor() as cur:
            cur.execute("SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit',"
                        " 'shared_buffers') ORDER BY name")
            return ", ".join(f"{n}={s}" for n, s in cur.fetchall())

    def close(self) -> None:
        self.conn.close()


@dataclasses.dataclass
class Run:
    args: argparse.Namespace
    bench: Bench
    db: Database
    pool: Any
    world: World
    rts: RoundTrips
    stats: Stats
    dispatcher: Any  # the actor object
    healthy_ids: list[str]
    hanging_ids: list[str]
    postmaster: int | None
    lag: HubLag
    published: collections.Counter
    stop_world: Once
    stop_dispatcher: Once


def snapshot(run: Run) -> dict:
    return {"rt": run.rts.total, "callers": collections.Counter(run.rts.by_caller), "xacts": run.stats.xacts(),
            "cpu_self": self_cpu(), "cpu_pg": postgres_cpu(run.postmaster), "cpu_child": proc_cpu(run.world.pid),
            "mono": time.monotonic(), "load": os.getloadavg()[0]}


def report_costs(run: Run, before: dict, after: dict, deliveries: int) -> dict:
    """Round trips, transactions and CPU per delivery between two snapshots; printed, and returned."""
    n = max(1, deliveries)
    wall = after["mono"] - before["mono"]
    rt = after["rt"] - before["rt"]
    callers = after["callers"] - before["callers"]
    xacts = after["xacts"] - before["xacts"]
    cpu_self = after["cpu_self"] - before["cpu_self"]
    pg = after["cpu_pg"] - before["cpu_pg"]
    cpu_pg = sum(pg.values())
    cpu_child = after["cpu_child"] - before["cpu_child"]
    parts = ", ".join(f"{k} {v / n:.3f}" for k, v in callers.most_common())
    print(f"  database: {rt / n:.3f} round trips/delivery from this process ({rt} in all: {parts}); "
          f"{xacts / n:.2f} transactions/delivery on the server (the driver's inserts included)")
    pg_parts = ", ".join(f"{k} {pg.get(k, 0.0) / n * 1000:.3f}" for k in ("backends", "walwriter", "other"))
    print(f"  CPU per delivery: this process (the dispatcher) {cpu_self / n * 1000:.3f} ms, PostgreSQL "
          f"{cpu_pg / n * 1000:.3f} ms ({pg_parts}), receivers + driver {cpu_child / n * 1000:.3f} ms; busy over "
          f"{wall:.1f} s: this process {cpu_self / wall:.2f}, PostgreSQL {cpu_pg / wall:.2f}, child "
          f"{cpu_child / wall:.2f} cores; load average {after['load']:.2f}")
    lag_p99, lag_max = run.lag.between(before["mono"], after["mono"])
    print(f"  hub lag of this process: p99 {lag_p99 * 1000:.0f} ms, max {lag_max * 1000:.0f} ms")
    return {"rt": rt / n, "cpu_self": cpu_self / n, "cpu_pg": cpu_pg / n, "cpu_child": cpu_child / n,
            "busy_self": cpu_self / wall}


class InFlightSampler:
    """``delivering`` rows of the hanging endpoints, sampled twice a second from the database."""

    def __init__(self, stats: Stats, endpoints: list[str]) -> None:
        self.samples: list[int] = []
        self._stats = stats
        self._endpoints = endpoints
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            if self._endpoints:
                per = self._stats.states(self._endpoints)
                self.samples.append(per.get("delivering", 0))
            gevent.sleep(0.5)

    def stop(self) -> None:
        self._greenlet.kill()
        if self._endpoints:
            self.samples.append(self._stats.states(self._endpoints).get("delivering", 0))


# -- phases ---------------------------------------------------------------------------------------


def steady(run: Run, name: str, rate: float, seconds: float, drain: float) -> dict:
    args = run.args
    before = snapshot(run)
    sampler = InFlightSampler(run.stats, run.hanging_ids)
    try:
        result = run.world.call("open", timeout=seconds + drain + 120, rate=rate, seconds=seconds,
                                batch_ms=args.batch_ms, drain=drain)
    finally:
        sampler.stop()
    gevent.sleep(1.5)  # outcomes recorded; backends flush their statistics within a second of going idle
    after = snapshot(run)
    healthy_states = run.stats.states(run.healthy_ids)
    attempts = run.stats.attempts(run.healthy_ids)
    result["db_not_delivered"] = sum(v for k, v in healthy_states.items() if k != "delivered")
    result["db_states"] = dict(healthy_states)
    result["attempts_per_delivery"] = attempts / max(1, healthy_states.get("delivered", 0))
    result["sampled_in_flight_max"] = max(sampler.samples, default=0)
    print(f"{name}: {result['sent']} messages committed in {seconds:g} s ({result['offered']:.0f}/s offered, "
          f"{result['batches']} inserts of {result['batch_mean']:.1f} on average: p50 "
          f"{result['insert_p50'] * 1000:.1f} ms, p99 {result['insert_p99'] * 1000:.1f} ms, max "
          f"{result['insert_max'] * 1000:.0f} ms); {result['delivered']} delivered to the healthy receivers, "
          f"{result['missing']} not within {drain:g} s of the last commit")
    print(f"  throughput {result['in_window']:.0f} deliveries/s while sending, {result['overall']:.0f}/s first commit "
          f"to last arrival; last arrival {result['drain']:.2f} s after the last commit")
    print(f"  latency commit -> receiver: p50 {result['p50'] * 1000:.1f} ms, p90 {result['p90'] * 1000:.1f} ms, "
          f"p99 {result['p99'] * 1000:.1f} ms, max {result['max'] * 1000:.0f} ms (worst one-second p99 "
          f"{result['worst_second_p99'] * 1000:.0f} ms; {result['negative']} arrivals timed before their commit "
          f"returned)")
    print(f"  database: healthy deliveries by state {result['db_states']}; attempts per delivered "
          f"{result['attempts_per_delivery']:.3f}; duplicates at the receivers {result['duplicates']}")
    print(f"  hanging endpoint(s): {result['hung_requests']} requests arrived, at most {result['hanging_max_held']} "
          f"held at once at the receiver, at most {result['sampled_in_flight_max']} delivering in the database "
          f"(sampled twice a second); WEBHOOK_MAX_IN_FLIGHT {run.dispatcher.deps.settings.webhook_max_in_flight}")
    result.update(report_costs(run, before, after, result["delivered"]))
    print(f"  {run.stats.table_health()} (at {time.strftime('%H:%M:%S')})")
    print()
    return result


def wait_in_flight(run: Run, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while run.dispatcher.in_flight() < expected and time.monotonic() < deadline:
        gevent.sleep(0.1)
    return run.dispatcher.in_flight()


def pending(run: Run) -> dict:
    """Every receiver hangs; slots taken; then ``--pending`` deliveries committed and left waiting."""
    args = run.args
    endpoints = len(run.healthy_ids) + len(run.hanging_ids)
    max_in_flight = run.dispatcher.deps.settings.webhook_max_in_flight
    slots = min(endpoints * max_in_flight, run.dispatcher.deps.settings.webhook_concurrency)
    rss0 = proc_status()
    flight0 = run.dispatcher.in_flight()
    run.world.call("hang_all")
    run.world.call("fill", messages=5 * len(run.healthy_ids), batch=500)
    flight_a = wait_in_flight(run, slots, 30)
    gevent.sleep(2.0)
    rss_a, states_a, bytes_a = proc_status(), run.stats.states(), run.stats.table_bytes()
    per_message = 1 + len(run.hanging_ids)
    messages = -(-args.pending // per_message)
    filled = run.world.call("fill", timeout=600, messages=messages, batch=1000)
    gevent.sleep(3.0)  # polls and wakes come; with no room, claims take nothing
    rss_b, states_b, bytes_b = proc_status(), run.stats.states(), run.stats.table_bytes()
    added = states_b["pending"] - states_a["pending"]
    held = run.world.call("held")
    per_pending = (rss_b["VmRSS"] - rss_a["VmRSS"]) * 1024 / max(1, added)
    per_flight = (rss_a["VmRSS"] - rss0["VmRSS"]) * 1024 / max(1, flight_a - flight0)
    pg_per = (bytes_b - bytes_a) / max(1, added)
    print(f"pending: every receiver hangs; {flight_a} requests in flight (slots {slots}: {endpoints} endpoints x "
          f"{max_in_flight}), held at the receivers {held}")
    print(f"  then {filled['messages']} messages committed in {filled['seconds']:.1f} s: {added} deliveries more "
          f"pending ({states_b['pending']} in all; by state {dict(states_b)})")
    print(f"  this process's RSS: {rss0['VmRSS'] / 1024:.1f} MiB before, {rss_a['VmRSS'] / 1024:.1f} MiB with every "
          f"slot in flight ({per_flight / 1024:+.1f} KiB per request in flight), {rss_b['VmRSS'] / 1024:.1f} MiB "
          f"with {added} more pending: {per_pending:+.1f} bytes per pending delivery (RssAnon "
          f"{(rss_b['RssAnon'] - rss_a['RssAnon']) * 1024 / max(1, added):+.1f})")
    print(f"  in PostgreSQL: webhook_deliveries (with its indexes) grew {(bytes_b - bytes_a) / 2**20:.1f} MiB, "
          f"{pg_per:.0f} bytes per pending delivery\n")
    return {"added": added, "per_pending": per_pending, "per_flight": per_flight, "pg_per": pg_per,
            "in_flight": flight_a, "slots": slots, "pending_total": states_b["pending"]}


def capacity(run: Run) -> dict:
    """The healthy receivers answer again; the backlog for them drains as fast as the dispatcher goes."""
    before = snapshot(run)
    released = run.world.call("release")
    expected = run.stats.states(run.healthy_ids)
    due = expected.get("pending", 0) + expected.get("delivering", 0)
    waiting = max(0, due - released["answered"])
    got = run.world.call("wait_arrivals", timeout=run.args.capacity_timeout + 60, since=released["arrivals"],
                         expected=waiting, within=run.args.capacity_timeout)
    gevent.sleep(1.5)
    after = snapshot(run)
    arrived = got["arrived"]
    seconds = got["last"] - got["started"]
    rate = arrived / seconds if seconds > 0 else 0.0
    left = run.stats.states(run.healthy_ids)
    print(f"capacity: the healthy receivers answer again ({released['answered']} held requests answered); "
          f"{arrived} of the {waiting} waiting deliveries arrived in {seconds:.1f} s: "
          f"{rate:.0f} deliveries/s; healthy deliveries by state now {dict(left)}")
    costs = report_costs(run, before, after, arrived)
    print(f"  {run.stats.table_health()} (at {time.strftime('%H:%M:%S')})\n")
    return {"rate": rate, "arrived": arrived, "expected": waiting, **costs}


# -- the run ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=100, help="healthy endpoints, one bot each (default 100)")
    parser.add_argument("--hanging", type=int, default=1,
                        help="endpoints whose receiver never answers, each wanting every event (default 1)")
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="messages/s in the steady phase (default 1000)")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds of the steady phase (default 15)")
    parser.add_argument("--batch-ms", type=float, default=5.0,
                        help="the driver commits what came due every this many ms (default 5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up at rate/5; 0 skips it")
    parser.add_argument("--drain", type=float, default=20.0,
                        help="seconds to wait for deliveries after the last commit (default 20)")
    parser.add_argument("--pending", type=int, default=50000,
                        help="deliveries committed while every receiver hangs, for RSS per pending delivery")
    parser.add_argument("--capacity-timeout", type=float, default=60.0,
                        help="at most this many seconds for the backlog to drain in the capacity phase")
    parser.add_argument("--pool-size", type=int, default=20, help="the dispatcher's pool (default 20)")
    parser.add_argument("--vacuum", action="store_true",
                        help="VACUUM (ANALYZE) the webhook and message tables after the warm-up (with the owner's "
                             "URL), as pgbench vacuums before a run; off by default: a new database, no statistics")
    parser.add_argument("--cpus", choices=("split", "shared"), default="split",
                        help="split (default): this process on one CPU, PostgreSQL and the receivers on the "
                             "others; shared: all on all CPUs")
    parser.add_argument("--smoke", action="store_true",
                        help="a few seconds with tiny counts (5 endpoints + 1 hanging, 100 messages in 1 s, no "
                             "warm-up, 500 pending; overrides --endpoints, --hanging, --rate, --seconds, --warmup, "
                             "--drain, --pending, --capacity-timeout): checks that every phase runs and every message "
                             "reaches its healthy receiver, exits non-zero on any failure; the figures mean nothing "
                             "and the targets are not judged")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.endpoints, args.hanging, args.rate, args.seconds, args.warmup = 5, 1, 100.0, 1.0, 0.0
        args.drain, args.pending, args.capacity_timeout = 15.0, 500, 20.0
    if args.endpoints < 1 or args.hanging < 0:
        parser.error("--endpoints must be at least 1 and --hanging at least 0")
    return args


def seed(pool: Any, bots: int) -> tuple[str, list[str], list[str]]:
    """A tenant with ``bots`` bots and one contact per bot: (tenant id, bot ids, contact ids)."""
    from db import tenants

    tenant_id, _key = tenants.create_tenant(pool, f"bench-webhooks-{os.getpid()}")
    bot_ids = [str(r[0]) for r in pool.query(
        tenant_id, "INSERT INTO bots (name) SELECT 'bench-' || n FROM generate_series(1, %s) AS n RETURNING id",
        (bots,), repeatable=False)]
    rows = pool.query(
        tenant_id,
        "INSERT INTO contacts (bot_id, jid) SELECT u.bot, (15550000000 + u.n)::text || '@s.whatsapp.net'"
        " FROM unnest(%s::uuid[]) WITH ORDINALITY AS u (bot, n) RETURNING bot_id, id",
        (bot_ids,), repeatable=False)
    contact_of = {str(b): str(c) for b, c in rows}
    return tenant_id, bot_ids, [contact_of[b] for b in bot_ids]


def add_endpoints(pool: Any, tenant_id: str, urls: list[str], bots: list[str | None]) -> list[str]:
    """An endpoint per URL, wanting the events of its bot (None: every bot); their ids in order."""
    from sansio import webhooks

    ids = []
    for url, bot in zip(urls, bots, strict=True):
        rows = pool.query(tenant_id, "INSERT INTO webhook_endpoints (url, secret, bot_ids) VALUES (%s, %s, %s::uuid[])"
                          " RETURNING id", (url, webhooks.new_secret(), None if bot is None else [bot]),
                          repeatable=False)
        ids.append(str(rows[0][0]))
    return ids


def start(bench: Bench, args: argparse.Namespace) -> Run:
    """The database, the pool, the seed, the receivers' process, the endpoints, the dispatcher; the
    run's header printed."""
    from prometheus_client.registry import CollectorRegistry

    from actors.base import actor_of
    from actors.webhooks import WebhookDeps, WebhookDispatcher, WebhookMetrics
    from core import config

    rts = RoundTrips()  # the wait callback, before any connection opens
    db = bench.database()
    pool = bench.pool(db.app_url, args.pool_size)
    tenant_id, bot_ids, contact_ids = seed(pool, args.endpoints)
    world = World(bench.work, {"dsn": db.app_url, "tenant": tenant_id, "bots": bot_ids, "contacts": contact_ids,
                               "healthy": args.endpoints, "hanging": args.hanging})
    stop_world = bench.stopper(world.stop, quiet=True)
    urls = [f"http://127.0.0.1:{port}/hook/{i}" for i, port in enumerate(world.healthy)]
    healthy_ids = add_endpoints(pool, tenant_id, urls, list(bot_ids))
    hanging_ids = add_endpoints(pool, tenant_id, [f"http://127.0.0.1:{p}/hang" for p in world.hanging],
                                [None] * len(world.hanging))
    stats = Stats(db.superuser_url or db.owner_url or db.app_url, tenant_id, rts)
    bench.stopper(stats.close)
    postmaster = db.postmaster_pid()
    cpus = (split_cpus("the dispatcher's process", postmaster, {"the receivers' process": world.pid})
            if args.cpus == "split" else "CPUs shared by the dispatcher's process, PostgreSQL and the receivers")
    settings = config.load({
        "DATABASE_URL": db.app_url, "DATABASE_OWNER_URL": db.owner_url or "", "DATA_DIR": bench.path("data"),
        "LOG_LEVEL": "warning", "DATABASE_MAX_CONNECTIONS": str(args.pool_size),
        "WEBHOOKS_ALLOW_HTTP": "true", "WEBHOOKS_ALLOW_PRIVATE": "true",
    })
    published: collections.Counter = collections.Counter()

    def publish(_tenant: str, _bot: str | None, event_type: str, _payload: dict) -> None:
        published[event_type] += 1

    deps = WebhookDeps(settings=settings, pool=pool, owner=f"bench-webhooks-{os.getpid()}", publish=publish,
                       metrics=WebhookMetrics(CollectorRegistry(), pool), listen_dsn=db.app_url)
    ref = WebhookDispatcher.start(deps)
    dispatcher = actor_of(ref)
    stop_dispatcher = bench.stopper(lambda: ref.stop(timeout=10), quiet=True)
    lag = bench.hub_lag()
    print(f"{about(db, minutes=True)} ({stats.settings()})  load average {os.getloadavg()[0]:.2f} (other processes "
          "share these CPUs)")
    print(f"{args.endpoints} healthy endpoints (one bot each) + {args.hanging} hanging (every bot's events); "
          f"WEBHOOK_TIMEOUT {settings.webhook_timeout:g} s, WEBHOOK_MAX_IN_FLIGHT {settings.webhook_max_in_flight}, "
          f"WEBHOOK_CONCURRENCY {settings.webhook_concurrency}; pool {args.pool_size}; LISTEN on; inserts every "
          f"{args.batch_ms:g} ms")
    print(cpus + "\n")
    return Run(args, bench, db, pool, world, rts, stats, dispatcher, healthy_ids, hanging_ids, postmaster, lag,
               published, stop_world, stop_dispatcher)


def vacuum(db: Database) -> None:
    """``VACUUM (ANALYZE)`` of the tables the deliveries touch (``--vacuum``)."""
    import psycopg2

    url = db.owner_url or db.superuser_url
    if url is None:
        print("(--vacuum: no owner's URL, not vacuumed)\n")
        return
    started = time.monotonic()
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM (ANALYZE) webhook_deliveries, webhook_attempts, webhook_endpoints, messages")
    finally:
        conn.close()
    print(f"(vacuumed and analysed the webhook and message tables in {time.monotonic() - started:.1f} s)\n")


def summarize(args: argparse.Namespace, run: Run, results: dict) -> None:
    verdict = Verdict(not args.smoke)
    st, pe, ca = results["steady"], results["pending"], results["capacity"]
    limit = run.dispatcher.deps.settings.webhook_max_in_flight
    at_target = args.rate >= TARGET_RATE
    kept = st["in_window"] >= KEEP_UP * TARGET_RATE and st["missing"] == 0
    lines = [
        f"deliveries/s at {args.rate:g}/s offered, one endpoint hanging: {st['in_window']:.0f} while sending "
        f"(target >= {TARGET_RATE:g}; kept up: >= {KEEP_UP:.0%} of it, none left): "
        + (verdict(kept) if at_target else "(not judged: --rate below the target)"),
        f"p99 commit -> 2xx, healthy endpoints: {st['p99'] * 1000:.1f} ms (p50 {st['p50'] * 1000:.1f}, p90 "
        f"{st['p90'] * 1000:.1f}, max {st['max'] * 1000:.0f}) (target <= {TARGET_P99 * 1000:g} ms): "
        + verdict(st["p99"] <= TARGET_P99),
        f"left undelivered after the drain: {st['missing']} at the receivers, {st['db_not_delivered']} in the "
        "database: " + verdict(st["missing"] == 0 and st["db_not_delivered"] == 0),
        f"hanging endpoint in flight: at most {st['hanging_max_held']} held at its receiver, "
        f"{st['sampled_in_flight_max']} delivering sampled (WEBHOOK_MAX_IN_FLIGHT {limit}): "
        + verdict(st["hanging_max_held"] <= limit and st["sampled_in_flight_max"] <= limit),
        f"RSS per pending delivery: {pe['per_pending']:+.1f} bytes in this process over {pe['added']} pending "
        f"(PostgreSQL: {pe['pg_per']:.0f} bytes each) (bench's bar: <= 50 bytes, i.e. they live in the database): "
        + verdict(pe["per_pending"] <= 50),
        f"capacity (backlog drain): {ca['rate']:.0f} deliveries/s, {ca['cpu_self'] * 1000:.3f} ms of the dispatcher's "
        f"CPU each (>= {TARGET_RATE:g}): " + verdict(ca["rate"] >= TARGET_RATE),
        f"round trips per delivery from the dispatcher: {st['rt']:.3f} steady, {ca['rt']:.3f} in the backlog drain",
    ]
    print("summary:")
    for line in lines:
        print(f"  {line}")
    if args.smoke:
        print("smoke run: every phase ran and every message reached its healthy receiver; the figures are from tiny "
              "counts")


def check_smoke(results: dict) -> None:
    st, pe, ca = results["steady"], results["pending"], results["capacity"]
    problems = []
    if not st["sent"]:
        problems.append("no message committed")
    if st["missing"]:
        problems.append(f"{st['missing']} of {st['sent']} messages not at their healthy receiver within the drain "
                        f"(e.g. {st['message_ids_missing']})")
    if st["db_not_delivered"]:
        problems.append(f"{st['db_not_delivered']} healthy deliveries not delivered in the database "
                        f"({st['db_states']})")
    if pe["added"] <= 0:
        problems.append("no delivery left pending while the receivers hung")
    if pe["in_flight"] != pe["slots"]:
        problems.append(f"{pe['in_flight']} requests in flight while every receiver hung, not {pe['slots']}")
    if ca["arrived"] < ca["expected"]:
        problems.append(f"the backlog did not drain: {ca['arrived']} of {ca['expected']} arrived")
    smoke_check("webhooks", problems)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when the output goes to a file
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    with Bench("bench-webhooks-") as bench:
        bench.on_failure(lambda: print_log_tails(bench.work))  # the receivers' log, before it goes
        run = start(bench, args)
        results: dict[str, dict] = {}
        if args.warmup > 0:
            steady(run, f"warm-up {args.rate / 5:g}/s", args.rate / 5, args.warmup, args.drain)
        if args.vacuum:
            vacuum(run.db)
        results["steady"] = steady(run, f"steady {args.rate:g}/s", args.rate, args.seconds, args.drain)
        results["pending"] = pending(run)
        results["capacity"] = capacity(run)
        summarize(args, run, results)
        if args.smoke:
            check_smoke(results)
        run.stop_dispatcher()
        code = run.stop_world()
        if code:
            raise RuntimeError(f"the receivers' process exited with {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
