"""Versioned SQL migrations from ``db/migrations/NNNN_name.sql``, applied in order by the owner role.

Applied versions are recorded in ``schema_migrations`` with a checksum (an edited, already-applied file
is an error, not a silent skip). A session advisory lock serialises runners, so running twice or from
two processes at once is safe: the second waits, then finds nothing to do. After applying, the app
role is granted data rights (never ownership) on every table.
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
import re
from dataclasses import dataclass

import psycopg2
from psycopg2 import sql

log = logging.getLogger(__name__)

MIGRATIONS_DIR = pathlib.Path(__file__).with_name("migrations")
_LOCK_KEY = 7283902
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def available(directory: pathlib.Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.iterdir()):
        match = _NAME.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), path.stem, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return found


def apply(owner_url: str, app_role: str, connect_timeout: float = 10,
          audit_retention: float | None = None) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date). ``audit_retention``
    (seconds, AUDIT_RETENTION) is stored for ``prune_audit_log()``, which the app role may call but
    whose retention it cannot choose."""
    migrations = available()
    conn = psycopg2.connect(owner_url, connect_timeout=int(max(1, connect_timeout)))
    conn.autocommit = True
    applied_now: list[str] = []
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            try:
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cur.execute("SELECT version, checksum FROM schema_migrations")
                done = dict(cur.fetchall())
                for migration in migrations:
                    if migration.version in done:
                        if done[migration.version] != migration.checksum:
                            raise MigrationError(f"migration {migration.name} changed after it was applied")
                        continue
                    cur.execute("BEGIN")
                    try:
                        cur.execute(migration.text)
                        cur.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                        cur.execute("COMMIT")
                    except BaseException:
                        cur.execute("ROLLBACK")
                        raise
                    log.info("migration applied", extra={"migration": migration.name})
                    applied_now.append(migration.name)
                _grant(cur, app_role)
                if audit_retention is not None:
                    cur.execute("UPDATE audit_settings SET retention = make_interval(secs => %s)"
                                " WHERE retention <> make_interval(secs => %s)", (audit_retention, audit_retention))
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    finally:
        conn.close()
    return applied_now


def _grant(cur, app_role: str) -> None:
    role = sql.Identifier(app_role)
    for statement in (
        "GRANT USAGE ON SCHEMA public TO {}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}",
        "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}",
        "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {}",
        # The app may read which migrations ran (to refuse to start on a stale schema), never change them.
        "REVOKE INSERT, UPDATE, DELETE ON schema_migrations FROM {}",
        # Changed only through event_ids_after_restart() (migration 0015).
        "REVOKE ALL ON event_id_epoch FROM {}",
        # The audit log is append-only for the app: rows leave only through the owner (prune_audit_log(),
        # a tenant's deletion); its retention is the owner's to set (migration 0023).
        "REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM {}",
        "REVOKE ALL ON audit_settings FROM {}",
    ):
        cur.execute(sql.SQL(statement).format(role))


def pending(conn) -> list[str]:
    """Names of migrations not yet applied, read through any connection that can see the table."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not cur.fetchone()[0]:
            return [m.name for m in available()]
        cur.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in cur.fetchall()}
    return [m.name for m in available() if m.version not in done]
