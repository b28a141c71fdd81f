"""``python run.py`` as an operator runs it: real subprocesses against the session's embedded PostgreSQL
(``pg``), each with its own DATA_DIR."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import gevent
import psycopg2
import pytest
import requests

from core import config
from db import migrate, tenants

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUN = str(ROOT / "run.py")
SHUTDOWN_TIMEOUT = 5.0
LISTENING = re.compile(r"^listening on (http://\S+:\d+)$")


def cli_env(tmp_path, **values: str) -> dict[str, str]:
    """The test process's environment without any platform setting, plus ``values``."""
    declared = {spec.name for spec in config.SPECS}
    env = {key: value for key, value in os.environ.items() if key not in declared}
    env.update(DATA_DIR=str(tmp_path / "data"), LOG_LEVEL="info", PYTHONUNBUFFERED="1")
    env.update(values)
    return env


def run_py(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, RUN, *args], env=env, cwd=env["DATA_DIR"].rsplit("/", 1)[0], capture_output=True, text=True,
        timeout=timeout,
    )


def plain_lines(stderr: str) -> list[str]:
    """stderr lines that are not JSON log lines (what an operator reads as the error)."""
    lines = []
    for line in stderr.splitlines():
        try:
            if isinstance(json.loads(line), dict):
                continue
        except ValueError:
            pass
        if "RuntimeDirWarning" in line or line.strip() == "return Path(self.user_runtime_dir)":
            continue  # platformdirs' warning when XDG_RUNTIME_DIR is unset (test machines), not ours
        lines.append(line)
    return lines


@pytest.fixture
def env(pg, tmp_path):
    return cli_env(tmp_path, DATABASE_URL=pg.app_url, DATABASE_OWNER_URL=pg.owner_url)


@pytest.fixture
def fresh_db(pg):
    """A new, empty database in the session's cluster, owned by the owner role; (owner_url, app_url)."""
    name = f"wabot_cli_{uuid.uuid4().hex[:10]}"
    su = psycopg2.connect(pg.superuser_url)
    su.autocommit = True
    with su.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" OWNER wabot_owner')
    db_su = psycopg2.connect(pg.superuser_url.replace("/postgres?", f"/{name}?"))
    db_su.autocommit = True
    with db_su.cursor() as cur:
        cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    db_su.close()
    yield pg.owner_url.replace("/wabot?", f"/{name}?"), pg.app_url.replace("/wabot?", f"/{name}?")
    with su.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    su.close()


# -- create-tenant ---------------------------------------------------------------------------------


def test_create_tenant_prints_a_key_once_and_that_key_authenticates(env, pool):
    result = run_py(env, "create-tenant", "Acme CLI")
    assert result.returncode == 0, result.stderr
    (tenant_line,) = [line for line in result.stdout.splitlines() if line.startswith("tenant ")]
    tenant_id = tenant_line.split()[1]
    keys = re.findall(r"wbk_[A-Za-z0-9_-]+", result.stdout)
    assert len(keys) == 1, result.stdout
    key = keys[0]
    assert key not in result.stderr, "the key must not be logged"
    assert tenants.authenticate(pool, key) == tenant_id
    (row,) = pool.query(tenant_id, "SELECT name FROM tenants")
    assert row[0] == "Acme CLI"


# -- tenant quota ----------------------------------------------------------------------------------


def test_tenant_quota_sets_the_limits_given_keeps_the_others_and_shows_them_with_the_usage(env, make_tenant):
    tenant_id, _ = make_tenant()
    result = run_py(env, "tenant", "quota", tenant_id, "--bots", "3", "--messages-per-day", "1000")
    assert result.returncode == 0, result.stderr
    assert "bots: no limit -> 3" in result.stdout and "messages-per-day: no limit -> 1,000" in result.stdout
    result = run_py(env, "tenant", "quota", tenant_id, "--bots", "none")
    assert result.returncode == 0, result.stderr
    assert "bots: 3 -> no limit" in result.stdout
    lines = run_py(env, "tenant", "quota", tenant_id).stdout.splitlines()
    assert any(line.split() == ["bots", "0", "of", "no", "limit"] for line in lines), lines
    assert any("messages-per-day" in line and line.endswith("of 1,000") for line in lines), lines
    assert any("media-bytes" in line and line.endswith("of no limit") for line in lines), lines


