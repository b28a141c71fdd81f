"""A WhatsApp network simulator for tests and demos (not a production component)."""
