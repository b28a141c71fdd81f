"""The operator's tenant lifecycle (issue 16, point 5), through ``python run.py tenant ...`` as an
operator runs it: list; disable (keys and sessions refused with the reason, bots stopped, data kept)
and enable; export (every row and media object in a documented archive); delete (confirmed by the
tenant's name) leaving nothing of the tenant anywhere in the database or DATA_DIR."""

from __future__ import annotations

import json
import pathlib
import tarfile
import uuid

import psycopg2
import pytest

from db import bots as bots_db
from db import embedded, quotas
from sansio import quotas as q
from tests.conftest import ApiClient
from tests.test_cli import cli_env, plain_lines, run_py
from tests.test_dashboard_pages import customer_writes

MARKER = b"tenant-lifecycle-marker-" + uuid.uuid4().hex.encode()


@pytest.fixture
def env(pg, settings):
    # The CLI shares the web app's DATA_DIR (media, device stores), as on one host.
    data_dir = pathlib.Path(settings.data_dir)
    return cli_env(data_dir.parent, DATABASE_URL=pg.app_url, DATABASE_OWNER_URL=pg.owner_url,
                   DATA_DIR=str(data_dir))


class Shop:
    """A tenant with something of every kind: bots (one running), rules, a conversation, an API send,
    media, a webhook and a delivery, members (one also in another tenant), keys, audit rows, quotas,
    events and a device store."""

    def __init__(self, web, pool, make_tenant, make_member, settings, other_tenant):
        self.name = f"Shop {uuid.uuid4().hex[:8]}"
        self.tenant_id, key = make_tenant(self.name)
        self.api = ApiClient(web.url, key, self.tenant_id)
        self.bot = self.api.post("/bots", json={"name": "Front desk"}).json()["id"]
        self.idle_bot = self.api.post("/bots", json={"name": "Spare"}).json()["id"]
        bots_db.set_desired(pool, self.tenant_id, self.bot, "running")
        assert self.api.put(f"/bots/{self.bot}/rules", json={"rules": [
            {"match": "keyword", "pattern": "hours", "reply": "9 to 5"}]}).status_code == 200
        customer_writes(pool, self.tenant_id, self.bot, "What are your hours?")
        sent = self.api.post(f"/bots/{self.bot}/messages", json={"to": "4915123456789", "text": "hi"})
        assert sent.status_code == 202
        upload = self.api.post("/media", data=MARKER, headers={"Content-Type": "application/pdf"})
        assert upload.status_code == 201, upload.text
        self.media = upload.json()["id"]
        hook = self.api.post("/webhooks", json={"url": "https://93.184.215.14/hook"})
        assert hook.status_code == 201, hook.text
        self.webhook_secret = hook.json()["secret"]
        assert self.api.post(f"/webhooks/{hook.json()['id']}/test").status_code == 202
        self.new_key = self.api.post("/api-keys", json={"name": "crm"}).json()
        quotas.set_limits(pool, self.tenant_id, {q.BOTS: 10})
        self.only_here = make_member(self.tenant_id, "admin")
        self.both = make_member(self.tenant_id, "agent")
        make_member(other_tenant, "viewer", email=self.both.email, session=False)
        store = pathlib.Path(settings.data_dir) / "devices" / self.bot
        store.mkdir(parents=True)
        (store / "neonize.sqlite3").write_bytes(MARKER)
        self.ids = [self.tenant_id, self.bot, self.idle_bot, self.media]


@pytest.fixture
def shop(web, pool, make_tenant, make_member, settings):
    other, _ = make_tenant()
    return Shop(web, pool, make_tenant, make_member, settings, other), other


