"""The restart-intensity window on its own: pure decisions checked against explicit times."""

from __future__ import annotations

import random

import pytest

from sansio.restart_intensity import RestartIntensity


def test_restarts_up_to_the_limit_within_the_window_are_allowed():
    window = RestartIntensity(max_restarts=3, max_seconds=5)
    assert [window.record(t).allowed for t in (0.0, 1.0, 2.0)] == [True, True, True]


def test_one_restart_more_than_the_limit_within_the_window_is_refused():
    window = RestartIntensity(max_restarts=3, max_seconds=5)
    for t in (0.0, 1.0, 2.0):
        window.record(t)
    verdict = window.record(3.0)
    assert not verdict.allowed
    assert verdict.restarts_in_window == 4


def test_restarts_older_than_the_window_no_longer_count():
    window = RestartIntensity(max_restarts=2, max_seconds=10)
    window.record(0.0)
    window.record(1.0)
    verdict = window.record(11.5)
    assert verdict.allowed
    assert verdict.restarts_in_window == 1
    assert window.in_window(12.0) == 1


def test_a_restart_exactly_max_seconds_old_still_counts_as_in_otp():
    window = RestartIntensity(max_restarts=1, max_seconds=10)
    window.record(0.0)
    assert not window.record(10.0).allowed


def test_zero_max_restarts_refuses_the_first_restart():
    assert not RestartIntensity(max_restarts=0, max_seconds=1).record(0.0).allowed


def test_a_clock_going_backwards_does_not_make_old_restarts_look_new():
    window = RestartIntensity(max_restarts=1, max_seconds=1)
    window.record(100.0)
    assert not window.record(50.0).allowed


@pytest.mark.parametrize("max_restarts, max_seconds", [(-1, 1), (1, 0), (1, -2), (1, float("nan"))])
def test_nonsensical_limits_are_rejected_at_construction(max_restarts, max_seconds):
    with pytest.raises(ValueError):
        RestartIntensity(max_restarts, max_seconds)


def test_the_window_agrees_with_a_naive_model_on_seeded_random_restart_times():
    rng = random.Random(20240601)
    for _ in range(200):
        max_restarts = rng.randint(0, 5)
        max_seconds = rng.choice([0.5, 1.0, 3.0, 10.0])
        window = RestartIntensity(max_restarts, max_seconds)
        history: list[float] = []
        now = 0.0
        for _ in range(30):
            now += rng.choice([0.0, 0.1, 0.5, 1.0, 2.5, 11.0])
            history.append(now)
            expected = sum(1 for t in history if t >= now - max_seconds)
            verdict = window.record(now)
            assert verdict.restarts_in_window == expected
            assert verdict.allowed == (expected <= max_restarts)
            if not verdict.allowed:
                break
