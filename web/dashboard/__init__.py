"""The tenant's web dashboard: server-rendered pages (Flask/Jinja) over the same data layer as the API.

Reads work without JavaScript; with it, htmx (vendored, ``static/vendor``) swaps fragments after an
action and ``static/app.js`` keeps pages live from the tenant's SSE stream (``/api/v1/events``,
authenticated by the session cookie), resuming after a dropped connection without gaps or repeats.

Nothing here is trusted to the page: every view names the permission it needs (``session.page``)
and checks it on the server; every state change carries the CSRF token; every query runs under the
session's tenant through row-level security. Pages are served with a Content-Security-Policy that
allows no inline script, no inline style and no other origin.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import pathlib
import zoneinfo
from typing import Any

from flask import Blueprint, Response, current_app, g, make_response, render_template, request, url_for
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from sansio import roles
from web.dashboard import session

STATIC = pathlib.Path(__file__).with_name("static")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self';"
       " connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


class _Blueprint(Blueprint):
    def get_send_file_max_age(self, filename: str | None) -> int | None:
        # Static URLs carry a hash of the file (``asset``): a changed file is a new URL, so a
        # browser may keep each one for a year and a returning visitor loads only the page.
        return 31536000 if request.args.get("v") else 300


blueprint = _Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
                       static_url_path="/static")


def _versions() -> dict[str, str]:
    versions = current_app.extensions.get("wabot.asset_versions")
    if versions is None:
        versions = {
            str(path.relative_to(STATIC)): hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            for path in STATIC.rglob("*") if path.is_file()
        }
        current_app.extensions["wabot.asset_versions"] = versions
    return versions


def asset(filename: str) -> str:
    return url_for("dashboard.static", filename=filename, v=_versions().get(filename, "0"))


# -- time, as the viewer reads it -----------------------------------------------------------------


def viewer_zone() -> datetime.tzinfo:
    """The viewer's time zone: the ``tz`` cookie app.js sets from the browser, else UTC."""
    if "zone" not in g:
        zone: datetime.tzinfo = datetime.UTC
        name = request.cookies.get("tz", "")
        if name and len(name) < 64 and all(c.isalnum() or c in "/_+-" for c in name):
            try:
                zone = zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                pass
        g.zone = zone
    return g.zone


def when(value: Any, style: str = "short") -> Markup:
    """``<time>`` in the viewer's zone; app.js re-renders it from ``datetime`` in the browser's zone."""
    if value is None:
        return Markup("")
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    local = value.astimezone(viewer_zone())
    today = datetime.datetime.now(viewer_zone()).date()
    if style == "full":
        text = local.strftime("%Y-%m-%d %H:%M:%S %Z")
    elif style == "seconds":
        text = local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M:%S")
    elif local.date() == today:
        text = local.strftime("%H:%M")
    else:
        text = local.strftime("%Y-%m-%d %H:%M")
    return Markup('<time datetime="{}" data-style="{}">{}</time>').format(value.isoformat(), style, text)


def phone(jid: str | None) -> str:
    """``4915123456789@s.whatsapp.net`` → ``+4915123456789``; other jids as they are."""
    if not jid:
        return ""
    user, _, server = jid.partition("@")
    user = user.split(":", 1)[0]
    return "+" + user if user.isdigit() and server in ("s.whatsapp.net", "c.us", "") else jid


def filesize(size: float | None) -> str:
    if size is None:
        return ""
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def compact_json(value: Any) -> str:
    """JSON as the event monitor's script writes it (``JSON.stringify``): compact, not ASCII-escaped."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def holder(paused_by: str | None) -> str:
    """Who holds a conversation, from ``contacts.paused_by``: a member's email or an API key."""
    if not paused_by:
        return "someone"
    if paused_by.startswith("member:"):
        return paused_by[len("member:"):]
    if paused_by.startswith("api-key:"):
        return "API key " + paused_by[len("api-key:"):]
    return paused_by


@blueprint.app_template_global()
def csrf_value() -> str:
    """The token a form carries: the session's, or before sign-in the form's double-submit token.
    A global (not a context variable), so macros imported without the context can use it and
    Jinja caches those imports instead of running them again for every row."""
    person = session.current()
    return person.csrf if person else session.form_token()


@blueprint.app_template_global()
def can(permission: str) -> bool:
    person = session.current()
    return person is not None and person.can(permission)


@blueprint.app_context_processor
def _globals() -> dict[str, Any]:
    person = session.current()
    return {"person": person, "csrf": csrf_value(), "asset": asset,
            "when": when, "phone": phone, "filesize": filesize, "holder": holder, "compact_json": compact_json,
            "roles": roles, "settings": session.root().settings}


@blueprint.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Frame-Options"] = "DENY"
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"  # pages show private data; never kept in shared caches
        response.headers["Vary"] = "Cookie, HX-Request"
    return session.with_form_token(response)


@blueprint.errorhandler(HTTPException)
def _error(exc: HTTPException) -> Any:
    status = exc.code or 500
    if status == 401 and session.wants_fragment():
        response = Response("", status=401)
        response.headers["HX-Redirect"] = url_for("dashboard.sign_in")
        return response
    if exc.response is not None:  # a redirect raised as an exception, e.g. by abort(redirect(...))
        return exc.response
    return render_template("error.html", status=status, title=exc.name, message=exc.description), status


def html_error(status: int, title: str, message: str) -> Any:
    """The error page for requests no dashboard view handled (unknown URLs under the dashboard's paths).
    It gets the dashboard's headers here, as no blueprint's after-request runs for it: under the app's
    default policy (``default-src 'none'``) its own stylesheet and scripts were blocked."""
    return _headers(make_response(render_template("error.html", status=status, title=title, message=message),
                                  status))


from web.dashboard import (  # noqa: E402,F401  (routes)
    views_account,
    views_audit,
    views_bots,
    views_inbox,
    views_ops,
    views_webhooks,
)
