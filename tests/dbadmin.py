"""Setting the stage in tests as the database's superuser: past row-level security, so a test can
put rows in a state no API call makes directly (a dead letter, an expired session) and read what
really is stored."""

from __future__ import annotations

from typing import Any

import psycopg2

from db import embedded


def superuser_sql(pg: Any, sql: str, params: Any = ()) -> list[tuple] | None:
    """Run one statement on the platform's database as the superuser; its rows, if any."""
    conn = psycopg2.connect(pg.superuser_url.replace("/postgres?", f"/{embedded.DATABASE}?"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()
