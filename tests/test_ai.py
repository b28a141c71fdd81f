"""The AI responder's client (core.ai) through the real ``openai`` library against a scripted
provider on 127.0.0.1 (tests/openai_server.py): what is sent, which failures are retried and how long
it waits, and the per-provider circuit breaker. Also the pure parts: Retry-After, backoff, prompt."""

import random
import time
from email.utils import formatdate

import pytest

from core import config
from core.ai import AiClient, AiError, AiUnavailable, parse_retry_after, retry_delay
from sansio.breaker import CLOSED, OPEN
from sansio.prompt import build_messages
from sansio.rules import AiConfig
from tests.openai_server import OpenAiServer, raw, reply, status

HELLO = [{"role": "user", "content": "hi"}]


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def server():
    with OpenAiServer() as running:
        yield running


@pytest.fixture
def make_client(server):
    clients = []

    def make(breakers=None, clock=time.monotonic, observe=None, retry_after_cap=30.0, **settings):
        values = dict(
            ai_base_url=server.base_url + "/v1",
            ai_api_key="test-key",
            ai_model="test-model",
            ai_timeout=2.0,
            ai_max_retries=2,
            ai_breaker_failures=5,
            ai_breaker_reset=30.0,
        )
        values.update(settings)
        client = AiClient(
            config.load({}, **values),
            clock,
            {} if breakers is None else breakers,
            observe=observe,
            backoff_base=0.01,  # retries without Retry-After stay quick
            retry_after_cap=retry_after_cap,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# -- Retry-After and backoff (pure) -------------------------------------------------------------------


def test_retry_after_in_seconds_is_read():
    assert parse_retry_after({"retry-after": "7"}, now=0) == 7


def test_retry_after_as_an_http_date_counts_from_now():
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": formatdate(now + 12, usegmt=True)}, now=now) == 12


def test_retry_after_in_the_past_means_no_wait():
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": formatdate(now - 50, usegmt=True)}, now=now) == 0


def test_retry_after_ms_is_preferred_when_present():
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "3"}, now=0) == 0.25


@pytest.mark.parametrize("value", ["soon", "-3", "nan", ""])
def test_an_unreadable_retry_after_is_ignored(value):
    assert parse_retry_after({"retry-after": value}, now=0) is None


def test_retry_after_is_honoured_up_to_the_cap():
    rng = random.Random(1)
    assert retry_delay(1, 4.0, rng, base=0.5, cap=8, retry_after_cap=30) == 4.0
    assert retry_delay(1, 120.0, rng, base=0.5, cap=8, retry_after_cap=30) == 30


def test_without_retry_after_the_backoff_doubles_with_jitter_up_to_its_cap():
    rng = random.Random(2)
    for attempt, (lo, hi) in enumerate([(0.25, 0.5), (0.5, 1), (1, 2), (4, 8), (4, 8)], start=1):
        attempt = attempt if attempt < 4 else attempt + 10
        for _ in range(50):
            assert lo <= retry_delay(attempt, None, rng, base=0.5, cap=8, retry_after_cap=30) <= hi


# -- prompt (pure) ------------------------------------------------------------------------------------


def test_the_prompt_is_system_then_recent_history_then_the_new_messages_joined():
    ai = AiConfig(enabled=True, system_prompt="You sell shoes.", history=2)
    history = [("in", "old question"), ("out", "old answer"), ("in", "do you deliver?"), ("out", "yes")]
    assert build_messages(ai, history, ["to Porto", "by Friday?"]) == [
        {"role": "system", "content": "You sell shoes."},
        {"role": "user", "content": "do you deliver?"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "to Porto\nby Friday?"},
    ]


def test_a_history_of_zero_sends_no_past_messages():
    ai = AiConfig(enabled=True, system_prompt="S", history=0)
    assert build_messages(ai, [("in", "a"), ("out", "b")], ["c"]) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "c"},
    ]


def test_a_blank_system_prompt_and_empty_texts_are_left_out():
    ai = AiConfig(enabled=True, system_prompt="  ", history=10)
    assert build_messages(ai, [("in", ""), ("out", "ok")], ["", "hi"]) == [
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "hi"},
    ]


def test_an_unknown_direction_in_history_is_an_error():
    with pytest.raises(ValueError):
        build_messages(AiConfig(history=5), [("sideways", "x")], ["hi"])


# -- requests that succeed ----------------------------------------------------------------------------


