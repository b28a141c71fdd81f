"""What the benchmarks share: a run's teardown, the database, seeding, a root, the hub-lag probe,
percentiles, verdicts, child processes, and figures read from /proc.

Not a benchmark (files of ``bench/`` starting with ``_`` are skipped by ``tests/test_bench_smoke.py``).
Only the standard library is imported here at the top; the project's modules and gevent are imported
where they are used, so the harness serves a gevent-patched benchmark, one that must not be patched
(``bench/dashboard.py``: Playwright's sync API) and their child processes (``bench/sessions.py``'s
neonize child, which must see no gevent) alike. A benchmark puts the project root on ``sys.path``
and then imports ``bench._harness``.

- ``Bench``: one run, a ``Teardown`` (a ``contextlib.ExitStack``). Entering it makes the run's
  temporary directory; everything the run starts registers its stop there (``database``, ``pool`` and
  ``hub_lag`` do it themselves, ``stops``/``stopper`` for the rest), and when the run ends the stops
  run in reverse order — after an exception or a KeyboardInterrupt too, a stop that fails not keeping
  the others from running — and the temporary directory is removed last. ``on_failure`` shows what
  helps after a failure (the children's logs) before they go with the directory. A ``Teardown`` alone
  serves a part of a run (one server of several).
- ``Database``: the embedded PostgreSQL in the run's directory, or ``DATABASE_URL`` (the app role) and
  ``DATABASE_OWNER_URL`` (migrations) when set; migrated either way.
- Seeding: ``seed_paired_bots`` (a tenant whose bots log in to the simulator without a QR code),
  ``cli_tenant`` (``run.py create-tenant``, as an operator makes a tenant).
- ``Root``: just enough of ``actors.system.System`` for ``Supervision``.
- ``HubLag``: how late a 50 ms sleep wakes up, i.e. how busy the process's one hub is.
- ``Verdict``: PASS or MISS against a target; "(not judged)" under ``--smoke``, whose tiny counts make
  figures that mean nothing. ``SmokeFailure``/``smoke_check``: a smoke run that did not go through.
- ``percentile`` (interpolated) and ``nearest_rank``; ``Child`` and ``end_process`` for child
  processes; ``proc_cpu``, ``proc_status``, ``children``, ``self_cpu``, ``postgres_cpu``; ``split_cpus``
  (this process on a CPU of its own, PostgreSQL and the others on the rest); ``free_port``, ``answers``,
  ``wait_until``; ``git_tree`` (a baseline revision's code); py-spy's collapsed stacks.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import http.client
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "run.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- a run and its teardown ------------------------------------------------------------------------


class Once:
    """A stop that runs at most once: called early (to time it, or to read an exit code), the call the
    teardown makes later does nothing and returns the first call's result."""

    def __init__(self, stop: Callable[[], Any]) -> None:
        self._stop = stop
        self.done = False
        self.result: Any = None

    def __call__(self) -> Any:
        if not self.done:
            self.done = True
            self.result = self._stop()
        return self.result


class Teardown(contextlib.ExitStack):
    """Stops registered as things start, run in reverse order when the ``with`` block ends however it
    ends (an exception, a KeyboardInterrupt): a stop that fails does not keep the others from running.
    A failing stop's exception is raised once all have run — unless the block already failed, whose
    exception is then the one that goes on (the stop's is printed)."""

    def stops(self, thing: Any, stop: Callable[[], Any] | None = None, *, quiet: bool = False) -> Any:
        """Register ``stop`` (``thing.stop`` by default) for the teardown; returns ``thing``. ``quiet``:
        an Exception from it is dropped (best effort, as for a process that may be gone already)."""
        self.stopper(stop or thing.stop, quiet=quiet)
        return thing

    def stopper(self, stop: Callable[[], Any], *, quiet: bool = False) -> Once:
        """Register ``stop`` for the teardown, once; the returned ``Once`` stops it earlier (and
        keeps its result: an exit code, a profile)."""
        once = Once(stop)

        def run(exc_type: Any, _exc: Any, _tb: Any) -> bool:
            try:
                once()
            except Exception as error:
                if quiet:
                    return False
                if exc_type is None:
                    raise
                print(f"(ending after {exc_type.__name__}, a stop failed too: {error!r})", file=sys.stderr,
                      flush=True)
            return False

        self.push(run)
        return once

    def on_failure(self, show: Callable[[], None]) -> None:
        """Call ``show`` at teardown when the block ends with an exception (one from a stop registered
        after this included)."""

        def check(exc_type: Any, _exc: Any, _tb: Any) -> bool:
            if exc_type is not None:
                show()
            return False

        self.push(check)


