"""Cross-cutting parts every process uses: configuration, logs, correlation, Sentry, metrics, retries."""
