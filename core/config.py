"""Settings read from environment variables, validated once at start-up.

Every variable the platform reads is declared in ``SPECS`` with its parser, default and meaning;
``docs/configuration.md`` lists the same set (a test keeps the two in step). A bad value raises
``ConfigError`` whose message is one line naming the variable, the value and what is expected.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A variable holds a value the platform cannot use."""


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError
    return value


class _Choice:
    """A parser accepting one of ``choices`` (case-insensitive); ``expected`` names them in errors."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.expected = "one of " + ", ".join(choices)

    def __call__(self, raw: str) -> str:
        value = raw.strip().lower()
        if value not in self.choices:
            raise ValueError
        return value


def _per_minute(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError
    return value


def _at_least_a_day(raw: str) -> float:
    value = float(raw)
    if not value >= 86400 or value == float("inf"):
        raise ValueError
    return value


def _optional_str(raw: str) -> str | None:
    return raw or None


def _optional_port(raw: str) -> int | None:
    return _port(raw) if raw.strip() else None


def _database_url(raw: str) -> str | None:
    if not raw:
        return None
    if not re.match(r"^postgres(ql)?://", raw):
        raise ValueError
    return raw


def _public_url(raw: str) -> str:
    raw = raw.strip().rstrip("/")
    if raw and not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", raw):
        raise ValueError
    return raw


def _str(raw: str) -> str:
    return raw


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError


_EXPECTED: dict[Callable[[str], Any], str] = {
    _positive_int: "a whole number of at least 1",
    _non_negative_int: "a whole number of at least 0",
    _positive_float: "a number of seconds greater than 0",
    _non_negative_float: "a number of seconds of at least 0",
    _port: "a port number from 0 to 65535",
    _optional_str: "any text",
    _optional_port: "a port number from 0 to 65535, or empty",
    _database_url: "a postgresql:// URL",
    _str: "any text",
    _bool: "true or false",
    _public_url: "an http:// or https:// URL without query or fragment",
    _per_minute: "a number of requests per minute of at least 0 (0: no limit)",
    _at_least_a_day: "a number of seconds of at least 86400 (1 day)",
}


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    parse: Callable[[str], Any]
    default: str
    meaning: str

    @property
    def field(self) -> str:
        return self.name.lower()

    @property
    def expected(self) -> str:
        return getattr(self.parse, "expected", None) or _EXPECTED[self.parse]


SPECS: tuple[Spec, ...] = (
    # Process and storage
    Spec("DATA_DIR", _str, "./var", "Directory for the embedded PostgreSQL cluster, device stores and local media."),
    Spec("LOG_LEVEL", _Choice("debug", "info", "warning", "error"), "info", "Lowest level of JSON log lines written to stderr."),
    Spec("ENVIRONMENT", _str, "development", "Environment name reported to Sentry and in logs."),
    Spec("RELEASE", _str, "", "Release name reported to Sentry; empty means the package version."),
    Spec("SENTRY_DSN", _optional_str, "", "Sentry DSN; empty disables Sentry."),
    Spec("SHUTDOWN_TIMEOUT", _positive_float, "20", "Seconds a graceful stop waits for requests and actors in flight."),
    # Database
    Spec("DATABASE_URL", _database_url, "", "Application login role (not superuser, not owner, not BYPASSRLS). Empty starts the embedded PostgreSQL under DATA_DIR."),
    Spec("DATABASE_OWNER_URL", _database_url, "", "Role that owns the schema and runs migrations. Empty with DATABASE_URL set: migrations are not run and start-up checks that none are pending."),
    Spec("DATABASE_DIRECT_URL", _database_url, "", "A direct connection (not through a pooler) to the same database, for what a transaction pooler cannot carry: LISTEN (bot commands, live streams, webhooks). Set it when DATABASE_URL goes through PgBouncer in transaction mode; the pool then sets statement_timeout per transaction instead of at connect. Empty: DATABASE_URL is used for both."),
    Spec("DATABASE_MAX_CONNECTIONS", _positive_int, "20", "Fixed number of connections the pool actor keeps open."),
    Spec("DATABASE_CONNECT_TIMEOUT", _positive_float, "5", "Seconds to wait for a new database connection."),
    Spec("DATABASE_ACQUIRE_TIMEOUT", _positive_float, "10", "Seconds a borrower waits for a free connection before a clear error."),
    Spec("DATABASE_MAX_LIFETIME", _positive_float, "3600", "Seconds after which a connection is recycled (each gets up to 10% jitter)."),
    Spec("DATABASE_STATEMENT_TIMEOUT", _non_negative_float, "30", "Seconds a single statement may run on the server; 0 disables."),
    Spec("DATABASE_LEAK_THRESHOLD", _positive_float, "30", "Seconds a borrower may hold a connection before it is logged with its stack."),
    # Web
    Spec("HOST", _str, "127.0.0.1", "Address the web server binds."),
    Spec("PORT", _port, "8000", "Port the web server binds (0 picks a free one)."),
    Spec("HEALTH_PORT", _optional_port, "", "Port on which a `run.py supervisor` process serves /healthz, /readyz and /metrics; empty: none (web processes serve them on PORT)."),
    Spec("HTTP_KEEPALIVE_TIMEOUT", _positive_float, "75", "Seconds an idle keep-alive connection is kept open."),
    Spec("HTTP_HEADER_TIMEOUT", _positive_float, "10", "Seconds a client has to send its request headers."),
    Spec("HTTP_MAX_BODY", _positive_int, "1048576", "Largest request body in bytes; larger bodies get 413."),
    # Live streams
    Spec("EVENTS_RETENTION", _positive_float, "86400", "Seconds events are kept for resume (default 24 h); older ones are pruned."),
    Spec("SSE_BUFFER", _positive_int, "1000", "Events a live-stream subscriber may have waiting before it is cut off as too slow."),
    Spec("SSE_HEARTBEAT", _positive_float, "15", "Seconds between SSE comment heartbeats (and WebSocket pings) on an idle stream."),
    Spec("SSE_RETRY", _positive_int, "3000", "Milliseconds a browser waits before reconnecting a dropped SSE stream."),
    Spec("WS_MAX_FRAME", _positive_int, "65536", "Largest WebSocket frame in bytes a client may send; larger ones are refused."),
    # WhatsApp sessions
    Spec("WA_TRANSPORT", _Choice("neonize", "simulator"), "neonize", "How bots reach WhatsApp: the real neonize client or the network simulator."),
    Spec("WA_SIMULATOR_ADDR", _str, "127.0.0.1:7300", "host:port of the simulator's transport socket (control API listens on the next port)."),
    Spec("WA_RECONNECT_BASE_DELAY", _positive_float, "5", "First reconnect delay in seconds; doubles per attempt, with jitter."),
    Spec("WA_RECONNECT_MAX_DELAY", _positive_float, "300", "Cap on the reconnect delay in seconds."),
    Spec("WA_RECONNECT_MAX_ATTEMPTS", _positive_int, "10", "Reconnect attempts before a session is marked failed."),
    Spec("WA_RECONNECT_STABLE_AFTER", _positive_float, "60", "Seconds a connection must stay up before the attempt count resets."),
    Spec("WA_CONNECT_RATE", _positive_float, "20", "Process-wide limit on connection attempts per second."),
    Spec("WA_LEASE_TTL", _positive_float, "30", "Seconds after which a dead supervisor's bots are taken over by another."),
)
SPECS += (
    # Replies and AI
    Spec("AI_BASE_URL", _str, "https://api.deepseek.com", "OpenAI-compatible chat-completions endpoint (DeepSeek by default)."),
    Spec("AI_API_KEY", _optional_str, "", "API key for the AI provider; empty disables AI replies (rules still answer)."),
    Spec("AI_MODEL", _str, "deepseek-chat", "Model name sent to the AI provider (a bot may override it)."),
    Spec("AI_TIMEOUT", _positive_float, "30", "Seconds one AI request may take."),
    Spec("AI_MAX_RETRIES", _non_negative_int, "2", "Retries of an AI request after 429, 5xx or a timeout (Retry-After is honoured)."),
    Spec("AI_MAX_IN_FLIGHT", _positive_int, "16", "AI requests one process runs at once (and connections it keeps); more wait for a slot."),
    Spec("AI_DEBOUNCE", _non_negative_float, "2", "Seconds to wait for more messages from one customer before answering them together."),
    Spec("AI_BREAKER_FAILURES", _positive_int, "5", "Consecutive AI failures that open the provider's circuit breaker."),
    Spec("AI_BREAKER_RESET", _positive_float, "30", "Seconds an open breaker waits before letting one trial request through."),
    # Outbox
    Spec("BOT_SEND_RATE", _non_negative_float, "20", "Messages a bot may send per minute (0 disables the limit)."),
    Spec("BOT_SEND_BURST", _positive_int, "5", "Messages a bot may send back to back before the per-minute rate applies."),
    Spec("OUTBOX_MAX_ATTEMPTS", _positive_int, "8", "Delivery attempts before an outgoing message becomes a dead letter."),
    Spec("OUTBOX_RETRY_BASE", _positive_float, "2", "First delay in seconds before retrying a failed delivery (doubles, capped at 5 minutes)."),
    # Media
    Spec("MEDIA_S3_ENDPOINT", _optional_str, "", "S3-compatible endpoint (e.g. Cloudflare R2); empty stores media under DATA_DIR/media."),
    Spec("MEDIA_S3_BUCKET", _optional_str, "", "Bucket for media when MEDIA_S3_ENDPOINT is set."),
    Spec("MEDIA_S3_ACCESS_KEY_ID", _optional_str, "", "Access key for the media bucket."),
    Spec("MEDIA_S3_SECRET_ACCESS_KEY", _optional_str, "", "Secret key for the media bucket."),
    Spec("MEDIA_S3_REGION", _str, "auto", "Region name for the media bucket ('auto' for R2)."),
    Spec("MEDIA_MAX_BYTES", _positive_int, "16777216", "Largest media object accepted (bytes), inbound or through the API."),
    Spec("BOT_PHONE_TAKEOVER", _non_negative_float, "1800", "Seconds a bot holds off a conversation after the owner wrote to the customer from the paired phone (0 = off)."),
    # The dashboard: people, sessions, links
    Spec("PUBLIC_URL", _public_url, "", "Address people open the dashboard at (e.g. https://bots.example.com): used in the links the CLI prints; https makes session cookies Secure. Empty: http://HOST:PORT."),
    Spec("SESSION_IDLE_TIMEOUT", _positive_float, "28800", "Seconds a dashboard session may go unused before it is signed out (default 8 h)."),
    Spec("SESSION_MAX_AGE", _positive_float, "604800", "Seconds after sign-in a dashboard session ends, used or not (default 7 days)."),
    Spec("AUTH_LINK_TTL", _positive_float, "86400", "Seconds a set-password, invite or reset link stays valid (default 24 h)."),
    Spec("SIGN_IN_LOCKOUT", _positive_float, "900", "Seconds sign-ins for an email (or from an address) are refused after too many failures."),
    Spec("PROXY_HOPS", _non_negative_int, "0", "Reverse proxies in front of the web app whose X-Forwarded-For/-Proto/-Host are trusted (0: none; the peer address is the client)."),
    # Webhooks
    Spec("WEBHOOKS_ALLOW_HTTP", _bool, "false", "Accept plain http:// webhook URLs (otherwise https only)."),
    Spec("OUTBOUND_ALLOW_PRIVATE", _bool, "false", "Let the addresses tenants supply (bot proxies, webhook URLs) reach loopback, private, link-local, CGNAT, multicast and metadata addresses (off: refused when saved and again when connecting, after DNS)."),
    Spec("WEBHOOKS_ALLOW_PRIVATE", _bool, "false", "The older name of OUTBOUND_ALLOW_PRIVATE, still honoured: either one on allows private addresses."),
    Spec("WEBHOOK_TIMEOUT", _positive_float, "15", "Seconds one webhook request may take, connecting to the last byte read."),
    Spec("WEBHOOK_MAX_IN_FLIGHT", _positive_int, "4", "Requests in flight per webhook endpoint, across every supervisor process; a hanging receiver holds only these."),
    Spec("WEBHOOK_CONCURRENCY", _positive_int, "500", "Webhook requests one supervisor process runs at once, all endpoints together."),
    Spec("WEBHOOK_DISABLE_AFTER", _positive_float, "432000", "Seconds an endpoint may fail every attempt before it is disabled (default 5 days)."),
    Spec("WEBHOOK_RETENTION", _positive_float, "604800", "Seconds webhook deliveries and their attempts are kept for the log and replay (default 7 days)."),
)
SPECS += (
    # Request limits (per API key and per dashboard session; state in PostgreSQL, shared by every web process)
    Spec("RATE_LIMIT_ENABLED", _bool, "true", "Limit requests per API key and dashboard session, and sign-in attempts (off: no limits, no RateLimit headers)."),
    Spec("RATE_LIMIT_READS", _per_minute, "3000", "Reads (GET, HEAD) one API key or dashboard session may make per minute after its burst (0: unlimited)."),
    Spec("RATE_LIMIT_READS_BURST", _positive_int, "600", "Reads one key or session may make back to back before the per-minute rate applies."),
    Spec("RATE_LIMIT_WRITES", _per_minute, "1200", "Writes (every other method) one API key or dashboard session may make per minute after its burst (0: unlimited)."),
    Spec("RATE_LIMIT_WRITES_BURST", _positive_int, "300", "Writes one key or session may make back to back before the per-minute rate applies."),
    Spec("RATE_LIMIT_SIGN_IN", _per_minute, "30", "Sign-in attempts per minute for one email and from one client address, after the burst (0: unlimited); failed ones are slowed further (SIGN_IN_LOCKOUT)."),
    Spec("RATE_LIMIT_SIGN_IN_BURST", _positive_int, "30", "Sign-in attempts one email or address may make back to back before the per-minute rate applies."),
)
SPECS += (
    # The audit log
    Spec("AUDIT_RETENTION", _at_least_a_day, "31536000", "Seconds audit log rows are kept (default 365 days, at least 1 day); stored by the owner role when migrations run, and older rows are pruned."),
)

_BY_FIELD = {spec.field: spec for spec in SPECS}

_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^/\s]*@")


def _redact(text: str) -> str:
    """The value as shown in an error: a URL's password is masked (errors end up in logs)."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated settings; one attribute per variable in SPECS, lower-cased, in the same order, typed as
    its parser returns (tests/test_config.py keeps the two in step)."""

    data_dir: str
    log_level: str
    environment: str
    release: str
    sentry_dsn: str | None
    shutdown_timeout: float
    database_url: str | None
    database_owner_url: str | None
    database_direct_url: str | None
    database_max_connections: int
    database_connect_timeout: float
    database_acquire_timeout: float
    database_max_lifetime: float
    database_statement_timeout: float
    database_leak_threshold: float
    host: str
    port: int
    health_port: int | None
    http_keepalive_timeout: float
    http_header_timeout: float
    http_max_body: int
    events_retention: float
    sse_buffer: int
    sse_heartbeat: float
    sse_retry: int
    ws_max_frame: int
    wa_transport: str
    wa_simulator_addr: str
    wa_reconnect_base_delay: float
    wa_reconnect_max_delay: float
    wa_reconnect_max_attempts: int
    wa_reconnect_stable_after: float
    wa_connect_rate: float
    wa_lease_ttl: float
    ai_base_url: str
    ai_api_key: str | None
    ai_model: str
    ai_timeout: float
    ai_max_retries: int
    ai_max_in_flight: int
    ai_debounce: float
    ai_breaker_failures: int
    ai_breaker_reset: float
    bot_send_rate: float
    bot_send_burst: int
    outbox_max_attempts: int
    outbox_retry_base: float
    media_s3_endpoint: str | None
    media_s3_bucket: str | None
    media_s3_access_key_id: str | None
    media_s3_secret_access_key: str | None
    media_s3_region: str
    media_max_bytes: int
    bot_phone_takeover: float
    public_url: str
    session_idle_timeout: float
    session_max_age: float
    auth_link_ttl: float
    sign_in_lockout: float
    proxy_hops: int
    webhooks_allow_http: bool
    outbound_allow_private: bool
    webhooks_allow_private: bool
    webhook_timeout: float
    webhook_max_in_flight: int
    webhook_concurrency: int
    webhook_disable_after: float
    webhook_retention: float
    rate_limit_enabled: bool
    rate_limit_reads: float
    rate_limit_reads_burst: int
    rate_limit_writes: float
    rate_limit_writes_burst: int
    rate_limit_sign_in: float
    rate_limit_sign_in_burst: int
    audit_retention: float

    @property
    def allow_private_addresses(self) -> bool:
        """Whether tenants' addresses may be private (OUTBOUND_ALLOW_PRIVATE, or its older name)."""
        return self.outbound_allow_private or self.webhooks_allow_private


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Parse every variable; the first bad one raises ConfigError with a one-line message.

    ``overrides`` (by lower-case field name) replace parsed values; tests use them.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for spec in SPECS:
        raw = environ.get(spec.name)
        text = spec.default if raw is None else raw
        try:
            values[spec.field] = spec.parse(text)
        except (ValueError, TypeError):
            raise ConfigError(f"{spec.name}={_redact(text)!r} is invalid: expected {spec.expected}") from None
    for key, value in overrides.items():
        if key not in _BY_FIELD:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = value
    return Settings(**values)


def replace(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)
