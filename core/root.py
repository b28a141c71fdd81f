"""The process root as the components that receive it see it.

``actors.system.System`` is the root of a real process: it owns the settings, the metrics, the pool,
the event bus and everything started after them. Components are handed the root (the web app in
``create_app``, bot supervision in ``actors.supervision``) and read a few parts of it; the protocols
below name exactly those parts, with their real types, so that

- ``System`` is checked (by mypy, where it is passed) to offer what each component reads, and
- a test or a benchmark can hand a component a smaller object (``tests.fakes.FakeRoot``) that offers
  the same parts, without subclassing or patching ``System``.

Members are read-only properties: an object with plain attributes satisfies them too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # types only: core must not import actors, media or flask at run time
    import pykka
    from flask import Blueprint

    from actors.event_bus import EventBus, StreamMetrics
    from actors.pool import Pool
    from core.config import Settings
    from core.metrics import Metrics
    from media.store import MediaStore


class Publisher(Protocol):
    """``publish(tenant_id, bot_id, event_type, payload)``: writes (or queues) one event of the tenant's
    event log and announces it to live streams; never raises. Answers the event's id, or None when it
    was not written (logged) or is a notice nobody waits on (``actors.event_bus.NoticePublisher``)."""

    def __call__(self, tenant_id: str, bot_id: str | None, event_type: str, payload: dict[str, Any], /) -> int | None:
        ...


class Root(Protocol):
    """What every component reads of its process's root."""

    @property
    def settings(self) -> Settings: ...

    @property
    def pool(self) -> Pool: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def publish(self) -> Publisher: ...


class SupervisionRoot(Root, Protocol):
    """What bot supervision (``actors.supervision``) reads: the basics, and where to register its stop.

    Two parts are optional and read with ``getattr``, because the benchmarks' roots do not have them:
    ``notices`` (a ``Publisher`` that queues, used for the pipelines' high-volume notices instead of
    ``publish``) and ``media_store`` (a ``MediaStore`` shared with the web app; else one is made)."""

    def add_component(self, name: str, stop: Callable[[], object]) -> None:
        """Register ``stop`` to run when the process stops (before what was started earlier)."""
        ...


class WebRoot(Root, Protocol):
    """What the web app (``web.app.create_app``, ``web.auth.system()``, ``web.dashboard.session.root()``)
    reads: the basics, plus the parts only a web process has."""

    @property
    def blueprints(self) -> Sequence[Blueprint]:
        """Extra blueprints registered under ``/api/v1`` (tests add theirs)."""
        ...

    @property
    def bus(self) -> pykka.ActorRef[EventBus] | None:
        """The event bus live streams subscribe to; None: this process serves no streams (503)."""
        ...

    @property
    def bus_metrics(self) -> StreamMetrics | None:
        """The bus's stream metrics; set whenever ``bus`` is."""
        ...

    @property
    def media_store(self) -> MediaStore | None:
        """The process's media store, shared with the pipelines; None: the app makes its own."""
        ...
