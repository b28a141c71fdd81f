"""The AI responder's client (core.ai) against a scripted provider on 127.0.0.1
(tests/openai_server.py): what is sent, which failures are retried and how long it waits, the size
cap, https, and the per-provider circuit breaker. Also the pure parts (sansio.ai_http): the endpoint,
proxies from the environment, the request, what an answer means, Retry-After and backoff; and the
prompt. The connections themselves are tests/test_http_transport.py's."""

import base64
import json
import random
import time
from email.utils import formatdate

import pytest

from core import config, context
from core.ai import AiClient, AiError, AiUnavailable
from sansio.ai_http import (
    MAX_RESPONSE_BYTES,
    Answer,
    Endpoint,
    Failure,
    Proxy,
    backoff_policy,
    bypasses,
    endpoint,
    interpret,
    parse_retry_after,
    proxy_for,
    request_body,
    request_headers,
    retry_delay,
    reusable,
)
from sansio.breaker import CLOSED, OPEN
from sansio.prompt import build_messages
from sansio.rules import AiConfig
from tests.openai_server import OpenAiServer, certificates, completion, raw, reply, status

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

    def make(breakers=None, clock=time.monotonic, observe=None, retry_after_cap=30.0, proxies=None, ssl_context=None,
             **settings):
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
            proxies={} if proxies is None else proxies,  # not the environment's
            ssl_context=ssl_context,
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


def test_retry_after_headers_are_found_whatever_their_case():
    class CaseBlind(dict):  # as http.client's message looks names up
        def get(self, name, default=None):
            return next((v for k, v in self.items() if k.lower() == name), default)

    assert parse_retry_after(CaseBlind({"Retry-After": "7"}), now=0) == 7


def test_retry_after_is_honoured_up_to_the_cap():
    rng, policy = random.Random(1), backoff_policy(0.5, 8)
    assert retry_delay(1, 4.0, rng, policy, retry_after_cap=30) == 4.0
    assert retry_delay(1, 120.0, rng, policy, retry_after_cap=30) == 30


def test_without_retry_after_the_backoff_doubles_with_equal_jitter_up_to_its_cap():
    rng, policy = random.Random(2), backoff_policy(0.5, 8)
    for attempt, (lo, hi) in [(1, (0.25, 0.5)), (2, (0.5, 1)), (3, (1, 2)), (5, (4, 8)), (15, (4, 8))]:
        delays = [retry_delay(attempt, None, rng, policy, retry_after_cap=30) for _ in range(50)]
        assert all(lo <= d <= hi for d in delays), (attempt, delays)


def test_the_backoff_is_the_platforms_one_policy_with_equal_jitter():
    policy = backoff_policy(0.5, 8)
    assert (policy.base, policy.cap, policy.jitter, policy.max_attempts) == (0.5, 8, "equal", None)


# -- the endpoint and proxies (pure) --------------------------------------------------------------------


@pytest.mark.parametrize("base_url, expected", [
    ("https://api.deepseek.com", Endpoint("https", "api.deepseek.com", 443, "/chat/completions")),
    ("https://api.openai.com/v1/", Endpoint("https", "api.openai.com", 443, "/v1/chat/completions")),
    ("http://127.0.0.1:8080/v1", Endpoint("http", "127.0.0.1", 8080, "/v1/chat/completions")),
    ("http://[::1]:8080", Endpoint("http", "::1", 8080, "/chat/completions")),
])
def test_the_endpoint_is_the_base_url_with_chat_completions_under_it(base_url, expected):
    assert endpoint(base_url) == expected


@pytest.mark.parametrize("base_url", ["api.deepseek.com", "ftp://host/v1", "https://", "https://user:pw@host/v1"])
def test_a_base_url_that_is_not_a_plain_http_url_is_refused(base_url):
    with pytest.raises(ValueError):
        endpoint(base_url)


def test_the_origin_leaves_out_the_schemes_default_port():
    assert endpoint("https://api.deepseek.com:443/v1").origin == "https://api.deepseek.com"
    assert endpoint("http://[::1]:8080").origin == "http://[::1]:8080"


HTTPS_TARGET = Endpoint("https", "api.example.com", 443, "/v1/chat/completions")


def test_the_schemes_own_proxy_is_chosen_before_all_proxy():
    proxies = {"https": "http://secure-proxy:3128", "http": "http://plain-proxy:3128", "all": "http://all:1"}
    assert proxy_for(HTTPS_TARGET, proxies) == Proxy("secure-proxy", 3128, None)


def test_all_proxy_serves_a_scheme_without_its_own():
    assert proxy_for(HTTPS_TARGET, {"all": "proxy.internal:8080"}) == Proxy("proxy.internal", 8080, None)


def test_without_proxies_requests_go_direct():
    assert proxy_for(HTTPS_TARGET, {"http": "http://plain-proxy:3128"}) is None


def test_a_proxys_user_info_becomes_its_basic_authorization():
    proxy = proxy_for(HTTPS_TARGET, {"https": "http://us%40r:p%3Ass@proxy:3128"})
    assert proxy.authorization == "Basic " + base64.b64encode(b"us@r:p:ss").decode()