def test_a_reply_sends_model_system_prompt_history_and_temperature(server, make_client):
    server.script(reply("  We deliver on Fridays.\n"))
    ai = AiConfig(enabled=True, system_prompt="You sell shoes.", temperature=0.3, history=10, model="bot-model")
    messages = build_messages(ai, [("in", "hello"), ("out", "hi! how can I help?")], ["do you deliver?"])

    text = make_client().reply(messages, model=ai.model, temperature=ai.temperature)

    assert text == "We deliver on Fridays."
    (call,) = server.calls
    assert call.path == "/v1/chat/completions"
    assert call.headers["authorization"] == "Bearer test-key"
    assert call.body["model"] == "bot-model"
    assert call.body["temperature"] == 0.3
    assert call.body["messages"] == [
        {"role": "system", "content": "You sell shoes."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi! how can I help?"},
        {"role": "user", "content": "do you deliver?"},
    ]


def test_requests_carry_no_client_telemetry_headers(server, make_client):
    server.script(reply("ok"))
    make_client().reply(HELLO)
    headers = server.calls[0].headers
    assert not [name for name in headers if name.startswith("x-stainless")]
    assert headers["accept"] == "application/json" and headers["authorization"] == "Bearer test-key"


def test_without_the_request_template_the_public_post_sends_the_same_request(server, make_client):
    server.script(reply("one"), reply("two"))
    client = make_client()
    assert client.reply(HELLO) == "one"
    client._template = None  # as with a client version that lacks the type  # noqa: SLF001
    assert client.reply(HELLO) == "two"
    first, second = server.calls
    assert (first.path, first.body) == (second.path, second.body)
    assert {k: v for k, v in first.headers.items() if k != "x-stainless-retry-count"} == \
        {k: v for k, v in second.headers.items() if k != "x-stainless-retry-count"}


def test_a_base_url_without_v1_is_called_like_deepseek(server, make_client):
    server.script(reply("ok"))
    make_client(ai_base_url=server.base_url).reply(HELLO)
    assert server.calls[0].path == "/chat/completions"


def test_without_a_bot_model_the_platform_model_is_used(server, make_client):
    server.script(reply("ok"))
    make_client().reply(HELLO)
    assert server.calls[0].body["model"] == "test-model"


# -- retries ------------------------------------------------------------------------------------------


def test_a_429_is_retried_after_the_retry_after_it_names(server, make_client):
    server.script(status(429, retry_after="1"), reply("ok"))
    assert make_client().reply(HELLO) == "ok"
    first, second = server.calls
    assert second.received_at - first.answered_at >= 1.0


def test_a_retry_after_beyond_the_cap_waits_only_the_cap(server, make_client):
    server.script(status(503, retry_after="60"), reply("ok"))
    started = time.monotonic()
    assert make_client(retry_after_cap=0.2).reply(HELLO) == "ok"
    first, second = server.calls
    assert second.received_at - first.answered_at >= 0.2
    assert time.monotonic() - started < 2


def test_server_errors_are_retried_until_one_succeeds(server, make_client):
    server.script(status(500), status(502), reply("ok"))
    assert make_client(ai_max_retries=2).reply(HELLO) == "ok"
    assert len(server.calls) == 3


def test_a_provider_that_keeps_failing_gives_up_after_the_retries(server, make_client):
    server.default = status(500)
    with pytest.raises(AiUnavailable) as info:
        make_client(ai_max_retries=2).reply(HELLO)
    assert info.value.kind == "server_error"
    assert isinstance(info.value, AiError)
    assert len(server.calls) == 3


def test_a_provider_slower_than_the_timeout_is_retried_then_given_up(server, make_client):
    server.default = reply("too late", delay=0.6)
    started = time.monotonic()
    with pytest.raises(AiUnavailable) as info:
        make_client(ai_timeout=0.15, ai_max_retries=1).reply(HELLO)
    assert info.value.kind == "timeout"
    assert len(server.calls) == 2
    assert time.monotonic() - started < 0.6


def test_a_provider_that_cannot_be_reached_is_a_connection_error(make_client):
    with OpenAiServer() as gone:
        url = gone.base_url + "/v1"
    with pytest.raises(AiUnavailable) as info:
        make_client(ai_base_url=url, ai_max_retries=1).reply(HELLO)
    assert info.value.kind == "connection"


@pytest.mark.parametrize(
    "response",
    [raw(b'{"choices": [{"message": '), raw(b'{"id": "x", "object": "chat.completion"}'),
     raw(b'{"choices": [{"message": {"role": "assistant", "content": null}}]}'), raw(b"<html>", "text/html")],
    ids=["invalid-json", "no-choices", "no-content", "not-json"],
)
def test_a_malformed_answer_is_an_error_and_not_retried(server, make_client, response):
    server.script(response, reply("never asked"))
    with pytest.raises(AiError) as info:
        make_client(ai_max_retries=2).reply(HELLO)
    assert info.value.kind == "malformed"
    assert not isinstance(info.value, AiUnavailable)
    assert len(server.calls) == 1


@pytest.mark.parametrize("code, kind", [(400, "client_error"), (401, "auth"), (403, "auth"), (404, "client_error")])
def test_a_client_error_is_not_retried(server, make_client, code, kind):
    server.script(status(code), reply("never asked"))
    with pytest.raises(AiError) as info:
        make_client(ai_max_retries=2).reply(HELLO)
    assert info.value.kind == kind
    assert len(server.calls) == 1


def test_without_an_api_key_ai_is_off_and_nothing_is_sent(server, make_client):
    client = make_client(ai_api_key=None)
    assert not client.enabled
    with pytest.raises(AiUnavailable) as info:
        client.reply(HELLO)
    assert info.value.kind == "not_configured"
    assert server.calls == []


# -- the circuit breaker ------------------------------------------------------------------------------


def failing_client(make_client, server, clock, breakers=None, **settings):
    server.default = status(500)
    values = {"ai_max_retries": 0, "ai_breaker_failures": 2, "ai_breaker_reset": 30, **settings}
    return make_client(breakers, clock, **values)


def fail_twice(client):
    for _ in range(2):
        with pytest.raises(AiUnavailable):
            client.reply(HELLO)


def test_the_breaker_opens_after_consecutive_failed_requests_and_then_sends_nothing(server, make_client):
    client = failing_client(make_client, server, FakeClock())
    fail_twice(client)
    assert client.breaker_state() == OPEN

    with pytest.raises(AiUnavailable) as info:
        client.reply(HELLO)
    assert info.value.kind == "circuit_open"
    assert len(server.calls) == 2


def test_retries_within_one_request_count_once_for_the_breaker(server, make_client):
    client = failing_client(make_client, server, FakeClock(), ai_max_retries=3)
    with pytest.raises(AiUnavailable):
        client.reply(HELLO)
    assert len(server.calls) == 4
    assert client.breaker_state() == CLOSED


def test_a_successful_trial_after_the_reset_closes_the_breaker(server, make_client):
    clock = FakeClock()
    client = failing_client(make_client, server, clock)
    fail_twice(client)

    clock.now += 30
    server.script(reply("back"))
    assert client.reply(HELLO) == "back"
    assert client.breaker_state() == CLOSED
    assert len(server.calls) == 3


def test_a_failed_trial_opens_the_breaker_again(server, make_client):
    clock = FakeClock()
    client = failing_client(make_client, server, clock)
    fail_twice(client)

    clock.now += 30
    with pytest.raises(AiUnavailable) as info:
        client.reply(HELLO)
    assert info.value.kind == "server_error"
    assert client.breaker_state() == OPEN
    assert len(server.calls) == 3


def test_clients_of_the_same_provider_share_the_callers_breaker(server, make_client):
    clock, breakers = FakeClock(), {}
    fail_twice(failing_client(make_client, server, clock, breakers))
    other = failing_client(make_client, server, clock, breakers)
    with pytest.raises(AiUnavailable) as info:
        other.reply(HELLO)
    assert info.value.kind == "circuit_open"
    assert len(server.calls) == 2


def test_a_request_the_provider_refuses_does_not_count_against_it(server, make_client):
    server.default = status(400)
    client = make_client(None, FakeClock(), ai_breaker_failures=1)
    with pytest.raises(AiError):
        client.reply(HELLO)
    assert client.breaker_state() == CLOSED


def test_a_malformed_answer_counts_against_the_provider(server, make_client):
    server.default = raw(b"{")
    client = make_client(None, FakeClock(), ai_breaker_failures=1)
    with pytest.raises(AiError):
        client.reply(HELLO)
    assert client.breaker_state() == OPEN


# -- metrics hook -------------------------------------------------------------------------------------


def test_observe_sees_every_attempt_and_every_refusal(server, make_client):
    seen = []
    server.script(status(500), reply("ok"))
    client = make_client(observe=lambda outcome, seconds: seen.append((outcome, seconds)), ai_breaker_failures=1)
    client.reply(HELLO)
    server.script(raw(b"{"))
    with pytest.raises(AiError):
        client.reply(HELLO)
    with pytest.raises(AiUnavailable):
        client.reply(HELLO)

    assert [outcome for outcome, _ in seen] == ["server_error", "ok", "malformed", "circuit_open"]
    assert all(seconds >= 0 for _, seconds in seen)
