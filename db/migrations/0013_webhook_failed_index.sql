-- The management side of webhooks: an endpoint's failed deliveries, counted on every read of the
-- endpoint, listed in its log and replayed by time range. Failed rows are few among the retained
-- deliveries (most are delivered), so a partial index keeps those reads off the endpoint's whole log.
CREATE INDEX webhook_deliveries_failed_idx ON webhook_deliveries (endpoint_id, created_at) WHERE state = 'failed';