@pytest.mark.parametrize("url", ["socks5://proxy:1080", "https://proxy:3128"])
def test_a_proxy_that_is_not_http_is_refused(url):
    with pytest.raises(ValueError):
        proxy_for(HTTPS_TARGET, {"https": url})


@pytest.mark.parametrize("no_proxy", ["*", "api.example.com", "example.com", ".example.com", "other, example.com",
                                      "api.example.com:443"])
def test_no_proxy_naming_the_host_or_its_domain_bypasses_the_proxy(no_proxy):
    assert proxy_for(HTTPS_TARGET, {"https": "http://proxy:3128", "no": no_proxy}) is None


@pytest.mark.parametrize("no_proxy", ["", "ample.com", "api.example.com:8443", "other.com", "example.co"])
def test_no_proxy_naming_other_hosts_keeps_the_proxy(no_proxy):
    assert proxy_for(HTTPS_TARGET, {"https": "http://proxy:3128", "no": no_proxy}) == Proxy("proxy", 3128, None)


@pytest.mark.parametrize("host, no_proxy, bypassed", [
    ("10.1.2.3", "10.0.0.0/8", True), ("11.1.2.3", "10.0.0.0/8", False), ("127.0.0.1", "127.0.0.1", True),
    ("::1", "::1", True), ("::1", "[::1]:8080", True), ("::1", "[::1]:9090", False),
])
def test_no_proxy_matches_ip_addresses_and_networks(host, no_proxy, bypassed):
    assert bypasses(Endpoint("http", host, 8080, "/"), no_proxy) is bypassed


# -- the request and what an answer means (pure) --------------------------------------------------------


def test_the_request_body_is_model_messages_and_temperature_as_json():
    body = request_body("m", [{"role": "user", "content": "hi ✓"}], 0.2)
    assert json.loads(body) == {"model": "m", "messages": [{"role": "user", "content": "hi ✓"}], "temperature": 0.2}


def test_a_temperature_of_none_is_left_out_of_the_body():
    assert "temperature" not in json.loads(request_body("m", [], None))


def test_the_request_headers_carry_the_key_and_ask_for_json():
    headers = request_headers("sk-1")
    assert headers["Authorization"] == "Bearer sk-1"
    assert headers["Content-Type"] == headers["Accept"] == "application/json"
    assert "X-Client-Request-Id" not in headers


@pytest.mark.parametrize("request_id, sent", [("3f2a9c", True), ("a b", False), ("x\r\nEvil: 1", False),
                                                ("x" * 129, False)])
def test_only_a_plain_token_goes_as_the_client_request_id(request_id, sent):
    assert ("X-Client-Request-Id" in request_headers("k", request_id)) is sent


def test_a_2xx_chat_completion_is_its_first_choices_text_stripped():
    body = json.dumps(completion("  hello there \n")).encode()
    assert interpret(200, {}, body, 0, "p") == Answer("hello there")


@pytest.mark.parametrize("status_code, kind", [(429, "rate_limited"), (408, "timeout"), (500, "server_error"),
                                               (503, "server_error"), (401, "auth"), (403, "auth"),
                                               (400, "client_error"), (404, "client_error"), (301, "client_error")])
def test_each_status_has_its_outcome_kind(status_code, kind):
    assert interpret(status_code, {}, b"", 0, "p").kind == kind


def test_a_transient_failure_carries_the_providers_retry_after():
    assert interpret(503, {"retry-after": "4"}, b"", 0, "p").retry_after == 4


def test_a_client_error_says_the_providers_error_message():
    body = json.dumps({"error": {"message": "Model Not Exist", "type": "invalid_request_error"}}).encode()
    failure = interpret(400, {}, body, 0, "https://p")
    assert failure == Failure("client_error", "https://p answered 400: Model Not Exist")


def test_a_client_error_without_a_json_body_says_the_start_of_the_body():
    assert interpret(404, {}, b"<html>nothing here</html>" + b"x" * 500, 0, "p").message.endswith(
        ": <html>nothing here</html>" + "x" * 175)


@pytest.mark.parametrize("body", [b'{"choices": [{"message": ', b"\xff\xfe", b"[]", b'{"choices": []}',
                                  b'{"choices": ["text"]}', b'{"choices": [{"message": {"content": 7}}]}',
                                  b'{"choices": [{"message": {"content": "  "}}]}'])
def test_a_2xx_that_is_not_a_chat_completion_with_text_is_malformed(body):
    assert interpret(200, {}, body, 0, "p").kind == "malformed"


@pytest.mark.parametrize("version, connection, framed, expected", [
    (11, None, True, True), (11, "keep-alive", True, True), (11, "close", True, False),
    (11, "Keep-Alive, Close", True, False), (11, None, False, False), (10, "keep-alive", True, False),
])
def test_a_connection_is_reused_only_after_a_framed_http_1_1_answer_without_close(version, connection, framed,
                                                                                  expected):
    headers = {} if connection is None else {"connection": connection}
    assert reusable(version, headers, framed) is expected


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


