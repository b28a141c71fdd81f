"""The actor system's root for one process.

It owns everything with a lifetime: settings, metrics, the database (embedded or external), the pool
actor, and the components this process runs (supervision, the web server). Components start in order
and stop in reverse; nothing else in the code keeps mutable state at module level.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
import pykka

from actors.base import actor_of
from actors.event_bus import EventBus, NoticePublisher, StreamMetrics, make_notice_publisher, make_publisher
from actors.pool import Pool, PoolConfig
from core import sentry
from core.config import Settings
from core.metrics import Metrics
from core.root import Publisher
from db import embedded, migrate

if TYPE_CHECKING:
    from flask import Blueprint

    from media.store import MediaStore

log = logging.getLogger(__name__)

VERSION = "0.1.0"


class StartupError(RuntimeError):
    """The process cannot run as configured; the message says why in one line."""


class System:
    """The root (``core.root.WebRoot`` and ``core.root.SupervisionRoot``): ``pool`` and ``publish``
    exist once ``start_database`` ran, ``bus`` and ``bus_metrics`` once ``start_bus`` ran."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.embedded: embedded.Embedded | None = None
        self._pool: Pool | None = None
        self.blueprints: list[Blueprint] = []
        self.bus: pykka.ActorRef[EventBus] | None = None
        self.bus_metrics: StreamMetrics | None = None
        self._publish: Publisher | None = None
        # The batched, never-waited publisher for high-volume notices (pipelines).
        self.notices: NoticePublisher | None = None
        self._media_store: MediaStore | None = None
        self._stops: list[tuple[str, Callable[[], object]]] = []
        self.sentry_enabled = False

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the database is not started (System.start_database)")
        return self._pool

    @property
    def publish(self) -> Publisher:
        if self._publish is None:
            raise RuntimeError("the database is not started (System.start_database)")
        return self._publish

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
        applied = migrate.apply(owner_url, role_of(app_url), self.settings.database_connect_timeout,
                                audit_retention=self.settings.audit_retention)
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
        return applied

    def start_database(self, *, migrate_schema: bool = True) -> Pool:
        s = self.settings
        app_url, owner_url = self.database_urls()
        if migrate_schema and owner_url:
            self.migrate()
        pool = self._pool = Pool(PoolConfig.from_settings(s, app_url))
        self._on_stop("database pool", pool.stop)
        self._publish = make_publisher(pool, self.metrics.events_published)
        notices = self.notices = make_notice_publisher(pool, self.metrics.events_published)
        self._on_stop("event notices", lambda: self._stop_notices(notices))
        self.metrics.watch_pool(pool.stats)
        if not pool.wait_ready(s.database_connect_timeout * 2):
            raise StartupError(f"database unreachable: {pool.stats()['last_connect_error']}")
        self._check_app_role()
        return pool

    @staticmethod
    def _stop_notices(notices: NoticePublisher) -> None:
        notices.stop()
        if not notices.flush(timeout=5):  # the last messages' notices, before the pool goes
            log.warning("event notices not written before stop", extra={"queued": notices.queued})

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
    def media_store(self) -> MediaStore:
        """One media store per process, shared by the web app and the bots' pipelines."""
        if self._media_store is None:
            from media import store_from_settings

            self._media_store = store_from_settings(self.settings)
        return self._media_store

    @property
    def listen_dsn(self) -> str:
        """Where LISTEN connections go: ``DATABASE_DIRECT_URL`` when the pool's URL is a transaction
        pooler (which cannot keep a LISTEN), else the pool's own URL."""
        return self.settings.database_direct_url or self.pool.config.dsn

    def start_bus(self) -> pykka.ActorRef[EventBus]:
        """The event bus this process's live streams subscribe to (web processes)."""
        bus = self.bus = EventBus.start(
            self.pool, self.listen_dsn, self.settings.events_retention, self.metrics.registry
        )
        self.bus_metrics = actor_of(bus).metrics
        self._on_stop("event bus", lambda: bus.stop(timeout=self.settings.shutdown_timeout))
        return bus

    def end_streams(self) -> None:
        """End every live stream with a closing event (before the web server waits for requests)."""
        if self.bus is not None and self.bus.is_alive():
            self.bus.stop(timeout=self.settings.shutdown_timeout)

    def add_component(self, name: str, stop: Callable[[], object]) -> None:
        """Register something started after the pool; it is stopped before everything started earlier."""
        self._on_stop(name, stop)

    def _on_stop(self, name: str, stop: Callable[[], object]) -> None:
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
            except BaseException as exc:  # keep stopping the rest
                if isinstance(exc, gevent.GreenletExit):
                    raise
                log.error("component did not stop cleanly", extra={"component": name, "error": repr(exc)})
        sentry.flush()


def role_of(url: str) -> str:
    import psycopg2.extensions

    return psycopg2.extensions.parse_dsn(url).get("user") or "wabot_app"
