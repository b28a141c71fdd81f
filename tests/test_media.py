"""Media: the local and S3 stores (S3 against moto running as a real server on 127.0.0.1, reached
through a small HTTP front that can inject faults), their records in the database, and upload and
download through the API, with tenant isolation and the size limit."""

import hashlib
import http.client
import os
import re
import socket
import uuid

import boto3
import botocore.exceptions
import gevent
import psycopg2
import pytest
import requests
from botocore.config import Config
from gevent.pywsgi import WSGIServer
from moto.server import ThreadedMotoServer

import media
from core import config
from db import media as media_db
from media import names
from media.s3 import S3Store
from media.store import LocalStore, store_from_settings

MiB = 1024 * 1024
CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
KEY_SHAPE = re.compile(r"^[0-9a-f-]{36}/[0-9]{4}/[0-9]{2}/[0-9a-f]{32}$")


def _tenant():
    return str(uuid.uuid4())


def _files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# -- local store -------------------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path):
    return store_from_settings(config.load({"DATA_DIR": str(tmp_path), "MEDIA_MAX_BYTES": "1000"}))


def test_the_local_store_gives_back_the_bytes_it_kept_with_their_sha256(local, tmp_path):
    tenant = _tenant()
    data = os.urandom(700)
    stored = local.put(tenant, data, "image/png", "cat.png")
    assert stored.backend == "local"
    assert stored.size == 700
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert KEY_SHAPE.match(stored.key) and stored.key.startswith(tenant + "/")
    assert local.get("local", stored.key) == data
    assert b"".join(local.open("local", stored.key)) == data
    assert _files_under(tmp_path / "media") == [stored.key]  # no temp file left in .partial


def test_a_local_put_from_a_stream_over_the_limit_keeps_nothing(local, tmp_path):
    with open(tmp_path / "big", "wb") as f:
        f.write(b"x" * 1001)
    with open(tmp_path / "big", "rb") as stream, pytest.raises(media.MediaTooLarge, match="1000 bytes"):
        local.put(_tenant(), stream, "video/mp4")
    assert _files_under(tmp_path / "media") == []


def test_a_local_key_not_of_the_stores_making_is_refused(local, tmp_path):
    (tmp_path / "secret").write_bytes(b"secret")
    with pytest.raises(ValueError, match="not a media key"):
        local.get("local", "../secret")


def test_a_deleted_local_object_is_missing(local):
    stored = local.put(_tenant(), b"bytes", "text/plain")
    local.delete("local", stored.key)
    with pytest.raises(media.ObjectMissing):
        local.get("local", stored.key)


def test_a_partial_file_left_by_a_crash_is_removed_when_a_store_opens(tmp_path):
    partial = tmp_path / "media" / ".partial"
    partial.mkdir(parents=True)
    (partial / "old.tmp").write_bytes(b"half")
    os.utime(partial / "old.tmp", (0, 0))
    (partial / "fresh.tmp").write_bytes(b"another process is writing this")
    LocalStore(tmp_path / "media", 1000)
    assert sorted(os.listdir(partial)) == ["fresh.tmp"]


# -- S3 store against moto ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield server.get_host_and_port()
    server.stop()


@pytest.fixture
def bucket(moto):
    name = f"media-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url="http://{}:{:d}".format(*moto), region_name="us-east-1", **CREDENTIALS,
                          config=Config(s3={"addressing_style": "path"}))
    client.create_bucket(Bucket=name)
    return name, client


class Front:
    """A real HTTP server in front of moto: answers the next requests with the injected S3 errors,
    then forwards to moto. Records every request it gets."""

    def __init__(self, upstream, port=0):
        self.upstream = upstream
        self.faults = []  # (status, code), answered in order before anything is forwarded
        self.seen = []
        self.server = WSGIServer(("127.0.0.1", port), self.app, log=None, error_log=None)

    def start(self):
        self.server.start()
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_port}"

    def app(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        method = environ["REQUEST_METHOD"]
        path = environ["PATH_INFO"] + ("?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else "")
        self.seen.append((method, environ["PATH_INFO"]))
        if self.faults:
            status, code = self.faults.pop(0)
            xml = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
            headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(xml)))]
            start_response(f"{status} Injected", headers)
            return [xml]
        headers = {k[5:].replace("_", "-"): v for k, v in environ.items()
                   if k.startswith("HTTP_") and k not in ("HTTP_EXPECT", "HTTP_CONNECTION")}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.upstream, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        passed = [(k, v) for k, v in response.getheaders() if k.lower() not in ("transfer-encoding", "connection")]
        start_response(f"{response.status} {response.reason}", passed)
        return [data]

    def stop(self):
        self.server.stop(timeout=1)


@pytest.fixture
def front(moto):
    server = Front(moto).start()
    yield server
    server.stop()