def test_tenant_quota_refuses_a_bad_number_and_changes_nothing(env, make_tenant):
    tenant_id, _ = make_tenant()
    result = run_py(env, "tenant", "quota", tenant_id, "--bots", "3", "--media-bytes", "lots")
    assert result.returncode == 2
    (line,) = plain_lines(result.stderr)
    assert "media-bytes" in line and "'lots' is not a whole number" in line
    assert "of no limit" in run_py(env, "tenant", "quota", tenant_id).stdout.splitlines()[1]


def test_tenant_quota_for_an_unknown_tenant_says_so(env):
    result = run_py(env, "tenant", "quota", "00000000-0000-4000-8000-000000000000", "--bots", "1")
    assert result.returncode == 1
    assert plain_lines(result.stderr) == ["no tenant 00000000-0000-4000-8000-000000000000"]


def test_create_tenant_with_a_blank_name_fails_with_one_clear_line(env):
    result = run_py(env, "create-tenant", "   ")
    assert result.returncode != 0
    (line,) = plain_lines(result.stderr)
    assert "tenant name" in line
    assert "wbk_" not in result.stdout


def test_create_tenant_with_an_admin_email_prints_a_one_time_set_password_link_valid_a_day(env, pool):
    from db import accounts

    email = f"boss-{uuid.uuid4().hex[:6]}@example.test"
    result = run_py({**env, "PUBLIC_URL": "https://bots.example.com"}, "create-tenant", "Linked", "--admin-email",
                    email.upper())
    assert result.returncode == 0, result.stderr
    tenant_id = re.search(r"tenant (\S+) created", result.stdout).group(1)
    link = re.search(rf"admin {re.escape(email)}: set-password link \(valid 24 h, shown once\): (\S+)",
                     result.stdout).group(1)
    assert link.startswith("https://bots.example.com/auth/link/wbl_")
    found = accounts.peek_link(pool, link.rsplit("/", 1)[1])
    assert found["valid"] and found["email"] == email and found["tenant_id"] == tenant_id and found["role"] == "admin"
    expires_at = found["expires_at"]
    assert 23.9 * 3600 < (expires_at - expires_at.now(expires_at.tzinfo)).total_seconds() <= 24 * 3600
    assert link.rsplit("/", 1)[1] not in result.stderr, "the link must not be logged"


def test_create_tenant_for_an_admin_who_has_an_account_links_it_without_a_new_password(env, pool, password_hash):
    from db import accounts

    first_tenant, _ = tenants.create_tenant(pool, "First")
    email = f"both-{uuid.uuid4().hex[:6]}@example.test"
    token = accounts.create_link(pool, first_tenant, accounts.add_member(pool, first_tenant, email, "admin", None),
                                 "invite", 3600, "test")
    account = accounts.complete_link(pool, token, new_hash=password_hash)
    result = run_py(env, "create-tenant", "Second", "--admin-email", email)
    assert result.returncode == 0, result.stderr
    assert "already has an account; they sign in with their password" in result.stdout
    assert "/auth/link/" not in result.stdout
    assert sorted(t["name"] for t in accounts.memberships(pool, account)) == ["First", "Second"]


def test_create_tenant_with_a_malformed_admin_email_fails_before_creating_anything(env, pool):
    result = run_py(env, "create-tenant", "Nobody", "--admin-email", "not-an-email")
    assert result.returncode == 2
    assert "invalid admin email" in plain_lines(result.stderr)[0] and "wbk_" not in result.stdout


def test_reset_password_prints_a_link_for_an_account_and_refuses_an_unknown_email(env, pool, password_hash):
    from db import accounts

    tenant_id, _ = tenants.create_tenant(pool, "Reset")
    email = f"forgot-{uuid.uuid4().hex[:6]}@example.test"
    token = accounts.create_link(pool, tenant_id, accounts.add_member(pool, tenant_id, email, "agent", None), "invite",
                                 3600, "test")
    accounts.complete_link(pool, token, new_hash=password_hash)
    done = run_py(env, "reset-password", email)
    assert done.returncode == 0, done.stderr
    link = re.search(r"\(valid 24 h, shown once\): (\S+)", done.stdout).group(1)
    assert accounts.peek_link(pool, link.rsplit("/", 1)[1])["purpose"] == "reset"
    unknown = run_py(env, "reset-password", "nobody@example.test")
    assert unknown.returncode == 1 and "no dashboard account" in plain_lines(unknown.stderr)[0]


