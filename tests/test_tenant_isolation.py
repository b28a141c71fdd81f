"""Row-level security and the pool's tenant handling, against the real embedded PostgreSQL."""

import random
import uuid

import gevent
import psycopg2
import pytest

from db import tenants
from tests.dbadmin import superuser_sql
from tests.waiting import wait_until


def _add_bot(pool, tenant_id, name):
    pool.execute(tenant_id, "INSERT INTO bots (name) VALUES (%s)", (name,))


def _bot_names(unit_or_pool, tenant_id=None):
    if tenant_id is None:
        return {r[0] for r in unit_or_pool.all("SELECT name FROM bots")}
    return {r[0] for r in unit_or_pool.query(tenant_id, "SELECT name FROM bots")}


def _backend_and_setting(pool, tenant_id):
    with pool.unit(tenant_id) as unit:
        pid = unit.scalar("SELECT pg_backend_pid()")
        setting = unit.scalar("SELECT current_setting('app.current_tenant', true)")
    return pid, setting


@pytest.fixture
def solo(make_pool):
    return make_pool(size=1)


@pytest.fixture
def two_tenants(solo):
    a, _ = tenants.create_tenant(solo, "alpha")
    b, _ = tenants.create_tenant(solo, "beta")
    _add_bot(solo, a, "alpha-bot")
    _add_bot(solo, b, "beta-bot")
    return a, b


def _setting_between_borrowings(pool):
    with pool.unit(None) as unit:
        return unit.scalar("SELECT pg_backend_pid()"), unit.scalar(
            "SELECT coalesce(current_setting('app.current_tenant', true), '')"
        )


def test_tenant_b_on_the_same_backend_sees_none_of_tenant_a_rows(solo, two_tenants):
    a, b = two_tenants
    pid_a, setting_a = _backend_and_setting(solo, a)
    pid_b, setting_b = _backend_and_setting(solo, b)
    assert pid_a == pid_b
    assert (setting_a, setting_b) == (a, b)
    assert _bot_names(solo, a) == {"alpha-bot"}
    assert _bot_names(solo, b) == {"beta-bot"}


def test_the_tenant_setting_is_empty_between_borrowings(solo, two_tenants):
    a, _ = two_tenants
    pid_a, _ = _backend_and_setting(solo, a)
    solo.query(a, "SELECT 1")
    pid, setting = _setting_between_borrowings(solo)
    assert pid == pid_a
    assert setting == ""


def test_the_setting_does_not_survive_an_exception_inside_the_unit_of_work(solo, two_tenants):
    a, b = two_tenants
    with pytest.raises(ZeroDivisionError), solo.unit(a) as unit:
        unit.execute("SELECT 1")
        1 / 0  # noqa: B018 - raises inside the unit on purpose
    with pytest.raises(psycopg2.errors.DivisionByZero), solo.unit(a) as unit:
        unit.execute("SELECT 1 / 0")
    assert _setting_between_borrowings(solo)[1] == ""
    assert _bot_names(solo, b) == {"beta-bot"}


