"""Who is asking: the session cookie, the CSRF check and the permission every page and action needs.

- The cookie (``wabot_session``) holds a random token; the session is a row in PostgreSQL
  (``db.accounts``), so it can be revoked (sign out, sign out everywhere, a removed member) and
  expires when idle for ``SESSION_IDLE_TIMEOUT`` or ``SESSION_MAX_AGE`` after sign-in, whatever the
  cookie says. ``HttpOnly``, ``SameSite=Lax``, and ``Secure`` when ``PUBLIC_URL`` is https.
- Every state-changing request (anything but GET/HEAD/OPTIONS) carries the session's CSRF token, in
  the form field ``csrf_token`` or the ``X-CSRF-Token`` header (htmx sends it from ``hx-headers``); a
  request without it, or with a foreign ``Origin``, is refused (403) before the view runs. Before a
  session exists (the sign-in and link forms) a token in a short-lived cookie is compared with the
  form's copy instead (double submit).
- ``@page(permission)`` requires a signed-in member of the session's tenant whose role has the
  permission (``sansio.roles``): otherwise a GET goes to the sign-in page (or the tenant picker) and
  anything else gets 401/403 — checked on the server for every request, whatever the page showed.
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import abort, current_app, g, redirect, request, url_for

from core import context
from core.root import WebRoot
from db import accounts, dashboard
from sansio import rate_limit, roles

COOKIE = "wabot_session"
PRE_COOKIE = "wabot_form"  # the double-submit token of forms shown before a session exists
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
DISABLED = ("This organisation is disabled by the platform's operator. Its data is kept; ask the operator"
            " to enable it. You can switch to another organisation you belong to.")


@dataclasses.dataclass(frozen=True)
class Person:
    token: str
    session_id: str
    account_id: str
    email: str
    display_name: str
    tenant_id: str | None
    tenant_name: str | None
    role: str | None  # None: not (or no longer) a member of the session's tenant, or it is disabled
    csrf: str
    tenant_disabled: bool = False  # the operator disabled the session's tenant (its data is kept)

    def can(self, permission: str) -> bool:
        return roles.allows(self.role, permission)

    @property
    def label(self) -> str:
        """How other members see this person: the display name, else the email."""
        return self.display_name or self.email

    @property
    def held_by(self) -> str:
        """What ``contacts.paused_by`` records when this person takes a conversation over."""
        return f"member:{self.email}"


@dataclasses.dataclass(frozen=True)
class Member(Person):
    """A person whose session is in a tenant they are a member of: what ``@page`` views are given."""

    tenant_id: str
    role: str


def root() -> WebRoot:
    """The process's root, as ``create_app`` was given it."""
    found: WebRoot = current_app.extensions["wabot"]
    return found


def secure_cookies() -> bool:
    return root().settings.public_url.startswith("https://")


def current() -> Person | None:
    """The signed-in person of this request (looked up once per request), or None."""
    if "person" not in g:
        g.person = _load()
    return g.person


def _load() -> Person | None:
    token = request.cookies.get(COOKIE, "")
    if not token:
        return None
    settings = root().settings
    found = accounts.session(root().pool, token, settings.session_idle_timeout)
    if found is None:
        return None
    member = found["tenant_id"] is not None and found["role"] is not None
    person = (Member if member else Person)(
        token=token, session_id=found["session_id"], account_id=found["account_id"], email=found["email"],
        display_name=found["display_name"], tenant_id=found["tenant_id"], tenant_name=found["tenant_name"],
        role=found["role"], csrf=found["csrf"], tenant_disabled=found["tenant_disabled"])
    if isinstance(person, Member):
        g.tenant_id = person.tenant_id  # what an error report names as the request's tenant
    return person


def set_session_cookie(response: Any, token: str) -> Any:
    # No Max-Age: the server decides expiry (idle and absolute); a browser session cookie also goes
    # when the browser closes, which only ever signs someone out sooner.
    response.set_cookie(COOKIE, token, httponly=True, samesite="Lax", secure=secure_cookies(), path="/")
    return response


def clear_session_cookie(response: Any) -> Any:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Lax", secure=secure_cookies())
    return response


# -- CSRF ----------------------------------------------------------------------------------------


def _same_origin() -> bool:
    """A browser names the page's origin on every POST; one from another site is never ours."""
    origin = request.headers.get("Origin")
    if origin is None or (origin == "null" and request.headers.get("Sec-Fetch-Site") == "same-origin"):
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == request.host


def _presented_token() -> str:
    return request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD, "")


