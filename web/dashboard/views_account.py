"""Signing in and out, one-time links (set a password, accept an invite, reset), choosing a tenant,
and the person's own account page."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import abort, current_app, redirect, render_template, request, url_for

from core.passwords import PasswordRejected, Passwords, check_new
from db import accounts
from sansio import rate_limit
from sansio import sign_in_throttle as throttle
from web import rate_limits
from web.dashboard import blueprint, session
from web.dashboard.session import Person

WRONG = "Email or password is wrong."


def passwords() -> Passwords:
    found = current_app.extensions.get("wabot.passwords")
    if found is None:
        found = current_app.extensions["wabot.passwords"] = Passwords()
    return found


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect to another one."""
    if not target:
        return url_for("dashboard.inbox")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("dashboard.inbox")
    return target


def _open(account_id: str, tenant_id: str | None, target: str) -> Any:
    """Start a session (in ``tenant_id``, or the person's only tenant) and go to ``target``."""
    pool, settings = session.root().pool, session.root().settings
    tenants = accounts.memberships(pool, account_id)
    if tenant_id is None and len(tenants) == 1:
        tenant_id = tenants[0]["tenant_id"]
    token, _csrf = accounts.open_session(pool, account_id, tenant_id, settings.session_max_age,
                                         request.headers.get("User-Agent", ""), request.remote_addr or "")
    response = redirect(target if tenant_id else url_for("dashboard.tenants", next=target), code=303)
    return session.set_session_cookie(response, token)


@blueprint.get("/")
def home() -> Any:
    return redirect(url_for("dashboard.inbox") if session.current() else url_for("dashboard.sign_in"))


# -- sign in -------------------------------------------------------------------------------------


def _throttle_keys(email: str) -> list[str]:
    return [f"email:{accounts.token_hash(email.strip().lower()).hex()}", f"addr:{request.remote_addr or ''}"]


def _refusal(keys: list[str]) -> str | None:
    """A message when any key must wait, else None."""
    settings = session.root().settings
    counts, now = accounts.throttle_read(session.root().pool, keys)
    policies = (throttle.email_policy(settings.sign_in_lockout), throttle.address_policy(settings.sign_in_lockout))
    waits = [throttle.wait(policy, *counts.get(key, (0, None)), now) for key, policy in zip(keys, policies)]
    longest = max(waits)
    return throttle.refusal(longest) if longest > 0 else None


def _too_many(seconds: float) -> str:
    wait = max(1, rate_limit.whole_seconds(seconds))
    return f"Too many sign-in attempts. Try again in {wait} second{'s' if wait != 1 else ''}."


@blueprint.route("/signin", methods=["GET", "POST"])
def sign_in() -> Any:
    target = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if session.current() is not None:
            return redirect(target)
        return render_template("signin.html", next=target, email="", error=None)
    session.check_form_token()
    email = request.form.get("email", "").strip().lower()[:320]
    password = request.form.get("password", "")
    pool = session.root().pool
    keys = _throttle_keys(email)
    # Every attempt, right or wrong, counts against the email's and the address's request limit
    # (web.rate_limits) before any password is hashed; failures are slowed further below.
    wait = rate_limits.check_sign_in(keys)
    if wait is not None:
        return render_template("signin.html", next=target, email=email, error=_too_many(wait)), 429
    refused = _refusal(keys)
    if refused:
        return render_template("signin.html", next=target, email=email, error=refused), 429
    found = accounts.account_by_email(pool, email) if email else None
    ok = passwords().verify(found[1] if found else None, password)
    if not ok or found is None:  # verify is False without an account
        accounts.throttle_fail(pool, keys, throttle.email_policy(session.root().settings.sign_in_lockout).window)
        return render_template("signin.html", next=target, email=email, error=_refusal(keys) or WRONG), 401
    accounts.throttle_clear(pool, keys[:1])
    account_id = found[0]
    if passwords().needs_rehash(found[1]):
        accounts.update_account(pool, account_id, new_hash=passwords().hash(password))
    if not accounts.memberships(pool, account_id):
        return render_template("signin.html", next=target, email=email,
                               error="Your account is not a member of any organisation any more."), 403
    return _open(account_id, None, target)


@blueprint.post("/signout")
def sign_out() -> Any:
    person = session.current()
    if person is not None:
        session.check_csrf(person)
        accounts.close_session(session.root().pool, person.token)
    return session.clear_session_cookie(redirect(url_for("dashboard.sign_in"), code=303))


