"""Signing in to the dashboard over real HTTP: passwords, sessions (cookie, expiry, revocation), CSRF,
one-time links, choosing a tenant, and throttling of failed sign-ins."""

from __future__ import annotations

import re
import uuid

import pytest
import requests

from db import accounts
from tests.conftest import PASSWORD
from tests.dbadmin import superuser_sql

TIMEOUT = 10
FORM_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')




class Visitor:
    """A browser with no session yet: it loads a form (getting the form's double-submit cookie) and
    posts it back with the token, as a browser would."""

    def __init__(self, base):
        self.base = base
        self.http = requests.Session()

    def form(self, path):
        page = self.http.get(self.base + path, timeout=TIMEOUT)
        match = FORM_TOKEN.search(page.text)
        return page, match.group(1) if match else None

    def submit(self, path, data, *, form_path=None):
        _page, token = self.form(form_path or path)
        return self.http.post(self.base + path, data={"csrf_token": token, **data}, timeout=TIMEOUT,
                              allow_redirects=False, headers={"Origin": self.base})

    def sign_in(self, email, password=PASSWORD, next_path=None):
        data = {"email": email, "password": password}
        if next_path:
            data["next"] = next_path
        return self.submit("/signin", data)


def session_cookie(response):
    header = response.headers.get("Set-Cookie", "")
    assert "wabot_session=wbs_" in header, header
    return header


# -- signing in ------------------------------------------------------------------------------------


