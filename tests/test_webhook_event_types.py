"""The event types an endpoint may subscribe to (sansio.webhook_endpoints), pure: the streams' syntax,
and no pattern that can never match."""

from __future__ import annotations

import pytest

from sansio.webhook_endpoints import EVENT_TYPES, MAX_PATTERNS, PatternRefused, check_event_types, matches


def test_exact_types_and_prefixes_are_kept_in_order_without_duplicates():
    assert check_event_types(["outbox.dead", "message.*", "outbox.dead"]) == ["outbox.dead", "message.*"]


def test_no_types_means_every_type_and_is_kept_empty():
    assert check_event_types([]) == []


@pytest.mark.parametrize("pattern", ["mesage.in", "bots.*", "message.inn"])
def test_a_pattern_that_matches_no_type_is_refused_at_its_index(pattern):
    with pytest.raises(PatternRefused) as refused:
        check_event_types(["message.in", pattern])
    assert refused.value.index == 1 and "matches no event type" in refused.value.reason


@pytest.mark.parametrize("pattern", ["*", ".*", "mess*", "message.*.in", "message in", "", "a" * 101])
def test_a_malformed_pattern_is_refused(pattern):
    with pytest.raises(PatternRefused) as refused:
        check_event_types([pattern])
    assert refused.value.index == 0


def test_more_than_the_limit_is_refused_naming_the_first_one_over():
    with pytest.raises(PatternRefused) as refused:
        check_event_types(["message.in"] * (MAX_PATTERNS + 1))
    assert refused.value.index == MAX_PATTERNS


def test_a_prefix_matches_as_the_streams_filter_and_the_database_do():
    assert [t for t in EVENT_TYPES if matches("message.*", t)] == ["message.in", "message.out", "message.status"]
    assert not matches("message.in", "message.inbound")
