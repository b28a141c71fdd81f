"""The webhook dispatcher's machine on fake time: claims one at a time and spaced out, records
batched and retried, never more requests in flight than allowed, no outcome lost or recorded twice."""

from hypothesis import given, settings
from hypothesis import strategies as st

from sansio import webhook_dispatch as wd

SETTINGS = wd.Settings(concurrency=10, poll=1.0, retry=2.0, batch=5, gap=0.005)


def _of(effects, kind):
    return [e for e in effects if isinstance(e, kind)]


def started():
    state = wd.State(SETTINGS)
    effects = wd.transition(state, 100.0, wd.Start())
    return state, effects


def test_starting_claims_at_once_and_sets_the_poll_and_prune_timers():
    state, effects = started()
    assert _of(effects, wd.Claim) == [wd.Claim(5)]
    assert {t.name: t.at for t in _of(effects, wd.ScheduleTimer)} == {"poll": 101.0, "prune": 700.0}


def test_wakes_during_a_claim_make_one_more_claim_after_it():
    state, _ = started()
    for _ in range(50):
        assert wd.transition(state, 100.01, wd.Wake()) == []
    effects = wd.transition(state, 100.02, wd.Claimed((), 5))
    assert _of(effects, wd.Claim) == [wd.Claim(5)]


def test_a_full_claim_claims_again_for_what_may_be_left():
    state, _ = started()
    effects = wd.transition(state, 100.01, wd.Claimed(("a", "b", "c", "d", "e"), 5))
    assert _of(effects, wd.Post) == [wd.Post(r) for r in "abcde"]
    assert _of(effects, wd.Claim) == [wd.Claim(5)]


def test_no_claim_is_made_while_every_slot_is_busy():
    state, _ = started()
    wd.transition(state, 100.01, wd.Claimed(tuple("abcde"), 5))
    wd.transition(state, 100.02, wd.Claimed(tuple("fghij"), 5))
    assert state.in_flight == 10
    assert wd.transition(state, 100.03, wd.Wake()) == []
    effects = wd.transition(state, 100.04, wd.Posted("a", "result a"))
    assert _of(effects, wd.Claim) == [wd.Claim(1)]


def test_a_claim_asked_for_sooner_than_the_gap_waits_on_a_timer():
    state, _ = started()
    wd.transition(state, 100.001, wd.Claimed(("a",), 5))
    effects = wd.transition(state, 100.002, wd.Posted("a", "ra"))
    assert _of(effects, wd.Claim) == []
    assert _of(effects, wd.ScheduleTimer) == [wd.ScheduleTimer("claim", 100.005, wd.ClaimDue())]
    assert _of(wd.transition(state, 100.005, wd.ClaimDue()), wd.Claim) == [wd.Claim(5)]


def test_outcomes_that_finish_during_a_record_go_in_the_next_one_together():
    state, _ = started()
    wd.transition(state, 100.01, wd.Claimed(tuple("abc"), 5))
    first = wd.transition(state, 100.02, wd.Posted("a", "ra"))
    assert _of(first, wd.Record) == [wd.Record(("ra",))]
    assert _of(wd.transition(state, 100.03, wd.Posted("b", "rb")), wd.Record) == []
    assert _of(wd.transition(state, 100.04, wd.Posted("c", "rc")), wd.Record) == []
    assert _of(wd.transition(state, 100.05, wd.Recorded(1, ())), wd.Record) == [wd.Record(("rb", "rc"))]


def test_a_failed_record_is_tried_again_later_with_what_came_since():
    state, _ = started()
    wd.transition(state, 100.01, wd.Claimed(tuple("ab"), 5))
    wd.transition(state, 100.02, wd.Posted("a", "ra"))
    effects = wd.transition(state, 100.03, wd.RecordFailed(("ra",), "database away"))
    assert _of(effects, wd.ScheduleTimer) == [wd.ScheduleTimer("record", 102.03, wd.RecordDue())]
    assert _of(wd.transition(state, 100.5, wd.Posted("b", "rb")), wd.Record) == []
    assert _of(wd.transition(state, 102.03, wd.RecordDue()), wd.Record) == [wd.Record(("ra", "rb"))]