def _s3(endpoint, bucket_name, max_bytes=MiB, **options):
    options = {"attempts": 4, "initial_backoff": 0.01, "max_backoff": 0.05, "deadline": 10.0, **options}
    return S3Store(endpoint=endpoint, bucket=bucket_name, region="us-east-1", max_bytes=max_bytes,
                   access_key_id="test", secret_access_key="test", **options)


def test_the_s3_store_gives_back_the_bytes_it_kept(moto, bucket):
    name, client = bucket
    store = _s3("http://{}:{:d}".format(*moto), name)
    data = os.urandom(300 * 1024)
    stored = store.put(_tenant(), data, "application/pdf", "invoice.pdf")
    assert (stored.backend, stored.size, stored.sha256) == ("s3", len(data), hashlib.sha256(data).hexdigest())
    assert store.get(stored.key) == data
    assert store.open(stored.key).read_all() == data
    head = client.head_object(Bucket=name, Key=stored.key)
    assert head["ContentType"] == "application/pdf"
    assert head["Metadata"] == {"sha256": stored.sha256}


def test_an_s3_put_is_retried_through_503_slow_downs(front, bucket):
    name, _ = bucket
    store = _s3(front.url, name)
    front.faults = [(503, "SlowDown"), (503, "SlowDown")]
    stored = store.put(_tenant(), b"photo bytes", "image/jpeg")
    assert [m for m, _ in front.seen] == ["PUT", "PUT", "PUT"]
    assert store.get(stored.key) == b"photo bytes"


def test_an_s3_store_that_stays_unavailable_through_the_retries_says_so(front, bucket):
    store = _s3(front.url, bucket[0], attempts=3)
    front.faults = [(500, "InternalError")] * 3
    with pytest.raises(media.StorageUnavailable):
        store.put(_tenant(), b"photo bytes", "image/jpeg")
    assert len(front.seen) == 3


def test_an_s3_client_error_is_not_retried(front, bucket):
    store = _s3(front.url, bucket[0])
    front.faults = [(403, "AccessDenied")]
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        store.put(_tenant(), b"photo bytes", "image/jpeg")
    assert len(front.seen) == 1


def test_a_missing_s3_object_is_reported_without_retrying(front, bucket):
    store = _s3(front.url, bucket[0])
    key = f"{_tenant()}/2024/01/{uuid.uuid4().hex}"
    with pytest.raises(media.ObjectMissing):
        store.get(key)
    assert front.seen == [("GET", f"/{bucket[0]}/{key}")]


def test_an_s3_endpoint_that_comes_up_during_the_retries_is_reached(moto, bucket):
    with socket.socket() as probe:  # a port nothing listens on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = _s3(f"http://127.0.0.1:{port}", bucket[0], attempts=30, initial_backoff=0.02, max_backoff=0.1)
    front = Front(moto, port)
    later = gevent.spawn_later(0.3, front.start)
    try:
        stored = store.put(_tenant(), b"voice note", "audio/ogg")
        assert store.get(stored.key) == b"voice note"
    finally:
        later.kill()
        front.stop()


def test_with_an_endpoint_set_new_media_go_to_s3_and_local_media_stay_readable(moto, bucket, tmp_path):
    base = {"DATA_DIR": str(tmp_path)}
    kept_locally = store_from_settings(config.load(base)).put(_tenant(), b"old", "text/plain")
    s3_env = {**base, "MEDIA_S3_ENDPOINT": "http://{}:{:d}".format(*moto), "MEDIA_S3_BUCKET": bucket[0],
              "MEDIA_S3_ACCESS_KEY_ID": "test", "MEDIA_S3_SECRET_ACCESS_KEY": "test", "MEDIA_S3_REGION": "us-east-1"}
    store = store_from_settings(config.load(s3_env))
    assert store.put(_tenant(), b"new", "text/plain").backend == "s3"
    assert store.get("local", kept_locally.key) == b"old"


def test_an_s3_endpoint_without_a_bucket_is_a_configuration_error(tmp_path):
    with pytest.raises(config.ConfigError, match="MEDIA_S3_BUCKET"):
        store_from_settings(config.load({"DATA_DIR": str(tmp_path), "MEDIA_S3_ENDPOINT": "http://127.0.0.1:9"}))


# -- records -----------------------------------------------------------------------------------------


def test_a_media_record_is_visible_only_to_its_tenant(pool, make_tenant, local):
    owner, _ = make_tenant()
    other, _ = make_tenant()
    stored = local.put(owner, b"bytes", "image/webp")
    media_id = media_db.record(pool, owner, None, stored, "image/webp", "sticker.webp")
    row = media_db.get(pool, owner, media_id)
    assert row["backend"] == "local" and row["object_key"] == stored.key
    assert (row["mime_type"], row["size_bytes"], row["sha256"], row["filename"]) == (
        "image/webp", 5, stored.sha256, "sticker.webp")
    assert media_db.get(pool, other, media_id) is None


