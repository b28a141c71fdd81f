"""The tenant's own account: who am I, its users, and its API keys."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify

from db import tenants
from web import validation as v
from web.auth import require_tenant, system
from web.errors import ApiError, not_found

blueprint = Blueprint("tenants", __name__)


@blueprint.get("/tenant")
@require_tenant
def whoami() -> Any:
    rows = system().pool.query(g.tenant_id, "SELECT id, name, created_at FROM tenants")
    tenant_id, name, created_at = rows[0]
    return jsonify({"id": str(tenant_id), "name": name, "created_at": created_at.isoformat()})


def _user(row: Any) -> dict[str, Any]:
    return {"id": str(row[0]), "email": row[1], "display_name": row[2], "role": row[3], "created_at": row[4].isoformat()}


@blueprint.get("/users")
@require_tenant
def list_users() -> Any:
    rows = system().pool.query(
        g.tenant_id, "SELECT id, email, display_name, role, created_at FROM users ORDER BY created_at, id"
    )
    return jsonify({"users": [_user(r) for r in rows]})


@blueprint.post("/users")
@require_tenant
def create_user() -> Any:
    body = v.json_body()
    email = v.email(body)
    display_name = v.text(body, "display_name", required=False, max_len=200)
    role = v.choice(body, "role", ("admin", "agent", "viewer"), "agent")
    rows = system().pool.query(
        g.tenant_id,
        "INSERT INTO users (email, display_name, role) VALUES (%s, %s, %s) ON CONFLICT (tenant_id, email) DO NOTHING"
        " RETURNING id, email, display_name, role, created_at",
        (email, display_name, role),
        repeatable=False,
    )
    if not rows:
        raise ApiError(409, "conflict", "a user with this email exists", field="email")
    return jsonify(_user(rows[0])), 201


@blueprint.get("/users/<user_id>")
@require_tenant
def get_user(user_id: str) -> Any:
    user_id = v.uuid_arg(user_id, "user")
    rows = system().pool.query(
        g.tenant_id, "SELECT id, email, display_name, role, created_at FROM users WHERE id = %s", (user_id,)
    )
    if not rows:
        raise not_found("user")
    return jsonify(_user(rows[0]))


@blueprint.delete("/users/<user_id>")
@require_tenant
def delete_user(user_id: str) -> Any:
    user_id = v.uuid_arg(user_id, "user")
    if not system().pool.execute(g.tenant_id, "DELETE FROM users WHERE id = %s", (user_id,)):
        raise not_found("user")
    return "", 204


@blueprint.get("/api-keys")
@require_tenant
def list_keys() -> Any:
    rows = system().pool.query(
        g.tenant_id,
        "SELECT id, name, prefix, created_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at, id",
    )
    return jsonify(
        {
            "api_keys": [
                {
                    "id": str(r[0]),
                    "name": r[1],
                    "prefix": r[2],
                    "created_at": r[3].isoformat(),
                    "last_used_at": r[4] and r[4].isoformat(),
                    "revoked_at": r[5] and r[5].isoformat(),
                }
                for r in rows
            ]
        }
    )


@blueprint.post("/api-keys")
@require_tenant
def create_key() -> Any:
    name = v.text(v.json_body(), "name", required=False, max_len=200)
    key_id, prefix, key = tenants.create_key(system().pool, g.tenant_id, name)
    return jsonify({"id": key_id, "prefix": prefix, "key": key, "name": name, "note": "shown once; store it now"}), 201


@blueprint.delete("/api-keys/<key_id>")
@require_tenant
def revoke_key(key_id: str) -> Any:
    key_id = v.uuid_arg(key_id, "API key")
    count = system().pool.execute(
        g.tenant_id, "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (key_id,)
    )
    if not count:
        raise not_found("API key")
    return "", 204
