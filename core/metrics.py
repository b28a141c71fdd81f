"""Prometheus metrics, held by one ``Metrics`` object per process (created at the actor system's
root and passed to whoever records), never in module globals.

Gauges that mirror state owned by an actor (the pool's size, in use, waiting...) are read at scrape
time by a collector, so the hot path records nothing for them.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def count_greenlets() -> int:
    from greenlet import greenlet

    # type() rather than isinstance(): isinstance on a dead weakref.proxy raises ReferenceError.
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), greenlet) and not obj.dead)


def _count_os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class _PoolCollector(Collector):
    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Any]:
        s = self._stats()
        for key, help_text in (
            ("size", "Connections the pool keeps"),
            ("in_use", "Connections borrowed right now"),
            ("idle", "Connections free right now"),
            ("waiting", "Borrowers waiting for a connection"),
            ("connecting", "Connections being opened or replaced"),
        ):
            yield GaugeMetricFamily(f"db_pool_{key}", help_text, value=s[key])
        for key, help_text in (
            ("acquired_total", "Connections borrowed"),
            ("waited_total", "Borrows that had to wait"),
            ("acquire_wait_seconds_total", "Time borrowers spent waiting"),
            ("acquire_timeouts_total", "Borrows that timed out"),
            ("replaced_total", "Connections discarded and replaced"),
            ("leaks_total", "Borrowers that held a connection past the leak threshold"),
        ):
            yield CounterMetricFamily(f"db_pool_{key.removesuffix('_total')}", help_text, value=s[key])


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "http_requests", "HTTP requests by route and status", ["route", "method", "status"], registry=r
        )
        self.http_latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.errors = Counter("errors", "Errors by type and where they happened", ["type", "where"], registry=r)
        self.actor_events = Counter(
            "supervisor_events", "Supervisor events (restarts, intensity exceeded) by kind", ["kind"], registry=r
        )
        self.events_published = Counter("events_published", "Events written to the event log", ["type"], registry=r)
        self.rate_limit_refusals = Counter(
            "rate_limit_refusals", "Requests refused by the request limits (429), by tenant ('' for sign-in) and class",
            ["tenant", "class"], registry=r)
        self.greenlets = Gauge("process_greenlets", "Live greenlets in this process", registry=r)
        self.os_threads = Gauge("process_os_threads", "OS threads in this process", registry=r)

        self._greenlets_counted_at = float("-inf")

    def refresh_process_gauges(self, every: float = 10.0) -> None:
        """OS threads each scrape; live greenlets (a walk of the whole heap, costly on a big process)
        at most every ``every`` seconds."""
        self.os_threads.set(_count_os_threads())
        now = time.monotonic()
        if now - self._greenlets_counted_at >= every:
            self._greenlets_counted_at = now
            self.greenlets.set(count_greenlets())

    def watch_pool(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.registry.register(_PoolCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class PipelineMetrics:
    """What the message pipeline records: messages in and out by bot, dead letters, AI latency and
    errors, the AI breaker's state, and the outbox's depth and age (read at scrape time)."""

    def __init__(self, registry: CollectorRegistry, outbox_stats: Callable[[], dict],
                 breaker_state: Callable[[], str], ai_idle: Callable[[], int] = lambda: 0) -> None:
        self.messages = Counter("messages", "Messages by direction and bot", ["direction", "bot"], registry=registry)
        self.dead_letters = Counter("outbox_dead_letters", "Outgoing messages that became dead letters", ["bot"],
                                    registry=registry)
        self.ai_latency = Histogram("ai_request_duration_seconds", "AI request latency by outcome", ["outcome"],
                                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=registry)
        self.ai_errors = Counter("ai_errors", "AI request failures by kind", ["kind"], registry=registry)
        self.batch_rows = Histogram("db_batch_rows", "Rows per statement of the pipeline's batched operations",
                                    ["operation"], buckets=(1, 2, 5, 10, 20, 50, 100, 200), registry=registry)
        registry.register(_PipelineCollector(outbox_stats, breaker_state, ai_idle))
        # The labelled series each call records into, looked up once: ``labels()`` validates and
        # locks on every call, and these are called several times per message.
        self._series: dict[tuple, Any] = {}

    def _one(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = metric.labels(*labels)
        return series

    def count(self, what: str, bot_id: str) -> None:
        if what == "dead":
            self._one(self.dead_letters, bot_id).inc()
        else:
            self._one(self.messages, what, bot_id).inc()

    def observe_batch(self, operation: str, rows: int) -> None:
        self._one(self.batch_rows, operation).observe(rows)

    def observe_ai(self, outcome: str, seconds: float) -> None:
        self._one(self.ai_latency, outcome).observe(seconds)
        if outcome != "ok":
            self._one(self.ai_errors, outcome).inc()


class _PipelineCollector(Collector):
    def __init__(self, outbox_stats: Callable[[], dict], breaker_state: Callable[[], str],
                 ai_idle: Callable[[], int] = lambda: 0) -> None:
        self._outbox_stats = outbox_stats
        self._breaker_state = breaker_state
        self._ai_idle = ai_idle

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[Any]:
        depth = GaugeMetricFamily("outbox_messages", "Outbox rows by state", labels=["state"])
        age = GaugeMetricFamily("outbox_oldest_seconds", "Age of the oldest outbox row by state", labels=["state"])
        try:
            stats = self._outbox_stats()
        except Exception:  # noqa: BLE001 - a scrape during a database outage shows no outbox figures
            stats = {}
        for state in ("pending", "sending", "dead", "held"):  # held: waiting for the daily message quota
            count, oldest = stats.get(state, (0, 0.0))
            depth.add_metric([state], count)
            age.add_metric([state], oldest)
        yield depth
        yield age
        breaker = GaugeMetricFamily("ai_breaker_open", "1 while the AI provider's circuit breaker is not closed",
                                    labels=["state"])
        state = self._breaker_state()
        for name in ("closed", "open", "half_open"):
            breaker.add_metric([name], 1 if state == name else 0)
        yield breaker
        yield GaugeMetricFamily("ai_connections_idle", "Kept-alive connections to the AI provider, idle (at most"
                                " AI_MAX_IN_FLIGHT)", value=self._ai_idle())
