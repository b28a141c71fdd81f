"""Entry point: ``python run.py [all|web|supervisor|migrate|create-tenant NAME [--admin-email EMAIL]|
reset-password EMAIL|tenant list|disable|enable|export|delete|quota ...|simulator]``.

gevent patches the standard library before anything else is imported (pykka's threads become
greenlets), and psycopg2 gets a wait callback that yields to the hub and cancels abandoned queries.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

from db.green import make_psycopg2_green  # noqa: E402

make_psycopg2_green()

import argparse  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from core import config, heap, logs  # noqa: E402

if TYPE_CHECKING:
    from actors.system import System

log = logging.getLogger("run")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description="Multi-tenant WhatsApp bot platform")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("all", help="web app and supervision in one process (the default)")
    sub.add_parser("web", help="only the web app")
    sub.add_parser("supervisor", help="only bot supervision")
    sub.add_parser("migrate", help="apply pending database migrations and exit")
    create = sub.add_parser("create-tenant", help="create a tenant and print its first API key once")
    create.add_argument("name")
    create.add_argument("--admin-email",
                        help="also make this person its admin and print their one-time set-password link")
    reset = sub.add_parser("reset-password", help="print a one-time password-reset link for a dashboard account")
    reset.add_argument("email")
    sub.add_parser("simulator", help="run the WhatsApp network simulator (a test and demo tool)")
    tenant = sub.add_parser("tenant", help="the operator's tenant commands: list, disable, enable, export, delete,"
                                           " quota")
    tenant_sub = tenant.add_subparsers(dest="tenant_command", required=True)
    quota = tenant_sub.add_parser("quota", help="show or set a tenant's quotas (0 or 'none': no limit)")
    quota.add_argument("tenant_id")
    quota.add_argument("--bots", help="bots it may have")
    quota.add_argument("--messages-per-day", help="messages it may send per UTC day (API and bot answers)")
    quota.add_argument("--media-bytes", help="bytes of media it may store")
    tenant_sub.add_parser("list", help="every tenant: id, state, bots, members, name")
    for command, what in (("disable", "refuse its keys and sessions and stop its bots; its data is kept"),
                          ("enable", "undo disable: its keys and sessions work again, its bots start again")):
        tenant_sub.add_parser(command, help=what).add_argument("tenant_id")
    export = tenant_sub.add_parser("export", help="write every row and media object of the tenant to an archive")
    export.add_argument("tenant_id")
    export.add_argument("file", help="the archive to write (.tar.gz; docs/operations.md describes it)")
    delete = tenant_sub.add_parser("delete", help="delete the tenant and everything it has (asks for its name)")
    delete.add_argument("tenant_id")
    delete.add_argument("--confirm", metavar="NAME", help="the tenant's name, instead of typing it when asked")
    delete.add_argument("--wait", default="30", help="seconds to wait for its bots to stop (default 30)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "all"
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)

    if command == "simulator":
        from simulator.main import serve

        serve(settings)
        return 0

    from actors.system import StartupError, System

    system = System(settings)
    try:
        system.start_observability()
        if command == "migrate":
            return _migrate(system)
        system.start_database()
        if command == "create-tenant":
            return _create_tenant(system, args.name, args.admin_email)
        if command == "reset-password":
            return _reset_password(system, args.email)
        if command == "tenant":
            from core import tenant_cli

            return tenant_cli.main(system, args)
        return _serve(system, web=command in ("all", "web"), supervise=command in ("all", "supervisor"))
    except StartupError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        system.stop()


def _migrate(system: System) -> int:
    applied = system.migrate()
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def _create_tenant(system: System, name: str, admin_email: str | None) -> int:
    from db import accounts, tenants
    from web import links, validation
    from web.errors import ApiError

    if admin_email is not None:
        try:
            admin_email = validation.email({"email": admin_email})
        except ApiError as exc:
            print(f"invalid admin email: {exc.message}", file=sys.stderr)
            return 2
    try:
        tenant_id, key = tenants.create_tenant(system.pool, name)
    except ValueError as exc:
        print(f"invalid tenant name: {exc}", file=sys.stderr)
        return 2
    print(f"tenant {tenant_id} created")
    print(f"API key (shown once, store it now): {key}")
    if admin_email is not None:
        settings = system.settings
        token = accounts.add_admin(system.pool, tenant_id, admin_email, settings.auth_link_ttl)
        if token is None:
            print(f"admin {admin_email}: already has an account; they sign in with their password")
        else:
            print(f"admin {admin_email}: set-password link (valid {settings.auth_link_ttl / 3600:g} h, shown once):"
                  f" {links.link_url(settings, token)}")
    return 0


def _reset_password(system: System, email: str) -> int:
    from db import accounts
    from web import links

    settings = system.settings
    try:
        token = accounts.operator_reset(system.pool, email.strip().lower(), settings.auth_link_ttl)
    except LookupError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"password-reset link for {email} (valid {settings.auth_link_ttl / 3600:g} h, shown once):"
          f" {links.link_url(settings, token)}")
    return 0


def _serve(system: System, *, web: bool, supervise: bool) -> int:
    stop = gevent.event.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, stop.set)

    if supervise:
        from actors import supervision

        supervision.start(system)
        if not web and system.settings.health_port is not None:
            from web.health import create_health_app
            from web.server import make_server

            health = make_server(create_health_app(system), system.settings, port=system.settings.health_port)
            health.start()
            system.add_component("health server", lambda: health.stop(timeout=1))
            log.info("health listening", extra={"port": health.server_port})

    if web:
        from web.app import create_app
        from web.server import make_server

        system.start_bus()
        server = make_server(create_app(system), system.settings)
        server.start()

        def stop_web() -> None:
            # Stop accepting first, then end live streams (they would otherwise hold the wait to the
            # timeout), then let requests in flight finish.
            server.close()
            system.end_streams()
            server.stop(timeout=system.settings.shutdown_timeout)

        system.add_component("web server", stop_web)
        log.info("listening", extra={"host": system.settings.host, "port": server.server_port})
        print(f"listening on http://{system.settings.host}:{server.server_port}", flush=True)

    heap.settle()
    stop.wait()
    log.info("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
