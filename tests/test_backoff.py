"""The reconnection policy: delay bounds, cap, exhaustion, stable reset, and spread of a mass failure."""

import bisect
import random
import types

import pytest

from sansio.backoff import Backoff, BackoffPolicy

POLICY = BackoffPolicy(base=5, cap=300, max_attempts=10, stable_after=60)


def spend(backoff, rng, attempts):
    delays = []
    for _ in range(attempts):
        delay, backoff = backoff.next_delay(rng)
        delays.append(delay)
    return delays, backoff


def test_every_delay_lies_within_the_bounds_of_its_attempt():
    rng = random.Random(1)
    policy = BackoffPolicy(base=5, cap=300, max_attempts=40, stable_after=60)
    for _ in range(200):
        delays, _ = spend(Backoff(policy), rng, 40)
        for attempt, delay in enumerate(delays, start=1):
            lo, hi = policy.bounds(attempt)
            assert lo <= delay <= hi


def test_the_first_retry_uses_full_jitter_over_the_base_delay():
    assert POLICY.bounds(1) == (0.0, 5)


def test_later_bounds_double_per_attempt_until_the_cap():
    assert [POLICY.bounds(n) for n in range(2, 9)] == [
        (5, 10), (10, 20), (20, 40), (40, 80), (80, 160), (150, 300), (150, 300)
    ]


def test_no_delay_exceeds_the_cap_even_for_huge_attempt_numbers():
    rng = random.Random(2)
    for attempt in (7, 50, 10_000):
        assert POLICY.delay(attempt, rng) <= 300


def test_a_cap_below_the_base_also_bounds_the_first_delay():
    assert BackoffPolicy(base=10, cap=3, max_attempts=1, stable_after=0).bounds(1) == (0.0, 3)


def test_each_delay_counts_one_attempt():
    _, backoff = spend(Backoff(POLICY), random.Random(3), 4)
    assert backoff.attempt == 4


def test_attempts_exhausted_gives_none():
    rng = random.Random(4)
    delays, backoff = spend(Backoff(POLICY), rng, 10)
    assert None not in delays
    assert backoff.exhausted
    assert backoff.next_delay(rng) == (None, backoff)


def test_zero_max_attempts_gives_up_at_once():
    policy = BackoffPolicy(base=5, cap=300, max_attempts=0, stable_after=60)
    assert Backoff(policy).next_delay(random.Random(5))[0] is None


def test_the_count_resets_after_a_connection_stable_for_the_whole_period():
    _, backoff = spend(Backoff(POLICY), random.Random(6), 5)
    backoff = backoff.on_connected(1000).on_disconnected(1060)
    assert backoff.attempt == 0
    assert backoff.connected_since is None


def test_the_count_survives_a_connection_shorter_than_the_stable_period():
    _, backoff = spend(Backoff(POLICY), random.Random(7), 5)
    backoff = backoff.on_connected(1000).on_disconnected(1059.9)
    assert backoff.attempt == 5


def test_a_disconnect_without_a_connection_keeps_the_count():
    _, backoff = spend(Backoff(POLICY), random.Random(8), 3)
    assert backoff.on_disconnected(5000).attempt == 3


def test_reset_forgets_the_count_and_keeps_the_policy():
    _, backoff = spend(Backoff(POLICY), random.Random(9), 3)
    assert backoff.on_connected(1).reset() == Backoff(POLICY)


def test_policy_is_read_from_the_settings():
    settings = types.SimpleNamespace(
        wa_reconnect_base_delay=5.0,
        wa_reconnect_max_delay=300.0,
        wa_reconnect_max_attempts=10,
        wa_reconnect_stable_after=60.0,
    )
    assert BackoffPolicy.from_settings(settings) == POLICY


def test_a_non_positive_base_is_refused():
    with pytest.raises(ValueError):
        BackoffPolicy(base=0, cap=300, max_attempts=10, stable_after=60)


def test_a_thousand_bots_failing_at_once_spread_first_retries_over_the_base_delay():
    rng = random.Random(10)
    bots = 1000
    retries = sorted(Backoff(POLICY).next_delay(rng)[0] for _ in range(bots))
    assert retries[0] >= 0 and retries[-1] <= POLICY.base
    uniform_share = bots / POLICY.base  # retries per second if perfectly even
    busiest = max(bisect.bisect_left(retries, t + 1) - i for i, t in enumerate(retries))
    assert busiest <= 2 * uniform_share


def test_equal_jitter_keeps_even_the_first_delay_in_the_upper_half():
    policy = BackoffPolicy(base=2, cap=300, jitter="equal")
    assert [policy.bounds(n) for n in (1, 2, 3)] == [(1.0, 2.0), (2.0, 4.0), (4.0, 8.0)]


def test_no_jitter_gives_the_exponential_delay_exactly_up_to_the_cap():
    policy = BackoffPolicy(base=0.5, cap=30, jitter="none")
    assert [policy.delay(n, random.Random(1)) for n in (1, 2, 3, 7, 8, 100)] == [0.5, 1.0, 2.0, 30, 30, 30]


def test_a_policy_without_max_attempts_never_gives_up():
    delays, backoff = spend(Backoff(BackoffPolicy(base=1, cap=5)), random.Random(2), 1000)
    assert None not in delays and not backoff.exhausted and max(delays) <= 5


def test_an_unknown_jitter_is_refused():
    with pytest.raises(ValueError, match="jitter"):
        BackoffPolicy(base=1, cap=5, jitter="sometimes")