def check_csrf(person: Person) -> None:
    if request.method in SAFE_METHODS:
        return
    if not _same_origin():
        abort(403, description="This request came from another site and was refused.")
    if not secrets.compare_digest(_presented_token().encode(), person.csrf.encode()):
        abort(403, description="The form has expired or did not come from this page: reload the page and try again.")


def form_token() -> str:
    """The double-submit token for a form shown before sign-in (set as a cookie by ``with_form_token``)."""
    if "form_token" not in g:
        g.form_token = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(24)
    return g.form_token


def with_form_token(response: Any) -> Any:
    if "form_token" in g and request.cookies.get(PRE_COOKIE) != g.form_token:
        response.set_cookie(PRE_COOKIE, g.form_token, httponly=True, samesite="Strict", secure=secure_cookies(),
                            path="/", max_age=3600)
    return response


def check_form_token() -> None:
    """For forms posted without a session: the cookie's token and the form's copy must agree."""
    if not _same_origin():
        abort(403, description="This request came from another site and was refused.")
    cookie = request.cookies.get(PRE_COOKIE, "")
    if not cookie or not secrets.compare_digest(cookie.encode(), request.form.get(CSRF_FIELD, "").encode()):
        abort(403, description="The form has expired: reload the page and try again.")


def path_id(value: str, what: str) -> str:
    """An id from the URL; anything that is not a UUID names nothing: 404 (as in the API)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        abort(404, description=f"There is no such {what}.")


# -- permissions -----------------------------------------------------------------------------------


def wants_fragment() -> bool:
    return request.headers.get("HX-Request") == "true"


# htmx swaps no 4xx/5xx answer by default: a form fragment that shows its own error (a refused send, a
# rule that does not compile) says so with this header, and app.js swaps it in like a success. Every
# other failed request shows the page's request-error notice instead of nothing.
FORM_ERROR_HEADER = "X-Form-Error"


def form_fragment(body: str, status: int) -> tuple[str, int, dict[str, str]]:
    """A form's fragment answered with ``status``; one that shows its error (4xx/5xx) is swapped in anyway."""
    return body, status, ({FORM_ERROR_HEADER: "shown"} if status >= 400 else {})


def _to_sign_in() -> Any:
    target = request.full_path if request.query_string else request.path
    return redirect(url_for("dashboard.sign_in", next=target))


def _limit(person: Member) -> None:
    """Count the request against the session's request limit (web.rate_limits): 429 past it."""
    from web import rate_limits

    decision = rate_limits.check(person.tenant_id, rate_limits.session_subject(person.session_id))
    if decision is not None and not decision.allowed:
        wait = max(1, rate_limit.whole_seconds(decision.retry_after))
        abort(429, description=f"Too many requests from this session: wait {wait} second{'s' if wait != 1 else ''}"
                               " and try again.")


def page(permission: str = roles.READ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The view needs a signed-in member with ``permission``; state changes also need the CSRF token."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            person = current()
            if person is None:
                if request.method in SAFE_METHODS and not wants_fragment():
                    return _to_sign_in()
                abort(401, description="You are signed out. Sign in again.")
            check_csrf(person)
            if not isinstance(person, Member):  # no tenant, no longer a member of it, or it is disabled
                if person.tenant_disabled:
                    if request.method in SAFE_METHODS and not wants_fragment():
                        from web.dashboard import html_error  # the package imports this module: import late

                        return html_error(403, "Organisation disabled", DISABLED)
                    abort(403, description=DISABLED)
                if request.method in SAFE_METHODS and not wants_fragment():
                    return redirect(url_for("dashboard.tenants"))
                abort(403, description="You are not a member of this organisation any more.")
            _limit(person)
            if not person.can(permission):
                abort(403, description="Your role does not allow this.")
            if request.method == "GET" and not wants_fragment():
                # Read before the page's data: its live stream starts after this event.
                g.live_from = dashboard.event_high_water(root().pool, person.tenant_id)
            with context.bound(tenant_id=person.tenant_id):
                return view(person, *args, **kwargs)

        wrapper.permission = permission  # type: ignore[attr-defined]  # read by the role x route tests
        return wrapper

    return decorate


def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:
    """The view needs a session but no tenant (the tenant picker, the account page)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        person = current()
        if person is None:
            if request.method in SAFE_METHODS:
                return _to_sign_in()
            abort(401, description="You are signed out. Sign in again.")
        check_csrf(person)
        return view(person, *args, **kwargs)

    wrapper.permission = None  # type: ignore[attr-defined]
    return wrapper
