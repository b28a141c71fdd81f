"""The tests' process root: ``FakeRoot`` offers what ``core.root.WebRoot`` and ``core.root.SupervisionRoot``
name (settings, pool, metrics, publish, blueprints, the event bus, the media store, add_component) over a
pool the test owns, without the rest of ``actors.system.System`` (no embedded server, no migrations, no
Sentry). mypy checks this file too (setup.cfg), so a part the web app or supervision starts to read
that the fake lacks is an error before it is a failing test.

    root = FakeRoot(settings, pool)                    # create_app(root).test_client(), Supervision(root)
    root = FakeRoot(settings, pool).start_bus().serve()  # a web server on a free port: root.url
    ...
    root.close()                                         # server, bus, then what add_component registered
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import pykka
from flask import Blueprint

from actors.base import actor_of
from actors.event_bus import EventBus, StreamMetrics, make_publisher
from actors.pool import Pool
from core.config import Settings
from core.metrics import Metrics
from core.root import Publisher

if TYPE_CHECKING:
    from gevent.pywsgi import WSGIServer

    from core.root import SupervisionRoot, WebRoot
    from media.store import MediaStore


class FakeRoot:
    """A root over ``pool`` (None for an app that never reaches the database, such as the one that only
    serves the OpenAPI document: reading ``pool`` then raises). ``publish`` defaults to the real
    publisher over the pool, as ``System`` makes it; the metrics watch the pool, as ``System``'s do."""

    def __init__(self, settings: Settings, pool: Pool | None, *, publish: Publisher | None = None,
                 blueprints: Iterable[Blueprint] = ()) -> None:
        self.settings = settings
        self._pool = pool
        self.metrics = Metrics()
        if pool is not None:
            self.metrics.watch_pool(pool.stats)
        self.publish: Publisher = publish or make_publisher(pool, self.metrics.events_published)
        self.notices: Publisher | None = None  # supervision's pipelines then announce through publish
        self.blueprints: list[Blueprint] = list(blueprints)
        self.bus: pykka.ActorRef[EventBus] | None = None
        self.bus_metrics: StreamMetrics | None = None
        self.media_store: MediaStore | None = None  # the web app and the pipelines make their own
        self.server: WSGIServer | None = None
        self.url = ""
        self._stops: list[Callable[[], object]] = []

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("this FakeRoot has no database pool")
        return self._pool

    def add_component(self, name: str, stop: Callable[[], object]) -> None:
        self._stops.append(stop)

    def start_bus(self) -> FakeRoot:
        """Start the event bus live streams subscribe to, as ``System.start_bus`` does."""
        self.bus = EventBus.start(self.pool, self.settings.database_direct_url or self.pool.config.dsn,
                                  self.settings.events_retention,
                                  self.metrics.registry)
        self.bus_metrics = actor_of(self.bus).metrics
        return self

    def serve(self) -> FakeRoot:
        """Serve ``create_app(self)`` on the settings' host and port (0 in tests: a free one); ``url``."""
        from web.app import create_app
        from web.server import make_server

        server = self.server = make_server(create_app(self), self.settings)
        server.start()
        self.url = f"http://127.0.0.1:{server.server_port}"
        return self

    def close(self) -> None:
        """Stop accepting, end the live streams, let requests finish; then what add_component registered,
        newest first (the order ``System.stop`` uses)."""
        if self.server is not None:
            self.server.close()
        if self.bus is not None and self.bus.is_alive():
            self.bus.stop(timeout=5)
        if self.server is not None:
            self.server.stop(timeout=2)
        while self._stops:
            self._stops.pop()()


if TYPE_CHECKING:
    def _satisfies_the_protocols(root: FakeRoot) -> tuple[WebRoot, SupervisionRoot]:
        return root, root
