"""The tenant's bots: create, list, read, delete; record intent (start/stop/restart/logout); serve the
pairing QR code and ask the running session for a pair code.

The web process never talks to a session: it records intent on the bot's row through ``db.bots``
(which notifies), and the supervisor holding the bot's lease carries it out and writes the outcome
back. A pair code is the one request that waits for that outcome: the row is polled until the session
answers or ``PAIR_CODE_TIMEOUT`` passes.
"""

from __future__ import annotations

import io
import re
import time
from typing import Any
from urllib.parse import urlsplit

import gevent
import segno
from flask import Blueprint, Response, current_app, g, jsonify, request

from db import bots
from web import validation as v
from web.auth import require_tenant, system
from web.errors import ApiError, bad_request, not_found

blueprint = Blueprint("bots", __name__)

# Seconds a pair-code request waits for the supervisor's answer; app config PAIR_CODE_TIMEOUT overrides.
PAIR_CODE_TIMEOUT = 15.0
PAIR_CODE_POLL = 0.1

_BOT_FIELDS = ("name", "transport_options")
_OPTIONS = ("auto_start", "phone", "proxy")
_PROXY_SCHEMES = ("http", "https", "socks5")
_PROXY_MAX = 500
_PHONE = re.compile(r"^[0-9]{8,15}$")
_PHONE_SEPARATORS = re.compile(r"[+\s-]")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")

# action -> (desired_state, command)
ACTIONS = {
    "start": ("running", None),
    "stop": ("stopped", None),
    "restart": ("running", "restart"),
    "logout": ("stopped", "logout"),
}


# -- input -------------------------------------------------------------------------------------------


def phone_digits(value: Any, field: str) -> str:
    """Digits only, 8–15 of them (E.164 without '+'); '+', spaces and dashes are dropped first."""
    if not isinstance(value, str):
        raise bad_request(field, "must be a string of digits")
    digits = _PHONE_SEPARATORS.sub("", value)
    if not _PHONE.match(digits):
        raise bad_request(field, "must be a phone number of 8 to 15 digits (country code first, no '+')")
    return digits