def test_the_setting_does_not_survive_a_killed_borrowing_greenlet(solo, two_tenants, pg):
    a, b = two_tenants
    started = gevent.event.Event()

    def hold():
        with solo.unit(a) as unit:
            unit.execute("SELECT 1")
            started.set()
            unit.execute("SELECT pg_sleep(30)")

    holder = gevent.spawn(hold)
    assert started.wait(5)
    wait_until(
        lambda: superuser_sql(pg, "SELECT count(*) FROM pg_stat_activity"
                                  " WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(30)%%'") == [(1,)],
        what="the pg_sleep to run on the server before the kill", interval=0.02,
    )
    holder.kill(block=True, timeout=5)
    assert holder.dead
    assert _setting_between_borrowings(solo)[1] == ""
    assert _bot_names(solo, b) == {"beta-bot"}
    # The killed query was cancelled on the server, not left running.
    running = solo.query(None, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%%'")
    assert running == [(0,)]


def test_the_setting_does_not_survive_pg_terminate_backend(solo, two_tenants, pg):
    a, b = two_tenants
    pid, _ = _backend_and_setting(solo, a)
    admin = psycopg2.connect(pg.superuser_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    admin.close()
    # The next borrower may meet the dead connection; the pool replaces it and a repeatable
    # query succeeds on a new backend.
    assert _bot_names(solo, b) == {"beta-bot"}
    new_pid, setting = _setting_between_borrowings(solo)
    assert new_pid != pid
    assert setting == ""
    assert solo.stats()["replaced_total"] >= 1


def test_without_a_tenant_a_unit_of_work_sees_zero_rows(solo, two_tenants):
    for table in ("tenants", "bots", "api_keys", "users", "contacts", "messages", "outbox", "events"):
        assert solo.query(None, f"SELECT count(*) FROM {table}") == [(0,)], table


def test_without_a_tenant_inserts_are_refused(solo, two_tenants):
    a, _ = two_tenants
    with pytest.raises(psycopg2.Error):
        solo.execute(None, "INSERT INTO bots (name) VALUES ('orphan')")
    with pytest.raises(psycopg2.Error):
        solo.execute(None, "INSERT INTO bots (tenant_id, name) VALUES (%s, 'smuggled')", (a,))
    assert "smuggled" not in _bot_names(solo, a)


def test_a_tenant_cannot_write_rows_for_another_tenant(solo, two_tenants):
    a, b = two_tenants
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        solo.execute(a, "INSERT INTO bots (tenant_id, name) VALUES (%s, 'smuggled')", (b,))
    assert solo.execute(a, "UPDATE bots SET name = 'renamed' WHERE tenant_id = %s", (b,)) == 0
    assert _bot_names(solo, b) == {"beta-bot"}


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE bots DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE bots NO FORCE ROW LEVEL SECURITY",
        "ALTER TABLE bots ADD COLUMN sneaky text",
        "DROP POLICY tenant_isolation ON bots",
        "SET row_security = off",
        "DROP TABLE bots",
        "CREATE TABLE sneaky (id int)",
    ],
)
def test_the_application_role_cannot_turn_security_off_or_alter_tables(solo, two_tenants, statement):
    a, b = two_tenants
    if statement.startswith("SET row_security"):
        # Allowed to set, but with row_security off a query that RLS would filter errors instead.
        with pytest.raises(psycopg2.errors.InsufficientPrivilege), solo.unit(a) as unit:
            unit.execute(statement)
            unit.execute("SELECT * FROM bots")
        return
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        solo.execute(a, statement)


def test_the_application_role_is_not_superuser_owner_or_bypassrls(solo):
    rows = solo.query(
        None,
        "SELECT r.rolsuper, r.rolbypassrls, (SELECT count(*) FROM pg_tables t"
        " WHERE t.schemaname = 'public' AND t.tableowner = current_user)"
        " FROM pg_roles r WHERE r.rolname = current_user",
    )
    assert rows == [(False, False, 0)]


def test_a_thousand_greenlets_across_fifty_tenants_see_only_their_own_rows(make_pool):
    pool = make_pool(size=8)
    owned = {}
    for i in range(50):
        tenant_id, _ = tenants.create_tenant(pool, f"crowd-{i}")
        names = {f"bot-{i}-{j}" for j in range(3)}
        for name in names:
            _add_bot(pool, tenant_id, name)
        owned[tenant_id] = names
    tenant_ids = list(owned)
    foreign = []
    rng = random.Random(7)

    def reader(tenant_id):
        for _ in range(3):
            if rng.random() < 0.5:
                seen = _bot_names(pool, tenant_id)
            else:
                with pool.unit(tenant_id) as unit:
                    unit.execute("SELECT 1")
                    seen = _bot_names(unit)
            if seen != owned[tenant_id]:
                foreign.append((tenant_id, seen - owned[tenant_id]))

    greenlets = [gevent.spawn(reader, tenant_ids[i % 50]) for i in range(1000)]
    gevent.joinall(greenlets, timeout=120, raise_error=True)
    assert all(g.successful() for g in greenlets)
    assert foreign == []
    assert pool.stats()["in_use"] == 0


def test_tenant_ids_are_bound_parameters_not_sql(solo):
    with pytest.raises(psycopg2.Error):
        solo.query("'); SELECT set_config('app.current_tenant', '', false); --", "SELECT count(*) FROM bots")
    assert solo.query(None, "SELECT count(*) FROM tenants") == [(0,)]
    # The row-level security cast refuses anything that is not a UUID, so a bad tenant fails closed.
    with pytest.raises(psycopg2.errors.InvalidTextRepresentation):
        solo.query(str(uuid.uuid4())[:-1] + "x", "SELECT count(*) FROM bots")
