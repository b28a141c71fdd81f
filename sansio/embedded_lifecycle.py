"""What a platform process does with the embedded PostgreSQL it shares with the others on one DATA_DIR.

Several platform processes may use one cluster (``run.py web`` and ``run.py supervisor`` on one machine,
a test session and the ``run.py`` processes it starts). Each holds a *lease* while it uses the cluster:
a file under ``DATA_DIR`` it keeps locked. A process that dies without stopping (SIGKILL, a crash, the
OOM killer) loses its lock with it, so a lease is live exactly while its process is.

* At start (``on_start``), knowing whether the server runs and how many live leases there are:
  ``START`` it (none runs), ``JOIN`` it (it runs and another live process uses it) or ``ADOPT`` it (it
  runs and no live process uses it: its starter died; this process now owns it like a starter does).
  All three end with this process holding a lease; the difference is what the operator is told.
* At stop (``on_stop``), after this process gave up its own lease: ``STOP`` the server when no other
  live lease is left, ``LEAVE`` it running for the others, ``NOTHING`` when it is not running anyway.

Pure: no I/O; the caller reads the server's state and counts the leases under one lock, so no other
process starts or stops between the reading and the acting.
"""

from __future__ import annotations

import enum


class StartAction(enum.Enum):
    START = "start"
    JOIN = "join"
    ADOPT = "adopt"


class StopAction(enum.Enum):
    STOP = "stop"
    LEAVE = "leave"
    NOTHING = "nothing"


def on_start(server_running: bool, live_leases: int) -> StartAction:
    """``live_leases``: other processes' live leases, this process's own not yet taken."""
    if not server_running:
        return StartAction.START
    return StartAction.JOIN if live_leases > 0 else StartAction.ADOPT


def on_stop(server_running: bool, live_leases: int) -> StopAction:
    """``live_leases``: the live leases left once this process gave up its own."""
    if not server_running:
        return StopAction.NOTHING
    return StopAction.LEAVE if live_leases > 0 else StopAction.STOP