# -- migrate ---------------------------------------------------------------------------------------


def test_migrate_applies_pending_migrations_then_says_the_schema_is_up_to_date(tmp_path, fresh_db):
    owner_url, app_url = fresh_db
    env = cli_env(tmp_path, DATABASE_URL=app_url, DATABASE_OWNER_URL=owner_url)
    first = run_py(env, "migrate")
    assert first.returncode == 0, first.stderr
    names = [m.name for m in migrate.available()]
    assert first.stdout.strip() == "applied: " + ", ".join(names)
    second = run_py(env, "migrate")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "schema is up to date"


def test_two_migrate_processes_at_once_both_succeed_and_apply_each_migration_once(tmp_path, fresh_db):
    owner_url, app_url = fresh_db
    env = cli_env(tmp_path, DATABASE_URL=app_url, DATABASE_OWNER_URL=owner_url)
    procs = [
        subprocess.Popen([sys.executable, RUN, "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=30) for proc in procs]
    for proc, (_out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    said = sorted(out.strip() for out, _err in outputs)
    names = [m.name for m in migrate.available()]
    assert said == sorted(["applied: " + ", ".join(names), "schema is up to date"])
    conn = psycopg2.connect(owner_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM schema_migrations ORDER BY version")
            assert [r[0] for r in cur.fetchall()] == names
    finally:
        conn.close()


def test_migrate_without_an_owner_url_refuses_with_one_line(tmp_path, pg):
    env = cli_env(tmp_path, DATABASE_URL=pg.app_url)
    result = run_py(env, "migrate")
    assert result.returncode != 0
    (line,) = plain_lines(result.stderr)
    assert "DATABASE_OWNER_URL" in line


# -- web -------------------------------------------------------------------------------------------


def _start_web(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, RUN, "web"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        with gevent.Timeout(30, AssertionError("run.py web did not print its address within 30s")):
            while True:
                line = proc.stdout.readline()
                if not line:
                    raise AssertionError(f"run.py web exited early ({proc.wait()}): {proc.stderr.read()}")
                match = LISTENING.match(line.strip())
                if match:
                    return proc, match.group(1)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


@pytest.fixture
def web_env(env):
    return {**env, "PORT": "0", "HOST": "127.0.0.1", "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)}


def _stop(proc: subprocess.Popen) -> tuple[int, float, str]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=SHUTDOWN_TIMEOUT * 3)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"run.py web ignored SIGTERM: {err}") from None
    return proc.returncode, time.monotonic() - started, err


def test_web_answers_healthz_and_readyz_and_exits_0_on_sigterm_within_the_shutdown_timeout(web_env):
    proc, url = _start_web(web_env)
    try:
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        assert requests.get(f"{url}/readyz", timeout=5).json() == {"status": "ready"}
    finally:
        code, took, err = _stop(proc)
    assert code == 0, err
    assert took < SHUTDOWN_TIMEOUT, f"stopping took {took:.1f}s"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=2)


def test_an_idle_keep_alive_connection_does_not_hold_up_shutdown(web_env):
    proc, url = _start_web(web_env)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        code, took, err = _stop(proc)  # the connection stays open and idle
    finally:
        sock.close()
    assert code == 0, err
    assert took < SHUTDOWN_TIMEOUT, f"an idle connection held shutdown for {took:.1f}s"


def test_web_refuses_to_start_when_database_url_names_a_role_that_owns_tables(tmp_path, pg):
    env = cli_env(tmp_path, DATABASE_URL=pg.owner_url, PORT="0")
    result = run_py(env, "web")
    assert result.returncode != 0
    assert "listening" not in result.stdout
    (line,) = plain_lines(result.stderr)
    assert line.startswith("cannot start:") and "DATABASE_URL" in line and "owns no tables" in line


def test_web_refuses_to_start_on_a_schema_with_pending_migrations_it_cannot_apply(tmp_path, fresh_db):
    _owner_url, app_url = fresh_db
    env = cli_env(tmp_path, DATABASE_URL=app_url, PORT="0")
    result = run_py(env, "web")
    assert result.returncode != 0
    assert "listening" not in result.stdout
    (line,) = plain_lines(result.stderr)
    assert line.startswith("cannot start:") and "pending migrations" in line and "migrate" in line
