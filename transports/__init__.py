"""Transports: how one bot's session reaches WhatsApp (neonize) or the project's network simulator."""
