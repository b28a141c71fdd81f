"""The circuit breaker's state machine (sansio.breaker) on a clock the tests move by hand."""

import pytest

from sansio.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


def opened(failures=3, reset=10.0, at=100.0):
    breaker = Breaker(failures, reset)
    for _ in range(failures):
        breaker.record_failure(at)
    return breaker


def test_a_new_breaker_is_closed_and_allows_calls():
    breaker = Breaker(3, 10)
    assert breaker.state(0) == CLOSED
    assert breaker.allow(0)


def test_fewer_consecutive_failures_than_the_limit_keep_it_closed():
    breaker = Breaker(3, 10)
    breaker.record_failure(1)
    breaker.record_failure(2)
    assert breaker.state(2) == CLOSED


def test_the_limit_of_consecutive_failures_opens_it():
    assert opened(failures=3).state(100) == OPEN


def test_a_success_resets_the_count_of_failures():
    breaker = Breaker(3, 10)
    breaker.record_failure(1)
    breaker.record_failure(2)
    breaker.record_success(3)
    breaker.record_failure(4)
    breaker.record_failure(5)
    assert breaker.state(5) == CLOSED


def test_an_open_breaker_refuses_calls_until_the_reset_has_passed():
    breaker = opened(reset=10, at=100)
    assert not breaker.allow(109.9)
    assert breaker.retry_in(104) == pytest.approx(6)


def test_after_the_reset_it_is_half_open_and_lets_one_trial_through():
    breaker = opened(reset=10, at=100)
    assert breaker.state(110) == HALF_OPEN
    assert breaker.allow(110)
    assert not breaker.allow(110.5)


def test_a_successful_trial_closes_it():
    breaker = opened(reset=10, at=100)
    assert breaker.allow(110)
    breaker.record_success(111)
    assert breaker.state(111) == CLOSED
    assert breaker.allow(111)


def test_a_failed_trial_opens_it_again_for_another_reset_period():
    breaker = opened(reset=10, at=100)
    assert breaker.allow(110)
    breaker.record_failure(111)
    assert breaker.state(111) == OPEN
    assert not breaker.allow(120.9)
    assert breaker.allow(121)


def test_after_closing_again_it_takes_the_full_limit_of_failures_to_reopen():
    breaker = opened(failures=2, reset=10, at=100)
    breaker.allow(110)
    breaker.record_success(110)
    breaker.record_failure(111)
    assert breaker.state(111) == CLOSED


def test_a_trial_whose_outcome_never_arrives_is_replaced_after_another_reset():
    breaker = opened(reset=10, at=100)
    assert breaker.allow(110)  # its caller dies without recording anything
    assert not breaker.allow(119.9)
    assert breaker.allow(120)


def test_a_late_success_from_before_it_opened_does_not_close_it():
    breaker = opened(reset=10, at=100)
    breaker.record_success(101)
    assert breaker.state(101) == OPEN


def test_a_late_failure_while_open_does_not_extend_the_open_period():
    breaker = opened(reset=10, at=100)
    breaker.record_failure(105)
    assert breaker.state(110) == HALF_OPEN


def test_nonsense_limits_are_refused():
    with pytest.raises(ValueError):
        Breaker(0, 10)
    with pytest.raises(ValueError):
        Breaker(1, 0)
