"""``python run.py tenant list | disable ID | enable ID | export ID FILE | delete ID [--confirm NAME]``
(and ``quota``, in ``core.quota_cli``): the operator's tenant commands (``db.tenant_lifecycle``).

Exit 0 done, 1 unknown tenant or not possible now (bots still held by a supervisor), 2 bad input or
the name not confirmed (nothing changed). Disable, enable and delete are recorded in the tenant's
audit log as the operator (a deletion's record goes with the tenant).
"""

from __future__ import annotations

import sys
from typing import Any

from core import quota_cli
from db import audit as audit_db
from db import tenant_lifecycle as lifecycle


def main(system: Any, args: Any) -> int:
    command = args.tenant_command
    if command == "quota":
        return quota_cli.main(system, args)
    try:
        if command == "list":
            return _list(system)
        tenant_id = lifecycle.tenant_id_of(args.tenant_id)
        name = lifecycle.name_of(system.pool, tenant_id)
        if command in ("disable", "enable"):
            return _switch(system, tenant_id, command)
        if command == "export":
            return _export(system, tenant_id, args.file)
        if command == "delete":
            return _delete(system, tenant_id, name, args)
    except lifecycle.NotFound as exc:
        print(str(exc), file=sys.stderr)
        return 1 if str(exc).startswith("no tenant") else 2
    raise ValueError(f"unknown tenant command {command!r}")


def _recorder(tenant_id: str, action: str) -> Any:
    def record(unit: Any, before: Any, after: Any) -> None:
        audit_db.record(unit, tenant_id, audit_db.OPERATOR, action, "tenant", tenant_id, before, after)

    return record


def _list(system: Any) -> int:
    _app_url, owner_url = system.database_urls()
    rows = lifecycle.list_all(owner_url)
    print(f"{'id':36}  {'state':8}  {'bots':>4}  {'members':>7}  created     name")
    for row in rows:
        state = "disabled" if row["disabled_at"] else "active"
        print(f"{row['id']:36}  {state:8}  {row['bots']:>4}  {row['members']:>7}  "
              f"{row['created_at']:%Y-%m-%d}  {row['name']}")
    print(f"{len(rows)} tenant{'' if len(rows) == 1 else 's'}")
    return 0


def _switch(system: Any, tenant_id: str, command: str) -> int:
    if command == "disable":
        stopped = lifecycle.disable(system.pool, tenant_id, _recorder(tenant_id, "tenant.disable"))
        print(f"tenant {tenant_id} was already disabled" if stopped is None else
              f"tenant {tenant_id} disabled: its keys and sessions are refused, {stopped} running bot(s) stopped;"
              " its data is kept")
        return 0
    started = lifecycle.enable(system.pool, tenant_id, _recorder(tenant_id, "tenant.enable"))
    print(f"tenant {tenant_id} was not disabled" if started is None else
          f"tenant {tenant_id} enabled: {started} bot(s) started again")
    return 0


def _export(system: Any, tenant_id: str, file: str) -> int:
    app_url, _owner_url = system.database_urls()
    manifest = lifecycle.export(app_url, tenant_id, file, system.media_store)
    rows = sum(manifest["tables"].values())
    media = manifest["media"]
    print(f"tenant {tenant_id} exported to {file}: {rows} rows in {len(manifest['tables'])} tables,"
          f" {media['objects']} media objects ({media['bytes']} bytes)")
    if media["missing"]:
        print(f"{len(media['missing'])} media object(s) could not be read; the manifest names them", file=sys.stderr)
    return 0


def _delete(system: Any, tenant_id: str, name: str, args: Any) -> int:
    confirm = args.confirm
    if confirm is None:
        if not sys.stdin.isatty():
            print("refusing to delete without confirmation: pass --confirm NAME (the tenant's name)", file=sys.stderr)
            return 2
        confirm = input(f"This deletes tenant {name!r} ({tenant_id}) and everything it has: rows, media, device"
                        " stores, events, its audit log. Type its name to confirm: ")
    if confirm.strip() != name:
        print("the name does not match; nothing was deleted", file=sys.stderr)
        return 2
    lifecycle.disable(system.pool, tenant_id, _recorder(tenant_id, "tenant.disable"))
    held = lifecycle.wait_stopped(system.pool, tenant_id, float(args.wait))
    if held:
        listed = ", ".join(f"bot {bot} (supervisor {owner})" for bot, owner in held[:5])
        print(f"not deleted: {len(held)} bot(s) still held by a supervisor after {args.wait} s: {listed}."
              " The tenant stays disabled; try again once they stopped.", file=sys.stderr)
        return 1
    _app_url, owner_url = system.database_urls()
    removed = lifecycle.delete(system.pool, owner_url, tenant_id, system.media_store, system.settings.data_dir)
    print(f"tenant {tenant_id} deleted: {removed['rows']} rows, {removed['media_objects']} media objects,"
          f" {removed['device_stores']} device stores, {removed['accounts']} accounts of members in no other tenant")
    return 0
