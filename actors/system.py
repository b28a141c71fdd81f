"""The actor system's root for one process.

It owns everything with a lifetime: settings, metrics, the database (embedded or external), the pool
actor, and the components this process runs (supervision, the web server). Components start in order
and stop in reverse; nothing else in the code keeps mutable state at module level.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import gevent

from actors.base import actor_of
from actors.event_bus import EventBus, make_notice_publisher, make_publisher
from actors.pool import Pool, PoolConfig
from core import sentry
from core.metrics import Metrics
from db import embedded, migrate

log = logging.getLogger(__name__)

VERSION = "0.1.0"


class StartupError(RuntimeError):
    """The process cannot run as configured; the message says why in one line."""


class System:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.embedded: embedded.Embedded | None = None
        self.pool: Pool | None = None
        self.blueprints: list[Any] = []
        self.bus: Any = None
        self.bus_metrics: Any = None
        self.publish: Any = None
        self.notices: Any = None  # batched, never-waited publisher for high-volume notices (pipelines)
        self._media_store: Any = None
        self._stops: list[tuple[str, Callable[[], None]]] = []
        self.sentry_enabled = False

    # -- start -----------------------------------------------------------------------------------

    def start_observability(self) -> None:
        self.sentry_enabled = sentry.init(self.settings, VERSION)

    def database_urls(self) -> tuple[str, str | None]:
        """(app role URL, owner URL or None): the configured server, or the embedded one started now."""
        s = self.settings
        if s.database_url is not None:
            return s.database_url, s.database_owner_url
        if self.embedded is None:
            self.embedded = embedded.start(s.data_dir)
            self._on_stop("embedded postgres", self.embedded.stop)
            log.info("embedded postgres started", extra={"socket_dir": self.embedded.socket_dir})
        return self.embedded.app_url, self.embedded.owner_url

    def migrate(self) -> list[str]:
        """Apply pending migrations as the owner; raises StartupError without an owner URL."""
        app_url, owner_url = self.database_urls()
        if not owner_url:
            raise StartupError("DATABASE_OWNER_URL is not set (migrations run as the schema owner)")
        applied = migrate.apply(owner_url, role_of(app_url), self.settings.database_connect_timeout)
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
        return applied

    def start_database(self, *, migrate_schema: bool = True) -> Pool:
        s = self.settings
        app_url, owner_url = self.database_urls()
        if migrate_schema and owner_url:
            self.migrate()
        self.pool = Pool(PoolConfig.from_settings(s, app_url))
        self._on_stop("database pool", self.pool.stop)
        self.publish = make_publisher(self.pool, self.metrics.events_published)
        self.notices = make_notice_publisher(self.pool, self.metrics.events_published)
        self._on_stop("event notices", self._stop_notices)
        self.metrics.watch_pool(self.pool.stats)
        if not self.pool.wait_ready(s.database_connect_timeout * 2):
            raise StartupError(f"database unreachable: {self.pool.stats()['last_connect_error']}")
        self._check_app_role()
        return self.pool

    def _stop_notices(self) -> None:
        self.notices.stop()
        if not self.notices.flush(timeout=5):  # the last messages' notices, before the pool goes
            log.warning("event notices not written before stop", extra={"queued": self.notices.queued})

    def _check_app_role(self) -> None:
        """Refuse to run as a role that row-level security would not bind."""
        rows = self.pool.query(
            None,
            "SELECT r.rolsuper, r.rolbypassrls,"
            " (SELECT count(*) FROM pg_tables t WHERE t.schemaname = 'public' AND t.tableowner = current_user)"
            " FROM pg_roles r WHERE r.rolname = current_user",
        )
        superuser, bypass, owned = rows[0]
        if superuser or bypass or owned:
            raise StartupError(
                "DATABASE_URL must name a role that is not superuser, not BYPASSRLS and owns no tables "
                f"(superuser={superuser}, bypassrls={bypass}, tables owned={owned})"
            )
        with self.pool.unit(None) as unit:
            behind = migrate.pending(unit.connection)
        if behind:
            raise StartupError(f"schema is behind: pending migrations {', '.join(behind)}; run 'python run.py migrate'")

    @property
    def media_store(self) -> Any:
        """One media store per process, shared by the web app and the bots' pipelines."""
        if self._media_store is None:
            from media import store_from_settings

            self._media_store = store_from_settings(self.settings)
        return self._media_store

    def start_bus(self) -> Any:
        """The event bus this process's live streams subscribe to (web processes)."""
        self.bus = EventBus.start(
            self.pool, self.pool.config.dsn, self.settings.events_retention, self.metrics.registry
        )
        self.bus_metrics = actor_of(self.bus).metrics
        self._on_stop("event bus", lambda: self.bus.stop(timeout=self.settings.shutdown_timeout))
        return self.bus

    def end_streams(self) -> None:
        """End every live stream with a closing event (before the web server waits for requests)."""
        if self.bus is not None and self.bus.is_alive():
            self.bus.stop(timeout=self.settings.shutdown_timeout)

    def add_component(self, name: str, stop: Callable[[], None]) -> None:
        """Register something started after the pool; it is stopped before everything started earlier."""
        self._on_stop(name, stop)

    def _on_stop(self, name: str, stop: Callable[[], None]) -> None:
        self._stops.append((name, stop))

    # -- stop ------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop components in reverse start order; each failure is logged and the rest still stop."""
        while self._stops:
            name, stop = self._stops.pop()
            try:
                with gevent.Timeout(self.settings.shutdown_timeout):
                    stop()
                log.info("stopped", extra={"component": name})
            except BaseException as exc:  # noqa: BLE001 - keep stopping the rest
                if isinstance(exc, gevent.GreenletExit):
                    raise
                log.error("component did not stop cleanly", extra={"component": name, "error": repr(exc)})
        sentry.flush()


def role_of(url: str) -> str:
    import psycopg2.extensions

    return psycopg2.extensions.parse_dsn(url).get("user") or "wabot_app"
