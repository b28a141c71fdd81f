"""Which database faults are transient — worth repeating a unit of work for — and which are not.

Transient: the connection was lost or refused, the server is shutting down or starting, a
serialization failure or a deadlock. Never transient: integrity, data and programming errors (repeating
cannot change their outcome) and statement timeouts (the work would only time out again under load).
Pure: looks at exception types and SQLSTATE codes only.
"""

from __future__ import annotations

import psycopg2
import psycopg2.errors

TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "57P01",  # admin_shutdown (server stopping, pg_terminate_backend)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up)
        "53300",  # too_many_connections
    }
)
TRANSIENT_CLASSES = ("08",)  # connection_exception and its subclasses

NEVER_TRANSIENT = (
    psycopg2.IntegrityError,
    psycopg2.ProgrammingError,
    psycopg2.DataError,
    psycopg2.NotSupportedError,
    psycopg2.errors.QueryCanceled,  # an OperationalError subclass, but a timeout is not a lost connection
)


# Exceptions raised by the server carry pgcode; the same classes built locally do not, so map back.
_SQLSTATE_OF_CLASS: dict[type[BaseException], str] = {
    psycopg2.errors.lookup(code): code for code in TRANSIENT_SQLSTATES}


def is_transient(exc: BaseException) -> bool:
    code = getattr(exc, "pgcode", None) or _SQLSTATE_OF_CLASS.get(type(exc))
    if code:
        return code in TRANSIENT_SQLSTATES or code.startswith(TRANSIENT_CLASSES)
    if isinstance(exc, NEVER_TRANSIENT):
        return False
    # No SQLSTATE: libpq lost or could not open the connection (server gone, socket closed,
    # "connection already closed").
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return True
    return bool(getattr(exc, "transient", False))