def _proxy(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise bad_request(field, "must be a string")
    if len(value) > _PROXY_MAX:
        raise bad_request(field, f"must be at most {_PROXY_MAX} characters")
    if _CONTROL.search(value):
        raise bad_request(field, "must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError for a port that is not 0–65535
    except ValueError:
        raise bad_request(field, "must be a proxy URL like socks5://host:1080") from None
    if parts.scheme.lower() not in _PROXY_SCHEMES:
        raise bad_request(field, "scheme must be one of " + ", ".join(_PROXY_SCHEMES))
    if not parts.hostname:
        raise bad_request(field, "must name a host, like socks5://host:1080")
    if port == 0:
        raise bad_request(field, "port must be 1 to 65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise bad_request(field, "must be scheme://[user:password@]host[:port] with no path, query or fragment")
    return value


def transport_options(body: dict[str, Any]) -> dict[str, Any]:
    raw = body.get("transport_options")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise bad_request("transport_options", "must be an object")
    for key in raw:
        if key not in _OPTIONS:
            raise bad_request(
                f"transport_options.{key}", f"unknown option {key[:100]!r}; allowed: " + ", ".join(_OPTIONS)
            )
    options: dict[str, Any] = {}
    if "proxy" in raw:
        options["proxy"] = _proxy(raw["proxy"], "transport_options.proxy")
    if "phone" in raw:
        options["phone"] = phone_digits(raw["phone"], "transport_options.phone")
    if "auto_start" in raw:
        if not isinstance(raw["auto_start"], bool):
            raise bad_request("transport_options.auto_start", "must be true or false")
        options["auto_start"] = raw["auto_start"]
    return options


def _bot_id(bot_id: str) -> str:
    return v.uuid_arg(bot_id, "bot")


def _get(bot_id: str) -> dict[str, Any]:
    bot = bots.get(system().pool, g.tenant_id, bot_id)
    if bot is None:
        raise not_found("bot")
    return bot


# -- bots --------------------------------------------------------------------------------------------


@blueprint.post("/bots")
@require_tenant
def create_bot() -> Any:
    body = v.json_body()
    for key in body:
        if key not in _BOT_FIELDS:
            raise bad_request(key[:100], "unknown field; allowed: " + ", ".join(_BOT_FIELDS))
    name = v.text(body, "name", max_len=200)
    options = transport_options(body)
    pool = system().pool
    bot = bots.create(pool, g.tenant_id, name, options)
    if options.get("auto_start"):
        bots.set_desired(pool, g.tenant_id, bot["id"], "running")
        bot = bots.get(pool, g.tenant_id, bot["id"]) or bot
    return jsonify(bot), 201


@blueprint.get("/bots")
@require_tenant
def list_bots() -> Any:
    return jsonify({"bots": bots.list_all(system().pool, g.tenant_id)})


@blueprint.get("/bots/<bot_id>")
@require_tenant
def get_bot(bot_id: str) -> Any:
    return jsonify(_get(_bot_id(bot_id)))


@blueprint.delete("/bots/<bot_id>")
@require_tenant
def delete_bot(bot_id: str) -> Any:
    if not bots.delete(system().pool, g.tenant_id, _bot_id(bot_id)):
        raise not_found("bot")
    return "", 204


@blueprint.post("/bots/<bot_id>/<any(start, stop, restart, logout):action>")
@require_tenant
def bot_action(bot_id: str, action: str) -> Any:
    bot_id = _bot_id(bot_id)
    desired, command = ACTIONS[action]
    pool = system().pool
    if not bots.set_desired(pool, g.tenant_id, bot_id, desired, command):
        raise not_found("bot")
    return jsonify({"bot": _get(bot_id), "accepted": action}), 202


# -- pairing -----------------------------------------------------------------------------------------


def no_qr_reason(bot: dict[str, Any]) -> str:
    if bot["paired"]:
        return "the bot is already paired; log it out to pair again"
    if bot["desired_state"] != "running":
        return f"the bot is not started (state: {bot['state']}); start it and a QR code will follow"
    if bot["supervisor"] is None:
        return f"no QR code has been issued yet: no supervisor runs the bot yet (state: {bot['state']})"
    return f"no QR code has been issued yet (state: {bot['state']}); try again in a moment"


def qr_svg(payload: str, inline: bool) -> str:
    # micro=False: WhatsApp scans regular QR codes only; segno would pick a Micro QR for short payloads.
    code = segno.make(payload, micro=False)
    if inline:
        return code.svg_inline(scale=4)
    out = io.BytesIO()
    code.save(out, kind="svg", scale=4)
    return out.getvalue().decode("utf-8")


@blueprint.get("/bots/<bot_id>/qr")
@require_tenant
def bot_qr(bot_id: str) -> Any:
    bot_id = _bot_id(bot_id)
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "svg", "text"):
        raise bad_request("format", "must be one of json, svg, text")
    bot = _get(bot_id)
    exists, payload, issued_at = bots.qr(system().pool, g.tenant_id, bot_id)
    if not exists:
        raise not_found("bot")
    # A stopped session leaves its last QR code on the row; it is stale, as is one left on a paired bot.
    if payload is None or bot["paired"] or bot["desired_state"] != "running":
        raise ApiError(404, "no_qr", no_qr_reason(bot))
    if fmt == "svg":
        response = Response(qr_svg(payload, inline=False), mimetype="image/svg+xml")
    elif fmt == "text":
        response = Response(payload, mimetype="text/plain")
    else:
        response = jsonify(
            {"qr": payload, "svg": qr_svg(payload, inline=True), "issued_at": issued_at and issued_at.isoformat()}
        )
    # The QR code lets whoever scans it take over the WhatsApp account: never cache it.
    response.headers["Cache-Control"] = "no-store"
    return response


def request_pair_code(pool: Any, tenant_id: str, bot_id: str, phone: str, timeout: float) -> str:
    """Ask the running session for a pair code and wait up to ``timeout`` for its answer (the code);
    ``ApiError`` 404 (no such bot), 504 (no supervisor answered) or 409 (the session could not)."""
    seq = bots.request_pair_code(pool, tenant_id, bot_id, phone)
    if seq is None:
        raise not_found("bot")
    deadline = time.monotonic() + timeout
    while True:
        result = bots.pair_result(pool, tenant_id, bot_id, seq)
        if result is not None:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            bot = bots.get(pool, tenant_id, bot_id)
            if bot is None:
                raise not_found("bot")
            raise ApiError(
                504,
                "supervisor_timeout",
                f"no answer within {timeout:g} s: the bot must be running under a supervisor to get a pair code"
                f" (desired_state: {bot['desired_state']}, state: {bot['state']},"
                f" supervisor: {bot['supervisor'] or 'none'})",
            )
        gevent.sleep(min(PAIR_CODE_POLL, remaining))
    code, error = result
    if error or not code:
        raise ApiError(409, "pair_code_failed", f"the session could not get a pair code: {error or 'no code returned'}")
    return code


def _pair_code_timeout() -> float:
    return float(current_app.config.get("PAIR_CODE_TIMEOUT", PAIR_CODE_TIMEOUT))


@blueprint.post("/bots/<bot_id>/pair-code")
@require_tenant
def bot_pair_code(bot_id: str) -> Any:
    bot_id = _bot_id(bot_id)
    body = v.json_body()
    if body.get("phone") is None:
        raise bad_request("phone", "is required")
    phone = phone_digits(body["phone"], "phone")
    code = request_pair_code(system().pool, g.tenant_id, bot_id, phone, _pair_code_timeout())
    return jsonify({"code": code})