class Bench(Teardown):
    """One benchmark run: a ``Teardown`` that starts with the run's temporary directory (removed
    last) and starts the shared pieces registering their stops."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.work = ""

    def __enter__(self) -> Bench:
        super().__enter__()
        self.work = self.temp_dir(self.prefix)
        return self

    def temp_dir(self, prefix: str) -> str:
        """A fresh temporary directory removed at teardown; readable by others (the embedded
        PostgreSQL may run as another user)."""
        path = tempfile.mkdtemp(prefix=prefix)
        self.callback(shutil.rmtree, path, ignore_errors=True)
        os.chmod(path, 0o755)
        return path

    def path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    def database(self, *, from_env: bool = True) -> Database:
        """The embedded PostgreSQL in ``pg/`` of the run's directory, or (``from_env``) the one
        ``DATABASE_URL`` names; migrated with the owner's URL when there is one."""
        from db import embedded, migrate

        app_url = os.environ.get("DATABASE_URL") if from_env else None
        owner_url = os.environ.get("DATABASE_OWNER_URL") if from_env else None
        server = None
        if not app_url:
            server = embedded.start(self.path("pg"))
            self.stopper(server.stop)
            app_url, owner_url = server.app_url, server.owner_url
        if owner_url:
            migrate.apply(owner_url, embedded.APP_ROLE)
        return Database(app_url, owner_url, server)

    def pool(self, dsn: str, size: int | None = None) -> Any:
        """This project's pool (``actors.pool.Pool``) with at least one connection open."""
        from actors.pool import Pool, PoolConfig

        pool = Pool(PoolConfig(dsn=dsn) if size is None else PoolConfig(dsn=dsn, size=size))
        self.stopper(pool.stop)  # an actor: left running, it would keep the interpreter from exiting
        if not pool.wait_ready(10):
            raise SystemExit(f"pool did not open a connection: {pool.stats()['last_connect_error']}")
        return pool

    def hub_lag(self) -> HubLag:
        return self.stops(HubLag())


@dataclasses.dataclass(frozen=True)
class Database:
    app_url: str
    owner_url: str | None
    server: Any = None  # db.embedded.Embedded when the run started it

    @property
    def label(self) -> str:
        return "DATABASE_URL" if self.server is None else "embedded PostgreSQL"

    @property
    def superuser_url(self) -> str | None:
        """The embedded server's superuser, connected to the project's database (None otherwise)."""
        if self.server is None:
            return None
        from db import embedded

        return self.server.superuser_url.replace("/postgres?", f"/{embedded.DATABASE}?")

    def postmaster_pid(self) -> int | None:
        """The embedded server's postmaster (None for ``DATABASE_URL``)."""
        if self.server is None:
            return None
        with open(os.path.join(str(self.server.server.pgdata), "postmaster.pid")) as fh:
            return int(fh.readline())


def about(db: Database | None = None, *, minutes: bool = False) -> str:
    """The run's first line: date, Python, CPUs (and which database)."""
    when = f"{datetime.datetime.now():%Y-%m-%d %H:%M}" if minutes else f"{datetime.date.today()}"
    line = f"{when}  python {platform.python_version()}  cpus {os.cpu_count()}"
    return line if db is None else f"{line}  {db.label}"


# -- seeding and the root ----------------------------------------------------------------------------


