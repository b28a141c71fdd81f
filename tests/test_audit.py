"""The audit log (issue 16): who changed what, before and after, when, the request id and the address;
append-only for the application role; read by admins in the dashboard and by keys with manage."""

import datetime
import types

import psycopg2
import psycopg2.errors
import pytest

from core import quota_cli
from db import audit as audit_db
from sansio import audit as rules
from tests.dbadmin import superuser_sql


def _entries(client, **params):
    response = client.get("/audit", params=params)
    assert response.status_code == 200, response.text
    return response.json()["entries"]


# -- what a row may hold (pure) ------------------------------------------------------------------


def test_secrets_are_redacted_at_any_depth_and_url_passwords_masked():
    value = {"name": "desk", "secret": "whsec_abc", "nested": [{"apiKey": "k", "key_id": "kept"}],
             "proxy": "socks5://user:hunter2@proxy.example:1080", "password_hash": "$argon2"}
    assert rules.clean(value) == {"name": "desk", "secret": "[redacted]",
                                  "nested": [{"apiKey": "[redacted]", "key_id": "kept"}],
                                  "proxy": "socks5://user:***@proxy.example:1080", "password_hash": "[redacted]"}


def test_a_value_too_large_to_keep_is_replaced_by_a_note_of_its_size():
    kept = rules.clean({"rules": ["x" * (rules.MAX_VALUE_BYTES + 10)]})
    assert kept["omitted"] == "too large to keep in the audit log" and kept["bytes"] > rules.MAX_VALUE_BYTES


def test_an_action_must_be_object_dot_verb():
    assert rules.valid_action("bot.create") and rules.valid_action("webhook_endpoint.rotate_secret")
    assert not rules.valid_action("create") and not rules.valid_action("Bot.Create")
    with pytest.raises(ValueError, match="not an audit action"):
        audit_db.record(None, "t", audit_db.OPERATOR, "create", "bot")


# -- recording ---------------------------------------------------------------------------------------


def test_a_bot_created_with_a_key_is_recorded_with_the_key_the_request_id_and_the_address(alice):
    created = alice.post("/bots", json={"name": "Front desk"}, headers={"X-Request-ID": "req-audit-1"})
    assert created.status_code == 201
    (entry,) = _entries(alice, action="bot.create")
    assert entry["object_type"] == "bot" and entry["object_id"] == created.json()["id"]
    assert entry["actor"]["kind"] == "api_key" and entry["actor"]["label"].startswith("wbk_")
    assert entry["after"]["name"] == "Front desk"
    assert entry["request_id"] == "req-audit-1" and entry["client_address"] == "127.0.0.1"


def test_replacing_rules_records_the_rules_before_and_after(alice):
    bot = alice.post("/bots", json={"name": "desk"}).json()["id"]
    first = [{"match": "keyword", "pattern": "hours", "reply": "9 to 5"}]
    second = [{"match": "keyword", "pattern": "hours", "reply": "10 to 6"}]
    assert alice.put(f"/bots/{bot}/rules", json={"rules": first}).status_code == 200
    assert alice.put(f"/bots/{bot}/rules", json={"rules": second}).status_code == 200
    latest, earlier = _entries(alice, action="rules.update", object_id=bot)
    assert latest["before"][0]["reply"] == "9 to 5" and latest["after"][0]["reply"] == "10 to 6"
    assert earlier["after"][0]["reply"] == "9 to 5"


def test_a_refused_change_writes_nothing(alice):
    bot = alice.post("/bots", json={"name": "desk"}).json()["id"]
    refused = alice.put(f"/bots/{bot}/rules", json={"rules": [{"match": "regex", "pattern": "(a+)+", "reply": "x"}]})
    assert refused.status_code == 400
    assert _entries(alice, action="rules.update") == []


def test_a_new_key_is_recorded_without_the_key_itself(alice):
    created = alice.post("/api-keys", json={"name": "crm", "scopes": ["read"]}).json()
    (entry,) = _entries(alice, action="key.create")
    assert entry["after"] == {"name": "crm", "prefix": created["prefix"], "scopes": ["read"]}
    assert created["key"] not in str(entry)


def test_a_webhook_secret_never_reaches_the_log(alice):
    created = alice.post("/webhooks", json={"url": "https://93.184.215.14/hook"})  # public: no lookup
    assert created.status_code == 201, created.text
    rotated = alice.post(f"/webhooks/{created.json()['id']}/rotate-secret").json()
    logged = str(_entries(alice, object_type="webhook_endpoint"))
    assert created.json()["secret"] not in logged and rotated["secret"] not in logged
    assert "webhook_endpoint.rotate_secret" in logged


def test_a_dashboard_role_change_is_recorded_as_the_member_who_made_it(shop):
    response = shop.admin.post(f"/app/admin/members/{shop.viewer.user_id}/role", {"role": "agent"})
    assert response.status_code in (200, 303), response.text
    (entry,) = _entries(shop.api, action="member.role")
    assert entry["actor"] == {"kind": "member", "id": str(shop.admin.account_id), "label": shop.admin.email,
                              "name": entry["actor"]["name"]}
    assert entry["before"] == {"email": shop.viewer.email, "role": "viewer"}
    assert entry["after"] == {"email": shop.viewer.email, "role": "agent"}


def test_the_operators_quota_change_is_recorded_as_the_operator(pool, make_tenant, capsys):
    tenant_id, _key = make_tenant()
    args = types.SimpleNamespace(tenant_id=tenant_id, bots="3", messages_per_day=None, media_bytes=None)
    assert quota_cli.main(types.SimpleNamespace(pool=pool), args) == 0
    (entry,) = audit_db.entries(pool, tenant_id, audit_db.Filters(action="tenant.quota"), 10)
    assert entry["actor"]["kind"] == "operator" and entry["before"]["bots"] is None and entry["after"]["bots"] == 3


