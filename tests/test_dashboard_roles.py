"""The role × route matrix: every page and action of the dashboard, for each role and signed out.

Roles are enforced on the server: a request the role does not allow gets 403 and changes nothing,
whatever the page showed; a signed-out visitor is sent to sign in (pages) or gets 401 (anything
else). A route added without a permission fails ``test_every_dashboard_route_is_in_the_matrix``.
"""

from __future__ import annotations

import hashlib
import uuid

import psycopg2
import pytest

from sansio import roles
from tests.dbadmin import superuser_sql
from tests.fakes import FakeRoot
from web.app import create_app

# (name, method, path, form data, permission). Paths use {bot}, {contact}, {media}, {outbox},
# {member}, {key}, {webhook}, {delivery}; READ pages also cover their fragments.
REQUESTS = [
    ("inbox", "GET", "/app/inbox", None, roles.READ),
    ("inbox root", "GET", "/app", None, roles.READ),
    ("inbox row", "GET", "/app/inbox/row?contact={contact}", None, roles.READ),
    ("conversation", "GET", "/app/inbox/{contact}", None, roles.READ),
    ("conversation head", "GET", "/app/inbox/{contact}/head", None, roles.READ),
    ("message fragment", "GET", "/app/inbox/{contact}/message?outbox={outbox}", None, roles.READ),
    ("media", "GET", "/app/media/{media}", None, roles.READ),
    ("send", "POST", "/app/inbox/{contact}/send", {"text": "hello from the matrix"}, roles.SEND),
    ("take over", "POST", "/app/inbox/{contact}/takeover", {}, roles.TAKE_OVER),
    ("return to bot", "POST", "/app/inbox/{contact}/release", {}, roles.TAKE_OVER),
    ("retry", "POST", "/app/outbox/{outbox}/retry", {}, roles.RETRY),
    ("retry all", "POST", "/app/outbox/retry-all", {"bot": "{bot}"}, roles.RETRY),
    ("outbox", "GET", "/app/outbox", None, roles.READ),
    ("events", "GET", "/app/events", None, roles.READ),
    ("bots", "GET", "/app/bots", None, roles.READ),
    ("bot row", "GET", "/app/bots/{bot}/row", None, roles.READ),
    ("bot", "GET", "/app/bots/{bot}", None, roles.READ),
    ("bot panel", "GET", "/app/bots/{bot}/panel", None, roles.READ),
    ("create bot", "POST", "/app/bots", {"name": "matrix bot"}, roles.MANAGE_BOTS),
    ("start", "POST", "/app/bots/{bot}/start", {}, roles.OPERATE),
    ("stop", "POST", "/app/bots/{bot}/stop", {}, roles.OPERATE),
    ("restart", "POST", "/app/bots/{bot}/restart", {}, roles.OPERATE),
    ("log out", "POST", "/app/bots/{bot}/logout", {"confirm": "yes"}, roles.MANAGE_BOTS),
    ("delete bot", "POST", "/app/bots/{bot}/delete", {"confirm": "yes"}, roles.MANAGE_BOTS),
    ("pair code", "POST", "/app/bots/{bot}/pair-code", {"phone": "12"}, roles.PAIR),
    ("rules", "GET", "/app/bots/{bot}/rules", None, roles.READ),
    ("test rules", "POST", "/app/bots/{bot}/rules", {"action": "test", "count": "0", "test_text": "hi"}, roles.READ),
    ("save rules", "POST", "/app/bots/{bot}/rules",
     {"action": "save", "count": "1", "rules-0-match": "keyword", "rules-0-pattern": "hours",
      "rules-0-reply": "9 to 5", "rules-0-enabled": "on"}, roles.CONFIGURE),
    ("edit rules", "POST", "/app/bots/{bot}/rules", {"action": "add", "count": "0"}, roles.CONFIGURE),
    ("ai settings", "GET", "/app/bots/{bot}/ai", None, roles.READ),
    ("save ai", "POST", "/app/bots/{bot}/ai", {"action": "save", "enabled": "on", "temperature": "0.5"},
     roles.CONFIGURE),
    ("try ai", "POST", "/app/bots/{bot}/ai", {"action": "try", "sample": "customer: hi"}, roles.CONFIGURE),
    ("members", "GET", "/app/admin/members", None, roles.ADMIN),
    ("invite", "POST", "/app/admin/members", {"email": "invited-{uid}@example.test", "role": "agent"}, roles.ADMIN),
    ("change role", "POST", "/app/admin/members/{member}/role", {"role": "admin"}, roles.ADMIN),
    ("remove member", "POST", "/app/admin/members/{member}/remove", {"confirm": "yes"}, roles.ADMIN),
    ("member link", "POST", "/app/admin/members/{member}/link", {}, roles.ADMIN),
    ("keys", "GET", "/app/admin/keys", None, roles.ADMIN),
    ("create key", "POST", "/app/admin/keys", {"name": "matrix"}, roles.ADMIN),
    ("revoke key", "POST", "/app/admin/keys/{key}/revoke", {"confirm": "yes"}, roles.ADMIN),
    ("audit log", "GET", "/app/admin/audit", None, roles.ADMIN),
    ("status", "GET", "/app/admin/status", None, roles.ADMIN),
    ("webhooks", "GET", "/app/webhooks", None, roles.READ),
    ("webhook", "GET", "/app/webhooks/{webhook}", None, roles.READ),
    ("add webhook", "POST", "/app/webhooks", {"url": "https://93.184.215.14/matrix"}, roles.ADMIN),
    ("save webhook", "POST", "/app/webhooks/{webhook}", {"url": "https://93.184.215.14/changed"}, roles.ADMIN),
    ("turn webhook off", "POST", "/app/webhooks/{webhook}/disable", {}, roles.ADMIN),
    ("turn webhook on", "POST", "/app/webhooks/{webhook}/enable", {}, roles.ADMIN),
    ("rotate webhook secret", "POST", "/app/webhooks/{webhook}/rotate", {"confirm": "yes"}, roles.ADMIN),
    ("test webhook", "POST", "/app/webhooks/{webhook}/test", {}, roles.ADMIN),
    ("replay delivery", "POST", "/app/webhooks/{webhook}/deliveries/{delivery}/replay", {}, roles.ADMIN),
    ("replay failed", "POST", "/app/webhooks/{webhook}/replay-failed", {}, roles.ADMIN),
    ("delete webhook", "POST", "/app/webhooks/{webhook}/delete", {"confirm": "yes"}, roles.ADMIN),
]

