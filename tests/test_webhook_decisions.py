"""What a webhook attempt's answer means, the schedule, Retry-After and the Standard Webhooks request;
pure, on fake time."""

import datetime
import json
import random
import time

import pytest
from standardwebhooks import Webhook

from sansio import webhooks
from sansio.webhooks import Answer, decide

DAY = 86400.0
FIVE_DAYS = 5 * DAY
NOW = 1_800_000_000.0


class Fixed:
    """An rng whose uniform(a, b) is a + (b - a) * share."""

    def __init__(self, share: float) -> None:
        self.share = share

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.share


def test_a_2xx_is_delivered():
    assert decide(Answer(204), 1, NOW, None, FIVE_DAYS, Fixed(0.5)).kind == "delivered"


@pytest.mark.parametrize("status", [None, 301, 302, 400, 404, 500, 502])
def test_anything_else_is_retried_on_the_schedule(status):
    outcome = decide(Answer(status, "connection refused" if status is None else None), 1, NOW, None, FIVE_DAYS,
                     Fixed(0.5))
    assert outcome.kind == "retry" and outcome.next_at == NOW + 5


def test_the_schedule_is_five_seconds_five_minutes_thirty_minutes_two_five_ten_and_ten_hours():
    delays = [webhooks.schedule_delay(n, Fixed(0.5)) for n in range(1, 9)]
    assert delays == [5, 300, 1800, 7200, 18000, 36000, 36000, None]


def test_the_jitter_stays_within_a_tenth_of_each_delay():
    rng = random.Random(3)
    for n, planned in enumerate(webhooks.SCHEDULE, start=1):
        for _ in range(100):
            assert planned * 0.9 <= webhooks.schedule_delay(n, rng) <= planned * 1.1


def test_the_eighth_failed_attempt_fails_the_delivery():
    outcome = decide(Answer(500), 8, NOW, NOW - 3600, FIVE_DAYS, Fixed(0.5))
    assert outcome.kind == "failed" and outcome.next_at is None and outcome.error == "HTTP 500"


def test_a_410_disables_the_endpoint():
    outcome = decide(Answer(410), 1, NOW, None, FIVE_DAYS, Fixed(0.5))
    assert outcome.kind == "gone" and "410" in outcome.disable_reason


def test_a_redirect_is_a_failure_that_says_it_was_not_followed():
    assert decide(Answer(307), 1, NOW, None, FIVE_DAYS, Fixed(0.5)).error == "redirect (307) not followed"


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds_puts_the_next_attempt_no_sooner(status):
    outcome = decide(Answer(status, None, "120"), 1, NOW, None, FIVE_DAYS, Fixed(0.5))
    assert outcome.next_at == NOW + 120


def test_a_retry_after_shorter_than_the_schedule_does_not_bring_the_attempt_forward():
    outcome = decide(Answer(429, None, "1"), 2, NOW, None, FIVE_DAYS, Fixed(0.5))
    assert outcome.next_at == NOW + 300


def test_retry_after_as_an_http_date_is_understood():
    when = datetime.datetime.fromtimestamp(NOW + 600, datetime.UTC)
    header = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert decide(Answer(503, None, header), 1, NOW, None, FIVE_DAYS, Fixed(0.5)).next_at == NOW + 600


def test_retry_after_is_ignored_on_a_500_and_when_unreadable():
    assert decide(Answer(500, None, "999"), 1, NOW, None, FIVE_DAYS, Fixed(0.5)).next_at == NOW + 5
    assert decide(Answer(429, None, "soon"), 1, NOW, None, FIVE_DAYS, Fixed(0.5)).next_at == NOW + 5


def test_a_retry_after_beyond_a_day_counts_as_a_day():
    assert webhooks.retry_after("10000000", NOW) == DAY


def test_an_endpoint_failing_for_five_days_is_disabled_by_the_next_failure():
    outcome = decide(Answer(500), 3, NOW, NOW - FIVE_DAYS, FIVE_DAYS, Fixed(0.5))
    assert outcome.kind == "retry" and outcome.disable_reason.startswith("every attempt failed for 5 days")


def test_an_endpoint_failing_for_less_stays_enabled():
    assert decide(Answer(500), 3, NOW, NOW - FIVE_DAYS + 60, FIVE_DAYS, Fixed(0.5)).disable_reason == ""


def test_the_body_is_type_timestamp_and_data():
    occurred = datetime.datetime(2026, 12, 2, 10, 0, 0, 123000, tzinfo=datetime.UTC)
    body = json.loads(webhooks.body("message.in", occurred, {"text": "hi"}))
    assert body == {"type": "message.in", "timestamp": "2026-12-02T10:00:00.123000Z", "data": {"text": "hi"}}


def test_the_headers_verify_with_the_reference_library():
    secret = webhooks.new_secret()
    payload = webhooks.body("webhook.test", datetime.datetime.now(datetime.UTC), {})
    headers = webhooks.headers("3f1c", time.time(), payload, [secret])
    assert headers["webhook-id"] == "3f1c" and headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(payload, headers)["type"] == "webhook.test"


def test_a_secret_is_whsec_and_24_random_bytes():
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_") and len(secret) == 6 + 32 and secret != webhooks.new_secret()


def test_the_previous_secret_signs_only_until_its_overlap_ends():
    assert webhooks.active_secrets("new", "old", NOW + 1, NOW) == ["new", "old"]
    assert webhooks.active_secrets("new", "old", NOW, NOW) == ["new"]
    assert webhooks.active_secrets("new", None, None, NOW) == ["new"]


def test_the_response_head_is_the_first_kilobyte_as_text():
    assert webhooks.response_head(b"x" * 5000) == "x" * 1024
    assert webhooks.response_head(b"\xff\x00ok") == "\ufffd\ufffdok"
