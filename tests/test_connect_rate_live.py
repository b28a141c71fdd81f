"""The process-wide connect rate limit and the reconnect jitter, live: 300 paired bots under one
supervision (WA_CONNECT_RATE=50, reconnect base delay 1 s, cap 2 s, 20 attempts), a network outage
that drops them all at once for 2 s, and the recovery.

The scenario runs once for the module (about 20 s); each test then checks one behaviour on what it
recorded. The bots are paired first under a throw-away supervision with no effective rate limit (QR
shown, scanned, connected), which then stops; the supervision under test starts them again from
their device stores. Every connection attempt is recorded by wrapping the transport factory.
"""

import bisect
import collections
import dataclasses
import time

import gevent
import pytest

from actors.pool import Pool, PoolConfig
from db import bots as bots_db
from simulator.server import Simulator
from tests.sessions_harness import EventLog, new_bot, new_tenant, session_settings, supervision
from transports.simulator import SimulatorTransport

pytestmark = pytest.mark.slow

BOTS = 300
RATE = 50
BASE_DELAY = 1.0
OUTAGE = 2.0
SPREAD_BINS = 10  # the first retries are checked in windows of BASE_DELAY / SPREAD_BINS


class _StateTracker(EventLog):
    """An EventLog that also keeps each bot's latest state, so waiting on 300 bots stays cheap."""

    def __init__(self) -> None:
        super().__init__()
        self.latest: dict[str, str] = {}

    def publish(self, tenant_id, bot_id, event_type, payload):
        if event_type == "bot.state":
            self.latest[bot_id] = payload["state"]
        super().publish(tenant_id, bot_id, event_type, payload)

    def wait_all(self, bots, state, timeout, negate=False):
        try:
            self.wait_for(
                lambda: all((self.latest.get(bot) == state) != negate for bot in bots),
                timeout,
                f"all {len(bots)} bots {'to leave' if negate else 'to be'} {state}",
            )
        except AssertionError as exc:
            states = collections.Counter(self.latest.get(bot, "none") for bot in bots)
            raise AssertionError(f"{exc.args[0][:200]}...; latest states: {dict(states)}") from None


@dataclasses.dataclass
class Outage:
    bots: list[str]
    attempts: list[tuple[float, str]]  # (time.monotonic(), bot) of every dial under test
    dropped_at: float  # time.monotonic() of the outage
    dropped_wall: float  # time.time() of the outage
    first_retries: dict[str, dict]  # bot -> its first backing_off state after the drop


def busiest_window(times, period):
    """Most of ``times`` in any half-open window [t, t + period) starting at one of them."""
    times = sorted(times)
    return max(bisect.bisect_left(times, t + period) - i for i, t in enumerate(times))


def _pair_all(pg, data_dir, sim, pool, bots):
    settings = session_settings(pg, data_dir, sim.address, WA_CONNECT_RATE="100000")
    log = _StateTracker()
    with supervision(settings, pool, log):
        log.wait_all(bots, "pairing", timeout=60)
        for bot in bots:
            sim.scan(bot)
        log.wait_all(bots, "connected", timeout=60)
    assert all(state["paired"] for state in sim.bots())


@pytest.fixture(scope="module")
def outage(pg, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("connect-rate"))
    pool = Pool(PoolConfig(dsn=pg.app_url, size=4))
    assert pool.wait_ready(10)
    tenant = new_tenant(pool)
    bots = [new_bot(pool, tenant) for _ in range(BOTS)]
    try:
        with Simulator("127.0.0.1", 0, False, qr_rotate=60, receipt_delay=None) as sim:
            yield _run_outage(pg, data_dir, sim, pool, bots)
    finally:
        # The database is shared by the whole run: 300 bots left running would be claimed by the
        # next test's supervision.
        for bot in bots:
            bots_db.set_desired(pool, tenant, bot, "stopped")
        pool.stop()


def _run_outage(pg, data_dir, sim, pool, bots):
    started = time.monotonic()
    _pair_all(pg, data_dir, sim, pool, bots)
    paired_in = time.monotonic() - started

    mine = set(bots)
    attempts: list[tuple[float, str]] = []

    def recording_factory(bot_id, sink, settings, options):
        attempts.append((time.monotonic(), bot_id))
        return SimulatorTransport(bot_id, sink, settings, options)

    settings = session_settings(
        pg,
        data_dir,
        sim.address,
        WA_CONNECT_RATE=str(RATE),
        WA_RECONNECT_BASE_DELAY=str(BASE_DELAY),
        WA_RECONNECT_MAX_DELAY="2",
        WA_RECONNECT_MAX_ATTEMPTS="20",
    )
    log = _StateTracker()
    with supervision(settings, pool, log, factory=recording_factory):
        log.wait_all(bots, "connected", timeout=60)
        assert "pairing" not in {p["state"] for _, b, t, p in log.events if t == "bot.state" and b in mine}
        resumed_in = time.monotonic() - started - paired_in

        mark, dropped_at, dropped_wall = len(log.events), time.monotonic(), time.time()
        sim.outage()
        log.wait_all(bots, "connected", timeout=10, negate=True)  # every session noticed the drop
        gevent.sleep(max(0.0, dropped_at + OUTAGE - time.monotonic()))  # the outage lasts OUTAGE s
        sim.recover()
        log.wait_all(bots, "connected", timeout=60)
        recovered_in = time.monotonic() - dropped_at
        assert sum(state["connected"] for state in sim.bots()) == BOTS

    first_retries: dict[str, dict] = {}
    for _, bot, event_type, payload in log.events[mark:]:
        if event_type == "bot.state" and payload["state"] == "backing_off" and bot in mine and bot not in first_retries:
            first_retries[bot] = payload
    print(
        f"\npaired {BOTS} bots in {paired_in:.1f} s, resumed in {resumed_in:.1f} s, recovered from the "
        f"outage in {recovered_in:.1f} s; {len(attempts)} attempts, busiest second: "
        f"{busiest_window([t for t, _ in attempts], 1.0)}"
    )
    return Outage(bots, attempts, dropped_at, dropped_wall, first_retries)


def test_no_second_of_a_mass_outage_and_recovery_sees_more_dials_than_the_connect_rate(outage):
    times = [t for t, _ in outage.attempts]
    assert len(times) >= 2 * BOTS  # everyone resumed, and everyone dialed again after the drop
    busiest = busiest_window(times, 1.0)
    assert busiest <= RATE, f"{busiest} dials in one second, against a limit of {RATE}"


def test_the_first_retries_after_a_mass_drop_spread_evenly_over_the_base_delay(outage):
    # Each bot's first retry after the drop has full jitter over the base delay: the 300 retries
    # are due at times spread evenly over it, none bunched. A 1 s window would hold all of them when
    # the base delay is 1 s, so the check uses tenths of it: at most twice a tenth's uniform share.
    assert set(outage.first_retries) == set(outage.bots)
    assert all(p["attempt"] == 1 for p in outage.first_retries.values())
    due = [p["next_retry_at"] - outage.dropped_wall for p in outage.first_retries.values()]
    # Due no earlier than the drop, and within the base delay of each session noticing it.
    assert all(0 <= d <= BASE_DELAY + 1.0 for d in due), (min(due), max(due))
    window = BASE_DELAY / SPREAD_BINS
    busiest = busiest_window(due, window)
    assert busiest <= 2 * BOTS / SPREAD_BINS, f"{busiest} first retries due within {window:g} s"
