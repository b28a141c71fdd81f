"""Shared test set-up: gevent patching before anything else, cooperative psycopg2, and the fixtures
that start the embedded PostgreSQL once per test session."""

from gevent import monkey

monkey.patch_all()

from db.green import make_psycopg2_green  # noqa: E402

make_psycopg2_green()
