"""Each retry loop's delays are data: the policy objects the pool, the listener, supervision and
``core.retry`` build, checked without sleeping."""

import random
import types

from actors import pool, supervision
from core import retry
from db import listen


def ceilings(policy, attempts):
    return [policy.bounds(n)[1] for n in range(1, attempts + 1)]


def test_the_pool_reconnects_after_0_05_s_doubling_to_5_s():
    assert ceilings(pool.RECONNECT, 9) == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_the_pools_reconnect_delays_are_spread_over_the_upper_half():
    assert [pool.RECONNECT.bounds(n) for n in (1, 8)] == [(0.025, 0.05), (2.5, 5.0)]


def test_the_listener_reconnects_after_0_1_s_doubling_to_5_s():
    assert ceilings(listen.RECONNECT, 8) == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_the_listeners_reconnect_delays_are_spread_over_the_upper_half():
    assert [listen.RECONNECT.bounds(n) for n in (1, 7)] == [(0.05, 0.1), (2.5, 5.0)]


def test_a_bot_session_restarts_after_0_5_s_doubling_to_30_s_with_jitter():
    assert [supervision.BOT_RESTART.bounds(n) for n in (1, 2, 7, 20)] == [
        (0.25, 0.5), (0.5, 1.0), (15.0, 30.0), (15.0, 30.0)
    ]


def test_the_top_supervisors_children_restart_exactly_0_5_s_doubling_to_30_s():
    assert [supervision.TOP_RESTART.delay(n, random.Random(1)) for n in (1, 2, 3, 7, 20)] == [
        0.5, 1.0, 2.0, 30.0, 30.0
    ]


def test_a_bot_restart_delay_is_the_policys_delay_for_the_restart_count():
    def delay(count):
        owner = types.SimpleNamespace(rng=random.Random(7))
        return supervision.Supervision._restart_delay(owner, "bot", count)

    assert [delay(n) for n in (1, 4, 12)] == [
        supervision.BOT_RESTART.delay(n, random.Random(7)) for n in (1, 4, 12)
    ]


def test_transient_fault_retries_start_between_initial_and_twice_initial():
    assert retry.policy(0.05, 2.0).bounds(1) == (0.05, 0.1)


def test_transient_fault_retry_lower_bounds_double_until_the_maximum():
    assert [retry.policy(0.05, 2.0).bounds(n)[0] for n in range(1, 8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_no_transient_fault_retry_waits_longer_than_the_maximum():
    assert max(ceilings(retry.policy(0.2, 5.0), 20)) == 5.0


def test_tenacitys_wait_after_attempt_k_is_the_policys_delay_of_retry_k():
    wait = retry.wait_of(retry.policy(0.05, 2.0), random.Random(3))
    expected = [retry.policy(0.05, 2.0).delay(k, rng) for rng in [random.Random(3)] for k in (1, 2, 3)]
    assert [wait(types.SimpleNamespace(attempt_number=k)) for k in (1, 2, 3)] == expected
