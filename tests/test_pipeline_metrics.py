"""``core.metrics.PipelineMetrics``: what the message pipeline records, read back the way a scrape
reads it (prometheus_client's own parser over the exposition text)."""

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.metrics import PipelineMetrics


def _samples(registry):
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _metrics(outbox=None, breaker="closed"):
    registry = CollectorRegistry()
    return registry, PipelineMetrics(registry, lambda: outbox or {}, lambda: breaker)


def test_messages_are_counted_by_direction_and_bot_and_dead_letters_by_bot():
    registry, metrics = _metrics()
    for what, bot in (("in", "a"), ("in", "a"), ("out", "a"), ("in", "b"), ("dead", "a")):
        metrics.count(what, bot)
    samples = _samples(registry)
    assert samples[("messages_total", (("bot", "a"), ("direction", "in")))] == 2
    assert samples[("messages_total", (("bot", "a"), ("direction", "out")))] == 1
    assert samples[("messages_total", (("bot", "b"), ("direction", "in")))] == 1
    assert samples[("outbox_dead_letters_total", (("bot", "a"),))] == 1


def test_ai_latency_is_observed_by_outcome_and_failures_are_counted_by_kind():
    registry, metrics = _metrics()
    metrics.observe_ai("ok", 0.2)
    metrics.observe_ai("ok", 0.3)
    metrics.observe_ai("timeout", 10.0)
    samples = _samples(registry)
    assert samples[("ai_request_duration_seconds_count", (("outcome", "ok"),))] == 2
    assert abs(samples[("ai_request_duration_seconds_sum", (("outcome", "ok"),))] - 0.5) < 1e-9
    assert samples[("ai_errors_total", (("kind", "timeout"),))] == 1
    assert ("ai_errors_total", (("kind", "ok"),)) not in samples


def test_rows_per_batched_statement_are_observed_by_operation():
    registry, metrics = _metrics()
    metrics.observe_batch("store_inbound", 1)
    metrics.observe_batch("store_inbound", 12)
    samples = _samples(registry)
    assert samples[("db_batch_rows_count", (("operation", "store_inbound"),))] == 2
    assert samples[("db_batch_rows_bucket", (("le", "10.0"), ("operation", "store_inbound")))] == 1


def test_a_scrape_reads_outbox_depth_and_age_and_the_breaker_state_at_that_moment():
    registry, _ = _metrics(outbox={"pending": (3, 12.5), "dead": (1, 600.0), "held": (2, 30.0)}, breaker="open")
    samples = _samples(registry)
    assert samples[("outbox_messages", (("state", "held"),))] == 2  # answers waiting for the daily quota
    assert samples[("outbox_messages", (("state", "pending"),))] == 3
    assert samples[("outbox_messages", (("state", "sending"),))] == 0
    assert samples[("outbox_oldest_seconds", (("state", "dead"),))] == 600.0
    assert samples[("ai_breaker_open", (("state", "open"),))] == 1
    assert samples[("ai_breaker_open", (("state", "closed"),))] == 0


def test_a_scrape_during_a_database_outage_shows_no_outbox_figures_and_still_answers():
    registry = CollectorRegistry()

    def down():
        raise ConnectionError("database away")

    PipelineMetrics(registry, down, lambda: "closed")
    samples = _samples(registry)
    assert samples[("outbox_messages", (("state", "pending"),))] == 0
    assert samples[("ai_breaker_open", (("state", "closed"),))] == 1


def test_the_ai_clients_idle_kept_alive_connections_are_a_gauge_read_at_scrape_time():
    registry = CollectorRegistry()
    idle = [0]
    PipelineMetrics(registry, dict, lambda: "closed", ai_idle=lambda: idle[0])
    assert _samples(registry)[("ai_connections_idle", ())] == 0
    idle[0] = 3
    assert _samples(registry)[("ai_connections_idle", ())] == 3