def seed_paired_bots(pool: Any, data_dir: str, sim_state_file: str, bots: int, *, tenant: str,
                     running: bool = False, ai: dict | None = None) -> tuple[str, list[str]]:
    """A tenant named ``tenant`` with ``bots`` paired bots ('bench-1'...; desired running, or stopped
    until the bench starts them; ``ai``: their AI settings); their device stores
    (``DATA_DIR/devices/<bot>/simulator.json``) and the simulator's credentials (its state file)
    written to disk, so every bot logs in without a QR code. Returns the tenant's id and the bots' ids."""
    from db import tenants
    from simulator import protocol

    tenant_id, _key = tenants.create_tenant(pool, tenant)
    rows = pool.query(
        tenant_id,
        "INSERT INTO bots (name, desired_state, paired, jid, ai)"
        " SELECT 'bench-' || n, %s, true, (15550000000 + n)::text || %s, %s::jsonb"
        " FROM generate_series(1, %s) AS n RETURNING id, jid",
        ("running" if running else "stopped", "@" + protocol.USER_SERVER, json.dumps(ai or {}), bots),
        repeatable=False,
    )
    creds = {}
    for bot_id, jid in rows:
        bot_id = str(bot_id)
        cred = f"bench-{bot_id}"
        store = os.path.join(data_dir, "devices", bot_id)
        os.makedirs(store, exist_ok=True)
        with open(os.path.join(store, "simulator.json"), "w", encoding="utf-8") as fh:
            json.dump({"bot": bot_id, "cred": cred, "jid": jid}, fh)
        creds[bot_id] = {"cred": cred, "jid": jid}
    os.makedirs(os.path.dirname(sim_state_file), exist_ok=True)
    with open(sim_state_file, "w", encoding="utf-8") as fh:
        json.dump({"bots": creds}, fh)
    return tenant_id, list(creds)


def simulator_settings(db: Database, data_dir: str, sim_address: str, **more: str) -> Any:
    """Settings for supervision over the simulator transport against ``db``; ``more`` adds or
    overrides variables (``WA_LEASE_TTL="120"``...)."""
    from core import config

    return config.load({
        "DATABASE_URL": db.app_url,
        "DATABASE_OWNER_URL": db.owner_url or "",
        "DATA_DIR": data_dir,
        "LOG_LEVEL": "warning",
        "WA_TRANSPORT": "simulator",
        "WA_SIMULATOR_ADDR": sim_address,
        **more,
    })


# Request limits (web.rate_limits) far above what a benchmark sends through its one key: the limiter
# runs (its statement is part of every request measured) but never refuses one.
UNREACHED_LIMITS = {"RATE_LIMIT_READS": "10000000", "RATE_LIMIT_READS_BURST": "1000000",
                    "RATE_LIMIT_WRITES": "10000000", "RATE_LIMIT_WRITES_BURST": "1000000"}

API_KEY = re.compile(r"API key \(shown once, store it now\): (\S+)")


