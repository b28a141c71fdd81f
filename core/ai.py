"""The AI responder's client: one answer from an OpenAI-compatible chat-completions provider
(DeepSeek by default), with our own retries and a circuit breaker per provider.

``AiClient.reply(messages)`` makes one *logical* request, which is up to ``1 + AI_MAX_RETRIES`` HTTP
attempts through the real ``openai`` library (its own retries are off: ``max_retries=0``):

- Retried: 429, 408, 5xx, timeouts and connection errors. The wait is the provider's ``Retry-After``
  (seconds or an HTTP date; OpenAI's ``retry-after-ms`` too), capped at ``retry_after_cap``, else
  exponential backoff with equal jitter (``[d/2, d]``, ``d = base * 2**(n-1)`` capped).
- Not retried: other 4xx (the same request would fail the same way) and malformed answers (invalid
  JSON, no choices, no text): a provider that answers nonsense will most likely do it again.

Each attempt may take ``AI_TIMEOUT`` seconds in all. httpx's timeout alone applies per phase (connect,
each read), so a provider trickling bytes could hold a greenlet far longer; a ``gevent.Timeout``
bounds the whole attempt.

The breaker (``sansio.breaker``; key: the provider's base URL) sees the outcome of each logical
request, not of each attempt: retries are already our answer to a blip. Failures are what says the
provider is unwell for everyone: retries exhausted, malformed answers, 401/403 (the key is shared by
all bots). Other 4xx come from one request (a bot's unknown model, content the provider refuses) and
count as the provider answering. While the breaker is open, ``reply`` raises ``AiUnavailable`` at
once, without a network call. The breakers dict belongs to the caller (the root), so every client of
the same provider in the process shares one breaker, and tests get their own.

Exceptions: ``AiError`` (with ``kind``) for any failure; its subclass ``AiUnavailable`` when the
provider cannot answer now (circuit open, retries exhausted, AI not configured): the moment for a
bot's ``fallback_reply``.

Metrics: ``observe(outcome, seconds)`` is called once per HTTP attempt (outcome in ``OUTCOMES``) and
once, with 0 seconds, for each request refused by an open breaker; ``breaker_state()`` reads the
provider's breaker. Nothing here logs or reports message content.
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import math
import random
import secrets
import sys
import time
from typing import Any, Callable, Mapping, MutableMapping, Sequence

import gevent
import gevent.lock


def _import_httpcore() -> None:
    """httpcore (under httpx, under openai) imports trio when it is installed and only expects an
    ImportError from it. Under gevent's patch_all, ``select`` has no ``epoll``, so importing trio
    fails with AttributeError and takes httpcore down with it. trio cannot run in this process
    anyway: make it unimportable and let httpcore load without it."""
    try:
        import httpcore  # noqa: F401
    except AttributeError:
        for name in [name for name in sys.modules if name == "trio" or name.startswith("trio.")]:
            del sys.modules[name]
        sys.modules["trio"] = None  # type: ignore[assignment] - "import trio" now raises ImportError
        import httpcore  # noqa: F401,F811


_import_httpcore()


def _readability_without_the_hub() -> None:
    """httpcore asks, for every pooled connection on every request, whether its socket is readable
    (a dropped keep-alive connection is). It uses ``select.poll`` with a zero timeout, which under
    gevent's patching is the cooperative poll: watchers are created and the greenlet yields to the hub
    for each connection (the top cost of an AI call in bench/pipeline.py's profile). A zero-timeout
    poll never blocks, so the operating system's own poll gives the same answer without the detour."""
    import select as patched_select

    import gevent.monkey
    import httpcore._backends.sync as sync_backend

    real_poll = gevent.monkey.get_original("select", "poll") if hasattr(patched_select, "poll") else None
    if real_poll is None or real_poll is getattr(patched_select, "poll", None):
        return  # not patched (or no poll): httpcore's own check is already direct

    def is_socket_readable(sock: Any) -> bool:
        fd = None if sock is None else sock.fileno()
        if fd is None or fd < 0:
            return True  # gone: as httpcore, "readable" (the next read returns b"")
        poller = real_poll()
        poller.register(fd, patched_select.POLLIN)
        return bool(poller.poll(0))

    sync_backend.is_socket_readable = is_socket_readable


_readability_without_the_hub()

import httpx  # noqa: E402
import openai  # noqa: E402

from sansio.breaker import Breaker

log = logging.getLogger(__name__)

# observe() outcomes. "ok" ends a request; each error kind is also an AiError.kind.
OK = "ok"
TIMEOUT = "timeout"
CONNECTION = "connection"
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
AUTH = "auth"
CLIENT_ERROR = "client_error"
MALFORMED = "malformed"
CIRCUIT_OPEN = "circuit_open"
NOT_CONFIGURED = "not_configured"
OUTCOMES = (OK, TIMEOUT, CONNECTION, RATE_LIMITED, SERVER_ERROR, AUTH, CLIENT_ERROR, MALFORMED, CIRCUIT_OPEN)

_RETRYABLE = frozenset({TIMEOUT, CONNECTION, RATE_LIMITED, SERVER_ERROR})
_PROVIDER_FAULTS = _RETRYABLE | {MALFORMED, AUTH}  # what the breaker counts as a failure


class AiError(Exception):
    """The AI gave no answer; ``kind`` says why (one of the outcome names)."""

    def __init__(self, message: str, kind: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after  # seconds the provider asked us to wait, if it did


class AiUnavailable(AiError):
    """The provider cannot answer now (circuit open, retries exhausted, or no API key)."""


# -- retry decisions (pure) ------------------------------------------------------------------------


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (delay-seconds or an HTTP date,
    compared with ``now``, epoch seconds); None when absent or unreadable. Never negative."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        seconds = _seconds(raw_ms)
        if seconds is not None:
            return seconds / 1000
    raw = headers.get("retry-after")
    if not raw:
        return None
    seconds = _seconds(raw)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is not HTTP
        return None
    return max(0.0, when.timestamp() - now)


def _seconds(raw: str) -> float | None:
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def retry_delay(
    attempt: int, retry_after: float | None, rng: random.Random, *, base: float, cap: float, retry_after_cap: float
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (from 1) before the next one."""
    if retry_after is not None:
        return min(retry_after, retry_after_cap)
    d = min(cap, base * 2.0 ** min(attempt - 1, 64))
    return min(d, max(d / 2, rng.uniform(d / 2, d)))


# -- the client ------------------------------------------------------------------------------------


# The client's X-Stainless-* headers describe our platform to the provider (OS, runtime, package
# versions); no provider needs them, and a dozen fewer headers to build and scan is a tenth of the
# client's CPU per call. Omit() removes a default header.
def _telemetry_header_names() -> list[str]:
    probe = openai.OpenAI(api_key="-", base_url="http://localhost")  # never sends anything
    try:
        return [*probe.platform_headers(), "X-Stainless-Async"]
    finally:
        probe.close()


_WITHOUT_TELEMETRY = {name: openai.Omit() for name in _telemetry_header_names()}
# These two are added per request unless the request itself names them.
_REQUEST_WITHOUT_TELEMETRY = {"headers": {"X-Stainless-Retry-Count": openai.Omit(),
                                          "X-Stainless-Read-Timeout": openai.Omit()}}


def _request_template(url: str) -> Any:
    """The request options of every chat completion, built once: ``post`` builds them anew per call
    (a pydantic model resolving each field's default, a fifth of the client's CPU per call); a copy
    with the body swapped in is what it would have built. ``FinalRequestOptions`` is the client's own
    type, not public API: if this version does not have it, calls go through ``post``."""
    try:
        from openai._models import FinalRequestOptions

        return FinalRequestOptions.construct(method="post", url=url, json_data={},
                                             headers=dict(_REQUEST_WITHOUT_TELEMETRY["headers"]))
    except Exception:  # noqa: BLE001 - another client version: the public path works the same
        log.info("openai request template unavailable; using client.post")
        return None


class _ProviderClient(openai.OpenAI):
    """The ``openai`` client, with two things it recomputes on every request computed once: the
    default headers (a property that rebuilds its dict, user agent and platform headers each time)
    and the parsed request URL (``_prepare_url`` parses the same absolute URL on every call). Both
    depend only on settings fixed at construction; the library does the rest as usual."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fixed_default_headers = dict(super().default_headers)
        self._urls: dict[str, httpx.URL] = {}

    @property
    def default_headers(self) -> dict[str, Any]:
        return self._fixed_default_headers

    def _prepare_url(self, url: str) -> httpx.URL:
        prepared = self._urls.get(url)
        if prepared is None:
            prepared = super()._prepare_url(url)
            if len(self._urls) < 16:  # one URL in practice; never a growing cache
                self._urls[url] = prepared
        return prepared


def _http_client(settings: Any) -> httpx.Client:
    """The HTTP layer under the openai client: our lean keep-alive transport (``core.http_transport``,
    a fraction of httpcore's CPU per call), or httpx's own when a proxy is configured in the
    environment (ours does not speak to proxies). Connections kept: as many as calls in flight."""
    import urllib.request

    if not {"http", "https", "all"} & set(urllib.request.getproxies()):
        from core.http_transport import DirectClient, KeepAliveTransport

        return DirectClient(transport=KeepAliveTransport(max_idle=settings.ai_max_in_flight), timeout=settings.ai_timeout)
    return httpx.Client(
        # httpcore scans (and polls) every pooled connection on each request: a pool as large as the
        # calls allowed in flight keeps that cheap.
        limits=httpx.Limits(max_connections=settings.ai_max_in_flight,
                            max_keepalive_connections=settings.ai_max_in_flight),
        timeout=settings.ai_timeout,
    )



class AiClient:
    def __init__(
        self,
        settings: Any,
        clock: Callable[[], float] = time.monotonic,  # the breaker's clock
        breakers: MutableMapping[str, Breaker] | None = None,
        *,
        observe: Callable[[str, float], None] | None = None,
        sleep: Callable[[float], None] = gevent.sleep,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        retry_after_cap: float = 30.0,
    ) -> None:
        self.settings = settings
        self.provider = settings.ai_base_url.rstrip("/")
        # Absolute: the client parses it once instead of joining it to the base URL on every call.
        self._completions_url = self.provider + "/chat/completions"
        self._clock = clock
        self._breakers = {} if breakers is None else breakers
        self._observe = observe
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._retry_after_cap = retry_after_cap
        # Overload queues here for a slot instead of piling requests onto the provider's connections.
        self._slots = gevent.lock.BoundedSemaphore(settings.ai_max_in_flight)
        self._client = (
            _ProviderClient(
                base_url=settings.ai_base_url,
                api_key=settings.ai_api_key,
                timeout=settings.ai_timeout,
                max_retries=0,  # retries are ours: Retry-After cap, breaker, metrics per attempt
                http_client=_http_client(settings),
                default_headers=_WITHOUT_TELEMETRY,
            )
            if settings.ai_api_key
            else None
        )
        self._template = _request_template(self._completions_url) if self._client is not None else None
        self._key_prefix, self._keys = f"wabot-{secrets.token_hex(8)}-", itertools.count()
        if self._client is not None:
            # The library imports its chat-completions code on first use: about a second of CPU that
            # would block every greenlet and eat into the first request's timeout. Pay it here.
            self._client.chat.completions  # noqa: B018

    @property
    def enabled(self) -> bool:
        """False without AI_API_KEY: AI replies are off (rules still answer)."""
        return self._client is not None

    def breaker_state(self) -> str:
        """``closed``, ``open`` or ``half_open`` for this client's provider."""
        return self._breaker().state(self._clock())

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def reply(
        self, messages: Sequence[Mapping[str, str]], model: str | None = None, temperature: float | None = 0.7
    ) -> str:
        """The assistant's text for ``messages`` (``[{"role", "content"}]``, e.g. from
        ``sansio.prompt.build_messages``); ``model`` None means AI_MODEL; ``temperature`` None leaves
        it to the provider. Raises AiUnavailable or AiError."""
        if self._client is None:
            raise AiUnavailable("AI is not configured: AI_API_KEY is empty", NOT_CONFIGURED)
        breaker = self._breaker()
        now = self._clock()
        if not breaker.allow(now):
            self._report(CIRCUIT_OPEN, 0.0)
            raise AiUnavailable(
                f"circuit open for {self.provider}; next trial in {breaker.retry_in(now):.1f}s", CIRCUIT_OPEN
            )
        try:
            text = self._with_retries(list(messages), model or self.settings.ai_model, temperature)
        except AiError as exc:
            if exc.kind in _PROVIDER_FAULTS:
                breaker.record_failure(self._clock())
            else:
                breaker.record_success(self._clock())
            raise
        breaker.record_success(self._clock())
        return text

    # -- internals ---------------------------------------------------------------------------------

    def _breaker(self) -> Breaker:
        breaker = self._breakers.get(self.provider)
        if breaker is None:
            breaker = self._breakers.setdefault(
                self.provider, Breaker(self.settings.ai_breaker_failures, self.settings.ai_breaker_reset)
            )
        return breaker

    def _report(self, outcome: str, seconds: float) -> None:
        if self._observe is not None:
            self._observe(outcome, seconds)

    def _with_retries(self, messages: list[Mapping[str, str]], model: str, temperature: float | None) -> str:
        attempts = 1 + self.settings.ai_max_retries
        for attempt in range(1, attempts + 1):
            started = time.monotonic()  # latency is real time even when the breaker's clock is not
            try:
                if not self._slots.acquire(timeout=self.settings.ai_timeout):
                    raise AiError(f"no free slot for an AI request within {self.settings.ai_timeout:g}s", TIMEOUT)
                try:
                    text = self._attempt(messages, model, temperature)
                finally:
                    self._slots.release()
            except AiError as exc:
                self._report(exc.kind, time.monotonic() - started)
                if exc.kind not in _RETRYABLE:
                    raise
                if attempt == attempts:
                    tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
                    raise AiUnavailable(f"{exc} (after {tries})", exc.kind, exc.retry_after) from exc
                delay = retry_delay(
                    attempt,
                    exc.retry_after,
                    self._rng,
                    base=self._backoff_base,
                    cap=self._backoff_cap,
                    retry_after_cap=self._retry_after_cap,
                )
                log.warning(
                    "AI request failed, retrying",
                    extra={"provider": self.provider, "attempt": attempt, "kind": exc.kind, "sleep": round(delay, 3)},
                )
                self._sleep(delay)
                continue
            self._report(OK, time.monotonic() - started)
            return text
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, messages: list[Mapping[str, str]], model: str, temperature: float | None) -> str:
        """One HTTP attempt; every failure comes out as an AiError with its kind."""
        assert self._client is not None
        kwargs: dict[str, Any] = {"model": model, "messages": messages}
        if temperature is not None:
            kwargs["temperature"] = temperature
        deadline = gevent.Timeout(self.settings.ai_timeout)
        deadline.start()
        try:
            # The client's raw POST: the same transport, auth, errors and timeouts as
            # chat.completions.create, without building typed response models — a third of the CPU
            # per call (bench/pipeline.py), which at volume is most of a bot process's work.
            completion = self._post(kwargs)
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise  # someone else's timeout
            raise AiError(f"no answer within {self.settings.ai_timeout:g}s", TIMEOUT) from None
        except openai.APITimeoutError:
            raise AiError(f"no answer within {self.settings.ai_timeout:g}s", TIMEOUT) from None
        except openai.APIConnectionError as exc:
            raise AiError(f"cannot reach {self.provider}: {exc.__cause__ or exc}", CONNECTION) from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        except (openai.APIResponseValidationError, ValueError) as exc:  # ValueError: invalid JSON
            raise AiError(f"malformed answer from {self.provider}: {exc}", MALFORMED) from None
        finally:
            deadline.close()
        return _text_of(completion, self.provider)

    def _post(self, body: dict[str, Any]) -> Any:
        """One POST of the chat completion through the client's raw request path."""
        if self._template is not None:
            # Our own idempotency key: the client would make one with uuid4 (a system call) per request.
            return self._client.request(object, self._template.model_copy(
                update={"json_data": body, "idempotency_key": f"{self._key_prefix}{next(self._keys)}"}))
        return self._client.post(self._completions_url, body=body, cast_to=object, options=_REQUEST_WITHOUT_TELEMETRY)

    def _status_error(self, exc: openai.APIStatusError) -> AiError:
        status = exc.status_code
        retry_after = parse_retry_after(exc.response.headers, self._wall_clock())
        message = f"{self.provider} answered {status}"
        if status == 429:
            return AiError(message, RATE_LIMITED, retry_after)
        if status == 408:  # the provider's own timeout
            return AiError(message, TIMEOUT, retry_after)
        if status >= 500:
            return AiError(message, SERVER_ERROR, retry_after)
        if status in (401, 403):
            return AiError(message, AUTH)
        return AiError(f"{message}: {_error_detail(exc)}", CLIENT_ERROR)


def _text_of(completion: Any, provider: str) -> str:
    """The first choice's text from the decoded JSON answer (the raw text for a non-JSON content
    type), every step checked."""
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list) or not choices:
        raise AiError(f"malformed answer from {provider}: no choices", MALFORMED)
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) or not content.strip():
        raise AiError(f"malformed answer from {provider}: no text in the first choice", MALFORMED)
    return content.strip()


def _error_detail(exc: openai.APIStatusError) -> str:
    """The provider's error message, short (it goes into logs, never content of ours)."""
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:200]
    return str(exc.message)[:200]
