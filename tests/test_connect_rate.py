"""The process-wide connect rate limit: no window over the rate, every caller served, no needless wait."""

import bisect
import random

import pytest

from sansio.backoff import Backoff, BackoffPolicy
from sansio.connect_rate import ConnectRateLimiter

NOW = 1_000_000.0


def busiest_window(times, period=1.0):
    """Most starts in any half-open window [t, t + period)."""
    times = sorted(times)
    return max(bisect.bisect_left(times, t + period) - i for i, t in enumerate(times))


def reserve_all(limiter, requests):
    return [limiter.reserve(t) for t in sorted(requests)]


def mass_failure_retries(bots, seed):
    """Retry times of `bots` sessions all dropped at NOW, each jittered by the real backoff policy."""
    rng = random.Random(seed)
    policy = BackoffPolicy(base=5, cap=300, max_attempts=10, stable_after=60)
    return [NOW + Backoff(policy).next_delay(rng)[0] for _ in range(bots)]


def test_an_idle_limiter_lets_the_caller_connect_at_once():
    assert ConnectRateLimiter(20).reserve(NOW) == NOW


def test_a_thousand_jittered_bots_never_start_more_than_the_rate_in_any_second():
    requests = mass_failure_retries(1000, seed=1)
    assert busiest_window(requests) > 20  # the demand really exceeds the limit
    granted = reserve_all(ConnectRateLimiter(20), requests)
    assert busiest_window(granted) <= 20


def test_a_thousand_jittered_bots_all_get_a_slot_no_earlier_than_they_asked():
    requests = sorted(mass_failure_retries(1000, seed=2))
    granted = reserve_all(ConnectRateLimiter(20), requests)
    assert len(granted) == 1000
    assert all(g >= r for g, r in zip(granted, requests))
    # 1,000 starts at 20/s need about 50 s; nobody is pushed far beyond that.
    assert granted[-1] - NOW <= 1000 / 20 + 1


def test_slots_are_handed_out_in_call_order():
    limiter = ConnectRateLimiter(2)
    granted = [limiter.reserve(NOW + 5), limiter.reserve(NOW), limiter.reserve(NOW)]
    assert granted == sorted(granted)


def test_callers_slower_than_the_rate_are_not_delayed():
    requests = [NOW + i * 0.06 for i in range(200)]
    assert reserve_all(ConnectRateLimiter(20), requests) == requests


def test_a_full_second_of_attempts_may_start_together_without_a_burst_limit():
    assert reserve_all(ConnectRateLimiter(20), [NOW] * 20) == [NOW] * 20


def test_a_burst_limit_spaces_back_to_back_attempts():
    granted = reserve_all(ConnectRateLimiter(20, burst=5), [NOW] * 40)
    assert busiest_window(granted, period=5 / 20) <= 5
    assert busiest_window(granted) <= 20


@pytest.mark.parametrize(("rate", "per_second"), [(2.5, 2), (1, 1), (0.5, 1)])
def test_a_fractional_rate_rounds_down_to_whole_starts(rate, per_second):
    granted = reserve_all(ConnectRateLimiter(rate), mass_failure_retries(100, seed=3))
    assert busiest_window(granted) <= per_second


def test_a_rate_below_one_waits_whole_intervals():
    assert reserve_all(ConnectRateLimiter(0.5), [NOW] * 3) == [NOW, NOW + 2, NOW + 4]


@pytest.mark.parametrize(("rate", "burst"), [(0, None), (-1, None), (float("inf"), None), (20, 0)])
def test_impossible_limits_are_refused(rate, burst):
    with pytest.raises(ValueError):
        ConnectRateLimiter(rate, burst)


def test_admission_at_dial_time_never_lets_a_second_hold_more_than_the_rate():
    limiter = ConnectRateLimiter(rate=5)
    admitted = []
    now = 0.0
    while now < 10:
        if limiter.admit(now) == 0:
            admitted.append(now)
        now += 0.013
    assert len(admitted) >= 45  # it does admit, at about the rate (an empty list would pass the check below)
    for start in admitted:
        assert sum(1 for t in admitted if start <= t < start + 1) <= 5


def test_a_refused_admission_says_how_long_to_wait():
    limiter = ConnectRateLimiter(rate=2)
    assert limiter.admit(0.0) == 0 and limiter.admit(0.1) == 0
    wait = limiter.admit(0.2)
    assert 0.8 < wait <= 0.81
    assert limiter.admit(0.2 + wait) == 0