def _everything_in_the_database(pg) -> dict[str, list[str]]:
    """Every row of every table, as text, read as the superuser (past row-level security)."""
    conn = psycopg2.connect(pg.superuser_url.replace("/postgres?", f"/{embedded.DATABASE}?"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = [r[0] for r in cur.fetchall()]
            found = {}
            for table in tables:
                cur.execute(f'SELECT t::text FROM "{table}" t')
                found[table] = [r[0] for r in cur.fetchall()]
            return found
    finally:
        conn.close()


def test_delete_leaves_nothing_of_the_tenant_in_the_database_or_data_dir(env, shop, pg, pool, settings):
    s, other = shop
    needles = [*s.ids, s.name, s.only_here.email, s.webhook_secret, s.new_key["prefix"], MARKER.decode()]
    before = "\n".join(row for rows in _everything_in_the_database(pg).values() for row in rows)
    assert all(needle in before for needle in needles if needle != MARKER.decode())  # the scan sees them
    files = [p for p in pathlib.Path(settings.data_dir).rglob("*") if p.is_file() and MARKER in p.read_bytes()]
    assert len(files) == 2  # the media object and the device store
    result = run_py(env, "tenant", "delete", s.tenant_id, "--confirm", s.name, "--wait", "0")
    assert result.returncode == 0, result.stderr
    assert f"tenant {s.tenant_id} deleted" in result.stdout
    for table, rows in _everything_in_the_database(pg).items():
        for row in rows:
            for needle in needles:
                assert needle not in row, f"{needle!r} is still in {table}: {row[:200]}"
    for path in pathlib.Path(settings.data_dir).rglob("*"):
        assert not any(i in str(path) for i in s.ids), f"{path} is left"
        if path.is_file():
            assert MARKER not in path.read_bytes(), f"{path} still holds the tenant's media"
    # The person who is also in another tenant keeps that membership and can still sign in there.
    rows = pool.query(other, "SELECT count(*) FROM users WHERE email = %s", (s.both.email,))
    assert rows[0][0] == 1


def test_delete_without_the_tenants_name_deletes_nothing(env, shop, pool):
    s, _ = shop
    result = run_py(env, "tenant", "delete", s.tenant_id, "--confirm", "Someone else")
    assert result.returncode == 2 and "the name does not match; nothing was deleted" in plain_lines(result.stderr)
    result = run_py(env, "tenant", "delete", s.tenant_id)  # no terminal to ask on
    assert result.returncode == 2 and "--confirm" in result.stderr
    assert s.api.get("/bots").status_code == 200


def test_delete_waits_for_the_bots_to_stop_and_refuses_while_a_supervisor_holds_one(env, shop, pool):
    s, _ = shop
    pool.query(s.tenant_id, "UPDATE bots SET lease_owner = 'sup-test', lease_expires_at = now() + interval '1 hour'"
               " WHERE id = %s RETURNING id", (s.bot,), repeatable=False)
    result = run_py(env, "tenant", "delete", s.tenant_id, "--confirm", s.name, "--wait", "0.5")
    assert result.returncode == 1
    assert "still held by a supervisor" in result.stderr and "sup-test" in result.stderr
    assert pool.query(s.tenant_id, "SELECT disabled_at IS NOT NULL FROM tenants")[0][0]  # disabled, data kept
    assert len(pool.query(s.tenant_id, "SELECT id FROM bots")) == 2


def test_a_disabled_tenant_is_refused_with_the_reason_its_bots_stop_and_enable_brings_them_back(env, shop, pool):
    s, _ = shop
    result = run_py(env, "tenant", "disable", s.tenant_id)
    assert result.returncode == 0 and "1 running bot(s) stopped" in result.stdout, result.stderr
    refused = s.api.get("/bots")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "tenant_disabled"
    assert "disabled by the platform's operator" in refused.json()["error"]["message"]
    page = s.only_here.get("/app/bots")
    assert page.status_code == 403 and "disabled by the platform" in page.text
    assert pool.query(s.tenant_id, "SELECT desired_state FROM bots WHERE id = %s", (s.bot,))[0][0] == "stopped"
    assert pool.query(s.tenant_id, "SELECT count(*) FROM messages")[0][0] >= 2  # data kept
    result = run_py(env, "tenant", "enable", s.tenant_id)
    assert result.returncode == 0 and "1 bot(s) started again" in result.stdout
    assert s.api.get("/bots").status_code == 200
    assert s.only_here.get("/app/bots").status_code == 200
    desired = dict(pool.query(s.tenant_id, "SELECT id::text, desired_state FROM bots"))
    assert desired == {s.bot: "running", s.idle_bot: "stopped"}
    actions = [e["action"] for e in s.api.get("/audit", params={"action": "tenant.*"}).json()["entries"]]
    assert actions == ["tenant.enable", "tenant.disable"]


def test_list_shows_each_tenant_with_its_state(env, shop):
    s, _ = shop
    run_py(env, "tenant", "disable", s.tenant_id)
    lines = run_py(env, "tenant", "list").stdout.splitlines()
    (line,) = [line for line in lines if line.startswith(s.tenant_id)]
    assert "disabled" in line and line.endswith(s.name)


def test_export_writes_every_row_and_media_object_without_secrets(env, shop, tmp_path):
    s, _ = shop
    archive = tmp_path / "shop.tar.gz"
    result = run_py(env, "tenant", "export", s.tenant_id, str(archive))
    assert result.returncode == 0, result.stderr
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json"
        manifest = json.load(tar.extractfile("manifest.json"))
        tables = {name[len("tables/"):-len(".jsonl")]: [json.loads(line) for line in tar.extractfile(name)]
                  for name in names if name.startswith("tables/")}
        media = tar.extractfile(f"media/{s.media}").read()
    assert manifest["format"] == "wabot-tenant-export" and manifest["tenant_id"] == s.tenant_id
    assert media == MARKER and manifest["media"]["objects"] == 1
    assert {b["id"] for b in tables["bots"]} == {s.bot, s.idle_bot}
    assert tables["tenants"][0]["name"] == s.name
    assert {m["body"] for m in tables["messages"]} >= {"What are your hours?", "hi"}
    assert {u["email"] for u in tables["users"]} == {s.only_here.email, s.both.email}
    assert tables["audit_log"] and tables["webhook_deliveries"] and tables["tenant_quotas"]
    assert all(manifest["tables"][t] == len(rows) for t, rows in tables.items())
    text = archive.read_bytes()
    assert all("key_hash" not in k for k in tables["api_keys"])
    assert s.webhook_secret.encode() not in text and s.webhook_secret not in json.dumps(tables)


def test_an_unknown_tenant_is_named(env):
    result = run_py(env, "tenant", "disable", str(uuid.uuid4()))
    assert result.returncode == 1 and "no tenant" in result.stderr


def test_delete_removes_the_tenants_media_from_s3_and_from_local_disk(pool, pg, make_tenant, settings, tmp_path):
    import boto3
    from botocore.config import Config
    from moto.server import ThreadedMotoServer

    import media
    from core import config
    from db import tenant_lifecycle

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = "http://{}:{:d}".format(*server.get_host_and_port())
        bucket = f"media-{uuid.uuid4().hex[:12]}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                              aws_secret_access_key="test", config=Config(s3={"addressing_style": "path"}))
        client.create_bucket(Bucket=bucket)
        local = media.store_from_settings(settings)
        s3 = media.store_from_settings(config.replace(
            settings, media_s3_endpoint=endpoint, media_s3_bucket=bucket, media_s3_access_key_id="test",
            media_s3_secret_access_key="test", media_s3_region="us-east-1"))
        tenant_id, _ = make_tenant()
        kept, _ = make_tenant()
        media.save(pool, local, tenant_id, None, MARKER, "application/pdf")  # from before S3 was configured
        media.save(pool, s3, tenant_id, None, MARKER, "application/pdf")
        media.save(pool, s3, kept, None, b"another tenant's", "application/pdf")
        assert tenant_lifecycle.disable(pool, tenant_id) == 0
        removed = tenant_lifecycle.delete(pool, pg.owner_url, tenant_id, s3, settings.data_dir)
        assert removed["media_objects"] == 2
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert len(keys) == 1 and keys[0].startswith(kept)
        assert not (pathlib.Path(settings.data_dir) / "media" / tenant_id).exists()
    finally:
        server.stop()
