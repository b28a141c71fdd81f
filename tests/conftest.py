"""Shared test set-up: gevent patching before anything else, cooperative psycopg2, and the fixtures
that start the embedded PostgreSQL once per test session (``pg``), hand out pools, tenants and a
running web app."""

from gevent import monkey

monkey.patch_all()

# The browser tests run in a process of their own, unpatched (tests/test_browser.py starts it).
collect_ignore = ["browser"]

from db.green import make_psycopg2_green  # noqa: E402

make_psycopg2_green()

import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402

from actors.pool import Pool, PoolConfig  # noqa: E402
from core import config  # noqa: E402
from db import embedded, migrate  # noqa: E402


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop every actor a test left running, so a failing test fails the run instead of hanging it.

    A test that fails part-way can leave actors waiting on their mailboxes; their greenlets keep the
    interpreter from exiting after pytest has printed its summary (CI once waited out its whole limit
    so). They are named, so the leak is seen, then stopped (killed if stopping takes too long)."""
    import pykka

    from actors.base import actor_of

    left = pykka.ActorRegistry.get_all()
    if left:
        names = sorted({ref.actor_class.__name__ for ref in left})
        print(f"\nactors still running at the end of the tests: {len(left)} ({', '.join(names)}); stopping them")
    for ref in left:
        try:
            ref.stop(block=True, timeout=2)
        except Exception:  # noqa: BLE001 - stuck or already gone: kill what is left, then exit
            try:
                actor_of(ref).kill()
            except Exception:  # noqa: BLE001 - already gone
                pass


@pytest.fixture(scope="session")
def pg(tmp_path_factory):
    """The embedded PostgreSQL, migrated, shared by the whole test session."""
    # Outside pytest's temp root: pytest makes that 0700 (again at every concurrent run), and the
    # server runs as the unprivileged 'pgserver' user that must reach its data directory.
    data_dir = os.environ.get("TEST_DATA_DIR") or tempfile.mkdtemp(prefix="wabot-test-pg-")
    server = embedded.start(data_dir)
    migrate.apply(server.owner_url, embedded.APP_ROLE)
    yield server
    server.stop()
    if "TEST_DATA_DIR" not in os.environ:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def settings(pg, tmp_path):
    return config.load(
        {
            "DATABASE_URL": pg.app_url,
            "DATABASE_OWNER_URL": pg.owner_url,
            "DATA_DIR": str(tmp_path),
            "DATABASE_ACQUIRE_TIMEOUT": "5",
            "PORT": "0",
        }
    )


@pytest.fixture
def make_pool(pg):
    pools = []

    def make(size=4, **kwargs):
        pool = Pool(PoolConfig(dsn=kwargs.pop("dsn", pg.app_url), size=size, **kwargs))
        pools.append(pool)
        assert pool.wait_ready(10)
        return pool

    yield make
    for pool in pools:
        pool.stop()


@pytest.fixture
def pool(make_pool):
    return make_pool(size=4)


@pytest.fixture
def make_tenant(pool):
    from db import tenants

    def make(name=None):
        return tenants.create_tenant(pool, name or f"tenant-{uuid.uuid4().hex[:8]}")

    return make


@pytest.fixture
def web(settings, pool):
    """A running web app on 127.0.0.1 (random port) over the shared pool, with live streams: a
    ``tests.fakes.FakeRoot`` (its base URL is ``url``)."""
    from tests.fakes import FakeRoot

    root = FakeRoot(settings, pool).start_bus().serve()
    yield root
    root.close()


@pytest.fixture
def serve_root(settings, pool):
    """Web apps of a test's own over the shared pool: ``serve_root(bus=True, blueprints=[bp],
    sse_heartbeat=0.3)`` serves a ``tests.fakes.FakeRoot`` (with an event bus, extra blueprints,
    changed settings) and returns it; each is closed after the test."""
    from tests.fakes import FakeRoot

    roots = []

    def start(*, bus=False, blueprints=(), **changes):
        root = FakeRoot(config.replace(settings, **changes), pool, blueprints=blueprints)
        roots.append(root)
        if bus:
            root.start_bus()
        return root.serve()

    yield start
    for root in roots:
        root.close()


@pytest.fixture(autouse=True)
def _bots_at_rest(request):
    """Bots are shared through the session-wide database: after each test that used it, nothing is
    left running or leased, so one test's bots never count in another's fair share."""
    yield
    if "pg" not in request.fixturenames:
        return
    import psycopg2

    server = request.getfixturevalue("pg")
    conn = psycopg2.connect(server.owner_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("UPDATE bots SET desired_state = 'stopped', lease_owner = NULL, lease_expires_at = NULL")
            cur.execute("DELETE FROM supervisors")
    finally:
        conn.close()


class ApiClient:
    """An HTTP client of the API as one tenant: ``client.get("/bots")``, ``client.post(...)``..."""

    def __init__(self, base, key, tenant_id):
        import requests

        self.base, self.key, self.tenant_id = base + "/api/v1", key, tenant_id
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"

    def __getattr__(self, method):
        def call(path, **kwargs):
            kwargs.setdefault("timeout", 10)
            return self.session.request(method.upper(), self.base + path, **kwargs)

        return call


@pytest.fixture
def alice(web, make_tenant):
    tenant_id, key = make_tenant()
    return ApiClient(web.url, key, tenant_id)


@pytest.fixture
def mallory(web, make_tenant):
    tenant_id, key = make_tenant()
    return ApiClient(web.url, key, tenant_id)


# -- the dashboard -----------------------------------------------------------------------------------

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def password_hash():
    """One argon2 hash of PASSWORD for the whole session: making members costs no hashing."""
    from argon2 import PasswordHasher

    return PasswordHasher().hash(PASSWORD)


class Member:
    """A person of the dashboard as a browser: a cookie session, its CSRF token sent with every POST
    (as the page's forms do), and the Origin header a browser adds."""

    def __init__(self, base, token, csrf, account_id, user_id, email, role, tenant_id):
        import requests

        self.base, self.token, self.csrf = base, token, csrf
        self.account_id, self.user_id, self.email, self.role, self.tenant_id = (
            account_id, user_id, email, role, tenant_id)
        self.http = requests.Session()
        self.http.cookies.set("wabot_session", token)

    def get(self, path, **kwargs):
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("allow_redirects", False)
        return self.http.get(self.base + path, **kwargs)

    def post(self, path, data=None, *, csrf=True, **kwargs):
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("allow_redirects", False)
        data = dict(data or {})
        if csrf:
            data.setdefault("csrf_token", self.csrf)
        headers = {"Origin": self.base, **kwargs.pop("headers", {})}
        return self.http.post(self.base + path, data=data, headers=headers, **kwargs)


@pytest.fixture
def make_member(web, pool, password_hash):
    """``make_member(tenant_id, role, email=None)``: an account with PASSWORD, a membership with
    ``role`` and a signed-in session (opened directly: no argon2 per test)."""
    from db import accounts

    def make(tenant_id, role="admin", email=None, *, session=True):
        email = email or f"{role}-{uuid.uuid4().hex[:8]}@example.test"
        found = accounts.account_by_email(pool, email)
        user_id = accounts.add_member(pool, tenant_id, email, role, found[0] if found else None)
        if found is None:
            token = accounts.create_link(pool, tenant_id, user_id, "invite", 3600, "test")
            account_id = accounts.complete_link(pool, token, new_hash=password_hash, new_name="")
        else:
            account_id = found[0]
        token, csrf = (accounts.open_session(pool, account_id, tenant_id, 3600, "pytest", "127.0.0.1")
                       if session else (None, None))
        return Member(web.url, token, csrf, account_id, user_id, email, role, tenant_id)

    return make


@pytest.fixture
def shop(web, pg, make_tenant, make_member):
    """A tenant with an API key (``shop.api``) and one signed-in member of each role. Every test
    signs in from 127.0.0.1: that address's failure count and sign-in attempts start from zero for each test."""
    import psycopg2

    conn = psycopg2.connect(pg.owner_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DELETE FROM sign_in_failures WHERE key = 'addr:127.0.0.1'")
        cur.execute("DELETE FROM sign_in_limits WHERE key = 'addr:127.0.0.1'")  # and its attempts (request limits)
    conn.close()
    tenant_id, key = make_tenant()

    class Shop:
        pass

    s = Shop()
    s.tenant_id, s.key = tenant_id, key
    s.api = ApiClient(web.url, key, tenant_id)
    s.admin, s.agent, s.viewer = (make_member(tenant_id, role) for role in ("admin", "agent", "viewer"))
    return s