def test_saving_removes_the_object_again_when_it_cannot_be_recorded(pool, make_tenant, local, tmp_path):
    tenant, _ = make_tenant()
    with pytest.raises(psycopg2.IntegrityError):  # no such bot
        media.save(pool, local, tenant, str(uuid.uuid4()), b"bytes", "image/png")
    assert _files_under(tmp_path / "media") == []


# -- the API -----------------------------------------------------------------------------------------


@pytest.fixture
def settings(settings):
    """Uploads above HTTP_MAX_BODY but within MEDIA_MAX_BYTES, to show the upload route's own limit."""
    return config.replace(settings, http_max_body=1024, media_max_bytes=64 * 1024)


class Client:
    def __init__(self, base, key):
        self.base = base + "/api/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"

    def request(self, method, path, **kwargs):
        kwargs.setdefault("timeout", 10)
        return self.session.request(method, self.base + path, **kwargs)


@pytest.fixture
def alice(web, make_tenant):
    return Client(web.url, make_tenant()[1])


@pytest.fixture
def mallory(web, make_tenant):
    return Client(web.url, make_tenant()[1])


def _upload(client, data, content_type="image/png", **params):
    response = client.request("POST", "/media", data=data, headers={"Content-Type": content_type}, params=params)
    assert response.status_code == 201, response.text
    return response.json()