def test_a_failed_claim_polls_again_after_the_retry_pause():
    state, _ = started()
    effects = wd.transition(state, 100.01, wd.ClaimFailed("database away"))
    assert _of(effects, wd.ScheduleTimer) == [wd.ScheduleTimer("poll", 102.01, wd.PollDue())]
    assert _of(wd.transition(state, 102.01, wd.PollDue()), wd.Claim) == [wd.Claim(5)]


def test_an_endpoint_disabled_by_a_record_is_announced():
    state, _ = started()
    wd.transition(state, 100.01, wd.Claimed(("a",), 5))
    wd.transition(state, 100.02, wd.Posted("a", "ra"))
    effects = wd.transition(state, 100.03, wd.Recorded(1, (("e1", "t1", "the receiver answered 410 Gone"),)))
    assert effects == [wd.EndpointDisabled("e1", "t1", "the receiver answered 410 Gone")]


def test_pruning_comes_round_again():
    state, _ = started()
    effects = wd.transition(state, 700.0, wd.PruneDue())
    assert effects == [wd.Prune(), wd.ScheduleTimer("prune", 1300.0, wd.PruneDue())]


# -- random interleavings ------------------------------------------------------------------------------

STEPS = st.lists(st.sampled_from(["wake", "claim_ok", "claim_full", "claim_fail", "post_done", "record_ok",
                                  "record_fail", "timer", "tick"]), min_size=1, max_size=120)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(STEPS)
def test_any_interleaving_keeps_one_claim_and_one_record_at_a_time_and_loses_no_outcome(steps):
    state = wd.State(SETTINGS)
    now = 100.0
    claims: list[wd.Claim] = []  # in flight (at most one)
    records: list[wd.Record] = []  # in flight (at most one)
    posts: list[str] = []  # requests in flight
    timers: dict[str, tuple[float, object]] = {}
    recorded: list[str] = []
    made = 0
    last_claim = float("-inf")

    def run(event):
        nonlocal last_claim
        for effect in wd.transition(state, now, event):
            if isinstance(effect, wd.Claim):
                assert not claims, "two claims at once"
                assert now >= last_claim + SETTINGS.gap, "claims closer than the gap"
                assert 0 < effect.limit <= SETTINGS.concurrency - len(posts)
                last_claim = now
                claims.append(effect)
            elif isinstance(effect, wd.Post):
                posts.append(effect.row)
            elif isinstance(effect, wd.Record):
                assert not records, "two records at once"
                records.append(effect)
            elif isinstance(effect, wd.ScheduleTimer):
                timers[effect.name] = (effect.at, effect.input)
        assert len(posts) == state.in_flight <= SETTINGS.concurrency

    run(wd.Start())
    for step in steps:
        if step == "wake":
            run(wd.Wake())
        elif step in ("claim_ok", "claim_full") and claims:
            limit = claims.pop().limit
            count = limit if step == "claim_full" else max(0, limit - 1)
            rows = []
            for _ in range(count):
                made += 1
                rows.append(f"d{made}")
            run(wd.Claimed(tuple(rows), limit))
        elif step == "claim_fail" and claims:
            claims.pop()
            run(wd.ClaimFailed("down"))
        elif step == "post_done" and posts:
            row = posts.pop(0)
            run(wd.Posted(row, row))
        elif step == "record_ok" and records:
            recorded.extend(records.pop().results)
            run(wd.Recorded(1, ()))
        elif step == "record_fail" and records:
            run(wd.RecordFailed(records.pop().results, "down"))
        elif step == "timer" and timers:
            name = min(timers, key=lambda n: timers[n][0])
            at, event = timers.pop(name)
            now = max(now, at)
            run(event)
        elif step == "tick":
            now += 0.003
    # Let everything finish: every request answers, every record succeeds, timers fire.
    for _ in range(10_000):
        if claims:
            claims.pop()
            run(wd.Claimed((), 1))
        elif posts:
            row = posts.pop(0)
            run(wd.Posted(row, row))
        elif records:
            recorded.extend(records.pop().results)
            run(wd.Recorded(1, ()))
        elif "record" in timers or "claim" in timers:
            name = "record" if "record" in timers else "claim"
            at, event = timers.pop(name)
            now = max(now, at)
            run(event)
        else:
            break
    assert sorted(recorded) == sorted(f"d{i}" for i in range(1, made + 1))  # each outcome recorded once
