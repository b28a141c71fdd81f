"""A tenant's lifecycle, for the operator (``python run.py tenant list|disable|enable|export|delete``).

- **Disable** (the app role, in the tenant): the tenant's API keys and dashboard sessions are refused
  with the reason (migration 0024), its running bots are stopped (desired state, and the notice that
  reaches the supervisor holding each), and the ones that were running are remembered; its data stays.
  **Enable** undoes it and starts those bots again. Both are recorded in the tenant's audit log.
- **Export** (the app role, in the tenant, one read-only snapshot): every row of every table with a
  ``tenant_id`` (found in the catalog, so a table added later is exported too) as JSON lines, and
  every media object, in a gzip'd tar archive (``docs/operations.md``, "Tenant export"). Secrets that
  are only hashes or signing keys (API key and link hashes, webhook secrets) and the tenant's sign-in
  sessions and request-limit counters are left out; the archive says so in its manifest.
- **Delete** (the owner role, after disabling and waiting for the bots to stop): the media objects,
  the bots' device stores under ``DATA_DIR``, then in one transaction the tenant's sign-in sessions,
  the sign-in counters of its members' emails, the tenant row (every tenant table cascades from it,
  the audit log included) and the accounts of members who belong to no other tenant.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql

from db import accounts
from db.bots import NOTIFY_CHANNEL

EXPORT_FORMAT = "wabot-tenant-export"
EXPORT_VERSION = 1
# Tables with a tenant_id whose rows stay behind: sessions are sign-ins (secret tokens, hashed),
# rate limits are counters of the last few seconds.
NOT_EXPORTED = {"web_sessions": "sign-in sessions (only hashes of secret tokens)",
                "rate_limits": "request-limit counters"}
# Columns left out of the export: hashes of secrets and signing keys.
SECRET_COLUMNS = {"api_keys": ("key_hash",), "auth_links": ("token_hash",),
                  "webhook_endpoints": ("secret", "previous_secret")}

Audit = Callable[[Any, Any, Any], None]


class NotFound(LookupError):
    pass


def tenant_id_of(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise NotFound(f"not a tenant id: {raw!r}") from None


# -- list ------------------------------------------------------------------------------------------


def list_all(owner_url: str) -> list[dict[str, Any]]:
    """Every tenant, oldest first, with its bots and members counted (read as the owner)."""
    conn = psycopg2.connect(owner_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT t.id, t.name, t.created_at, t.disabled_at,"
                " (SELECT count(*) FROM bots b WHERE b.tenant_id = t.id),"
                " (SELECT count(*) FROM users u WHERE u.tenant_id = t.id)"
                " FROM tenants t ORDER BY t.created_at, t.id")
            return [{"id": str(r[0]), "name": r[1], "created_at": r[2], "disabled_at": r[3], "bots": r[4],
                     "members": r[5]} for r in cur.fetchall()]
    finally:
        conn.close()


def name_of(pool: Any, tenant_id: str) -> str:
    rows = pool.query(tenant_id, "SELECT name FROM tenants WHERE id = %s", (tenant_id,))
    if not rows:
        raise NotFound(f"no tenant {tenant_id}")
    return str(rows[0][0])


# -- disable, enable -------------------------------------------------------------------------------


def disable(pool: Any, tenant_id: str, audit: Audit | None = None) -> int | None:
    """Disable the tenant and stop its running bots; how many were stopped (None: already disabled).
    Raises NotFound."""
    tenant_id = tenant_id_of(tenant_id)

    def work(unit: Any) -> int | None:
        row = unit.one("SELECT disabled_at FROM tenants WHERE id = %s FOR UPDATE", (tenant_id,))
        if row is None:
            raise NotFound(f"no tenant {tenant_id}")
        if row[0] is not None:
            return None
        running = [r[0] for r in unit.execute(
            "UPDATE bots SET desired_state = 'stopped', updated_at = now() WHERE desired_state = 'running'"
            " RETURNING id").fetchall()]
        unit.execute("UPDATE tenants SET disabled_at = now(), disabled_bots = %s::uuid[] WHERE id = %s",
                     ([str(b) for b in running], tenant_id))
        for bot in running:
            unit.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(bot)))
        if audit is not None:
            audit(unit, {"disabled": False}, {"disabled": True, "bots_stopped": len(running)})
        return len(running)

    result: int | None = pool.run(tenant_id, work, repeatable=True)
    return result


def enable(pool: Any, tenant_id: str, audit: Audit | None = None) -> int | None:
    """Enable the tenant and start the bots that ran when it was disabled; how many (None: it was not
    disabled). Raises NotFound."""
    tenant_id = tenant_id_of(tenant_id)

    def work(unit: Any) -> int | None:
        row = unit.one("SELECT disabled_at, disabled_bots::text[] FROM tenants WHERE id = %s FOR UPDATE", (tenant_id,))
        if row is None:
            raise NotFound(f"no tenant {tenant_id}")
        if row[0] is None:
            return None
        started = [r[0] for r in unit.execute(
            "UPDATE bots SET desired_state = 'running', updated_at = now() WHERE id = ANY(%s::uuid[])"
            " RETURNING id", ([str(b) for b in row[1] or []],)).fetchall()]
        unit.execute("UPDATE tenants SET disabled_at = NULL, disabled_bots = NULL WHERE id = %s", (tenant_id,))
        for bot in started:
            unit.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(bot)))
        if audit is not None:
            audit(unit, {"disabled": True}, {"disabled": False, "bots_started": len(started)})
        return len(started)

    result: int | None = pool.run(tenant_id, work, repeatable=True)
    return result


def wait_stopped(pool: Any, tenant_id: str, timeout: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> list[tuple[str, str]]:
    """Wait until no supervisor holds a live lease on a bot of the tenant; the (bot, supervisor)
    pairs still held when ``timeout`` ran out (empty: all stopped)."""
    deadline = clock() + timeout
    while True:
        held = [(str(r[0]), str(r[1])) for r in pool.query(
            tenant_id, "SELECT id, lease_owner FROM bots WHERE lease_owner IS NOT NULL AND lease_expires_at > now()")]
        if not held or clock() >= deadline:
            return held
        sleep(0.2)


# -- export ----------------------------------------------------------------------------------------


def tenant_tables(cur: Any) -> list[str]:
    """Every table of the schema with a ``tenant_id`` column, by name."""
    cur.execute(
        "SELECT c.table_name FROM information_schema.columns c"
        " JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
        " WHERE c.table_schema = 'public' AND c.column_name = 'tenant_id' AND t.table_type = 'BASE TABLE'"
        " ORDER BY c.table_name")
    return [r[0] for r in cur.fetchall()]


def export(app_url: str, tenant_id: str, path: str | os.PathLike[str], store: Any) -> dict[str, Any]:
    """Write the tenant's archive to ``path`` (replaced only once complete); its manifest."""
    tenant_id = tenant_id_of(tenant_id)
    target = Path(path)
    conn = psycopg2.connect(app_url)
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)  # one snapshot of every table
        with tempfile.TemporaryDirectory(dir=target.parent if str(target.parent) else None) as work:
            manifest = _export_into(conn, tenant_id, Path(work), store)
            partial = target.with_name(target.name + ".partial")
            with tarfile.open(partial, "w:gz") as tar:
                data = json.dumps(manifest, indent=2, default=str).encode()
                info = tarfile.TarInfo("manifest.json")
                info.size, info.mtime = len(data), int(time.time())
                tar.addfile(info, _Bytes(data))
                for name in sorted(os.listdir(Path(work) / "tables")):
                    tar.add(Path(work) / "tables" / name, arcname=f"tables/{name}")
                media_dir = Path(work) / "media"
                for name in sorted(os.listdir(media_dir)):
                    tar.add(media_dir / name, arcname=f"media/{name}")
            os.replace(partial, target)
    finally:
        conn.close()
    return manifest


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.at + size
        chunk, self.at = self.data[self.at:end], min(end, len(self.data))
        return chunk


