"""A real PgBouncer in transaction pooling mode in front of the test session's PostgreSQL.

The distribution's ``pgbouncer`` (``.ci/run`` installs it) listens on 127.0.0.1 and reaches the
embedded server on its unix socket. It refuses to run as root, so under root it runs as the user
that owns the server's socket directory (the one that may open the socket), with its files in a
directory of its own.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import urllib.parse
from typing import Any

from bench._servers import binary, free_port, stop_process, wait_listening


class PgBouncer:
    """``url(user)``: a libpq URL through the pooler for one of the server's roles."""

    def __init__(self, server_url: str, users: tuple[str, ...], *, pool_size: int = 3,
                 via: tuple[str, int] | None = None) -> None:
        """``via``: reach the server at this TCP address instead of its socket (a fault proxy in between)."""
        parsed = urllib.parse.urlsplit(server_url)
        self.database = parsed.path.lstrip("/")
        socket_dir = urllib.parse.parse_qs(parsed.query)["host"][0]
        server = f"host={socket_dir}" if via is None else f"host={via[0]} port={via[1]}"
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="wabot-pgbouncer-")
        os.chmod(self.dir, 0o777)
        auth = os.path.join(self.dir, "users.txt")
        with open(auth, "w") as f:
            f.writelines(f'"{user}" ""\n' for user in users)
        ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(ini, "w") as f:
            f.write(
                "[databases]\n"
                f"{self.database} = {server} dbname={self.database}\n"
                "[pgbouncer]\n"
                f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
                f"auth_type = trust\nauth_file = {auth}\n"
                f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 200\n"
                f"logfile = {os.path.join(self.dir, 'pgbouncer.log')}\n"
                f"pidfile = {os.path.join(self.dir, 'pgbouncer.pid')}\n"
                "server_reset_query =\nignore_startup_parameters =\nserver_login_retry = 1\n"
            )
        for path in (auth, ini):
            os.chmod(path, 0o644)
        pgbouncer = binary("pgbouncer", "pgbouncer")
        # -q: nothing on stderr (everything goes to its logfile). A pipe nobody reads fills up with its
        # per-connection lines and then blocks the pooler for good (the soak met it).
        self._command = [pgbouncer, "-q", ini]
        if os.geteuid() == 0:
            self._command = [pgbouncer, "-q", "-u", pwd.getpwuid(os.stat(socket_dir).st_uid).pw_name, ini]
        self._launch()

    def _launch(self) -> None:
        self.process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_listening(self.process, self.port, "pgbouncer")

    def restart(self) -> None:
        """Stop the pooler (every client and server connection ends) and start it again on its port."""
        stop_process(self.process)
        self._launch()

    def url(self, user: str) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{self.database}"

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "pgbouncer.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, *_: Any) -> None:
        stop_process(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)
