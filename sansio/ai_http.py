"""The AI provider's HTTP exchange as data: what one chat-completions request is, and what an answer
means. ``core.ai`` sends and receives (through ``core.http_transport``); everything it decides is here.

- ``endpoint(base_url)``: where requests go (``AI_BASE_URL`` + ``/chat/completions``), checked once.
- ``proxy_for(endpoint, proxies)``: the proxy from the environment's ``HTTP(S)_PROXY``/``ALL_PROXY``
  (as ``urllib.request.getproxies()`` reads them), or None when there is none or ``NO_PROXY`` names
  the host. Only ``http://`` proxies (``CONNECT`` for https); others are a ValueError.
- ``request_body`` and ``request_headers``: the JSON body and the headers of one request.
- ``interpret(status, headers, body, now, provider)``: the answer's text (``Answer``) or why there is
  none (``Failure`` with the outcome ``kind``, and the provider's ``Retry-After`` when it named one).
  429, 408 and 5xx are transient; 401/403 say the key is wrong; other statuses are the request's own
  fault; a 2xx that is not a chat completion with text is malformed.
- ``reusable(version, headers, framed)``: whether the connection may carry the next request.
- ``parse_retry_after`` and ``retry_delay``: how long to wait before the next attempt, with the
  platform's one backoff policy (``sansio.backoff``, equal jitter) when the provider named no time.

Answers larger than ``MAX_RESPONSE_BYTES`` are not read (a chat completion is a few kilobytes; a
provider or a proxy sending megabytes is not answering the question).

Pure: no I/O, time and randomness passed in.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import ipaddress
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from sansio.backoff import BackoffPolicy, Rng

# Outcome kinds (``core.ai`` reports one per attempt). "ok" ends a request; each other is a reason.
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

RETRYABLE = frozenset({TIMEOUT, CONNECTION, RATE_LIMITED, SERVER_ERROR})
PROVIDER_FAULTS = RETRYABLE | {MALFORMED, AUTH}  # what the breaker counts as a failure

MAX_RESPONSE_BYTES = 1024 * 1024  # an answer's body, after any transfer framing
USER_AGENT = "wabot"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}\Z")


class Headers(Protocol):
    """Response headers looked up by lower-case name (a dict, or ``http.client``'s message, which
    ignores case)."""

    def get(self, name: str, default: Any = None) -> Any: ...


# -- where requests go --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Endpoint:
    scheme: str  # "http" or "https"
    host: str  # without brackets for IPv6
    port: int
    target: str  # the request target: path (and query) of the chat-completions URL

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = _DEFAULT_PORTS[self.scheme] == self.port
        return f"{self.scheme}://{host}" + ("" if default else f":{self.port}")


def endpoint(base_url: str) -> Endpoint:
    """The chat-completions endpoint under ``base_url`` (``https://api.deepseek.com`` gives
    ``/chat/completions``, ``.../v1`` gives ``/v1/chat/completions``). ValueError when it is not an
    absolute http(s) URL."""
    parts = urlsplit(base_url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"AI_BASE_URL must be an http:// or https:// URL with a host, not {base_url!r}")
    if parts.username or parts.password:
        raise ValueError("AI_BASE_URL must not carry credentials (the key is AI_API_KEY)")
    port = parts.port or _DEFAULT_PORTS[scheme]  # a bad port is urlsplit's ValueError
    target = parts.path.rstrip("/") + "/chat/completions" + (f"?{parts.query}" if parts.query else "")
    return Endpoint(scheme, parts.hostname, port, target)


@dataclasses.dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: str | None  # the Proxy-Authorization header's value, from the proxy URL's user info


def proxy_for(target: Endpoint, proxies: Mapping[str, str]) -> Proxy | None:
    """The proxy for ``target`` from ``proxies`` (``urllib.request.getproxies()``: keys ``http``,
    ``https``, ``all`` and ``no``), as httpx read them: the scheme's own, else ``all``; none when
    ``no`` (``NO_PROXY``) matches the host. ValueError for a proxy that is not ``http://``."""
    url = proxies.get(target.scheme) or proxies.get("all")
    if not url or bypasses(target, proxies.get("no", "")):
        return None
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise ValueError(f"the AI client speaks to http:// proxies only, not {parts.scheme or url!r}")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode("ascii")
    return Proxy(parts.hostname, parts.port or 80, authorization)