def _export_into(conn: Any, tenant_id: str, work: Path, store: Any) -> dict[str, Any]:
    (work / "tables").mkdir()
    (work / "media").mkdir()
    tables: dict[str, int] = {}
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('app.current_tenant', %s, true)", (tenant_id,))
        cur.execute("SELECT to_jsonb(t)::text FROM tenants t WHERE id = %s", (tenant_id,))
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"no tenant {tenant_id}")
        (work / "tables" / "tenants.jsonl").write_text(row[0] + "\n")
        tables["tenants"] = 1
        names = [t for t in tenant_tables(cur) if t not in NOT_EXPORTED]
    for table in names:
        tables[table] = _export_table(conn, tenant_id, table, work / "tables" / f"{table}.jsonl")
    media: dict[str, Any] = {"objects": 0, "bytes": 0, "missing": []}
    with conn.cursor() as cur:
        cur.execute("SELECT id, backend, object_key FROM media WHERE tenant_id = %s ORDER BY created_at, id",
                    (tenant_id,))
        rows = cur.fetchall()
    for media_id, backend, key in rows:
        try:
            reader = store.open(backend, key)
        except Exception as exc:  # noqa: BLE001 - named in the manifest; the rest is still exported
            media["missing"].append({"id": str(media_id), "error": str(exc)})
            continue
        try:
            with open(work / "media" / str(media_id), "wb") as out:
                for chunk in reader:
                    out.write(chunk)
                    media["bytes"] += len(chunk)
        finally:
            reader.close()
        media["objects"] += 1
    conn.rollback()  # read-only: nothing to keep
    return {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "tenant_id": tenant_id,
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "tables": tables, "media": media,
        "left_out": {"tables": NOT_EXPORTED, "columns": {t: list(c) for t, c in SECRET_COLUMNS.items()}},
    }