# -- append-only -------------------------------------------------------------------------------------


@pytest.fixture
def logged(alice):
    alice.post("/bots", json={"name": "desk"})
    return alice


@pytest.mark.parametrize("statement", [
    "UPDATE audit_log SET action = 'bot.delete'",
    "DELETE FROM audit_log",
    "TRUNCATE audit_log",
])
def test_the_application_role_cannot_change_or_remove_a_row(logged, pool, statement):
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        pool.execute(logged.tenant_id, statement, (), repeatable=False)
    assert len(_entries(logged, action="bot.create")) == 1


def test_rows_stay_unchanged_even_if_someone_grants_the_application_role_more(logged, pool, pg):
    superuser_sql(pg, "GRANT UPDATE, DELETE ON audit_log TO wabot_app")
    try:
        for statement in ("UPDATE audit_log SET action = 'bot.delete'", "DELETE FROM audit_log"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="append-only"):
                pool.execute(logged.tenant_id, statement, (), repeatable=False)
    finally:
        superuser_sql(pg, "REVOKE UPDATE, DELETE ON audit_log FROM wabot_app")
    assert len(_entries(logged, action="bot.create")) == 1


def test_the_application_cannot_back_date_a_row(pool, make_tenant):
    tenant_id, _key = make_tenant()
    pool.execute(tenant_id, "INSERT INTO audit_log (actor_kind, action, object_type, at)"
                            " VALUES ('operator', 'bot.create', 'bot', '2000-01-01')", (), repeatable=False)
    (at,) = pool.query(tenant_id, "SELECT at FROM audit_log")[0]
    assert at > datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)


def test_pruning_removes_only_rows_older_than_the_retention_the_owner_stored(pool, pg, make_tenant):
    tenant_id, _key = make_tenant()
    conn = psycopg2.connect(pg.owner_url)  # only the owner may give a row its time
    conn.autocommit = True
    with conn.cursor() as cur:
        for days in (400, 10):
            cur.execute("INSERT INTO audit_log (tenant_id, actor_kind, action, object_type, object_id, at)"
                        " VALUES (%s, 'operator', 'bot.create', 'bot', %s, now() - make_interval(days => %s))",
                        (tenant_id, f"{days}-days", days))
    conn.close()
    assert audit_db.prune(pool) >= 1
    kept = audit_db.entries(pool, tenant_id, audit_db.Filters(), 10)
    assert [entry["object_id"] for entry in kept] == ["10-days"]


def test_the_application_role_cannot_choose_a_shorter_retention(pool, make_tenant):
    tenant_id, _key = make_tenant()
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        pool.execute(tenant_id, "UPDATE audit_settings SET retention = interval '1 day'", (), repeatable=False)


# -- reading -----------------------------------------------------------------------------------------


def test_the_log_is_filtered_by_action_prefix_and_paged_newest_first(alice):
    for n in range(3):
        alice.post("/bots", json={"name": f"bot {n}"})
    alice.post("/api-keys", json={"name": "crm"})
    first = alice.get("/audit", params={"action": "bot.*", "limit": 2}).json()
    assert [e["after"]["name"] for e in first["entries"]] == ["bot 2", "bot 1"]
    rest = alice.get("/audit", params={"action": "bot.*", "limit": 2, "before": first["next_before"]}).json()
    assert [e["after"]["name"] for e in rest["entries"]] == ["bot 0"] and rest["next_before"] is None


def test_a_bad_filter_is_a_400_naming_the_field(alice):
    response = alice.get("/audit", params={"action": "DROP TABLE"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "action"


def test_another_tenant_reads_none_of_the_log(alice, mallory):
    alice.post("/bots", json={"name": "desk"})
    assert _entries(mallory) == []


def test_a_key_without_the_manage_scope_cannot_read_the_log(alice):
    reader = alice.post("/api-keys", json={"name": "reader", "scopes": ["read"]}).json()["key"]
    response = alice.get("/audit", headers={"Authorization": f"Bearer {reader}"})
    assert response.status_code == 403 and "manage" in response.json()["error"]["message"]


def test_admins_see_the_log_in_the_dashboard_and_agents_are_refused(shop):
    shop.api.post("/bots", json={"name": "Front desk"})
    page = shop.admin.get("/app/admin/audit")
    assert page.status_code == 200 and "bot.create" in page.text and "Front desk" in page.text
    assert shop.agent.get("/app/admin/audit").status_code == 403


def test_a_bad_time_filter_in_the_dashboard_is_shown_next_to_the_field(shop):
    page = shop.admin.get("/app/admin/audit", params={"since": "2026-12-03T10:00", "until": "2026-12-01T10:00"})
    assert page.status_code == 400 and 'role="alert"' in page.text


def test_the_application_role_cannot_read_another_tenants_rows_directly(pool, make_tenant):
    one, _ = make_tenant()
    two, _ = make_tenant()
    audit_db.record_now(pool, one, audit_db.OPERATOR, "tenant.quota", "tenant", one)
    assert pool.query(two, "SELECT count(*) FROM audit_log")[0][0] == 0
    assert pool.query(one, "SELECT count(*) FROM audit_log")[0][0] == 1
    with pytest.raises(psycopg2.Error):
        pool.execute(two, "INSERT INTO audit_log (tenant_id, actor_kind, action, object_type)"
                          " VALUES (%s, 'operator', 'bot.create', 'bot')", (one,), repeatable=False)