def _error(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == code


def test_an_uploaded_file_is_served_back_to_its_owner(alice):
    data = os.urandom(10 * 1024)  # over HTTP_MAX_BODY (1 KiB): the upload route has its own limit
    created = _upload(alice, data, "image/png", filename="cat.png")
    assert created["mime_type"] == "image/png"
    assert created["size_bytes"] == len(data)
    assert created["sha256"] == hashlib.sha256(data).hexdigest()
    got = alice.request("GET", f"/media/{created['id']}")
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["Content-Type"] == "image/png"
    assert got.headers["Content-Length"] == str(len(data))
    assert got.headers["Content-Disposition"] == 'inline; filename="cat.png"'
    assert got.headers["X-Content-Type-Options"] == "nosniff"


def test_a_multipart_upload_keeps_the_parts_type_and_file_name(alice):
    files = {"file": ("Rechnung März.pdf", b"%PDF-1.4 ...", "application/pdf")}
    created = alice.request("POST", "/media", files=files).json()
    assert (created["mime_type"], created["filename"]) == ("application/pdf", "Rechnung März.pdf")
    got = alice.request("GET", f"/media/{created['id']}")
    assert got.content == b"%PDF-1.4 ..."
    assert got.headers["Content-Disposition"] == (
        "inline; filename=\"Rechnung Marz.pdf\"; filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf")


def test_another_tenants_media_is_not_found(alice, mallory):
    created = _upload(alice, b"private photo")
    _error(mallory.request("GET", f"/media/{created['id']}"), 404, "not_found")


def test_a_media_id_that_is_not_a_uuid_is_not_found(alice):
    _error(alice.request("GET", "/media/not-a-uuid"), 404, "not_found")


def test_an_upload_over_MEDIA_MAX_BYTES_gets_a_json_413(alice):
    _error(alice.request("POST", "/media", data=b"x" * (64 * 1024 + 1)), 413, "payload_too_large")


def test_a_chunked_upload_over_MEDIA_MAX_BYTES_gets_a_json_413_and_keeps_nothing(alice, settings):
    def chunks():  # no Content-Length: the app reads it (up to the upload route's limit) to find one
        for _ in range(10):
            yield b"x" * 10 * 1024

    _error(alice.request("POST", "/media", data=chunks()), 413, "payload_too_large")
    assert _files_under(os.path.join(settings.data_dir, "media")) == []


def test_a_multipart_file_over_MEDIA_MAX_BYTES_gets_a_json_413_and_keeps_nothing(alice, settings):
    # The body fits the upload route's limit (file plus framing); the store finds the file too large.
    files = {"file": ("big.bin", b"x" * (64 * 1024 + 1), "application/octet-stream")}
    _error(alice.request("POST", "/media", files=files), 413, "payload_too_large")
    assert _files_under(os.path.join(settings.data_dir, "media")) == []


def test_other_routes_keep_the_HTTP_MAX_BODY_limit(alice):
    _error(alice.request("POST", "/bots", json={"name": "x" * 2048}), 413, "payload_too_large")


def test_an_empty_upload_is_refused(alice):
    _error(alice.request("POST", "/media", data=b""), 400, "invalid_input")


def test_an_upload_needs_an_api_key(web):
    _error(requests.post(web.url + "/api/v1/media", data=b"x", timeout=10), 401, "unauthorized")


# -- names -------------------------------------------------------------------------------------------


def test_a_hostile_file_name_becomes_a_harmless_display_name():
    assert names.clean_filename('../../etc/pass"wd\r\nX-Evil: 1') == 'pass"wdX-Evil: 1'
    assert names.content_disposition('../a"b\r\n.txt', "media-1") == (
        "inline; filename=\"a_b.txt\"; filename*=UTF-8''a%22b.txt")


def test_a_content_type_that_is_not_a_mime_type_is_refused(alice):
    _error(alice.request("POST", "/media", data=b"x", headers={"Content-Type": "image/png\x7f"}), 400, "invalid_input")


# -- the storage quota (issue 16) ----------------------------------------------------------------------


def _media_quota(pool, tenant, limit):
    from db import quotas
    from sansio import quotas as q

    quotas.set_limits(pool, tenant, {q.MEDIA_BYTES: limit})


def _stored_bytes(pool, tenant):
    from db import quotas

    return quotas.read(pool, tenant)[1].media_bytes


def test_an_upload_exactly_at_the_media_quota_is_kept_and_one_byte_past_it_gets_403_and_keeps_nothing(
        web, make_tenant, settings):
    tenant, key = make_tenant()
    client = Client(web.url, key)
    _media_quota(web.pool, tenant, 1000)
    _upload(client, b"a" * 600)
    _upload(client, b"b" * 400)  # 1000 of 1000: exactly at the limit
    files_before = _files_under(os.path.join(settings.data_dir, "media"))
    refused = client.request("POST", "/media", data=b"c")  # a raw body: refused before it is stored
    _error(refused, 403, "quota_exceeded")
    assert "this upload of 1 bytes would take the tenant's media past its quota of 1,000 bytes (1,000 stored)" in (
        refused.json()["error"]["message"])
    # multipart: the file's length is known only once stored; refused when recorded, the object deleted again
    _error(client.request("POST", "/media", files={"file": ("c.bin", b"c", "application/octet-stream")}),
           403, "quota_exceeded")
    assert _files_under(os.path.join(settings.data_dir, "media")) == files_before
    assert _stored_bytes(web.pool, tenant) == 1000


def test_a_multipart_upload_one_byte_past_the_media_quota_is_refused_and_its_object_removed(web, make_tenant, settings):
    tenant, key = make_tenant()
    client = Client(web.url, key)
    _media_quota(web.pool, tenant, 100)
    _error(client.request("POST", "/media", files={"file": ("a.bin", b"a" * 101, "application/octet-stream")}),
           403, "quota_exceeded")
    assert _files_under(os.path.join(settings.data_dir, "media")) == []
    assert client.request("POST", "/media", files={"file": ("a.bin", b"a" * 100, "application/octet-stream")}
                          ).status_code == 201


def test_two_uploads_at_the_edge_of_the_media_quota_keep_one(pool, make_tenant, local, tmp_path):
    from db import quotas

    tenant, _ = make_tenant()
    _media_quota(pool, tenant, 150)

    def save(data):
        try:
            return media.save(pool, local, tenant, None, data, "image/png", check_quota=True)
        except quotas.QuotaExceeded as exc:
            return exc

    both = gevent.joinall([gevent.spawn(save, b"a" * 100), gevent.spawn(save, b"b" * 100)], raise_error=True)
    results = [g.get() for g in both]
    assert sorted(type(r).__name__ for r in results) == ["QuotaExceeded", "tuple"]
    assert _stored_bytes(pool, tenant) == 100
    assert len(_files_under(tmp_path / "media")) == 1  # the refused one's object was deleted again


def test_media_customers_send_are_kept_past_the_quota_and_counted(pool, make_tenant, local):
    tenant, _ = make_tenant()
    _media_quota(pool, tenant, 10)
    media.save(pool, local, tenant, None, b"x" * 20, "image/jpeg")  # the pipeline's save: no check
    assert _stored_bytes(pool, tenant) == 20


def test_an_upload_refused_by_the_media_quota_leaves_no_object_in_s3(pool, make_tenant, moto, bucket):
    from db import quotas

    tenant, _ = make_tenant()
    _media_quota(pool, tenant, 10)
    name, client = bucket
    store = media.MediaStore(_s3("http://{}:{:d}".format(*moto), name))
    with pytest.raises(quotas.QuotaExceeded):
        media.save(pool, store, tenant, None, b"x" * 11, "image/png", check_quota=True)
    assert client.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0
    media_id, stored = media.save(pool, store, tenant, None, b"x" * 10, "image/png", check_quota=True)
    assert media_db.get(pool, tenant, media_id)["size_bytes"] == 10
