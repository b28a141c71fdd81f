"""Benchmark: tenant-scoped queries per second through this project's pool against the alternatives.

Run: ``python bench/db_pool.py [--seconds 3] [--warmup 0.5] [--concurrency 1,16] [--rounds 1] [--profile]``;
``--smoke`` for a run of a few seconds that only checks it works (the test suite runs it).

Starts the embedded PostgreSQL in a temporary directory (or uses ``DATABASE_URL`` as the app role and
``DATABASE_OWNER_URL`` for migrations when set), migrates, creates a tenant with a few bots, then runs
the same trivial tenant-scoped statement (``SELECT id FROM bots WHERE id = %s``, under row-level
security) through four variants, each for a fixed time after a warm-up, at each concurrency (greenlets):

  a  held:    one raw connection per greenlet, tenant set once on the session, plain execute (ceiling)
  b  set/reset: a queue of connections; borrow, ``SET app.current_tenant``, query, ``RESET``, release
              (three round trips: the pattern this project replaces)
  c  connect: connect, set tenant + query in one execute, close, for every query
  d  pool:    this project's ``Pool.query(tenant, sql, params)``

It prints queries per second, the ratios d/a, d/b, d/c, PASS/MISS against the targets at the highest
concurrency (d/a >= 0.8, d/b >= 2, d/c >= 30), round trips per query, counted as calls of psycopg2's
wait callback (one per statement sent and answered; a connect counts as one although its handshake
takes several), and CPU time per query at the highest concurrency: this process's, and the embedded
server's (postmaster and its children, from /proc; shown only for the embedded server on Linux). CPU
per query hardly moves with other load on the machine; queries per second do. With ``--rounds N``
every variant runs N times, interleaved with the others so background load hits them alike, and the
median is reported. It exits 0 whatever the figures (a benchmark, not a test) and non-zero when
something fails to run; ``--smoke`` (0.2 s per variant, tiny counts) prints its figures without
judging them. ``--profile`` adds a cProfile run of variant d at the highest concurrency.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402

# ``python bench/db_pool.py`` puts bench/ on sys.path, not the project root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from db.green import gevent_wait_callback, make_psycopg2_green  # noqa: E402

make_psycopg2_green()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.queue  # noqa: E402
import psycopg2  # noqa: E402
from psycopg2 import extensions  # noqa: E402

from bench._harness import CLK_TCK, Bench, Database, Verdict, about, children, proc_cpu, proc_stat  # noqa: E402
from db import tenants  # noqa: E402

SQL = "SELECT id FROM bots WHERE id = %s"
BOTS = 5
TARGETS = (("d/a", "a", 0.8), ("d/b", "b", 2.0), ("d/c", "c", 30.0))
NAMES = {
    "a": "held connection, tenant set once (ceiling)",
    "b": "queue pool: borrow, SET, query, RESET",
    "c": "connect per query",
    "d": "Pool.query (this project)",
}


# -- the variants ---------------------------------------------------------------------------------
# Each variant is prepared for a concurrency (connections opened outside the timed window) and
# returns (per-greenlet query function factory, teardown).


def _connect(url: str) -> Any:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def held(env: "Env", concurrency: int) -> tuple[Callable[[int], Callable[[], Any]], Callable[[], None]]:
    conns = []
    for _ in range(concurrency):
        conn = _connect(env.app_url)
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('app.current_tenant', %s, false)", (env.tenant,))
        conns.append(conn)

    def make(i: int) -> Callable[[], Any]:
        cur = conns[i].cursor()
        params = (env.bot_id,)

        def once() -> Any:
            cur.execute(SQL, params)
            return cur.fetchall()

        return once

    def teardown() -> None:
        for conn in conns:
            conn.close()

    return make, teardown


def set_reset(env: "Env", concurrency: int) -> tuple[Callable[[int], Callable[[], Any]], Callable[[], None]]:
    conns = [_connect(env.app_url) for _ in range(env.pool_size)]
    idle: gevent.queue.Queue = gevent.queue.Queue()
    for conn in conns:
        idle.put(conn)

    def make(i: int) -> Callable[[], Any]:
        params = (env.bot_id,)
        tenant = (env.tenant,)

        def once() -> Any:
            conn = idle.get()
            try:
                with conn.cursor() as cur:
                    cur.execute("SET app.current_tenant = %s", tenant)
                    cur.execute(SQL, params)
                    rows = cur.fetchall()
                    cur.execute("RESET app.current_tenant")
                    return rows
            finally:
                idle.put(conn)

        return once

    def teardown() -> None:
        for conn in conns:
            conn.close()

    return make, teardown


def connect_each(env: "Env", concurrency: int) -> tuple[Callable[[int], Callable[[], Any]], Callable[[], None]]:
    statement = "SELECT set_config('app.current_tenant', %s, false); " + SQL

    def make(i: int) -> Callable[[], Any]:
        params = (env.tenant, env.bot_id)

        def once() -> Any:
            conn = _connect(env.app_url)
            try:
                with conn.cursor() as cur:
                    cur.execute(statement, params)
                    return cur.fetchall()
            finally:
                conn.close()

        return once

    return make, lambda: None


def pool_query(env: "Env", concurrency: int) -> tuple[Callable[[int], Callable[[], Any]], Callable[[], None]]:
    pool = env.pool

    def make(i: int) -> Callable[[], Any]:
        params = (env.bot_id,)
        tenant = env.tenant

        def once() -> Any:
            return pool.query(tenant, SQL, params)

        return once

    return make, lambda: None


VARIANTS = {"a": held, "b": set_reset, "c": connect_each, "d": pool_query}


# -- running --------------------------------------------------------------------------------------


class Env:
    def __init__(self, app_url: str, pool: Any, pool_size: int, tenant: str, bot_id: str) -> None:
        self.app_url = app_url
        self.pool = pool
        self.pool_size = pool_size
        self.tenant = tenant
        self.bot_id = bot_id
        self.postmaster_pid: int | None = None


@dataclasses.dataclass(frozen=True)
class Measure:
    qps: float
    client_us: float  # this process's CPU per query
    server_us: float | None  # the server's CPU per query (embedded server only)


def server_cpu_seconds(postmaster_pid: int | None) -> float | None:
    """CPU used so far by the postmaster, its live children and its reaped children, from /proc."""
    if postmaster_pid is None:
        return None
    try:
        fields = proc_stat(postmaster_pid)
    except OSError:
        return None
    seconds = sum(int(x) for x in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
    return seconds + sum(proc_cpu(pid) for pid in children(postmaster_pid))  # a child gone meanwhile: 0


def run_variant(env: Env, key: str, concurrency: int, warmup: float, seconds: float) -> Measure:
    """One variant at one concurrency, measured over ``seconds`` after ``warmup``."""
    make, teardown = VARIANTS[key](env, concurrency)
    try:
        done = [0]
        stop = [False]
        expected = [env.bot_id]

        def worker(i: int) -> None:
            once = make(i)
            rows = once()
            if [str(r[0]) for r in rows] != expected:
                raise AssertionError(f"variant {key} returned {rows!r}, not the tenant's bot")
            while not stop[0]:
                once()
                done[0] += 1

        workers = [gevent.spawn(worker, i) for i in range(concurrency)]
        gevent.sleep(warmup)
        server_before = server_cpu_seconds(env.postmaster_pid)
        start_count, started, cpu_started = done[0], time.perf_counter(), time.process_time()
        gevent.sleep(seconds)
        end_count, ended, cpu_ended = done[0], time.perf_counter(), time.process_time()
        server_after = server_cpu_seconds(env.postmaster_pid)
        stop[0] = True
        gevent.joinall(workers, raise_error=True)
        queries = max(1, end_count - start_count)
        server_us = None
        if server_before is not None and server_after is not None:
            server_us = (server_after - server_before) / queries * 1e6
        return Measure(queries / (ended - started), (cpu_ended - cpu_started) / queries * 1e6, server_us)
    finally:
        teardown()


def round_trips(env: Env, key: str, queries: int) -> float:
    """Wait-callback calls per query (one per statement sent and answered), sequentially."""
    calls = [0]

    def counting(conn: Any, timeout: Any = None) -> None:
        calls[0] += 1
        gevent_wait_callback(conn, timeout)

    make, teardown = VARIANTS[key](env, 1)
    try:
        once = make(0)
        once()
        extensions.set_wait_callback(counting)
        try:
            for _ in range(queries):
                once()
        finally:
            make_psycopg2_green()
        return calls[0] / queries
    finally:
        teardown()


def profile_pool(env: Env, concurrency: int, seconds: float) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    qps = run_variant(env, "d", concurrency, 0.2, seconds).qps
    profiler.disable()
    out = io.StringIO()
    out.write(f"cProfile of variant d at concurrency {concurrency} ({qps:,.0f} q/s under the profiler)\n")
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    return out.getvalue()


def setup(bench: Bench, pool_size: int) -> tuple[Database, Env]:
    db = bench.database()
    pool = bench.pool(db.app_url, pool_size)
    # Let every connection open, so the first timed runs do not wait on connects.
    deadline = time.monotonic() + 10
    while pool.stats()["idle"] < pool_size and time.monotonic() < deadline:
        gevent.sleep(0.02)
    tenant, _key = tenants.create_tenant(pool, f"bench-{os.getpid()}")
    for n in range(BOTS):
        pool.execute(tenant, "INSERT INTO bots (name) VALUES (%s)", (f"bench-bot-{n}",))
    bot_id = str(pool.query(tenant, "SELECT id FROM bots ORDER BY created_at, id LIMIT 1")[0][0])
    env = Env(db.app_url, pool, pool_size, tenant, bot_id)
    try:
        env.postmaster_pid = db.postmaster_pid()
    except (OSError, ValueError, AttributeError):
        env.postmaster_pid = None
    return db, env


def _median(runs: list[Measure]) -> Measure:
    servers = [m.server_us for m in runs if m.server_us is not None]
    return Measure(
        statistics.median(m.qps for m in runs),
        statistics.median(m.client_us for m in runs),
        statistics.median(servers) if servers else None,
    )


def report(results: dict[tuple[str, int], Measure], trips: dict[str, float], concurrencies: list[int],
           verdict: Verdict) -> str:
    top = max(concurrencies)
    cpu_title = f"CPU us/query at conc {top}"
    lines = [f"{'':<48}{'queries per second':>{12 * len(concurrencies)}}{'':>10}{cpu_title:>24}"]
    header = (
        f"{'variant':<48}"
        + "".join(f"{'conc ' + str(c):>12}" for c in concurrencies)
        + f"{'trips/q':>10}{'client':>12}{'server':>12}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for key in VARIANTS:
        row = f"{key + '  ' + NAMES[key]:<48}" + "".join(f"{results[key, c].qps:>12,.0f}" for c in concurrencies)
        server_us = results[key, top].server_us
        server = "-" if server_us is None else f"{server_us:,.0f}"
        lines.append(row + f"{trips[key]:>10.2f}{results[key, top].client_us:>12,.0f}{server:>12}")
    lines.append("")
    for label, other, target in TARGETS:
        ratios = "".join(f"{results['d', c].qps / results[other, c].qps:>12.2f}" for c in concurrencies)
        ratio_top = results["d", top].qps / results[other, top].qps
        lines.append(f"{label:<48}{ratios}   target at conc {top}: >= {target:g}  {verdict(ratio_top >= target)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed duration per variant (default 3)")
    parser.add_argument("--warmup", type=float, default=0.5, help="untimed warm-up per variant (default 0.5)")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated greenlet counts (default 1,16)")
    parser.add_argument("--pool-size", type=int, default=16, help="connections for variants b and d (default 16)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per variant, median reported (default 1)")
    parser.add_argument("--profile", action="store_true", help="also profile variant d at the top concurrency")
    parser.add_argument("--smoke", action="store_true",
                        help="a few seconds with tiny counts (0.2 s per variant at concurrency 1 and 4, pool 2; "
                             "overrides --seconds, --warmup, --concurrency, --pool-size, --rounds): checks that "
                             "every variant runs and returns the tenant's row, exits non-zero on any failure; "
                             "the figures mean nothing and the targets are not judged")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.warmup, args.concurrency, args.pool_size, args.rounds = 0.2, 0.05, "1,4", 2, 1
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    logging.basicConfig(level=logging.WARNING)

    with Bench("bench-db-pool-") as bench:
        db, env = setup(bench, args.pool_size)
        print(
            f"{about(db)}  pool size {args.pool_size}  "
            f"{args.seconds:g}s per run after {args.warmup:g}s warm-up, "
            f"{args.rounds} round{'s' if args.rounds != 1 else ''} (median)"
        )
        print(f"statement: {SQL}  (row-level security, tenant {env.tenant})\n")
        results = {k: _median(v) for k, v in measure_all(env, concurrencies, args).items()}
        trips = {key: round_trips(env, key, 20 if args.smoke else 200) for key in VARIANTS}
        print()
        print(report(results, trips, concurrencies, Verdict(not args.smoke, "(not judged: smoke run)")))
        print("\ntrips/q: psycopg2 wait-callback calls per query (statements sent and answered; a connect counts 1)")
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work skews q/s)")
        if args.profile:
            print()
            print(profile_pool(env, max(concurrencies), args.seconds))
    return 0


def measure_all(env: Env, concurrencies: list[int], args: argparse.Namespace) -> dict[tuple[str, int], list[Measure]]:
    """Every variant at every concurrency, ``--rounds`` times, interleaved; each run printed as it ends."""
    runs: dict[tuple[str, int], list[Measure]] = {}
    for round_no in range(1, args.rounds + 1):
        for concurrency in concurrencies:
            for key in VARIANTS:
                m = run_variant(env, key, concurrency, args.warmup, args.seconds)
                runs.setdefault((key, concurrency), []).append(m)
                server_cpu = "" if m.server_us is None else f", server {m.server_us:,.0f}"
                print(
                    f"  round {round_no}  {key} conc {concurrency:>3}: {m.qps:>10,.0f} q/s"
                    f"  (CPU us/query: client {m.client_us:,.0f}{server_cpu})",
                    flush=True,
                )
    return runs

if __name__ == "__main__":
    sys.exit(main())
