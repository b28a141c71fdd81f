"""A thousand forced restarts of one bot's session leave nothing behind: no greenlets, OS threads,
sockets or simulator connections beyond what one connected session needs, and no memory growth.

Each cycle forces a restart and waits (on published events) until the session is connected again.
Most cycles are the user's restart command; a few are crashes (the actor is killed and its
supervisor starts a new incarnation). Kills are few because the supervisor spaces a child's restarts
by a backoff that grows with its restart count (``Supervision._restart_delay``); the rng passed to
``Supervision`` always picks the low end of that jitter, so the five kills cost under 8 s.
"""

import gc
import os
import random
import time

import gevent
import gevent.threadpool
import greenlet
import pytest

from actors.base import actor_of
from actors.session import Command
from db import bots as bots_db
from sansio import session_machine as sm
from simulator.server import Simulator
from tests.sessions_harness import EventLog, new_bot, new_tenant, session_settings, supervision
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

WARM_UP = 50
CYCLES = 1000
KILLS = 5  # spread evenly over the cycles; the rest are restart commands
GREENLET_SLACK = 10
RSS_GROWTH = 1.05


class _LowEndJitter(random.Random):
    """Every jittered delay takes its lower bound: the supervisor's restart backoff stays short."""

    def uniform(self, a, b):
        return min(a, b)


@pytest.fixture
def sim():
    # A short linger: connections the server ends (a "replaced" one) are gone 0.1 s later.
    with Simulator("127.0.0.1", 0, False, qr_rotate=30, receipt_delay=0, linger=0.1) as simulator:
        yield simulator


@pytest.fixture
def events():
    return EventLog()


@pytest.fixture
def env(pg, tmp_path, sim, pool, events):
    # Connect-rate limiting is not under test here; at the default 50/s a thousand dials take 20 s.
    settings = session_settings(pg, str(tmp_path), sim.address, WA_CONNECT_RATE="100000")
    with supervision(settings, pool, events, rng=_LowEndJitter()) as sup:
        yield sup


@pytest.fixture
def bot(pool):
    tenant = new_tenant(pool)
    bot_id = new_bot(pool, tenant)
    yield bot_id
    bots_db.set_desired(pool, tenant, bot_id, "stopped")  # the database outlives this test


# gevent's hub threadpool resolves addresses for every dial. It is shared by the whole process,
# bounded (maxsize 10), and its idle workers exit after 5 s, so after a busy test it shrinks during
# this one: its threads, and the worker greenlet and root greenlet of each, are not counted as ours.
_RESOLVER_WORKER = getattr(gevent.threadpool, "_WorkerGreenlet", ())


def _resolver_threads():
    return gevent.get_hub().threadpool.size


def _live_greenlets():
    root = greenlet.getcurrent()
    while root.parent is not None:
        root = root.parent
    return sum(
        1
        for obj in gc.get_objects()
        # type(), not isinstance(): isinstance() on the openai client's lazy module proxies imports
        # what they stand for (numpy and its BLAS threads), which the count itself would cause.
        if issubclass(type(obj), greenlet.greenlet)
        and not obj.dead
        and not (_RESOLVER_WORKER and issubclass(type(obj), _RESOLVER_WORKER))
        and (obj.parent is not None or obj is root)  # another thread's root: a resolver worker's
    )


def _os_threads():
    """Threads of this process but the resolver pool's (read twice, so a worker that is just
    exiting or starting cannot skew the count)."""
    readings: list[int] = []

    def settled() -> int | None:
        readings.append(len(os.listdir("/proc/self/task")) - _resolver_threads())
        return readings[-1] if readings[-2:] == [readings[-1]] * 2 else None  # at least 1: this thread

    return wait_until(settled, what="the same thread count twice in a row", interval=0.05)


def _open_sockets():
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass  # closed while we looked (the listdir's own fd, say)
    return count


def _rss_bytes():
    gc.collect()
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _bot_connections(sim, bot):
    return sum(1 for conn in list(sim._conns) if conn.bot is not None and conn.bot.bot_id == bot)


def _live_transports(env):
    return env.counters.get("connect_attempts", 0) - env.counters.get("transports_closed", 0)


def _snapshot(env, sim, bot):
    gc.collect()
    return {
        "greenlets": _live_greenlets(),
        "threads": _os_threads(),
        "resolver_threads": _resolver_threads(),
        "sockets": _open_sockets(),
        "bot_connections": _bot_connections(sim, bot),
        "connections": sim.health()["connections"],
        "live_transports": _live_transports(env),
    }


def _settled(env, sim, bot, events):
    """Wait until the simulator has let go of every connection but the live one, then snapshot."""
    events.wait_for(
        lambda: sim.health()["connections"] == 1 and sim.bot_state(bot)["connected"],
        timeout=10,
        what="the simulator to hold exactly the one live connection",
    )
    return _snapshot(env, sim, bot)


def _pair(sim, events, bot):
    events.wait_state(bot, "pairing")
    sim.scan(bot)
    events.wait_state(bot, "connected")


def _restart_by_command(env, events, bot):
    events.events.clear()  # the log would otherwise grow by a few entries a cycle and count as RSS
    env.session_ref(bot).tell(Command(sm.Restart()))
    events.wait_state(bot, "connected", timeout=10)


def _restart_by_crash(env, events, bot):
    victim = env.session_ref(bot)
    events.events.clear()
    actor_of(victim).kill()
    events.wait_for(lambda: env.session_ref(bot) not in (None, victim), timeout=20, what="a new incarnation")
    events.wait_state(bot, "connected", timeout=10)
    return env.session_ref(bot)


def test_a_thousand_forced_restarts_leave_no_greenlets_threads_sockets_or_memory_behind(bot, env, sim, events):
    _pair(sim, events, bot)
    for _ in range(WARM_UP):
        _restart_by_command(env, events, bot)
    baseline = _settled(env, sim, bot, events)
    baseline_rss = _rss_bytes()
    assert baseline["bot_connections"] == 1 and baseline["live_transports"] == 1

    kill_at = {CYCLES * (k + 1) // (KILLS + 1) for k in range(KILLS)}
    incarnations = {env.session_ref(bot)}
    started = time.monotonic()
    for cycle in range(CYCLES):
        if cycle in kill_at:
            incarnations.add(_restart_by_crash(env, events, bot))
        else:
            _restart_by_command(env, events, bot)
    elapsed = time.monotonic() - started

    after = _settled(env, sim, bot, events)
    rss = _rss_bytes()
    print(f"\n{CYCLES} cycles in {elapsed:.1f} s; baseline {baseline}, rss {baseline_rss >> 10} KiB; "
          f"after {after}, rss {rss >> 10} KiB")
    assert len(incarnations) == KILLS + 1  # every kill was answered by a new incarnation
    assert env.counters["connect_attempts"] >= WARM_UP + CYCLES
    assert after["live_transports"] == 1  # every transport created but the live one was closed
    assert after["bot_connections"] == 1 and after["connections"] == 1
    # No growth. (Fewer is fine: earlier tests' leftovers — lingering neonize threads, closing
    # sockets — may end during this one.)
    assert after["threads"] <= baseline["threads"]
    assert after["sockets"] <= baseline["sockets"]
    assert after["greenlets"] <= baseline["greenlets"] + GREENLET_SLACK
    assert rss <= baseline_rss * RSS_GROWTH
