"""What the soak's server helpers share (``_pgbouncer``, ``_nginx``, ``_deploy``): finding a
distribution binary, a free port on 127.0.0.1, waiting for a started server to listen, and stopping it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time


def binary(name: str, package: str) -> str:
    """``name`` on PATH or in /usr/sbin (where Debian puts servers); an error naming the package."""
    for candidate in (name, f"/usr/sbin/{name}"):
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError(f"{name} is not installed: apt-get install -y {package} (.ci/run does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(process: subprocess.Popen, port: int, what: str, timeout: float = 10.0) -> None:
    """Return once ``port`` takes connections; raise with the process's stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"{what} exited: {stderr[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening within {timeout:g} s")


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