# Routes that need no tenant role: signing in and out, links, the tenant picker, one's own account.
PUBLIC = {"dashboard.home", "dashboard.sign_in", "dashboard.sign_out", "dashboard.sign_out_everywhere",
          "dashboard.link", "dashboard.tenants", "dashboard.switch_tenant", "dashboard.account",
          "dashboard.static"}


def _fingerprint(pg, tenant_id):
    """Everything a dashboard action could change in the tenant, hashed."""
    conn = psycopg2.connect(pg.superuser_url.replace("/postgres?", "/wabot?"))
    try:
        with conn.cursor() as cur:
            parts = []
            for sql in (
                ("SELECT id, name, desired_state, command_seq, rules::text, ai::text, pair_seq FROM bots"
                 " WHERE tenant_id = %s ORDER BY id"),
                "SELECT id, paused, paused_by, phone_hold_until FROM contacts WHERE tenant_id = %s ORDER BY id",
                "SELECT id, state, attempts FROM outbox WHERE tenant_id = %s ORDER BY id",
                "SELECT id, status FROM messages WHERE tenant_id = %s ORDER BY id",
                "SELECT id, role, account_id FROM users WHERE tenant_id = %s ORDER BY id",
                "SELECT id, revoked_at FROM api_keys WHERE tenant_id = %s ORDER BY id",
                "SELECT encode(token_hash, 'hex'), used_at FROM auth_links WHERE tenant_id = %s ORDER BY token_hash",
                ("SELECT id, url, enabled, secret, event_types::text, bot_ids::text FROM webhook_endpoints"
                 " WHERE tenant_id = %s ORDER BY id"),
                "SELECT id, state, attempts FROM webhook_deliveries WHERE tenant_id = %s ORDER BY id",
            ):
                cur.execute(sql, (tenant_id,))
                parts.append(repr(cur.fetchall()))
    finally:
        conn.close()
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@pytest.fixture
def world(web, shop, pg):
    """The shop with one of everything a route can name: a bot, a conversation with a failed send,
    a media object, a pending member and a second API key."""
    from db import accounts

    bot = shop.api.post("/bots", json={"name": "matrix"}).json()["id"]
    sent = shop.api.post(f"/bots/{bot}/messages", json={"to": "15550001111", "text": "will fail"}).json()
    superuser_sql(pg, "UPDATE outbox SET state = 'dead', last_error = 'refused' WHERE id = %s", (sent["outbox_id"],))
    superuser_sql(pg, "UPDATE messages SET status = 'failed' WHERE outbox_id = %s", (sent["outbox_id"],))
    assert superuser_sql(pg, "SELECT state FROM outbox WHERE id = %s", (sent["outbox_id"],)) == [("dead",)]
    contact = shop.api.get(f"/bots/{bot}/conversations").json()["conversations"][0]["id"]
    media = shop.api.post("/media?filename=a.png", data=b"\x89PNG\r\n\x1a\nxx",
                          headers={"Content-Type": "image/png"}).json()["id"]
    member = accounts.invite(web.pool, shop.tenant_id, f"pending-{uuid.uuid4().hex[:6]}@example.test", "viewer")
    key = shop.api.post("/api-keys", json={"name": "second"}).json()["id"]
    webhook = shop.api.post("/webhooks", json={"url": "https://93.184.215.14/hook"}).json()["id"]
    delivery = shop.api.post(f"/webhooks/{webhook}/test").json()["id"]
    return {"bot": bot, "contact": contact, "media": media, "outbox": sent["outbox_id"], "member": member, "key": key,
            "webhook": webhook, "delivery": delivery, "uid": uuid.uuid4().hex[:8]}


