"""Bot supervision for one process: a lease keeper and a supervisor with one session child per bot.

``LeaseKeeper`` is the only actor that decides which bots this process runs. Every ``lease_interval``
it renews the leases it holds and claims running bots whose lease is free or expired
(``db.bots.lease``); it starts a supervised ``BotSession`` for each bot it newly holds and stops the
sessions of bots it no longer holds or that the user stopped. A ``LISTEN`` on the ``bot_commands``
channel (a dedicated connection, reconnected with backoff) turns a user's start, stop, restart,
logout or pair-code request into a ``Refresh`` for the session within milliseconds, or an early
lease round for a bot this process does not run yet.

Leases last two thirds of ``WA_LEASE_TTL`` and are renewed every sixth of it, so a bot whose
supervisor died is taken over by another within ``WA_LEASE_TTL``; session writes are fenced by the
lease, so a stalled process that lost a bot cannot overwrite what the new owner writes.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import gevent
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from actors.base import Actor, actor_of
from actors.pipeline import PipelineDeps
from actors.session import BotSession, Refresh, SessionDeps
from actors.supervisor import ChildSpec, Supervisor, children_of
from actors.webhooks import WebhookDeps, WebhookDispatcher, WebhookMetrics
from core.root import Publisher, SupervisionRoot
from db import bots as bots_db
from db.listen import listen_forever
from sansio.backoff import BackoffPolicy
from sansio.connect_rate import ConnectRateLimiter

log = logging.getLogger(__name__)

MAX_CLAIMS_PER_ROUND = 200
MAX_SHED_PER_ROUND = 50
FREEZE_AFTER_STARTS = 100

# Restart spacing (``n`` = the child's restart count, from 1): 0.5 s doubling to 30 s. A bot session's
# delay is uniform in [d/2, d] so bots crashing together do not restart together; the top supervisor's
# two children restart exactly d apart.
BOT_RESTART = BackoffPolicy(base=0.5, cap=30.0, jitter="equal")
TOP_RESTART = BackoffPolicy(base=0.5, cap=30.0, jitter="none")


class _Round:
    pass


@dataclasses.dataclass(frozen=True)
class _Notified:
    bot_id: str


class LeaseKeeper(Actor):
    def __init__(self, deps: SessionDeps, bots_supervisor: Callable[[], Any], listen_dsn: str | None) -> None:
        super().__init__()
        self.deps = deps
        self._bots_supervisor = bots_supervisor  # current ref of the sessions' supervisor, or None
        self.listen_dsn = listen_dsn
        ttl = deps.settings.wa_lease_ttl
        self.lease_seconds = ttl * 2 / 3
        self.interval = ttl / 6
        self.held: dict[str, str] = {}  # bot id -> tenant id
        self._ticker: gevent.Greenlet | None = None
        self._listener: gevent.Greenlet | None = None
        self._stopping = False

    def on_start(self) -> None:
        # The first round runs as a message: on_start must return before the parent is fully up.
        self.actor_ref.tell(_Round())
        if self.listen_dsn:
            self._listener = gevent.spawn(self._listen_forever, self.listen_dsn)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Round):
            return self._round()
        if isinstance(message, _Notified):
            return self._notified(message.bot_id)
        return super().on_receive(message)

    def on_stop(self) -> None:
        # Only stop claiming: the sessions are stopped next by their own supervisor (stop order),
        # and the leases are released after that (Supervision.stop), so no other process can start
        # a bot while this one still drives it.
        self._stopping = True
        self._teardown()

    def on_failure(self, *exc_info: Any) -> None:
        self._teardown()

    def _teardown(self) -> None:
        for greenlet in (self._ticker, self._listener):
            if greenlet is not None:
                greenlet.kill(block=False)

    # -- lease rounds ------------------------------------------------------------------------------

    @property
    def supervisor(self) -> Any:
        ref = self._bots_supervisor()
        if ref is None:
            raise RuntimeError("the sessions' supervisor is not running")
        return ref.proxy()

    def _round(self) -> None:
        if self._ticker is not None:
            self._ticker.kill(block=False)
        held: list[tuple[str, str, str]] | None  # None: this round could not lease
        try:
            held, share = bots_db.lease(self.deps.pool, self.deps.owner, self.lease_seconds, MAX_CLAIMS_PER_ROUND)
        except Exception as exc:  # noqa: BLE001 - the database may be down; sessions keep running
            log.warning("lease round failed", extra={"error": repr(exc)})
            held = share = None
        started = 0
        if held is not None:
            try:
                started = self._reconcile(held)
                self._shed(share)
            except Exception as exc:  # noqa: BLE001 - next round tries again
                log.warning("lease reconcile failed", extra={"error": repr(exc)})
        if started >= FREEZE_AFTER_STARTS:
            # Thousands of long-lived session objects just appeared; keep full collections from
            # walking them again and again (they stall the hub for hundreds of ms at 2,000 bots).
            gc.collect()
            gc.freeze()
        # A full round means more bots are waiting to be claimed: claim them now, not a round later.
        delay = 0 if started >= MAX_CLAIMS_PER_ROUND else self.interval
        self._ticker = gevent.spawn_later(delay, _tell_quietly, self.actor_ref, _Round())

    def _reconcile(self, held: list[tuple[str, str, str]]) -> int:
        now_held = {bot_id: (tenant_id, desired) for bot_id, tenant_id, desired in held}
        started = 0
        for bot_id in list(self.held):
            if bot_id not in now_held:
                log.warning("lease lost", extra={"bot_id": bot_id})
                self._drop(bot_id, release=False)
        for bot_id, (tenant_id, desired) in now_held.items():
            if desired != "running":
                if bot_id in self.held:
                    self._drop(bot_id, release=True)
                else:
                    bots_db.release(self.deps.pool, self.deps.owner, bot_id)
                continue
            if bot_id not in self.held:
                self.held[bot_id] = tenant_id
                bots = self._bots_supervisor()
                if bots is not None and bot_id in children_of(bots).names():
                    continue  # already supervised: a keeper restarted after a crash adopts its sessions
                self.supervisor.start_child(self._spec(bot_id, tenant_id)).get()
                started += 1
        return started

    def _shed(self, share: int | None) -> None:
        """Hand back bots beyond this process's fair share, a few per round, for a newer process."""
        if share is None or len(self.held) <= share:
            return
        excess = sorted(self.held)[: min(len(self.held) - share, MAX_SHED_PER_ROUND)]
        log.info("handing bots back for balance", extra={"count": len(excess), "share": share})
        for bot_id in excess:
            self._drop(bot_id, release=True)

    def _spec(self, bot_id: str, tenant_id: str) -> ChildSpec:
        deps = self.deps
        return ChildSpec(
            name=bot_id,
            start=lambda: BotSession.start(bot_id, tenant_id, deps),
            restart="transient",
            shutdown=5.0,
        )

    def _drop(self, bot_id: str, *, release: bool) -> None:
        self.held.pop(bot_id, None)
        try:
            self.supervisor.stop_child(bot_id).get()
            self.supervisor.delete_child(bot_id).get()
        except Exception as exc:  # noqa: BLE001 - already gone
            log.debug("child already gone", extra={"bot_id": bot_id, "error": repr(exc)})
        if release:
            try:
                bots_db.release(self.deps.pool, self.deps.owner, bot_id)
            except Exception as exc:  # noqa: BLE001 - the lease expires on its own
                log.warning("lease release failed", extra={"bot_id": bot_id, "error": repr(exc)})

    def _notified(self, bot_id: str) -> None:
        if bot_id in self.held:
            bots = self._bots_supervisor()
            ref = children_of(bots).ref_of(bot_id) if bots is not None else None
            if ref is not None:
                _tell_quietly(ref, Refresh())
        # A start, stop or delete may also change which bots this process should hold.
        self._round()

    # -- LISTEN ------------------------------------------------------------------------------------

    def _listen_forever(self, dsn: str) -> None:
        listen_forever(
            dsn,
            bots_db.NOTIFY_CHANNEL,
            on_notify=lambda bot_id: _tell_quietly(self.actor_ref, _Notified(bot_id)),
            # Catch up on anything said while we were not listening.
            on_connected=lambda: _tell_quietly(self.actor_ref, _Round()),
            stopping=lambda: self._stopping,
        )


