"""The request limit's decision (sansio.rate_limit, GCRA) on fake time: bursts, the steady rate, the
edges, and the RateLimit fields it renders. No database: tests/test_rate_limits.py runs the same
arithmetic in PostgreSQL."""

from __future__ import annotations

import pytest

from sansio import rate_limit as rl

NOW = 1_800_000_000.0
WRITES = rl.Policy("writes", 60, 5)  # one a second after a burst of 5


def run(policy, times):
    tat, outcomes = None, []
    for t in times:
        decision = rl.take(policy, tat, t)
        tat = decision.tat
        outcomes.append(decision)
    return outcomes


def test_a_full_bucket_allows_exactly_the_burst_at_one_instant_and_refuses_one_past_it():
    outcomes = run(WRITES, [NOW] * 6)
    assert [d.allowed for d in outcomes] == [True] * 5 + [False]
    assert [d.remaining for d in outcomes] == [4, 3, 2, 1, 0, 0]


def test_a_refusal_says_to_wait_one_emission_interval_and_leaves_the_state_as_it_was():
    fifth, sixth = run(WRITES, [NOW] * 6)[4:]
    assert sixth.retry_after == pytest.approx(1.0)
    assert sixth.tat == fifth.tat


def test_after_the_burst_requests_pass_at_the_steady_rate_and_not_faster():
    tat = run(WRITES, [NOW] * 5)[-1].tat
    assert not rl.take(WRITES, tat, NOW + 0.999).allowed
    on_time = rl.take(WRITES, tat, NOW + 1.0)  # exactly when the next one is due
    assert on_time.allowed
    assert not rl.take(WRITES, on_time.tat, NOW + 1.5).allowed
    assert rl.take(WRITES, on_time.tat, NOW + 2.0).allowed


def test_an_idle_subject_gets_its_whole_burst_back_and_no_more():
    tat = run(WRITES, [NOW] * 5)[-1].tat
    later = NOW + 3600
    outcomes = run(WRITES, [later] * 6)
    assert rl.take(WRITES, tat, later).remaining == 4
    assert [d.allowed for d in outcomes] == [True] * 5 + [False]


def test_the_limit_holds_exactly_for_a_rate_whose_interval_is_not_a_round_float():
    odd = rl.Policy("reads", 7, 3)  # T = 8.571428… s
    outcomes = run(odd, [NOW, NOW, NOW, NOW, NOW + 60 / 7, NOW + 60 / 7])
    assert [d.allowed for d in outcomes] == [True, True, True, False, True, False]


def test_the_reset_is_the_time_until_the_whole_burst_is_back():
    third = run(WRITES, [NOW] * 3)[-1]
    assert third.reset == pytest.approx(3.0)
    assert rl.headers(WRITES, third)["RateLimit"] == '"writes";r=2;t=3'


def test_the_fields_of_an_allowed_request_carry_the_policy_and_no_retry_after():
    first = rl.take(WRITES, None, NOW)
    found = rl.headers(WRITES, first)
    assert found == {"RateLimit-Policy": '"writes";q=60;w=60;wabot-burst=5', "RateLimit": '"writes";r=4;t=1'}


def test_a_refusal_carries_retry_after_in_whole_seconds_rounded_up_and_the_same_moment_as_t():
    slow = rl.Policy("writes", 40, 1)  # T = 1.5 s
    refused = run(slow, [NOW, NOW + 0.2])[-1]
    assert not refused.allowed and refused.retry_after == pytest.approx(1.3)
    found = rl.headers(slow, refused)
    assert found["Retry-After"] == "2"
    assert found["RateLimit"] == '"writes";r=0;t=2'


def test_the_refusal_names_the_limit_and_when_to_retry():
    refused = run(WRITES, [NOW] * 6)[-1]
    assert rl.refusal(WRITES, refused, "this API key") == (
        "too many writes for this API key: at most 60 a minute after a burst of 5; retry in 1 second")


def test_an_unlimited_policy_allows_everything():
    unlimited = rl.Policy("reads", 0, 1)
    assert all(d.allowed for d in run(unlimited, [NOW] * 1000))


def test_a_policy_without_a_burst_is_refused():
    with pytest.raises(ValueError):
        rl.Policy("reads", 60, 0)


def test_idle_rows_are_pruned_on_about_one_request_in_a_thousand():
    assert rl.prune_due(0.0) and rl.prune_due(0.000999)
    assert not rl.prune_due(0.001) and not rl.prune_due(0.5)
