"""The embedded PostgreSQL never lingers (issue 16): real ``python run.py web`` processes on one
DATA_DIR without DATABASE_URL. A SIGKILLed process leaves its server running; the next process adopts
it, and the last process to stop cleanly stops it; no process stops it while another still uses it.
The test session's own server (``tests/conftest.py`` ``pg``) is stopped at the session's end too."""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import psycopg2
import pytest
import requests

from core import config
from db import embedded
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"^listening on (http://\S+:\d+)$", re.MULTILINE)
SHUTDOWN_TIMEOUT = 5.0


def postgres_processes(pgdata: pathlib.Path) -> list[int]:
    """Every live postmaster whose command line names ``pgdata`` (whatever its postmaster.pid says)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = pathlib.Path("/proc", entry, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"/postgres") and os.fsencode(pgdata) in args and embedded.process_alive(
            int(entry)
        ):
            found.append(int(entry))
    return found


class Cluster:
    """A DATA_DIR of its own and the ``run.py web`` processes started on it (logs in ``logs``)."""

    def __init__(self, data_dir: pathlib.Path, logs: pathlib.Path) -> None:
        self.data_dir, self.logs = data_dir, logs
        self.pgdata = data_dir / "postgres"
        self.procs: list[subprocess.Popen] = []
        self.urls: dict[str, str] = {}

    def start_web(self, name: str) -> subprocess.Popen:
        declared = {spec.name for spec in config.SPECS}
        env = {key: value for key, value in os.environ.items() if key not in declared}
        env.update(
            DATA_DIR=str(self.data_dir), PORT="0", HOST="127.0.0.1", SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
            LOG_LEVEL="info", PYTHONUNBUFFERED="1",
        )
        out, err = open(self.logs / f"{name}.out", "wb"), open(self.logs / f"{name}.log", "wb")  # noqa: SIM115
        with out, err:  # the child has its own copies
            proc = subprocess.Popen([sys.executable, "run.py", "web"], cwd=ROOT, env=env, stdout=out, stderr=err)
        self.procs.append(proc)

        def listening() -> str | None:
            if proc.poll() is not None:
                pytest.fail(f"run.py web ({name}) exited with {proc.returncode}: {self.log(name)[-3000:]}")
            match = LISTENING.search((self.logs / f"{name}.out").read_text())
            return match.group(1) if match else None

        self.urls[name] = wait_until(listening, 60, f"run.py web ({name}) to listen", interval=0.1)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def ready(self, name: str) -> bool:
        return requests.get(f"{self.urls[name]}/readyz", timeout=5).json() == {"status": "ready"}

    @staticmethod
    def stop(proc: subprocess.Popen) -> int:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(SHUTDOWN_TIMEOUT * 6)

    def postmaster(self) -> int | None:
        return embedded.postmaster_pid(self.pgdata)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for pid in postgres_processes(self.pgdata):  # a failed test's server: an immediate shutdown
            os.kill(pid, signal.SIGQUIT)
        wait_until(lambda: not postgres_processes(self.pgdata), 30, "the cluster's postmaster to exit", interval=0.1)


@pytest.fixture
def cluster(tmp_path):
    # Outside pytest's temporary root (made 0700): the server runs as the unprivileged 'pgserver'
    # user when the tests run as root, and must reach its data directory.
    data_dir = pathlib.Path(tempfile.mkdtemp(prefix="wabot-lifecycle-"))
    made = Cluster(data_dir, tmp_path)
    yield made
    made.close()
    shutil.rmtree(data_dir, ignore_errors=True)


def assert_no_postgres_left(cluster: Cluster, postmaster: int) -> None:
    assert not (cluster.pgdata / "postmaster.pid").exists()
    assert not embedded.process_alive(postmaster)
    assert postgres_processes(cluster.pgdata) == []


def test_a_killed_run_py_leaves_its_postgres_running_and_the_next_run_py_adopts_it_and_stops_it(cluster):
    first = cluster.start_web("first")
    postmaster = cluster.postmaster()
    assert postmaster is not None
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert cluster.postmaster() == postmaster  # nobody stopped it

    second = cluster.start_web("second")
    assert cluster.ready("second")
    assert cluster.postmaster() == postmaster  # the same server, taken over
    assert "embedded postgres adopted" in cluster.log("second")

    assert cluster.stop(second) == 0, cluster.log("second")[-3000:]
    assert_no_postgres_left(cluster, postmaster)


def test_of_two_run_py_on_one_data_dir_the_first_to_stop_leaves_postgres_to_the_other_which_stops_it(cluster):
    first = cluster.start_web("first")
    second = cluster.start_web("second")
    postmaster = cluster.postmaster()
    assert postmaster is not None
    assert "embedded postgres adopted" not in cluster.log("second")  # it joined a live user's server

    assert cluster.stop(first) == 0, cluster.log("first")[-3000:]
    assert "left running for other processes" in cluster.log("first")
    assert cluster.postmaster() == postmaster
    assert cluster.ready("second")

    assert cluster.stop(second) == 0, cluster.log("second")[-3000:]
    assert_no_postgres_left(cluster, postmaster)


def test_the_test_sessions_server_answers_as_the_application_role(pg):
    # Also the inner session of the next test: it needs a test that uses the ``pg`` fixture.
    conn = psycopg2.connect(pg.app_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == (embedded.APP_ROLE,)
    finally:
        conn.close()


def test_a_test_session_stops_its_embedded_postgres_at_its_end(cluster):
    env = {**os.environ, "TEST_DATA_DIR": str(cluster.data_dir)}
    inner = "tests/test_embedded_lifecycle.py::test_the_test_sessions_server_answers_as_the_application_role"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", inner], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout
    assert (cluster.pgdata / "PG_VERSION").exists()  # the session did run its server here
    assert not (cluster.pgdata / "postmaster.pid").exists()
    assert postgres_processes(cluster.pgdata) == []
