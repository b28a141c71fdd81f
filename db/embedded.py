"""The embedded PostgreSQL: a real server from the ``pgserver`` package, used when DATABASE_URL is unset.

``start(data_dir)`` starts (or joins) the cluster in ``DATA_DIR/postgres`` and makes sure the two roles
exist: ``wabot_owner`` owns the database and runs migrations; ``wabot_app`` is the application's login
role — not superuser, not owner, not BYPASSRLS — so row-level security always applies to the app.
The server listens on a unix socket only.

Several platform processes may share the cluster. Each ``start`` takes a lease: a file in
``DATA_DIR/postgres.users`` it holds an exclusive ``flock`` on until ``stop()`` (the kernel releases the
lock of a process that dies, so a SIGKILLed process's lease is seen as gone). ``stop()`` gives the
lease up and stops the server when no live lease is left: the last platform process to stop stops
it. A process that finds the server running with no live lease (its starter died) adopts it, and so
stops it in its turn. Starting and stopping take ``DATA_DIR/postgres.users/.lifecycle`` (another
``flock``) so that no process starts or joins while another decides to stop. The decisions are
``sansio.embedded_lifecycle``'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import pathlib
import subprocess
import uuid
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import quote

import psycopg2
from psycopg2 import sql

from sansio import embedded_lifecycle as lifecycle

log = logging.getLogger(__name__)

DATABASE = "wabot"
OWNER_ROLE = "wabot_owner"
APP_ROLE = "wabot_app"
USERS_DIR = "postgres.users"  # the leases, next to the cluster (initdb wants the cluster's directory empty)
PG_CTL_TIMEOUT = 60  # seconds pg_ctl waits for a stop


@dataclasses.dataclass
class Embedded:
    server: Any  # pgserver's PostgresServer
    socket_dir: str
    owner_url: str
    app_url: str
    superuser_url: str
    pgdata: pathlib.Path
    users_dir: pathlib.Path
    system_user: str | None  # the unprivileged user the server runs as when we are root
    lease: _Lease | None

    def stop(self) -> None:
        """Give this handle's lease up; stop the server when no other live process holds one."""
        lease, self.lease = self.lease, None
        if lease is None:
            return
        try:
            with _lifecycle_lock(self.users_dir):
                lease.release()
                others = _live_leases(self.users_dir)
                action = lifecycle.on_stop(postmaster_pid(self.pgdata) is not None, others)
                if action is lifecycle.StopAction.STOP:
                    self.stop_server("fast")
                    log.info("embedded postgres stopped (the last process using it)")
                elif action is lifecycle.StopAction.LEAVE:
                    log.info("embedded postgres left running for other processes", extra={"processes": others})
        except Exception:  # stopping is best effort at exit
            log.exception("embedded postgres did not stop cleanly")

    def restart_server(self, mode: str = "fast") -> None:
        """Stop and start the server process (tests and the soak use this for real outages)."""
        self.stop_server(mode)
        self.start_server()

    def stop_server(self, mode: str = "fast") -> None:
        """``mode``: pg_ctl's shutdown mode — ``fast`` (sessions ended, a clean checkpoint) or
        ``immediate`` (every process quits at once, as in a crash; the next start recovers from the WAL)."""
        pg_ctl(self.pgdata, self.system_user, "-w", "-t", str(PG_CTL_TIMEOUT), "-m", mode, "stop")

    def start_server(self) -> None:
        self.server.ensure_postgres_running()


class _Lease:
    """One handle's claim on the cluster: a file of its own, exclusively locked while the handle lives."""

    def __init__(self, users_dir: pathlib.Path) -> None:
        self.path = users_dir / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.lease"
        self._file: IO[str] = open(self.path, "w")  # noqa: SIM115 - held open (and locked) until release
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        self.path.unlink(missing_ok=True)  # first: a copy of the descriptor in a forked child keeps the lock
        self._file.close()


def _live_leases(users_dir: pathlib.Path) -> int:
    """How many leases a live handle holds; the files of dead holders are removed. Call with the
    lifecycle lock held (leases are only taken and released under it)."""
    live = 0
    for path in users_dir.glob("*.lease"):
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below, after the lock test
        except FileNotFoundError:
            continue
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live += 1
                continue
            path.unlink(missing_ok=True)  # its holder died without giving it up
    return live


