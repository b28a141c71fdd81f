"""A supervisor process's webhook dispatcher: claims due deliveries, posts them, records outcomes.

Every decision is pure: when to claim and record is ``sansio.webhook_dispatch.transition``, what an
answer means and when to retry is ``sansio.webhooks.decide``. This actor feeds the machine what
happens (a notification, a timer, a claim's rows, a request's answer, a record's outcome) and runs
the effects it returns. Claims, records and requests run in greenlets of their own, tracked and
killed at teardown, so the actor's mailbox keeps moving while they wait; their outcomes come back as
messages.

Where the work comes from: deliveries are rows written by triggers in the same transaction as the
fact they report (migration 0012). A ``LISTEN`` on ``wabot_webhooks`` (notified by those triggers)
wakes the dispatcher within milliseconds; a poll every second catches what a lost notification
missed, retries that came due and leases of a process that died. Several processes share the work
through the claim (per-endpoint bound and leases in the database), so none sends a delivery while
another holds it.

The clock is wall-clock time (``deps.clock``, ``time.time``): due times and leases are compared in
the database, across processes. Tests inject a fake clock and ``ManualTimers``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.pool
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from actors.base import Actor
from actors.timers import GeventTimers, TimerHandle
from core.webhook_http import Sender
from db import webhook_deliveries as wdb
from db.listen import listen_forever
from sansio import outbound_address, webhooks
from sansio import webhook_dispatch as wd
from sansio.outbound_address import AddressRefused

log = logging.getLogger(__name__)

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def lease_seconds(timeout: float) -> float:
    """How long a claim holds a delivery: the request's deadline twice over, and two seconds, so the
    outcome is recorded well before another process may take the row again."""
    return 2 * timeout + 2.0


class WebhookMetrics:
    """Deliveries by outcome, request durations, commit-to-2xx latency; queue depth and oldest age per
    endpoint and the disabled endpoints, read from the database at scrape time."""

    def __init__(self, registry: CollectorRegistry, pool: Any) -> None:
        self.outcomes = Counter("webhook_deliveries", "Webhook attempts by outcome (delivered, retry, failed, gone)",
                                ["outcome"], registry=registry)
        self.duration = Histogram("webhook_request_duration_seconds", "Duration of one webhook request",
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15), registry=registry)
        self.latency = Histogram("webhook_delivery_latency_seconds",
                                 "From the fact's commit to the receiver's 2xx (first successful attempt)",
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 5, 30, 300, 3600, 86400),
                                 registry=registry)
        registry.register(_QueueCollector(pool))

    def observe(self, outcome: str, duration_ms: float, latency: float | None) -> None:
        self.outcomes.labels(outcome).inc()
        self.duration.observe(duration_ms / 1000)
        if latency is not None:
            self.latency.observe(latency)


class _QueueCollector(Collector):
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def describe(self) -> list:
        return []

    def collect(self) -> Any:
        depth = GaugeMetricFamily("webhook_queue_deliveries", "Webhook deliveries waiting or in flight, per endpoint",
                                  labels=["endpoint", "state"])
        oldest = GaugeMetricFamily("webhook_queue_oldest_seconds",
                                   "Age of the oldest waiting or in-flight delivery, per endpoint", labels=["endpoint"])
        disabled = GaugeMetricFamily("webhook_endpoints_disabled", "Webhook endpoints the platform disabled")
        try:
            stats = wdb.queue_stats(self._pool)
            disabled.add_metric([], wdb.disabled_endpoints(self._pool))
        except Exception:  # noqa: BLE001 - a scrape during a database outage shows no queue figures
            stats = []
        ages: dict[str, float] = {}
        for endpoint, state, count, age in stats:
            depth.add_metric([endpoint, state], count)
            ages[endpoint] = max(ages.get(endpoint, 0.0), age)
        for endpoint, age in ages.items():
            oldest.add_metric([endpoint], age)
        yield depth
        yield oldest
        yield disabled


@dataclasses.dataclass
class WebhookDeps:
    settings: Any
    pool: Any
    owner: str  # this process's name in leases
    publish: Callable[[str, str | None, str, dict], Any]  # the event log (a disabled endpoint is announced)
    sender: Any = None  # core.webhook_http.Sender
    metrics: WebhookMetrics | None = None
    listen_dsn: str | None = None  # None: no LISTEN, polls only
    clock: Callable[[], float] = time.time
    timers: Any = dataclasses.field(default_factory=GeventTimers)
    rng: random.Random = dataclasses.field(default_factory=random.Random)
    dispatch: wd.Settings = dataclasses.field(default_factory=wd.Settings)

    def __post_init__(self) -> None:
        if self.sender is None:
            self.sender = Sender(timeout=self.settings.webhook_timeout,
                                 allow_private=self.settings.allow_private_addresses)


class WebhookDispatcher(Actor):
    def __init__(self, deps: WebhookDeps) -> None:
        super().__init__()
        self.deps = deps
        settings = deps.settings
        self.state = wd.State(dataclasses.replace(deps.dispatch, concurrency=settings.webhook_concurrency))
        self.lease = lease_seconds(settings.webhook_timeout)
        self._timers: dict[str, TimerHandle] = {}
        self._tasks = gevent.pool.Group()  # claims, records, requests, the listener: killed at teardown
        self._stopping = False
        self._run: dict[type, Callable[[Any], None]] = {
            wd.Claim: self._claim, wd.Post: self._post, wd.Record: self._record,
            wd.Prune: self._prune, wd.EndpointDisabled: self._disabled, wd.ScheduleTimer: self._schedule,
            wd.Log: self._log,
        }

    # -- lifecycle ---------------------------------------------------------------------------------

    def on_start(self) -> None:
        if self.deps.listen_dsn is not None:
            ref = self.actor_ref
            self._tasks.spawn(listen_forever, self.deps.listen_dsn, wdb.CHANNEL, lambda _payload: _tell(ref, wd.Wake()),
                              lambda: _tell(ref, wd.Wake()), lambda: self._stopping)
        self._apply(wd.Start())

    def on_stop(self) -> None:
        self._teardown()

    def on_failure(self, *exc_info: Any) -> None:
        self._teardown()

    def _teardown(self) -> None:
        self._stopping = True
        timers, self._timers = self._timers, {}
        for handle in timers.values():
            handle.cancel()
        self._tasks.kill(block=False)

    def on_receive(self, message: Any) -> Any:
        if type(message) in _INPUTS:
            return self._apply(message)
        return super().on_receive(message)

    def _apply(self, event: Any) -> None:
        for effect in wd.transition(self.state, self.deps.clock(), event):
            self._run[type(effect)](effect)

    def in_flight(self) -> int:
        """Requests this process has in flight (tests, health)."""
        return self.state.in_flight

    # -- effects -----------------------------------------------------------------------------------

    def _claim(self, effect: wd.Claim) -> None:
        ref, deps, lease = self.actor_ref, self.deps, self.lease

        def run() -> None:
            try:
                rows = wdb.claim(deps.pool, deps.owner, deps.clock(), lease, deps.settings.webhook_max_in_flight,
                                 effect.limit)
            except (Exception, gevent.Timeout) as exc:  # noqa: BLE001 - tried again after a pause
                _tell(ref, wd.ClaimFailed(repr(exc)))
                return
            _tell(ref, wd.Claimed(tuple(rows), effect.limit))

        self._tasks.spawn(run)

    def _post(self, effect: wd.Post) -> None:
        self._tasks.spawn(self._attempt, effect.row)

    def _attempt(self, row: wdb.Due) -> None:
        """One request and its outcome (in its own greenlet); always reports ``Posted``."""
        deps, settings = self.deps, self.deps.settings
        now = deps.clock()
        try:
            try:
                target = outbound_address.parse_url(row.url, allow_http=settings.webhooks_allow_http)
            except AddressRefused as exc:
                attempt = None
                answer = webhooks.Answer(None, f"address refused: {exc}")
            else:
                payload = webhooks.body(row.type, row.occurred_at, row.data)
                signing = webhooks.active_secrets(row.secret, row.previous_secret, row.previous_secret_until, now)
                attempt = deps.sender.post(target, payload.encode(), webhooks.headers(row.id, now, payload, signing))
                answer = attempt.answer
        except (Exception, gevent.Timeout) as exc:  # noqa: BLE001 - a bug or an odd failure: retried like one
            attempt, answer = None, webhooks.Answer(None, f"{type(exc).__name__}: {exc}")
        done = deps.clock()
        outcome = webhooks.decide(answer, row.attempts + 1, done, row.failing_since, settings.webhook_disable_after,
                                  deps.rng)
        duration = attempt.duration_ms if attempt is not None else (done - now) * 1000
        head = webhooks.response_head(attempt.head) if attempt is not None else ""
        if deps.metrics is not None:
            latency = done - row.occurred_at.timestamp() if outcome.kind == "delivered" else None
            deps.metrics.observe(outcome.kind, duration, latency)
        if outcome.kind != "delivered":
            log.info("webhook attempt failed", extra={"delivery_id": row.id, "endpoint_id": row.endpoint_id,
                                                      "attempt": row.attempts + 1, "outcome": outcome.kind,
                                                      "error": outcome.error, "status": answer.status})
        result = wdb.Result(row.id, outcome.kind, outcome.next_at, now, duration, answer.status, outcome.error, head,
                            outcome.disable_reason)
        _tell(self.actor_ref, wd.Posted(row, result))

    def _record(self, effect: wd.Record) -> None:
        ref, deps = self.actor_ref, self.deps

        def run() -> None:
            try:
                disabled = wdb.record(deps.pool, deps.owner, effect.results)
            except (Exception, gevent.Timeout) as exc:  # noqa: BLE001 - kept and tried again
                _tell(ref, wd.RecordFailed(effect.results, repr(exc)))
                return
            _tell(ref, wd.Recorded(len(effect.results), tuple(disabled)))

        self._tasks.spawn(run)

    def _prune(self, effect: wd.Prune) -> None:
        deps = self.deps

        def run() -> None:
            try:
                gone = wdb.prune(deps.pool, deps.settings.webhook_retention)
            except (Exception, gevent.Timeout) as exc:  # noqa: BLE001 - the next round prunes
                log.warning("pruning webhook deliveries failed", extra={"error": repr(exc)})
                return
            if gone:
                log.info("webhook deliveries pruned", extra={"deliveries": gone})

        self._tasks.spawn(run)

    def _disabled(self, effect: wd.EndpointDisabled) -> None:
        log.warning("webhook endpoint disabled", extra={"endpoint_id": effect.endpoint_id,
                                                        "tenant_id": effect.tenant_id, "reason": effect.reason})
        try:
            self.deps.publish(effect.tenant_id, None, "webhook.disabled",
                              {"endpoint_id": effect.endpoint_id, "reason": effect.reason})
        except Exception as exc:  # noqa: BLE001 - a notice; the endpoint row says it durably
            log.warning("webhook.disabled notice not published", extra={"error": repr(exc)})

    def _schedule(self, effect: wd.ScheduleTimer) -> None:
        name, timers, ref = effect.name, self._timers, self.actor_ref
        previous = timers.pop(name, None)
        if previous is not None:
            previous.cancel()

        def fire() -> None:
            if timers.get(name) is handle:
                del timers[name]
            _tell(ref, effect.input)

        handle = self.deps.timers.schedule(max(0.0, effect.at - self.deps.clock()), fire)
        timers[name] = handle

    def _log(self, effect: wd.Log) -> None:
        log.log(_LEVELS.get(effect.level, logging.INFO), effect.message, extra=effect.fields)


_INPUTS = frozenset({wd.Start, wd.Wake, wd.PollDue, wd.ClaimDue, wd.PruneDue, wd.Claimed, wd.ClaimFailed, wd.Posted,
                     wd.Recorded, wd.RecordFailed, wd.RecordDue})


def _tell(ref: Any, message: Any) -> None:
    try:
        ref.tell(message)
    except Exception:  # noqa: BLE001 - stopped
        pass
