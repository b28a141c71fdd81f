"""The tenant's own account: who am I, its users, and its API keys."""

from __future__ import annotations

from typing import Any

from flask import g, jsonify

from db import quotas as quotas_db
from db import tenants
from web import audit
from web import validation as v
from web.api import api_blueprint, error_responses, operation
from web.auth import system
from web.errors import ApiError, not_found
from web.schemas.common import iso
from web.schemas.tenants import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyPath,
    Tenant,
    User,
    UserCreate,
    UserList,
    UserPath,
)

blueprint = api_blueprint("tenants", __name__, "Tenant", "The tenant the key belongs to, its users and its API keys.")


@operation(blueprint, "get", "/tenant", scope="read", summary="The tenant of this key", operation_id="getTenant",
           description="With the operator's quotas (null: no limit) and the usage they count.",
           responses={200: Tenant})
def whoami() -> Any:
    pool = system().pool
    rows = pool.query(g.tenant_id, "SELECT id, name, created_at FROM tenants")
    tenant_id, name, created_at = rows[0]
    limits, usage = quotas_db.read(pool, g.tenant_id)
    return jsonify({"id": str(tenant_id), "name": name, "created_at": created_at.isoformat(),
                    "quotas": {"bots": limits.bots, "messages_per_day": limits.messages_per_day,
                               "media_bytes": limits.media_bytes},
                    "usage": {"bots": usage.bots, "messages_today": usage.messages_today,
                              "media_bytes": usage.media_bytes, "held": usage.held}})


def _user(row: Any) -> dict[str, Any]:
    return {"id": str(row[0]), "email": row[1], "display_name": row[2], "role": row[3],
            "created_at": row[4].isoformat()}


@operation(blueprint, "get", "/users", scope="read", summary="The tenant's users (dashboard members)",
           operation_id="listUsers", responses={200: UserList})
def list_users() -> Any:
    rows = system().pool.query(
        g.tenant_id, "SELECT id, email, display_name, role, created_at FROM users ORDER BY created_at, id"
    )
    return jsonify({"users": [_user(r) for r in rows]})


@operation(blueprint, "post", "/users", scope="manage", summary="Add a user", operation_id="createUser",
           description="A membership without a password: the dashboard's Members page gives the person an"
                       " invitation link.", responses={201: User, **error_responses(400, 409)})
def create_user(body: UserCreate) -> Any:
    record = audit.in_transaction("member.add", "member")

    def work(unit: Any) -> Any:
        row = unit.one(
            "INSERT INTO users (email, display_name, role) VALUES (%s, %s, %s) ON CONFLICT (tenant_id, email)"
            " DO NOTHING RETURNING id, email, display_name, role, created_at",
            (body.email, body.display_name, body.role),
        )
        if row is not None:
            record(unit, None, {"email": row[1], "role": row[3]}, object_id=row[0])
        return row

    row = system().pool.run(g.tenant_id, work, repeatable=False)
    if row is None:
        raise ApiError(409, "conflict", "a user with this email exists", field="email")
    return jsonify(_user(row)), 201


@operation(blueprint, "get", "/users/<user_id>", scope="read", summary="A user", operation_id="getUser",
           responses={200: User, **error_responses(404)})
def get_user(path: UserPath) -> Any:
    user_id = v.uuid_arg(path.user_id, "user")
    rows = system().pool.query(
        g.tenant_id, "SELECT id, email, display_name, role, created_at FROM users WHERE id = %s", (user_id,)
    )
    if not rows:
        raise not_found("user")
    return jsonify(_user(rows[0]))


@operation(blueprint, "delete", "/users/<user_id>", scope="manage", summary="Remove a user",
           description="Their dashboard sessions in this tenant end at once.", operation_id="deleteUser",
           responses={204: None, **error_responses(404)})
def delete_user(path: UserPath) -> Any:
    user_id = v.uuid_arg(path.user_id, "user")
    record = audit.in_transaction("member.remove", "member", user_id)

    def work(unit: Any) -> bool:
        row = unit.one("DELETE FROM users WHERE id = %s RETURNING email, role", (user_id,))
        if row is not None:
            record(unit, {"email": row[0], "role": row[1]}, None)
        return row is not None

    if not system().pool.run(g.tenant_id, work, repeatable=False):
        raise not_found("user")
    return "", 204


@operation(blueprint, "get", "/api-keys", scope="read", summary="The tenant's API keys (never the keys themselves)",
           operation_id="listApiKeys", responses={200: ApiKeyList})
def list_keys() -> Any:
    rows = system().pool.query(
        g.tenant_id,
        "SELECT id, name, prefix, scopes, created_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at, id",
    )
    return jsonify({"api_keys": [
        {"id": str(r[0]), "name": r[1], "prefix": r[2], "scopes": r[3], "created_at": iso(r[4]),
         "last_used_at": iso(r[5]), "revoked_at": iso(r[6])}
        for r in rows
    ]})


@operation(blueprint, "post", "/api-keys", scope="manage", summary="Create an API key, shown once",
           operation_id="createApiKey", responses={201: ApiKeyCreated, **error_responses(400)})
def create_key(body: ApiKeyCreate) -> Any:
    key_id, prefix, key = tenants.create_key(system().pool, g.tenant_id, body.name, body.scopes)
    scopes = None if body.scopes is None else sorted(set(body.scopes))
    # Never the key itself.
    audit.note("key.create", "key", key_id, after={"name": body.name, "prefix": prefix, "scopes": scopes})
    return jsonify({"id": key_id, "prefix": prefix, "key": key, "name": body.name, "scopes": scopes,
                    "note": "shown once; store it now"}), 201


@operation(blueprint, "delete", "/api-keys/<key_id>", scope="manage", summary="Revoke an API key at once",
           operation_id="revokeApiKey", responses={204: None, **error_responses(404)})
def revoke_key(path: ApiKeyPath) -> Any:
    key_id = v.uuid_arg(path.key_id, "API key")
    if not tenants.revoke_key(system().pool, g.tenant_id, key_id,
                              audit=audit.in_transaction("key.revoke", "key", key_id)):
        raise not_found("API key")
    return "", 204
