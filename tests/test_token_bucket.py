"""The per-bot send rate limit's token bucket."""

import pytest

from sansio.token_bucket import Bucket


class Sender:
    """Takes a token per send at the times given, as the pipeline machine does with its bucket."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst, self.bucket = rate, burst, Bucket.full(burst, 0.0)

    def take(self, now: float) -> bool:
        before = self.bucket = self.bucket.refilled(self.rate, self.burst, now)
        self.bucket = before.taken(self.rate)
        return self.rate <= 0 or self.bucket != before

    def wait_time(self, now: float) -> float:
        return self.bucket.refilled(self.rate, self.burst, now).wait_time(self.rate)

    def available(self, now: float) -> int:
        return self.bucket.refilled(self.rate, self.burst, now).available(self.rate, self.burst)


def test_a_full_bucket_allows_a_burst_then_spaces_sends_at_the_rate():
    bucket = Sender(rate=20 / 60, burst=5)
    assert all(bucket.take(0.0) for _ in range(5))
    assert not bucket.take(0.0)
    assert abs(bucket.wait_time(0.0) - 3.0) < 1e-9
    assert bucket.take(3.0)
    assert not bucket.take(3.0)


def test_over_a_minute_no_more_than_burst_plus_rate_sends_pass():
    bucket = Sender(rate=20 / 60, burst=5)
    sent = sum(1 for step in range(6000) if bucket.take(step / 100))
    assert sent <= 5 + 20
    assert sent >= 20


def test_tokens_do_not_accumulate_beyond_the_burst():
    bucket = Sender(rate=1.0, burst=2)
    assert bucket.take(1000.0) and bucket.take(1000.0)
    assert not bucket.take(1000.0)


def test_a_zero_rate_means_unlimited():
    bucket = Sender(rate=0, burst=1)
    assert all(bucket.take(0.0) for _ in range(1000))
    assert bucket.wait_time(0.0) == 0.0


def test_available_counts_whole_tokens_and_refills_at_the_rate():
    bucket = Sender(rate=1.0, burst=3)
    assert bucket.available(0.0) == 3
    for _ in range(3):
        bucket.take(0.0)
    assert bucket.available(0.5) == 0
    assert bucket.available(2.0) == 2


def test_a_bucket_needs_room_for_one_token():
    with pytest.raises(ValueError):
        Bucket.full(0, 0.0)


def test_a_change_leaves_the_bucket_it_was_made_from_as_it_was():
    bucket = Bucket.full(2, 0.0)
    assert bucket.taken(1.0) == Bucket(1.0, 0.0) and bucket == Bucket(2.0, 0.0)