def test_a_signed_out_visitor_of_the_root_is_sent_to_the_sign_in_page(web):
    response = requests.get(web.url + "/", timeout=TIMEOUT, allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/signin")


def test_a_signed_out_visitor_of_a_page_is_sent_to_sign_in_and_back_afterwards(web, shop):
    response = requests.get(web.url + "/app/bots?x=1", timeout=TIMEOUT, allow_redirects=False)
    assert response.status_code == 302
    assert "/signin?next=/app/bots?x%3D1" in response.headers["Location"]
    signed_in = Visitor(web.url).sign_in(shop.admin.email, next_path="/app/bots")
    assert signed_in.status_code == 303 and signed_in.headers["Location"] == "/app/bots"


def test_the_right_password_opens_a_session_in_an_httponly_samesite_lax_cookie(web, shop):
    visitor = Visitor(web.url)
    response = visitor.sign_in(shop.agent.email)
    assert response.status_code == 303
    assert response.headers["Location"] == "/app/inbox"
    cookie = session_cookie(response)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    page = visitor.http.get(web.url + "/app/inbox", timeout=TIMEOUT)
    assert page.status_code == 200 and shop.agent.email in page.text


def test_a_wrong_password_and_an_unknown_email_get_the_same_answer(web, shop):
    wrong = Visitor(web.url).sign_in(shop.admin.email, "not the password")
    unknown = Visitor(web.url).sign_in(f"nobody-{uuid.uuid4().hex[:6]}@example.test", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert "Email or password is wrong." in wrong.text and "Email or password is wrong." in unknown.text
    assert "wabot_session" not in wrong.headers.get("Set-Cookie", "")


def test_a_next_address_on_another_site_is_never_followed(web, shop):
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        response = Visitor(web.url).sign_in(shop.admin.email, next_path=target)
        assert response.status_code == 303 and response.headers["Location"] == "/app/inbox", target


def test_the_sign_in_form_without_its_form_token_is_refused(web, shop):
    response = requests.post(web.url + "/signin", data={"email": shop.admin.email, "password": PASSWORD},
                             timeout=TIMEOUT, allow_redirects=False)
    assert response.status_code == 403
    assert "wabot_session" not in response.headers.get("Set-Cookie", "")


# -- throttling ------------------------------------------------------------------------------------


def test_failed_sign_ins_for_one_email_are_slowed_with_a_clear_message_that_also_stops_the_right_password(web, shop):
    visitor = Visitor(web.url)
    for _ in range(3):
        assert visitor.sign_in(shop.viewer.email, "wrong password").status_code == 401
    fourth = visitor.sign_in(shop.viewer.email, "wrong password")
    assert "Too many failed sign-ins. Try again in 2 seconds." in fourth.text
    refused = visitor.sign_in(shop.viewer.email)  # the right password, too soon
    assert refused.status_code == 429
    assert "Too many failed sign-ins" in refused.text
    assert "wabot_session" not in refused.headers.get("Set-Cookie", "")


def test_an_unknown_email_is_slowed_exactly_like_a_known_one(web, pg):
    email = f"ghost-{uuid.uuid4().hex[:6]}@example.test"
    visitor = Visitor(web.url)
    answers = [visitor.sign_in(email, "guess").text for _ in range(5)]
    assert "Try again in" in answers[3] and "Too many failed sign-ins" in answers[4]


def test_ten_failures_lock_the_email_for_the_lockout_and_say_so_in_minutes(web, shop, pg):
    key = "email:" + accounts.token_hash(shop.admin.email).hex()
    superuser_sql(pg, "INSERT INTO sign_in_failures (key, failures, first_at, last_at) VALUES (%s, 10, now(), now())",
                  (key,))
    response = Visitor(web.url).sign_in(shop.admin.email)
    assert response.status_code == 429
    assert "Try again in 15 minutes." in response.text


def test_many_failures_from_one_address_refuse_every_email_from_it(web, shop, pg):
    superuser_sql(pg, "INSERT INTO sign_in_failures (key, failures, first_at, last_at)"
                  " VALUES ('addr:127.0.0.1', 100, now(), now())"
                  " ON CONFLICT (key) DO UPDATE SET failures = 100, last_at = now()")
    try:
        response = Visitor(web.url).sign_in(shop.agent.email)
        assert response.status_code == 429 and "Too many failed sign-ins" in response.text
    finally:
        superuser_sql(pg, "DELETE FROM sign_in_failures WHERE key = 'addr:127.0.0.1'")


def test_a_successful_sign_in_clears_the_count_of_its_email(web, shop, pg):
    visitor = Visitor(web.url)
    for _ in range(3):
        visitor.sign_in(shop.agent.email, "wrong")
    assert visitor.sign_in(shop.agent.email).status_code == 303
    key = "email:" + accounts.token_hash(shop.agent.email).hex()
    assert superuser_sql(pg, "SELECT failures FROM sign_in_failures WHERE key = %s", (key,)) == []


# -- sessions --------------------------------------------------------------------------------------


def test_signing_out_ends_the_session_at_once(web, shop):
    assert shop.agent.get("/app/inbox").status_code == 200
    response = shop.agent.post("/signout")
    assert response.status_code == 303 and response.headers["Location"].endswith("/signin")
    assert shop.agent.get("/app/inbox").status_code == 302


def test_signing_out_everywhere_ends_every_session_of_the_person(web, shop, pool):
    other_token, _ = accounts.open_session(pool, shop.agent.account_id, shop.tenant_id, 3600, "phone", "10.0.0.9")
    other = requests.Session()
    other.cookies.set("wabot_session", other_token)
    assert other.get(web.url + "/app/inbox", timeout=TIMEOUT, allow_redirects=False).status_code == 200
    assert shop.agent.post("/signout-everywhere").status_code == 303
    assert other.get(web.url + "/app/inbox", timeout=TIMEOUT, allow_redirects=False).status_code == 302
    assert shop.agent.get("/app/inbox").status_code == 302


def test_a_removed_member_is_signed_out_at_once(web, shop):
    assert shop.viewer.get("/app/inbox").status_code == 200
    removed = shop.admin.post(f"/app/admin/members/{shop.viewer.user_id}/remove", {"confirm": "yes"})
    assert removed.status_code == 303
    assert shop.viewer.get("/app/inbox").status_code == 302


def test_a_member_removed_through_the_api_is_signed_out_at_once(web, shop):
    assert shop.agent.get("/app/inbox").status_code == 200
    assert shop.api.delete(f"/users/{shop.agent.user_id}").status_code == 204
    assert shop.agent.get("/app/inbox").status_code == 302


def test_an_idle_session_expires_after_the_idle_timeout(web, shop, pg):
    superuser_sql(pg, "UPDATE web_sessions SET last_seen_at = now() - make_interval(secs => %s) WHERE token_hash = %s",
              (web.settings.session_idle_timeout + 5, accounts.token_hash(shop.agent.token)))
    assert shop.agent.get("/app/inbox").status_code == 302


def test_a_session_ends_at_its_absolute_expiry_even_when_used(web, shop, pg):
    superuser_sql(pg, "UPDATE web_sessions SET expires_at = now() - interval '1 second', last_seen_at = now()"
                  " WHERE token_hash = %s", (accounts.token_hash(shop.agent.token),))
    assert shop.agent.get("/app/inbox").status_code == 302


def test_a_used_session_is_kept_alive_past_the_idle_timeout(web, shop, pg):
    # Used a moment ago, signed in long ago (but within the absolute expiry): still signed in.
    superuser_sql(pg, "UPDATE web_sessions SET last_seen_at = now() - interval '30 seconds',"
                  " created_at = now() - make_interval(secs => %s) WHERE token_hash = %s",
              (web.settings.session_idle_timeout * 2, accounts.token_hash(shop.agent.token)))
    assert shop.agent.get("/app/inbox").status_code == 200


def test_the_session_cookie_is_secure_when_the_public_address_is_https(settings, pool, shop, web):
    from core import config
    from tests.fakes import FakeRoot
    from web.app import create_app

    root = FakeRoot(config.replace(settings, public_url="https://bots.example.com"), pool, publish=web.publish)
    client = create_app(root).test_client()
    page = client.get("/signin", base_url="https://bots.example.com")
    token = FORM_TOKEN.search(page.get_data(as_text=True)).group(1)
    response = client.post("/signin", base_url="https://bots.example.com",
                           data={"email": shop.admin.email, "password": PASSWORD, "csrf_token": token},
                           headers={"Origin": "https://bots.example.com"})
    assert response.status_code == 303
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("wabot_session="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


# -- CSRF ------------------------------------------------------------------------------------------


def _bot_names(shop):
    return [b["name"] for b in shop.api.get("/bots").json()["bots"]]


def test_a_state_change_without_the_csrf_token_is_refused_and_changes_nothing(web, shop):
    response = shop.admin.post("/app/bots", {"name": "no-token"}, csrf=False)
    assert response.status_code == 403
    assert "no-token" not in _bot_names(shop)


def test_a_state_change_with_another_sessions_token_is_refused(web, shop):
    response = shop.admin.post("/app/bots", {"name": "their-token", "csrf_token": shop.agent.csrf})
    assert response.status_code == 403
    assert "their-token" not in _bot_names(shop)


def test_a_state_change_from_another_sites_page_is_refused_even_with_the_token(web, shop):
    response = shop.admin.post("/app/bots", {"name": "cross-site"}, headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert "cross-site" not in _bot_names(shop)


def test_the_csrf_token_in_a_header_is_accepted_as_htmx_sends_it(web, shop):
    response = shop.admin.post("/app/bots", {"name": "by-header"}, csrf=False,
                               headers={"X-CSRF-Token": shop.admin.csrf})
    assert response.status_code == 303
    assert "by-header" in _bot_names(shop)


# -- links -----------------------------------------------------------------------------------------


def _invite(shop, email, role="agent"):
    page = shop.admin.post("/app/admin/members", {"email": email, "role": role})
    assert page.status_code == 200, page.text
    return re.search(r'value="(http://[^"]+/auth/link/wbl_[^"]+)"', page.text).group(1)


def test_an_invited_person_sets_a_password_and_lands_signed_in_in_the_tenant(web, shop):
    email = f"new-{uuid.uuid4().hex[:6]}@example.test"
    link = _invite(shop, email)
    path = link.split(web.url.split("//")[1], 1)[1]
    visitor = Visitor(web.url)
    page, _ = visitor.form(path)
    assert page.status_code == 200 and "Choose a password" in page.text and email in page.text
    done = visitor.submit(path, {"password": "a fine long password", "password_again": "a fine long password",
                                 "display_name": "Nina"})
    assert done.status_code == 303 and done.headers["Location"] == "/app/inbox"
    session_cookie(done)
    inbox = visitor.http.get(web.url + "/app/inbox", timeout=TIMEOUT)
    assert inbox.status_code == 200 and "Nina" in inbox.text
    assert Visitor(web.url).sign_in(email, "a fine long password").status_code == 303


def test_a_link_works_once(web, shop):
    email = f"once-{uuid.uuid4().hex[:6]}@example.test"
    path = "/auth/link/" + _invite(shop, email).rsplit("/", 1)[1]
    data = {"password": "a fine long password", "password_again": "a fine long password"}
    assert Visitor(web.url).submit(path, data).status_code == 303
    again = Visitor(web.url)
    page, _ = again.form(path)
    assert page.status_code == 410 and "already been used" in page.text


def test_an_expired_link_says_so(web, shop, pg):
    email = f"late-{uuid.uuid4().hex[:6]}@example.test"
    token = _invite(shop, email).rsplit("/", 1)[1]
    superuser_sql(pg, "UPDATE auth_links SET expires_at = now() - interval '1 second' WHERE token_hash = %s",
              (accounts.token_hash(token),))
    page = requests.get(f"{web.url}/auth/link/{token}", timeout=TIMEOUT)
    assert page.status_code == 410 and "expired" in page.text


def test_a_new_invite_link_replaces_the_earlier_one(web, shop):
    email = f"twice-{uuid.uuid4().hex[:6]}@example.test"
    first = _invite(shop, email).rsplit("/", 1)[1]
    second = _invite(shop, email).rsplit("/", 1)[1]
    assert requests.get(f"{web.url}/auth/link/{first}", timeout=TIMEOUT).status_code == 404
    assert requests.get(f"{web.url}/auth/link/{second}", timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize("password, again, problem", [
    ("short", "short", "at least 10 characters"),
    ("a fine long password", "a different long one", "The two passwords differ."),
])
def test_a_password_that_does_not_meet_the_rules_is_refused_next_to_its_field(web, shop, password, again, problem):
    path = "/auth/link/" + _invite(shop, f"rules-{uuid.uuid4().hex[:6]}@example.test").rsplit("/", 1)[1]
    response = Visitor(web.url).submit(path, {"password": password, "password_again": again})
    assert response.status_code == 400
    assert problem in response.text and 'aria-invalid="true"' in response.text


def test_an_invite_for_someone_with_an_account_needs_their_password_and_keeps_it(web, shop, make_tenant, make_member):
    other_tenant, _ = make_tenant()
    existing = make_member(other_tenant, "admin")
    path = "/auth/link/" + _invite(shop, existing.email, "viewer").rsplit("/", 1)[1]
    visitor = Visitor(web.url)
    page, _ = visitor.form(path)
    assert "You already have an" in page.text and "password_again" not in page.text
    assert visitor.submit(path, {"password": "not theirs at all"}).status_code == 401
    joined = visitor.submit(path, {"password": PASSWORD})
    assert joined.status_code == 303
    names = [t["tenant_id"] for t in accounts.memberships(web.pool, existing.account_id)]
    assert sorted(names) == sorted([other_tenant, shop.tenant_id])
    assert Visitor(web.url).sign_in(existing.email).status_code == 303  # the password did not change


def test_a_reset_link_sets_a_new_password_and_ends_the_persons_other_sessions(web, shop):
    page = shop.admin.post(f"/app/admin/members/{shop.agent.user_id}/link")
    assert page.status_code == 200 and "Password reset" in page.text
    path = "/auth/link/" + re.search(r"/auth/link/(wbl_[^\"]+)", page.text).group(1)
    done = Visitor(web.url).submit(path, {"password": "my brand new password",
                                          "password_again": "my brand new password"})
    assert done.status_code == 303
    assert shop.agent.get("/app/inbox").status_code == 302  # the old session is gone
    assert Visitor(web.url).sign_in(shop.agent.email, PASSWORD).status_code == 401
    assert Visitor(web.url).sign_in(shop.agent.email, "my brand new password").status_code == 303


def test_an_admin_cannot_reset_the_password_of_someone_who_belongs_to_another_tenant_too(
    web, shop, make_tenant, make_member
):
    other_tenant, _ = make_tenant()
    shared = make_member(other_tenant, "admin")
    member = make_member(shop.tenant_id, "agent", shared.email)
    page = shop.admin.post(f"/app/admin/members/{member.user_id}/link")
    assert page.status_code == 409
    assert "also a member of another organisation" in page.text and "/auth/link/" not in page.text


# -- several tenants -------------------------------------------------------------------------------


def test_a_person_in_two_tenants_picks_one_after_signing_in_and_can_switch(web, shop, make_tenant, make_member):
    second, _ = make_tenant("Second Shop " + uuid.uuid4().hex[:4])
    make_member(second, "viewer", shop.agent.email)
    visitor = Visitor(web.url)
    signed_in = visitor.sign_in(shop.agent.email)
    assert signed_in.status_code == 303 and "/tenants" in signed_in.headers["Location"]
    picker = visitor.http.get(web.url + "/tenants", timeout=TIMEOUT)
    assert "Second Shop" in picker.text
    token = FORM_TOKEN.search(picker.text).group(1)
    switched = visitor.http.post(web.url + "/tenants/switch", data={"tenant_id": second, "csrf_token": token},
                                 headers={"Origin": web.url}, timeout=TIMEOUT, allow_redirects=False)
    assert switched.status_code == 303
    inbox = visitor.http.get(web.url + "/app/inbox", timeout=TIMEOUT)
    assert "Second Shop" in inbox.text and ">viewer<" in inbox.text


def test_switching_to_a_tenant_one_is_not_a_member_of_is_refused(web, shop, make_tenant):
    foreign, _ = make_tenant()
    response = shop.agent.post("/tenants/switch", {"tenant_id": foreign})
    assert response.status_code == 403
    assert accounts.session(web.pool, shop.agent.token, 3600)["tenant_id"] == shop.agent.tenant_id