def run_cli(env: dict[str, str], *args: str, cwd: str = ROOT) -> str:
    """``python run.py ARGS`` with ``env``; its standard output."""
    done = subprocess.run([sys.executable, RUN, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"run.py {' '.join(args)} failed: {done.stderr[-1000:]}")
    return done.stdout


def cli_tenant(env: dict[str, str], name: str, *more: str, cwd: str = ROOT) -> tuple[str, str, str]:
    """A tenant made as an operator makes one (``run.py create-tenant NAME [MORE]``): its id, its first
    API key, and all the command printed."""
    out = run_cli(env, "create-tenant", name, *more, cwd=cwd)
    return re.search(r"tenant (\S+) created", out).group(1), API_KEY.search(out).group(1), out


class Root:
    """Just enough of ``actors.system.System`` for ``Supervision``: settings, pool, metrics, publish,
    add_component (a no-op: the bench's teardown stops what it started)."""

    def __init__(self, settings: Any, pool: Any, publish: Callable[..., Any], metrics: Any = None) -> None:
        if metrics is None:
            from core.metrics import Metrics

            metrics = Metrics()
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.publish = publish

    def add_component(self, name: str, stop: Callable[[], None]) -> None:
        pass


# -- measuring ---------------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated linearly between the closest ranks (as
    ``numpy.percentile``'s default); nan for no values. The standard library only."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def nearest_rank(sorted_values: list[float], fraction: float, empty: float = float("nan")) -> float:
    """The value at rank ``int(n * fraction)`` of sorted values (0.99: p99); ``empty`` for none."""
    if not sorted_values:
        return empty
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


class HubLag:
    """How late a 50 ms sleep wakes up: how busy this process's one hub is. Keeps (when, lag)
    samples; windows in ``excluded`` (where the bench itself blocked the hub) are left out."""

    PERIOD = 0.05

    def __init__(self) -> None:
        import gevent

        self.samples: list[tuple[float, float]] = []
        self.excluded: list[tuple[float, float]] = []
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        import gevent

        while True:
            before = time.monotonic()
            gevent.sleep(self.PERIOD)
            now = time.monotonic()
            self.samples.append((now, now - before - self.PERIOD))

    def _mine(self, t: float, lag: float) -> bool:
        return any(t - lag - self.PERIOD <= b and t >= a for a, b in self.excluded)

    def lags(self, since: float = 0.0, until: float = math.inf) -> list[float]:
        return sorted(lag for t, lag in self.samples if since <= t < until and not self._mine(t, lag))

    def worst(self, since: float = 0.0, until: float = math.inf) -> float:
        return max(self.lags(since, until), default=0.0)

    def p99(self, since: float = 0.0, until: float = math.inf) -> float:
        return nearest_rank(self.lags(since, until), 0.99, empty=0.0)

    def between(self, since: float, until: float) -> tuple[float, float]:
        """(p99, max) of the lags in [since, until); nan for none."""
        lags = self.lags(since, until)
        return nearest_rank(lags, 0.99), (lags[-1] if lags else float("nan"))

    def stalls(self, origin: float, since: float = 0.0, until: float = math.inf, threshold: float = 0.1) -> str:
        """The hub's stalls above ``threshold``, as +seconds-from-origin:milliseconds."""
        found = [(t - lag - origin, lag) for t, lag in self.samples
                 if lag >= threshold and since <= t < until and not self._mine(t, lag)]
        shown = ", ".join(f"+{at:.1f}s:{lag * 1000:.0f}ms" for at, lag in found[:12])
        return shown + (" ..." if len(found) > 12 else "")

    def stop(self) -> None:
        self._greenlet.kill(block=False)


def proc_stat(pid: Any) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first)."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def proc_cpu(pid: Any) -> float:
    """utime + stime of a process (all its threads), seconds; 0 if it is gone."""
    try:
        fields = proc_stat(pid)
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_status(pid: Any = "self") -> dict[str, int]:
    """VmRSS, RssAnon, RssFile of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


def rss_kb(pid: Any = "self") -> int:
    return proc_status(pid)["VmRSS"]


def children(parent: int) -> list[int]:
    """The processes whose parent is ``parent``, now."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(proc_stat(name)[1]) == parent:
                    found.append(int(name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def self_cpu() -> float:
    """This process's user + system CPU seconds so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def postgres_cpu(postmaster: int | None) -> collections.Counter:
    """CPU seconds of the embedded server's postmaster and its children now alive, by kind: the app
    role's backends, the WAL writer, everything else (checkpointer, autovacuum, a superuser's
    statistics connection...). Empty for ``DATABASE_URL`` (no postmaster of ours)."""
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


def tasks(pid: int) -> list[int]:
    """The thread ids of a process (none when it is gone)."""
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def split_cpus(name: str, postmaster: int | None, others: dict[str, int]) -> str:
    """This process (``name`` in the report) on the first allowed CPU; PostgreSQL (the postmaster, its
    processes, and the backends it forks from now on) and the processes of ``others`` (report name ->
    pid) on the rest, as when they are other machines. Returns what was done, for the report."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return "CPUs shared (only one CPU)"
    mine, rest = {allowed[0]}, set(allowed[1:])
    for tid in tasks(os.getpid()):  # threads started later inherit from the main thread
        os.sched_setaffinity(tid, mine)
    moved = []
    if postmaster is not None:
        for pid in [postmaster, *children(postmaster)]:
            for tid in tasks(pid):
                os.sched_setaffinity(tid, rest)
        moved.append("PostgreSQL")
    for label, pid in others.items():
        for tid in tasks(pid):
            os.sched_setaffinity(tid, rest)
        moved.append(label)
    where = ", ".join(str(c) for c in sorted(rest))
    return (f"CPUs split: {name} on CPU {allowed[0]}, {' and '.join(moved) or 'nothing else'} on CPU {where}"
            + ("" if postmaster is not None else " (DATABASE_URL: PostgreSQL not moved)"))


# -- verdicts -------------------------------------------------------------------------------------------


class Verdict:
    """PASS or MISS for a figure against its target; with ``judged`` false (``--smoke``: tiny counts,
    figures that mean nothing) the same place says ``unjudged`` instead."""

    def __init__(self, judged: bool = True, unjudged: str = "(not judged)") -> None:
        self.judged = judged
        self.unjudged = unjudged

    def __call__(self, ok: bool) -> str:
        if not self.judged:
            return self.unjudged
        return "PASS" if ok else "MISS"


class SmokeFailure(RuntimeError):
    """``--smoke``: the benchmark did not run through (not a figure that missed its target)."""


def smoke_check(what: str, problems: list[str]) -> None:
    """``--smoke``: raise when anything kept the run from going through."""
    if problems:
        raise SmokeFailure(f"smoke run, {what}: " + "; ".join(problems))


# -- child processes -------------------------------------------------------------------------------------


def end_process(proc: subprocess.Popen, timeout: float = 30.0, sig: int | None = signal.SIGTERM) -> int:
    """Ask a child to end with ``sig`` (None: it was asked already, e.g. through its stdin), give it
    ``timeout`` seconds, then kill it; its exit code."""
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class Child:
    """A child process; with ``log``, its output goes to that file (its stderr only, when ``stdout``
    is given). ``stop()`` ends it (SIGTERM, a kill after ``timeout``), closes the log, and returns the
    exit code; a stop after the first returns the same code."""

    def __init__(self, name: str, argv: list[str], *, log: str | None = None, **popen: Any) -> None:
        self.name = name
        self.log = None
        if log is not None:
            self.log = open(log, "ab")  # noqa: SIM115 - the child's output for its lifetime: stop() closes it
            if "stdout" in popen:
                popen.setdefault("stderr", self.log)
            else:
                popen.update(stdout=self.log, stderr=subprocess.STDOUT)
        self.proc = subprocess.Popen(argv, **popen)
        self.pid = self.proc.pid

    def stop(self, timeout: float = 30.0, sig: int | None = signal.SIGTERM) -> int:
        code = end_process(self.proc, timeout, sig)
        if self.log is not None:
            self.log.close()
        return code

    def wait_answering(self, url: str, timeout: float) -> None:
        """Until ``url`` answers 200; fails early when the process ends."""
        wait_until(lambda: answers(url), timeout, f"{self.name} answering at {url}", process=self, interval=0.1)

    def tail(self, lines: int = 30) -> list[str]:
        if self.log is None:
            return []
        with open(self.log.name, errors="replace") as fh:
            return fh.read().splitlines()[-lines:]


def print_log_tails(directory: str, lines: int = 30) -> None:
    """The end of every ``*.log`` in ``directory``, on stderr: after a failure, before the logs go
    with the run's temporary directory."""
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name.endswith(".log"):
            with open(os.path.join(directory, name), errors="replace") as fh:
                tail = fh.read().splitlines()[-lines:]
            if tail:
                print(f"--- {name} (last {len(tail)} lines) ---\n" + "\n".join(tail), file=sys.stderr, flush=True)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, *, process: Child | None = None,
               interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something true (returned); fails after ``timeout`` seconds,
    or as soon as ``process`` has ended."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process is not None and process.proc.poll() is not None:
            log = f"; see {process.log.name}" if process.log is not None else ""
            raise RuntimeError(f"{what}: {process.name} exited with {process.proc.returncode}{log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """A port p with p and p + 1 free (the simulator's transport and control ports)."""
    for _ in range(50):
        port = free_port()
        if port >= 65535:
            continue
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def git_tree(rev: str, dest: str) -> str:
    """The code at git revision ``rev`` of this checkout (``git archive``), in a new directory ``dest``."""
    os.makedirs(dest)
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest


# -- py-spy (optional: not a dependency) ---------------------------------------------------------------------


def py_spy(pid: int, out: str, *options: str, stderr: Any = subprocess.DEVNULL) -> subprocess.Popen | None:
    """``py-spy record`` of ``pid`` into ``out`` as collapsed stacks, with ``options``; None when
    py-spy is not installed (``pip install py-spy``)."""
    path = shutil.which("py-spy")
    if path is None:
        return None
    return subprocess.Popen([path, "record", "-p", str(pid), *options, "-f", "raw", "-o", out],
                            stdout=subprocess.DEVNULL, stderr=stderr)


def collapsed_stacks(path: str,
                     frame_name: Callable[[str], str]) -> tuple[int, collections.Counter, collections.Counter]:
    """py-spy's raw output: total samples, samples by leaf function (self time), and by function
    anywhere on the stack (inclusive time), each frame named by ``frame_name``."""
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh.read().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            samples = int(count)
            total += samples
            frames = [frame_name(f) for f in stack.split(";") if f]
            if frames:
                own[frames[-1]] += samples
            for frame in set(frames):
                inclusive[frame] += samples
    return total, own, inclusive
