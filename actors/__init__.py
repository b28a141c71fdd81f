"""Actors: the database pool, supervisors, bot sessions, the event bus and stream subscribers."""
