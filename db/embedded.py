"""The embedded PostgreSQL: a real server from the ``pgserver`` package, used when DATABASE_URL is unset.

``start(data_dir)`` starts (or joins) the cluster in ``DATA_DIR/postgres`` and makes sure the two roles
exist: ``wabot_owner`` owns the database and runs migrations; ``wabot_app`` is the application's login
role — not superuser, not owner, not BYPASSRLS — so row-level security always applies to the app.
The server listens on a unix socket only. ``stop()`` stops it when this process started it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any
from urllib.parse import quote

import psycopg2
from psycopg2 import sql

log = logging.getLogger(__name__)

DATABASE = "wabot"
OWNER_ROLE = "wabot_owner"
APP_ROLE = "wabot_app"


@dataclasses.dataclass
class Embedded:
    server: Any
    socket_dir: str
    owner_url: str
    app_url: str
    superuser_url: str

    def stop(self) -> None:
        try:
            self.server.cleanup()
        except Exception:  # stopping is best effort at exit
            log.exception("embedded postgres did not stop cleanly")

    def restart_server(self, mode: str = "fast") -> None:
        """Stop and start the server process (tests and the soak use this for real outages)."""
        self.stop_server(mode)
        self.start_server()

    def stop_server(self, mode: str = "fast") -> None:
        """``mode``: pg_ctl's shutdown mode — ``fast`` (sessions ended, a clean checkpoint) or
        ``immediate`` (every process quits at once, as in a crash; the next start recovers from the WAL)."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import time

        pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start_server(self) -> None:
        self.server.ensure_postgres_running()


def _url(user: str, socket_dir: str, database: str) -> str:
    return f"postgresql://{user}@/{database}?host={quote(socket_dir, safe='/')}"


def start(data_dir: str) -> Embedded:
    import pgserver

    pgdata = pathlib.Path(data_dir, "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(pgdata), cleanup_mode="stop")
    superuser_url = server.get_uri()
    socket_dir = superuser_url.split("host=", 1)[1]
    _ensure_roles_and_database(superuser_url)
    return Embedded(
        server=server,
        socket_dir=socket_dir,
        owner_url=_url(OWNER_ROLE, socket_dir, DATABASE),
        app_url=_url(APP_ROLE, socket_dir, DATABASE),
        superuser_url=superuser_url,
    )


def _ensure_roles_and_database(superuser_url: str) -> None:
    conn = psycopg2.connect(superuser_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            # Serialise concurrent first starts (two processes on one fresh DATA_DIR).
            cur.execute("SELECT pg_advisory_lock(7283901)")
            for role, extra in ((OWNER_ROLE, ""), (APP_ROLE, " NOBYPASSRLS")):
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                if cur.fetchone() is None:
                    cur.execute(
                        sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE" + extra).format(
                            sql.Identifier(role)
                        )
                    )
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cur.fetchone() is None:
                cur.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(OWNER_ROLE))
                )
            cur.execute("SELECT pg_advisory_unlock(7283901)")
    finally:
        conn.close()
    # The public schema belongs to pg_database_owner in PostgreSQL 15+, so the owner can create in it;
    # the app role gets only what migrations grant it.
    conn = psycopg2.connect(superuser_url.replace("/postgres?", f"/{DATABASE}?"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    finally:
        conn.close()


def pg_bin_dir() -> str:
    import pgserver

    return os.path.join(os.path.dirname(pgserver.__file__), "pginstall", "bin")