@contextlib.contextmanager
def _lifecycle_lock(users_dir: pathlib.Path) -> Iterator[None]:
    users_dir.mkdir(parents=True, exist_ok=True)
    with open(users_dir / ".lifecycle", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # held for a server start at most (a few seconds)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def postmaster_pid(pgdata: str | os.PathLike[str]) -> int | None:
    """The running postmaster of the cluster in ``pgdata`` (from its ``postmaster.pid``), or None."""
    try:
        with open(os.path.join(pgdata, "postmaster.pid")) as fh:
            pid = int(fh.readline())
    except (FileNotFoundError, ValueError):
        return None
    return pid if process_alive(pid) else None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def pg_ctl(pgdata: str | os.PathLike[str], system_user: str | None, *args: str) -> None:
    """Run pgserver's ``pg_ctl`` on the cluster in ``pgdata`` (as ``system_user``: pg_ctl refuses root)."""
    command = [os.path.join(pg_bin_dir(), "pg_ctl"), "-D", str(pgdata), *args]
    result = subprocess.run(
        command, user=system_user, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=PG_CTL_TIMEOUT + 10,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pg_ctl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")


def _url(user: str, socket_dir: str, database: str) -> str:
    return f"postgresql://{user}@/{database}?host={quote(socket_dir, safe='/')}"


def start(data_dir: str) -> Embedded:
    import pgserver

    data = pathlib.Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    pgdata, users_dir = data / "postgres", data / USERS_DIR
    with _lifecycle_lock(users_dir):
        action = lifecycle.on_start(postmaster_pid(pgdata) is not None, _live_leases(users_dir))
        # cleanup_mode=None: pgserver's own bookkeeping (a list of pids, never pruned) would leave the
        # server running forever once a user of it was SIGKILLed; the leases decide instead.
        server = pgserver.get_server(str(pgdata), cleanup_mode=None)
        server.ensure_postgres_running()  # again: a handle this process had before may have stopped it
        lease = _Lease(users_dir)
    embedded = Embedded(
        server=server,
        socket_dir="",
        owner_url="",
        app_url="",
        superuser_url="",
        pgdata=pgdata,
        users_dir=users_dir,
        system_user=server.system_user,
        lease=lease,
    )
    if action is lifecycle.StartAction.ADOPT:
        log.warning(
            "embedded postgres adopted: it was running with no live process using it (its starter died);"
            " the last process using it stops it",
            extra={"pid": postmaster_pid(pgdata)},
        )
    try:
        superuser_url = server.get_uri()
        socket_dir = superuser_url.split("host=", 1)[1]
        _ensure_roles_and_database(superuser_url)
    except BaseException:
        embedded.stop()
        raise
    embedded.superuser_url, embedded.socket_dir = superuser_url, socket_dir
    embedded.owner_url = _url(OWNER_ROLE, socket_dir, DATABASE)
    embedded.app_url = _url(APP_ROLE, socket_dir, DATABASE)
    return embedded


def _ensure_roles_and_database(superuser_url: str) -> None:
    conn = psycopg2.connect(superuser_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            # Serialise concurrent first starts (two processes on one fresh DATA_DIR).
            cur.execute("SELECT pg_advisory_lock(7283901)")
            for role, extra in ((OWNER_ROLE, ""), (APP_ROLE, " NOBYPASSRLS")):
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                if cur.fetchone() is None:
                    cur.execute(
                        sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE" + extra).format(
                            sql.Identifier(role)
                        )
                    )
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cur.fetchone() is None:
                cur.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(OWNER_ROLE))
                )
            cur.execute("SELECT pg_advisory_unlock(7283901)")
    finally:
        conn.close()
    # The public schema belongs to pg_database_owner in PostgreSQL 15+, so the owner can create in it;
    # the app role gets only what migrations grant it.
    conn = psycopg2.connect(superuser_url.replace("/postgres?", f"/{DATABASE}?"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    finally:
        conn.close()


def pg_bin_dir() -> str:
    import pgserver

    return os.path.join(os.path.dirname(pgserver.__file__), "pginstall", "bin")