class _SessionCollector(Collector):
    def __init__(self, supervision: Supervision) -> None:
        self.supervision = supervision

    def describe(self) -> list:
        return []  # registered before the supervisors exist; collect() only at scrape time

    def collect(self) -> Any:
        by_state = GaugeMetricFamily("bot_sessions", "Bot sessions in this process by state", labels=["state"])
        for state, count in sorted(self.supervision.states().items()):
            by_state.add_metric([state], count)
        yield by_state
        counters = self.supervision.counters
        live = counters.get("transports_created", 0) - counters.get("transports_closed", 0)
        yield GaugeMetricFamily("bot_transports_live", "Open transports (connections to WhatsApp)", value=live)


def _tell_quietly(ref: Any, message: Any) -> None:
    try:
        ref.tell(message)
    except Exception:  # noqa: BLE001 - stopped
        pass


def make_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def transport_factory(settings: Any) -> Any:
    if settings.wa_transport == "simulator":
        from transports.simulator import SimulatorTransport

        return SimulatorTransport
    from transports.neonize_transport import NeonizeTransport

    return NeonizeTransport


class Supervision:
    """What ``run.py supervisor`` (or ``all``) runs: a top supervisor whose children are the sessions'
    supervisor ("bots", one transient child per bot), the lease keeper ("leases") and the webhook
    dispatcher ("webhooks"), started in that order and stopped in reverse, so the keeper stops
    claiming before the sessions stop."""

    def __init__(self, system: SupervisionRoot, *, owner: str | None = None, factory: Any = None,
                 listen_dsn: str | None = None, rng: random.Random | None = None) -> None:
        settings = system.settings
        self.system = system
        self.owner = owner or make_owner_id()
        self.rng = rng or random.Random()
        limiter = ConnectRateLimiter(settings.wa_connect_rate)
        self.pipeline_deps = pipeline_deps(system, self.rng)
        self.counters: dict[str, int] = {}
        self.deps = SessionDeps(
            settings=settings,
            pool=system.pool,
            owner=self.owner,
            transport_factory=factory or transport_factory(settings),
            # The limiter works on the monotonic clock; sessions schedule on wall-clock time.
            reserve_connect=lambda now: limiter.reserve(time.monotonic()) - time.monotonic() + now,
            admit_connect=lambda: limiter.admit(time.monotonic()),
            publish=system.publish,
            counters=self.counters,
            rng=self.rng,
            on_attempt=self._on_attempt,
            pipeline=self.pipeline_deps,
        )
        registry = system.metrics.registry
        self._attempts = Counter(
            "bot_connect_attempts", "Connection attempts by why the session dialled", ["reason"], registry=registry
        )
        registry.register(_SessionCollector(self))
        self.webhook_deps = WebhookDeps(
            settings=settings, pool=system.pool, owner=self.owner, publish=system.publish,
            metrics=WebhookMetrics(registry, system.pool), listen_dsn=listen_dsn, rng=self.rng,
        )
        cell: dict[str, Any] = {}

        def bots_supervisor() -> Any:
            top = cell.get("top")
            return children_of(top).ref_of("bots") if top is not None else None

        self.top_ref = Supervisor.start(
            [
                ChildSpec(
                    "bots",
                    start=lambda: Supervisor.start(
                        name="bots",
                        # Generous, because one crash-looping bot must not take every tenant's bots
                        # down; each bot's own restarts are spaced by restart_delay.
                        max_restarts=100,
                        max_seconds=10,
                        restart_delay=self._restart_delay,
                        on_event=self._on_supervisor_event,
                    ),
                    restart="permanent",
                    shutdown=math.inf,
                ),
                ChildSpec(
                    "leases",
                    start=lambda: LeaseKeeper.start(self.deps, bots_supervisor, listen_dsn),
                    restart="permanent",
                    shutdown=settings.shutdown_timeout,
                ),
                ChildSpec(
                    "webhooks",
                    start=lambda: WebhookDispatcher.start(self.webhook_deps),
                    restart="permanent",
                    shutdown=settings.shutdown_timeout,
                ),
            ],
            name="supervision",
            max_restarts=5,
            max_seconds=60,
            restart_delay=lambda name, n: TOP_RESTART.delay(n, self.rng),
            on_event=self._on_supervisor_event,
        )
        cell["top"] = self.top_ref
        self.bots_supervisor = bots_supervisor

    def session_ref(self, bot_id: str) -> Any:
        bots = self.bots_supervisor()
        return children_of(bots).ref_of(bot_id) if bots is not None else None

    def _restart_delay(self, name: str, restart_count: int) -> float:
        return BOT_RESTART.delay(restart_count, self.rng)

    def _on_attempt(self, reason: str) -> None:
        self._attempts.labels(reason).inc()

    def states(self) -> dict[str, int]:
        """Sessions by state, read from the session actors without asking them (metrics, health)."""
        counts: dict[str, int] = {}
        bots = self.bots_supervisor()
        if bots is None:
            return counts
        registry = children_of(bots)
        for name in registry.names():
            ref = registry.ref_of(name)
            if ref is not None:
                state = actor_of(ref).session.state.value
                counts[state] = counts.get(state, 0) + 1
        return counts

    def _on_supervisor_event(self, kind: str, child: str) -> None:
        self.system.metrics.actor_events.labels(kind).inc()

    def stop(self) -> None:
        """Stop claiming, stop the sessions, then give every lease back at once for other processes."""
        try:
            self.top_ref.stop(timeout=self.system.settings.shutdown_timeout)
        except Exception as exc:  # noqa: BLE001 - already stopped
            log.warning("supervision stop", extra={"error": repr(exc)})
        try:
            bots_db.leave(self.system.pool, self.owner)
        except Exception as exc:  # noqa: BLE001 - the leases and the heartbeat expire on their own
            log.warning("leaving supervision failed", extra={"error": repr(exc)})