@blueprint.post("/signout-everywhere")
@session.signed_in
def sign_out_everywhere(person: Person) -> Any:
    accounts.close_all_sessions(session.root().pool, person.account_id)
    return session.clear_session_cookie(redirect(url_for("dashboard.sign_in"), code=303))


# -- tenants -------------------------------------------------------------------------------------


@blueprint.get("/tenants")
@session.signed_in
def tenants(person: Person) -> Any:
    found = accounts.memberships(session.root().pool, person.account_id)
    return render_template("tenants.html", tenants=found, next=_safe_next(request.args.get("next")))


@blueprint.post("/tenants/switch")
@session.signed_in
def switch_tenant(person: Person) -> Any:
    tenant_id = request.form.get("tenant_id", "")
    if not accounts.switch_tenant(session.root().pool, person.token, tenant_id):
        abort(403, description="You are not a member of that organisation.")
    return redirect(_safe_next(request.form.get("next")), code=303)


# -- one-time links ------------------------------------------------------------------------------


@blueprint.route("/auth/link/<token>", methods=["GET", "POST"])
def link(token: str) -> Any:
    pool = session.root().pool
    found = accounts.peek_link(pool, token)
    if found is None or not found["valid"]:
        reason = ("This link has already been used." if found and found["used"]
                  else "This link has expired." if found else "This link is not valid.")
        return render_template("link_invalid.html", reason=reason), 410 if found else 404
    existing = found["account_id"] is not None and found["purpose"] == "invite"
    form = {"display_name": request.form.get("display_name", "").strip()[:200]}
    if request.method == "GET":
        return render_template("link.html", link=found, existing=existing, error=None, field=None, form=form)
    session.check_form_token()
    if existing:
        # Joining with an account one already has: prove it with its password, never set a new one.
        account = accounts.account_by_email(pool, found["email"])
        proven = passwords().verify(account[1] if account else None, request.form.get("password", ""))
        if not proven or account is None:  # verify is False without an account
            return render_template("link.html", link=found, existing=True, error="The password is wrong.",
                                   field="password", form=form), 401
        account_id = accounts.complete_link(pool, token, new_hash=None, verified_account=account[0])
    else:
        password = request.form.get("password", "")
        try:
            check_new(password, found["email"])
        except PasswordRejected as exc:
            return render_template("link.html", link=found, existing=False, error=f"The password {exc}.",
                                   field="password", form=form), 400
        if password != request.form.get("password_again", ""):
            return render_template("link.html", link=found, existing=False, error="The two passwords differ.",
                                   field="password_again", form=form), 400
        account_id = accounts.complete_link(pool, token, new_hash=passwords().hash(password),
                                            new_name=form["display_name"])
    if account_id is None:
        return render_template("link_invalid.html", reason="This link has just been used or has expired."), 410
    return _open(account_id, found["tenant_id"], url_for("dashboard.inbox"))


# -- the person's account ------------------------------------------------------------------------


@blueprint.route("/app/account", methods=["GET", "POST"])
@session.signed_in
def account(person: Person) -> Any:
    pool = session.root().pool
    message, error, field = None, None, None
    if request.method == "POST":
        if request.form.get("action") == "name":
            name = request.form.get("display_name", "").strip()
            if len(name) > 200 or "\x00" in name:
                error, field = "The name must be at most 200 characters.", "display_name"
            else:
                accounts.update_account(pool, person.account_id, new_name=name)
                message = "Your name is saved."
        else:
            found = accounts.account_by_email(pool, person.email)
            new = request.form.get("new_password", "")
            if not passwords().verify(found[1] if found else None, request.form.get("current_password", "")):
                error, field = "The current password is wrong.", "current_password"
            else:
                try:
                    check_new(new, person.email)
                except PasswordRejected as exc:
                    error, field = f"The new password {exc}.", "new_password"
                else:
                    if new != request.form.get("new_password_again", ""):
                        error, field = "The two new passwords differ.", "new_password_again"
                    else:
                        accounts.update_account(pool, person.account_id, new_hash=passwords().hash(new),
                                                keep_token=person.token)
                        message = "Your password is changed; your other sessions are signed out."
    status = 400 if error else 200
    fresh = accounts.session(pool, person.token, session.root().settings.session_idle_timeout)
    return render_template("account.html", tenants=accounts.memberships(pool, person.account_id),
                           display_name=(fresh or {}).get("display_name", person.display_name),
                           message=message, error=error, field=field), status