def _request(member, method, path, data, ids):
    path = path.format(**ids)
    data = None if data is None else {k: v.format(**ids) for k, v in data.items()}
    return member.get(path) if method == "GET" else member.post(path, data)


@pytest.mark.parametrize("role", ["admin", "agent", "viewer"])
@pytest.mark.parametrize("name, method, path, data, permission", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_each_role_may_do_what_its_permissions_allow_and_nothing_else(web, pg, shop, world, role, name, method, path,
                                                                      data, permission):
    member = getattr(shop, role)
    before = _fingerprint(pg, shop.tenant_id)
    response = _request(member, method, path, data, world)
    if roles.allows(role, permission):
        assert response.status_code not in (401, 403, 404, 500), (response.status_code, response.text[:300])
    else:
        assert response.status_code == 403, (response.status_code, response.text[:300])
        assert "Your role does not allow" in response.text
        assert _fingerprint(pg, shop.tenant_id) == before, "a refused request changed something"


@pytest.mark.parametrize("name, method, path, data, permission", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_a_signed_out_visitor_is_sent_to_sign_in_or_refused(web, pg, shop, world, name, method, path, data, permission):
    import requests

    before = _fingerprint(pg, shop.tenant_id)
    url = web.url + path.format(**world)
    if method == "GET":
        response = requests.get(url, timeout=10, allow_redirects=False)
        assert response.status_code == 302 and "/signin?next=" in response.headers["Location"]
    else:
        response = requests.post(url, data={k: v.format(**world) for k, v in (data or {}).items()},
                                 headers={"Origin": web.url}, timeout=10, allow_redirects=False)
        assert response.status_code == 401
    assert _fingerprint(pg, shop.tenant_id) == before


def test_every_dashboard_route_is_in_the_matrix(settings, pool):
    app = create_app(FakeRoot(settings, pool))
    sample = {"bot": str(uuid.uuid4()), "contact": str(uuid.uuid4()), "media": str(uuid.uuid4()),
              "outbox": str(uuid.uuid4()), "member": str(uuid.uuid4()), "key": str(uuid.uuid4()),
              "webhook": str(uuid.uuid4()), "delivery": str(uuid.uuid4()), "uid": "x"}
    adapter = app.url_map.bind("localhost")
    tried = {(adapter.match(path.format(**sample).split("?")[0], method=method)[0], method)
             for _, method, path, _, _ in REQUESTS}
    missing = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("dashboard.") or rule.endpoint in PUBLIC:
            continue
        assert getattr(app.view_functions[rule.endpoint], "permission", None), f"{rule.endpoint} names no permission"
        missing += [f"{m} {rule.rule}" for m in sorted(rule.methods - {"HEAD", "OPTIONS"})
                    if (rule.endpoint, m) not in tried]
    assert not missing, f"routes the matrix does not try: {missing}"
