"""The deployment an operator runs, on 127.0.0.1, for the soak and its tests (issue 15): a PostgreSQL
server of its own (pgserver's binaries), PgBouncer in transaction pooling mode in front of it, web
and supervisor processes (``python run.py web`` / ``supervisor``) over PgBouncer with
``DATABASE_DIRECT_URL`` for their LISTEN connections, nginx in front of the web processes with the
configuration docs/operations.md documents, and the WhatsApp simulator as a process of its own.

``Deployment`` starts them in order and ``close()`` stops everything it started, in reverse (also
after a failure half-way). Each platform process's output goes to a log file in the deployment's
directory (``log(name)``). Processes can be stopped (``signal``) and started again (``restart``).
A directory the caller chose is kept after ``close()`` (its logs and database, to be read after a
run); a temporary one is removed.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from bench._faultproxy import FaultProxy
from bench._nginx import Nginx
from bench._pgbouncer import PgBouncer
from bench._servers import free_port
from db import embedded, migrate

ROOT = pathlib.Path(__file__).resolve().parent.parent


def free_port_pair() -> int:
    """A port p with p + 1 free too (the simulator's transport and its control API)."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two adjacent free ports")


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:g} s")
        time.sleep(interval)


class Deployment:
    def __init__(self, *, webs: int = 2, supervisors: int = 2, env: dict[str, str] | None = None,
                 directory: str | None = None, db_proxy: bool = False) -> None:
        """``db_proxy``: every connection of the platform to PostgreSQL (PgBouncer's and the direct
        ones) goes through a ``FaultProxy`` (``self.db_proxy``) of this process, which needs gevent."""
        self.dir = directory or tempfile.mkdtemp(prefix="wabot-deploy-")
        self.keep = directory is not None  # the caller's directory outlives the deployment
        self.use_db_proxy = db_proxy
        self.db_proxy: FaultProxy | None = None
        self.extra_env = dict(env or {})
        self.procs: dict[str, subprocess.Popen] = {}
        self._commands: dict[str, list[str]] = {}
        self._env_of: dict[str, dict[str, str]] = {}
        self._stops = contextlib.ExitStack()
        try:
            self._start(webs, supervisors)
        except BaseException:
            self.close()
            raise

    # -- start -------------------------------------------------------------------------------------

    def _start(self, webs: int, supervisors: int) -> None:
        self.pg = embedded.start(os.path.join(self.dir, "pg"))
        self._stops.callback(self.pg.stop)
        migrate.apply(self.pg.owner_url, embedded.APP_ROLE)
        self.direct_url = self.pg.app_url
        via = None
        if self.use_db_proxy:
            sockets = sorted(pathlib.Path(self.pg.socket_dir).glob(".s.PGSQL.*[0-9]"))
            self.db_proxy = FaultProxy(str(sockets[0]))
            self._stops.callback(self.db_proxy.stop)
            via = ("127.0.0.1", self.db_proxy.port)
            self.direct_url = f"postgresql://{embedded.APP_ROLE}@127.0.0.1:{self.db_proxy.port}/{embedded.DATABASE}"
        self.bouncer = PgBouncer(self.pg.app_url, (embedded.APP_ROLE,), pool_size=10, via=via)
        self._stops.callback(self.bouncer.stop)
        for attempt in range(3):  # a port taken between choosing and binding it: choose again
            sim_port = free_port_pair()  # the control API takes the next port
            self.sim_addr = f"127.0.0.1:{sim_port}"
            self.control_url = f"http://127.0.0.1:{sim_port + 1}"
            if attempt == 0:
                self._spawn("simulator", ["simulator"], {})
            else:
                self._launch("simulator")
            simulator = self.procs["simulator"]
            wait_for(lambda s=simulator: s.poll() is not None or _get_ok(self.control_url + "/healthz"), 20,
                     "simulator")
            if simulator.poll() is None:
                break
        else:
            raise RuntimeError(f"the simulator did not start: {self.log('simulator')[-2000:]}")
        self.web_ports = []
        self.health_urls: dict[str, str] = {}  # each platform process's /healthz, /readyz, /metrics
        for i in range(webs):
            port = free_port()
            self.web_ports.append(port)
            self.health_urls[f"web{i}"] = f"http://127.0.0.1:{port}"
            self._spawn(f"web{i}", ["web"], {"PORT": str(port), "PROXY_HOPS": "1"})
        for i in range(supervisors):
            port = free_port()
            self.health_urls[f"supervisor{i}"] = f"http://127.0.0.1:{port}"
            self._spawn(f"supervisor{i}", ["supervisor"], {"HEALTH_PORT": str(port)})
        for port in self.web_ports:
            wait_for(lambda p=port: _get_ok(f"http://127.0.0.1:{p}/readyz"), 30, f"web process on {port}")
        self.nginx = Nginx([f"127.0.0.1:{p}" for p in self.web_ports])
        self._stops.callback(self.nginx.stop)
        self.url = self.nginx.url

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "WA_", "WEBHOOK", "AI_"))}
        env.update(
            DATABASE_URL=self.bouncer.url(embedded.APP_ROLE),
            DATABASE_DIRECT_URL=self.direct_url,
            DATABASE_OWNER_URL=self.pg.owner_url,
            DATA_DIR=os.path.join(self.dir, "data"),
            WA_TRANSPORT="simulator",
            WA_SIMULATOR_ADDR=self.sim_addr,
            WA_RECONNECT_BASE_DELAY="0.5",
            WA_RECONNECT_MAX_DELAY="5",
            WA_LEASE_TTL="6",
            WEBHOOKS_ALLOW_HTTP="true",
            WEBHOOKS_ALLOW_PRIVATE="true",
            LOG_LEVEL="info",
        )
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        command = [sys.executable, "run.py", *args]
        self._commands[name] = command
        self._env_of[name] = env
        self._launch(name)
        self._stops.callback(self._end, name)

    def _launch(self, name: str) -> None:
        log = open(os.path.join(self.dir, f"{name}.log"), "ab")  # noqa: SIM115 - the child's stdout/stderr
        try:
            env = {**self.env(), **self._env_of[name]}
            self.procs[name] = subprocess.Popen(self._commands[name], cwd=ROOT, env=env, stdout=log, stderr=log)
        finally:
            log.close()

    # -- faults and control ------------------------------------------------------------------------

    def signal(self, name: str, sig: int, wait: float = 20) -> int | None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                return proc.wait(wait)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()
        return proc.returncode

    def start(self, name: str) -> None:
        """Start a stopped process again, with the command and settings it had."""
        if self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is running")
        self._launch(name)

    def restart_postgres(self, mode: str) -> None:
        """pg_ctl's ``fast`` or ``immediate`` stop, then a start (the same data, socket and port)."""
        self.pg.restart_server(mode)

    def restart(self, name: str) -> None:
        if self.procs[name].poll() is None:
            self.signal(name, signal.SIGTERM)
        self._launch(name)

    def log(self, name: str) -> str:
        try:
            return pathlib.Path(self.dir, f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=self.env(), capture_output=True,
                              text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"run.py {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def create_tenant(self, name: str) -> tuple[str, str]:
        out = self.cli("create-tenant", name)
        tenant = re.search(r"tenant (\S+) created", out)
        key = re.search(r"API key \(shown once, store it now\): (\S+)", out)
        assert tenant and key, out
        return tenant.group(1), key.group(1)

    # -- stop --------------------------------------------------------------------------------------

    def _end(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            self.signal(name, signal.SIGTERM)

    def close(self) -> None:
        self._stops.close()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return 200 <= answer.status < 300
    except OSError:
        return False