def bypasses(target: Endpoint, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` names the target: ``*``; a host or domain (``example.com`` and
    ``.example.com`` both match the domain and its subdomains), optionally with ``:port``; an IP
    address or network (``10.0.0.0/8``)."""
    host = target.host.lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, port = entry, None
        if entry.startswith("[") and "]" in entry:  # [::1] or [::1]:8080
            name, _, rest = entry[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else None
        elif entry.count(":") == 1:
            name, port = entry.split(":")
        if port is not None and port != str(target.port):
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


# -- one request --------------------------------------------------------------------------------------


def request_body(model: str, messages: Sequence[Mapping[str, str]], temperature: float | None) -> bytes:
    payload: dict[str, Any] = {"model": model, "messages": list(messages)}
    if temperature is not None:
        payload["temperature"] = temperature
    return json.dumps(payload, separators=(",", ":")).encode()


def request_headers(api_key: str, request_id: str | None = None) -> dict[str, str]:
    """The headers of a chat-completions request (Host and Content-Length come with the sending).
    ``request_id`` (the work's correlation id) goes as ``X-Client-Request-Id``, the header OpenAI
    documents for a caller's own id, when it is a plain token; a provider that does not know it
    ignores it."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
               "Accept": "application/json", "User-Agent": USER_AGENT}
    if request_id and _REQUEST_ID.match(request_id):
        headers["X-Client-Request-Id"] = request_id
    return headers


# -- one answer ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str


@dataclasses.dataclass(frozen=True)
class Failure:
    kind: str  # one of the outcome kinds
    message: str
    retry_after: float | None = None  # seconds the provider asked us to wait, if it did


def status_kind(status: int) -> str | None:
    """The outcome kind of a status that is not a success; None for 2xx."""
    if 200 <= status < 300:
        return None
    if status == 429:
        return RATE_LIMITED
    if status == 408:  # the provider's own timeout
        return TIMEOUT
    if status >= 500:
        return SERVER_ERROR
    if status in (401, 403):
        return AUTH
    return CLIENT_ERROR


def interpret(status: int, headers: Headers, body: bytes, now: float, provider: str) -> Answer | Failure:
    """What the provider's answer means; ``now`` (epoch seconds) reads an HTTP-date Retry-After."""
    kind = status_kind(status)
    if kind is None:
        return completion_text(body, provider)
    message = f"{provider} answered {status}"
    if kind in RETRYABLE:
        return Failure(kind, message, parse_retry_after(headers, now))
    if kind == AUTH:
        return Failure(kind, message)
    return Failure(kind, f"{message}: {error_detail(body)}")


def completion_text(body: bytes, provider: str) -> Answer | Failure:
    """The first choice's text of a chat completion, every step checked."""
    try:
        completion = json.loads(body)
    except ValueError as exc:  # also UnicodeDecodeError
        return Failure(MALFORMED, f"malformed answer from {provider}: not JSON ({exc})")
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list) or not choices:
        return Failure(MALFORMED, f"malformed answer from {provider}: no choices")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) or not content.strip():
        return Failure(MALFORMED, f"malformed answer from {provider}: no text in the first choice")
    return Answer(content.strip())


def error_detail(body: bytes) -> str:
    """The provider's error message, short (it goes into logs and errors; never content of ours)."""
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        error = decoded.get("error", decoded)
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:200]
    return body[:200].decode("utf-8", "replace") or "(no body)"


def too_large(provider: str, limit: int = MAX_RESPONSE_BYTES) -> Failure:
    return Failure(MALFORMED, f"malformed answer from {provider}: larger than {limit} bytes")


def reusable(version: int, headers: Headers, framed: bool) -> bool:
    """Whether the connection may carry another request after this answer: HTTP/1.1, no
    ``Connection: close``, and a body whose end was known (a length or chunks; else the server ended
    it by closing). ``version`` as ``http.client`` gives it (11 for HTTP/1.1)."""
    if version != 11 or not framed:
        return False
    tokens = (headers.get("connection") or "").lower()
    return "close" not in (token.strip() for token in tokens.split(","))


# -- retries ------------------------------------------------------------------------------------------


def parse_retry_after(headers: Headers, now: float) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI's) or ``Retry-After`` (delay-seconds or an
    HTTP date, compared with ``now``, epoch seconds); None when absent or unreadable. Never negative."""
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


def backoff_policy(base: float, cap: float) -> BackoffPolicy:
    """The AI's retries: ``[d/2, d]`` with ``d = base * 2**(n-1)`` capped (equal jitter)."""
    return BackoffPolicy(base=base, cap=cap, jitter="equal")


def retry_delay(attempt: int, retry_after: float | None, rng: Rng, policy: BackoffPolicy,
                retry_after_cap: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (from 1) before the next one: the
    provider's Retry-After up to ``retry_after_cap``, else the backoff policy's delay."""
    if retry_after is not None:
        return min(retry_after, retry_after_cap)
    return policy.delay(attempt, rng)
