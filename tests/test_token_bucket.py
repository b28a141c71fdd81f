"""The per-bot send rate limit's token bucket."""

from sansio.token_bucket import TokenBucket


def test_a_full_bucket_allows_a_burst_then_spaces_sends_at_the_rate():
    bucket = TokenBucket(rate=20 / 60, burst=5, now=0.0)
    assert all(bucket.take(0.0) for _ in range(5))
    assert not bucket.take(0.0)
    assert abs(bucket.wait_time(0.0) - 3.0) < 1e-9
    assert bucket.take(3.0)
    assert not bucket.take(3.0)


def test_over_a_minute_no_more_than_burst_plus_rate_sends_pass():
    bucket = TokenBucket(rate=20 / 60, burst=5, now=0.0)
    sent = sum(1 for step in range(6000) if bucket.take(step / 100))
    assert sent <= 5 + 20
    assert sent >= 20


def test_tokens_do_not_accumulate_beyond_the_burst():
    bucket = TokenBucket(rate=1.0, burst=2, now=0.0)
    assert bucket.take(1000.0) and bucket.take(1000.0)
    assert not bucket.take(1000.0)


def test_a_zero_rate_means_unlimited():
    bucket = TokenBucket(rate=0, burst=1, now=0.0)
    assert all(bucket.take(0.0) for _ in range(1000))
    assert bucket.wait_time(0.0) == 0.0


def test_available_counts_whole_tokens_and_refills_at_the_rate():
    bucket = TokenBucket(rate=1.0, burst=3, now=0.0)
    assert bucket.available(0.0) == 3
    for _ in range(3):
        bucket.take(0.0)
    assert bucket.available(0.5) == 0
    assert bucket.available(2.0) == 2