def test_a_request_carries_the_works_correlation_id(server, make_client):
    server.script(reply("ok"))
    with context.bound(correlation_id="c0ffee42"):
        make_client().reply(HELLO)
    assert server.calls[0].headers["x-client-request-id"] == "c0ffee42"


def test_without_a_correlation_id_no_request_id_is_sent(server, make_client):
    server.script(reply("ok"))
    make_client().reply(HELLO)
    assert "x-client-request-id" not in server.calls[0].headers


def test_calls_in_a_row_share_one_kept_alive_connection(server, make_client):
    server.script(reply("one"), reply("two"), reply("three"))
    client = make_client()
    assert [client.reply(HELLO) for _ in range(3)] == ["one", "two", "three"]
    assert len({call.peer for call in server.calls}) == 1


def test_a_chunked_answer_is_read_whole(server, make_client):
    server.script(raw(json.dumps(completion("x" * 200_000)).encode(), chunked=True))
    assert make_client().reply(HELLO) == "x" * 200_000


def test_an_answer_larger_than_the_cap_is_malformed_and_not_retried(server, make_client):
    padding = " " * MAX_RESPONSE_BYTES  # valid JSON, one byte too many once the completion is around it
    server.script(raw(json.dumps(completion("hi")).encode()[:-1] + padding.encode() + b"}"), reply("never asked"))
    with pytest.raises(AiError) as info:
        make_client(ai_max_retries=2).reply(HELLO)
    assert info.value.kind == "malformed" and "larger than" in str(info.value)
    assert len(server.calls) == 1


def test_a_chunked_answer_larger_than_the_cap_is_malformed(server, make_client):
    server.script(raw(b"[" + b" " * MAX_RESPONSE_BYTES + b"]", chunked=True))
    with pytest.raises(AiError) as info:
        make_client().reply(HELLO)
    assert info.value.kind == "malformed" and "larger than" in str(info.value)


def test_an_answer_at_the_cap_is_read(server, make_client):
    body = json.dumps(completion("hi")).encode()
    server.script(raw(body[:-1] + b" " * (MAX_RESPONSE_BYTES - len(body)) + b"}"))
    assert make_client().reply(HELLO) == "hi"


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


def test_a_base_url_that_is_not_http_is_refused_when_the_client_is_made(make_client):
    with pytest.raises(ValueError, match="AI_BASE_URL"):
        make_client(ai_base_url="api.deepseek.com")


def test_a_socks_proxy_in_the_environment_is_refused_when_the_client_is_made(make_client):
    with pytest.raises(ValueError, match="http:// proxies only"):
        make_client(proxies={"all": "socks5://127.0.0.1:1080"})


def test_no_proxy_naming_the_provider_sends_directly(server, make_client):
    server.script(reply("direct"))
    # The proxy would refuse: nothing listens there.
    client = make_client(proxies={"http": "http://127.0.0.1:9", "no": "127.0.0.1"}, ai_max_retries=0)
    assert client.reply(HELLO) == "direct"


def test_without_an_api_key_ai_is_off_and_nothing_is_sent(server, make_client):
    client = make_client(ai_api_key=None)
    assert not client.enabled
    with pytest.raises(AiUnavailable) as info:
        client.reply(HELLO)
    assert info.value.kind == "not_configured"
    assert server.calls == []


# -- https --------------------------------------------------------------------------------------------


@pytest.fixture
def tls(tmp_path):
    return certificates(tmp_path)


def test_an_https_provider_with_a_trusted_certificate_answers(tls, make_client):
    with OpenAiServer(tls=tls) as secure:
        secure.script(reply("secure"))
        client = make_client(ai_base_url=secure.base_url + "/v1", ssl_context=tls.client_context())
        assert client.reply(HELLO) == "secure"


def test_an_https_provider_whose_certificate_is_not_trusted_is_a_connection_error(tls, make_client):
    with OpenAiServer(tls=tls) as secure:
        with pytest.raises(AiUnavailable) as info:
            make_client(ai_base_url=secure.base_url + "/v1", ai_max_retries=0).reply(HELLO)  # the usual roots
        assert info.value.kind == "connection" and "CERTIFICATE_VERIFY_FAILED" in str(info.value)
        assert secure.calls == []


def test_an_https_provider_with_another_hosts_certificate_is_a_connection_error(tmp_path, make_client):
    tls = certificates(tmp_path, names=("elsewhere.example",))
    with OpenAiServer(tls=tls) as secure:
        with pytest.raises(AiUnavailable) as info:
            make_client(ai_base_url=secure.base_url + "/v1", ssl_context=tls.client_context(),
                        ai_max_retries=0).reply(HELLO)
        assert info.value.kind == "connection"
        assert secure.calls == []


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


def test_the_connection_kept_alive_after_an_answer_is_counted_as_idle(server, make_client):
    server.script(reply("ok"))
    client = make_client()
    assert client.idle_connections() == 0
    client.reply(HELLO)
    assert client.idle_connections() == 1
