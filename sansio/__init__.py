"""Pure decisions without I/O (backoff, session state machine, disconnect and retry classification,
SSE framing), tested directly; the actors that own state and I/O call into these."""
