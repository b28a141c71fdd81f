"""The AI responder's client: one answer from an OpenAI-compatible chat-completions provider
(DeepSeek by default), with retries and a circuit breaker per provider.

``AiClient.reply(messages)`` makes one *logical* request, which is up to ``1 + AI_MAX_RETRIES`` HTTP
attempts. What a request is and what an answer means is ``sansio.ai_http`` (pure); the connections
are ``core.http_transport`` (keep-alive HTTP/1.1 on the standard library's ``http.client``, https
with certificate checks, an ``http://`` proxy from ``HTTP(S)_PROXY``/``ALL_PROXY`` unless
``NO_PROXY`` names the provider's host). Each request carries the work's correlation id as
``X-Client-Request-Id``.

- Retried: 429, 408, 5xx, timeouts and connection errors. The wait is the provider's ``Retry-After``
  (seconds or an HTTP date; OpenAI's ``retry-after-ms`` too), capped at ``retry_after_cap``, else the
  platform's backoff policy (``sansio.backoff``) with equal jitter: ``[d/2, d]``,
  ``d = base * 2**(n-1)`` capped.
- Not retried: other 4xx (the same request would fail the same way) and malformed answers (invalid
  JSON, no choices, no text, a body over ``sansio.ai_http.MAX_RESPONSE_BYTES``): a provider that
  answers nonsense will most likely do it again.

Each attempt may take ``AI_TIMEOUT`` seconds in all. The socket timeout alone applies per operation
(connect, each read), so a provider trickling bytes could hold a greenlet far longer; a
``gevent.Timeout`` bounds the whole attempt (and only ours is turned into an error: another one
goes on to whoever set it).

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

import logging
import random
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import gevent
import gevent.lock

from core import context
from core.http_transport import BodyTooLarge, ConnectionPool, TransportError, TransportTimeout
from sansio import ai_http
from sansio.ai_http import (  # noqa: F401 - the outcome names are part of this module's interface
    AUTH,
    CIRCUIT_OPEN,
    CLIENT_ERROR,
    CONNECTION,
    MALFORMED,
    NOT_CONFIGURED,
    OK,
    OUTCOMES,
    PROVIDER_FAULTS,
    RATE_LIMITED,
    RETRYABLE,
    SERVER_ERROR,
    TIMEOUT,
    parse_retry_after,
)
from sansio.breaker import Breaker

log = logging.getLogger(__name__)


class AiError(Exception):
    """The AI gave no answer; ``kind`` says why (one of the outcome names)."""

    def __init__(self, message: str, kind: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after  # seconds the provider asked us to wait, if it did


class AiUnavailable(AiError):
    """The provider cannot answer now (circuit open, retries exhausted, or no API key)."""


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
        proxies: Mapping[str, str] | None = None,  # None: the environment's (urllib.request.getproxies)
        ssl_context: ssl.SSLContext | None = None,  # None: certificates checked against the usual roots
    ) -> None:
        self.settings = settings
        self.provider = settings.ai_base_url.rstrip("/")
        self._clock = clock
        self._breakers = {} if breakers is None else breakers
        self._observe = observe
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._backoff = ai_http.backoff_policy(backoff_base, backoff_cap)
        self._retry_after_cap = retry_after_cap
        # Overload queues here for a slot instead of piling requests onto the provider's connections.
        self._slots = gevent.lock.BoundedSemaphore(settings.ai_max_in_flight)
        self._pool: ConnectionPool | None = None
        if settings.ai_api_key:
            self._endpoint = ai_http.endpoint(settings.ai_base_url)
            proxy = ai_http.proxy_for(self._endpoint, urllib.request.getproxies() if proxies is None else proxies)
            self._pool = ConnectionPool(self._endpoint, timeout=settings.ai_timeout,
                                        max_idle=settings.ai_max_in_flight, proxy=proxy, ssl_context=ssl_context)

    @property
    def enabled(self) -> bool:
        """False without AI_API_KEY: AI replies are off (rules still answer)."""
        return self._pool is not None

    def idle_connections(self) -> int:
        """Kept-alive connections to the provider waiting for the next request (at most AI_MAX_IN_FLIGHT)."""
        return self._pool.idle if self._pool is not None else 0

    def breaker_state(self) -> str:
        """``closed``, ``open`` or ``half_open`` for this client's provider."""
        return self._breaker().state(self._clock())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def reply(
        self, messages: Sequence[Mapping[str, str]], model: str | None = None, temperature: float | None = 0.7
    ) -> str:
        """The assistant's text for ``messages`` (``[{"role", "content"}]``, e.g. from
        ``sansio.prompt.build_messages``); ``model`` None means AI_MODEL; ``temperature`` None leaves
        it to the provider. Raises AiUnavailable or AiError."""
        if self._pool is None:
            raise AiUnavailable("AI is not configured: AI_API_KEY is empty", NOT_CONFIGURED)
        breaker = self._breaker()
        now = self._clock()
        if not breaker.allow(now):
            self._report(CIRCUIT_OPEN, 0.0)
            raise AiUnavailable(
                f"circuit open for {self.provider}; next trial in {breaker.retry_in(now):.1f}s", CIRCUIT_OPEN
            )
        body = ai_http.request_body(model or self.settings.ai_model, messages, temperature)
        try:
            text = self._with_retries(body)
        except AiError as exc:
            if exc.kind in PROVIDER_FAULTS:
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

    def _with_retries(self, body: bytes) -> str:
        attempts = 1 + self.settings.ai_max_retries
        headers = ai_http.request_headers(self.settings.ai_api_key, context.correlation_id())
        for attempt in range(1, attempts + 1):
            started = time.monotonic()  # latency is real time even when the breaker's clock is not
            try:
                if not self._slots.acquire(timeout=self.settings.ai_timeout):
                    raise AiError(f"no free slot for an AI request within {self.settings.ai_timeout:g}s", TIMEOUT)
                try:
                    text = self._attempt(body, headers)
                finally:
                    self._slots.release()
            except AiError as exc:
                self._report(exc.kind, time.monotonic() - started)
                if exc.kind not in RETRYABLE:
                    raise
                if attempt == attempts:
                    tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
                    raise AiUnavailable(f"{exc} (after {tries})", exc.kind, exc.retry_after) from exc
                delay = ai_http.retry_delay(attempt, exc.retry_after, self._rng, self._backoff, self._retry_after_cap)
                log.warning(
                    "AI request failed, retrying",
                    extra={"provider": self.provider, "attempt": attempt, "kind": exc.kind, "sleep": round(delay, 3)},
                )
                self._sleep(delay)
                continue
            self._report(OK, time.monotonic() - started)
            return text
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, body: bytes, headers: dict[str, str]) -> str:
        """One HTTP attempt; every failure comes out as an AiError with its kind."""
        assert self._pool is not None
        timeout = self.settings.ai_timeout
        deadline = gevent.Timeout(timeout)
        deadline.start()
        try:
            answer = self._pool.request("POST", self._endpoint.target, body, headers)
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise  # someone else's timeout
            raise AiError(f"no answer within {timeout:g}s", TIMEOUT) from None
        except BodyTooLarge:
            raise AiError(ai_http.too_large(self.provider).message, MALFORMED) from None
        except TransportTimeout:
            raise AiError(f"no answer within {timeout:g}s", TIMEOUT) from None
        except TransportError as exc:
            raise AiError(f"cannot reach {self.provider}: {exc}", CONNECTION) from None
        finally:
            deadline.close()
        outcome = ai_http.interpret(answer.status, answer.headers, answer.body, self._wall_clock(), self.provider)
        if isinstance(outcome, ai_http.Failure):
            raise AiError(outcome.message, outcome.kind, outcome.retry_after)
        return outcome.text