def _export_table(conn: Any, tenant_id: str, table: str, out_path: Path) -> int:
    count = 0
    drop = list(SECRET_COLUMNS.get(table, ()))
    # A server-side cursor: a large table streams, never sits in memory whole.
    with conn.cursor(name=f"export_{table}") as cur, open(out_path, "w") as out:
        cur.itersize = 2000
        cur.execute(sql.SQL("SELECT (to_jsonb(t) - %s::text[])::text FROM {} t WHERE t.tenant_id = %s").format(
            sql.Identifier(table)), (drop, tenant_id))
        for (line,) in cur:
            out.write(line + "\n")
            count += 1
    return count


# -- delete ----------------------------------------------------------------------------------------


def delete(pool: Any, owner_url: str, tenant_id: str, store: Any, data_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Remove everything of a disabled tenant whose bots have stopped: media objects, device stores,
    rows. What was removed, counted."""
    from transports.neonize_transport import device_store_path

    tenant_id = tenant_id_of(tenant_id)
    bots = [str(r[0]) for r in pool.query(tenant_id, "SELECT id FROM bots")]
    objects = pool.query(tenant_id, "SELECT backend, object_key FROM media")
    removed = {"media_objects": 0, "device_stores": 0, "rows": 0, "accounts": 0}
    for backend, key in objects:
        try:
            store.delete(backend, key)
        except Exception:  # noqa: BLE001 - gone already, or a backend no longer configured: rows go anyway
            continue
        removed["media_objects"] += 1
    local_media = Path(data_dir).expanduser().absolute() / "media" / tenant_id
    shutil.rmtree(local_media, ignore_errors=True)  # keys are <tenant>/<yyyy>/<mm>/<id>: empty directories
    for bot in bots:
        store_dir = device_store_path(str(data_dir), bot).parent
        if store_dir.exists():
            shutil.rmtree(store_dir)
            removed["device_stores"] += 1
    conn = psycopg2.connect(owner_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT set_config('app.current_tenant', %s, true)", (tenant_id,))
            cur.execute("SELECT account_id, email FROM users WHERE tenant_id = %s", (tenant_id,))
            members = cur.fetchall()
            account_ids = [str(a) for a, _ in members if a is not None]
            keys = [f"email:{accounts.token_hash(email.strip().lower()).hex()}" for _, email in members]
            cur.execute("DELETE FROM web_sessions WHERE tenant_id = %s", (tenant_id,))
            cur.execute("DELETE FROM sign_in_failures WHERE key = ANY(%s)", (keys,))
            cur.execute("DELETE FROM sign_in_limits WHERE key = ANY(%s)", (keys,))
            for table in tenant_tables(cur):
                cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(sql.Identifier(table)),
                            (tenant_id,))
                (count,) = cur.fetchone() or (0,)
                removed["rows"] += int(count)
            cur.execute("DELETE FROM tenants WHERE id = %s", (tenant_id,))  # every tenant table cascades
            removed["rows"] += cur.rowcount
            cur.execute("DELETE FROM accounts a WHERE a.id = ANY(%s::uuid[])"
                        " AND NOT EXISTS (SELECT 1 FROM users u WHERE u.account_id = a.id)", (account_ids,))
            removed["accounts"] = cur.rowcount
    finally:
        conn.close()
    return removed