def pipeline_deps(system: SupervisionRoot, rng: random.Random) -> PipelineDeps:
    """The parts every bot's pipeline in this process shares: one AI client (its breaker is per
    provider, so one provider's outage trips once for all bots), the media store, the metrics."""
    from core.ai import AiClient
    from core.metrics import PipelineMetrics
    from db import conversations

    settings = system.settings
    holder: dict[str, Any] = {}
    metrics = PipelineMetrics(
        system.metrics.registry,
        outbox_stats=lambda: conversations.outbox_stats(system.pool),
        breaker_state=lambda: holder["ai"].breaker_state() if holder["ai"].enabled else "closed",
        ai_idle=lambda: holder["ai"].idle_connections() if "ai" in holder else 0,
    )
    ai = AiClient(settings, observe=metrics.observe_ai, rng=rng)
    holder["ai"] = ai
    from media import MediaStore, store_from_settings

    media_store: MediaStore = getattr(system, "media_store", None) or store_from_settings(settings)
    from db.pipeline_store import PipelineStore

    # Pipelines announce every message in and out: through the root's batched notice publisher
    # (queued, written in batches, never waited on) where it has one.
    notices: Publisher = getattr(system, "notices", None) or system.publish
    return PipelineDeps(
        settings=settings, pool=system.pool, publish=notices, ai=ai, media=media_store, metrics=metrics,
        rng=rng, store=PipelineStore(system.pool, observe=metrics.observe_batch),
    )


def start(system: SupervisionRoot) -> Supervision:
    # LISTEN needs a connection of its own that stays on one server session: the direct URL when
    # the pool goes through a transaction pooler.
    listen_dsn = system.settings.database_direct_url or system.pool.config.dsn
    supervision = Supervision(system, listen_dsn=listen_dsn)
    system.add_component("supervision", supervision.stop)
    return supervision
