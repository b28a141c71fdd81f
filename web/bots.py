"""The tenant's bots: create, list, read, change, delete; record intent (start/stop/restart/logout);
serve the pairing QR code and ask the running session for a pair code.

The web process never talks to a session: it records intent on the bot's row through ``db.bots``
(which notifies), and the supervisor holding the bot's lease carries it out and writes the outcome
back. A pair code is the one request that waits for that outcome: the row is polled until the session
answers or ``PAIR_CODE_TIMEOUT`` passes.
"""

from __future__ import annotations

import io
import time
from typing import Any

import gevent
import segno
from flask import Response, current_app, g, jsonify

from core import outbound
from db import bots
from sansio.outbound_address import AddressRefused
from web import audit
from web import validation as v
from web.api import api_blueprint, error_responses, operation
from web.auth import system
from web.errors import ApiError, not_found
from web.schemas.bots import Bot, BotAccepted, BotCreate, BotList, BotUpdate, PairCode, PairCodeRequest, Qr, QrQuery
from web.schemas.common import BotPath

blueprint = api_blueprint("bots", __name__, "Bots", "A bot is one WhatsApp number: create and pair it, start and"
                          " stop it. The API records intent; the supervisor running the bot carries it out.")

# Seconds a pair-code request waits for the supervisor's answer; app config PAIR_CODE_TIMEOUT overrides.
PAIR_CODE_TIMEOUT = 15.0
PAIR_CODE_POLL = 0.1

# action -> (desired_state, command)
ACTIONS = {
    "start": ("running", None),
    "stop": ("stopped", None),
    "restart": ("running", "restart"),
    "logout": ("stopped", "logout"),
}


def _bot_id(bot_id: str) -> str:
    return v.uuid_arg(bot_id, "bot")


def check_proxy(options: dict[str, Any] | None, field: str = "transport_options.proxy") -> None:
    """400 naming ``field`` when the outbound address policy refuses the proxy's address (after DNS:
    a name that does not resolve is refused too); checked again at every connection attempt."""
    proxy = (options or {}).get("proxy")
    if not proxy:
        return
    try:
        outbound.checked_proxy(proxy, allow_private=system().settings.allow_private_addresses)
    except AddressRefused as exc:
        raise ApiError(400, "invalid_input", f"proxy {exc}", field=field) from None


def _get(bot_id: str) -> dict[str, Any]:
    bot = bots.get(system().pool, g.tenant_id, bot_id)
    if bot is None:
        raise not_found("bot")
    return bot


# -- bots --------------------------------------------------------------------------------------------


@operation(blueprint, "post", "/bots", scope="manage", summary="Create a bot", operation_id="createBot",
           responses={201: Bot, **error_responses(400)})
def create_bot(body: BotCreate) -> Any:
    options = body.transport_options.stored() if body.transport_options else {}
    check_proxy(options)
    pool = system().pool
    bot = bots.create(pool, g.tenant_id, body.name, options)
    if options.get("auto_start"):
        bots.set_desired(pool, g.tenant_id, bot["id"], "running")
        bot = bots.get(pool, g.tenant_id, bot["id"]) or bot
    audit.note("bot.create", "bot", bot["id"], after={"name": body.name, "transport_options": options})
    return jsonify(bot), 201


@operation(blueprint, "get", "/bots", scope="read", summary="The tenant's bots, oldest first", operation_id="listBots",
           responses={200: BotList})
def list_bots() -> Any:
    return jsonify({"bots": bots.list_all(system().pool, g.tenant_id)})


@operation(blueprint, "get", "/bots/<bot_id>", scope="read", summary="A bot and its session's state",
           operation_id="getBot", responses={200: Bot, **error_responses(404)})
def get_bot(path: BotPath) -> Any:
    return jsonify(_get(_bot_id(path.bot_id)))


@operation(blueprint, "patch", "/bots/<bot_id>", scope="manage", summary="Rename a bot or replace its transport"
           " options", operation_id="updateBot", responses={200: Bot, **error_responses(400, 404)})
def update_bot(path: BotPath, body: BotUpdate) -> Any:
    options = body.transport_options.stored() if body.transport_options is not None else None
    check_proxy(options)
    bot = bots.update(system().pool, g.tenant_id, _bot_id(path.bot_id), body.name, options)
    if bot is None:
        raise not_found("bot")
    changed = {"name": body.name, "transport_options": options}
    audit.note("bot.update", "bot", bot["id"],
               after={key: value for key, value in changed.items() if value is not None})
    return jsonify(bot)


@operation(blueprint, "delete", "/bots/<bot_id>", scope="manage", summary="Delete a bot (a running session stops)",
           operation_id="deleteBot", responses={204: None, **error_responses(404)})
def delete_bot(path: BotPath) -> Any:
    bot_id = _bot_id(path.bot_id)
    found = bots.get(system().pool, g.tenant_id, bot_id)
    if found is None or not bots.delete(system().pool, g.tenant_id, bot_id):
        raise not_found("bot")
    audit.note("bot.delete", "bot", bot_id, before={"name": found["name"]})
    return "", 204


def _intent(bot_id: str, action: str) -> Any:
    bot_id = _bot_id(bot_id)
    desired, command = ACTIONS[action]
    if not bots.set_desired(system().pool, g.tenant_id, bot_id, desired, command):
        raise not_found("bot")
    audit.note(f"bot.{action}", "bot", bot_id)
    return jsonify({"bot": _get(bot_id), "accepted": action}), 202


_INTENT = {202: BotAccepted, **error_responses(404)}


@operation(blueprint, "post", "/bots/<bot_id>/start", scope="manage", summary="Start a bot (desired_state running)",
           operation_id="startBot", responses=_INTENT)
def start_bot(path: BotPath) -> Any:
    return _intent(path.bot_id, "start")


@operation(blueprint, "post", "/bots/<bot_id>/stop", scope="manage", summary="Stop a bot (desired_state stopped)",
           operation_id="stopBot", responses=_INTENT)
def stop_bot(path: BotPath) -> Any:
    return _intent(path.bot_id, "stop")


@operation(blueprint, "post", "/bots/<bot_id>/restart", scope="manage", summary="Restart a bot's session",
           operation_id="restartBot", responses=_INTENT)
def restart_bot(path: BotPath) -> Any:
    return _intent(path.bot_id, "restart")


@operation(blueprint, "post", "/bots/<bot_id>/logout", scope="manage", summary="Log a bot out (unpair its number)",
           operation_id="logoutBot", responses=_INTENT)
def logout_bot(path: BotPath) -> Any:
    return _intent(path.bot_id, "logout")


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


@operation(blueprint, "get", "/bots/<bot_id>/qr", scope="manage", summary="The QR code the session shows now",
           description="It rotates: poll it. Whoever scans it takes the number over, so it is never cached"
                       " (`Cache-Control: no-store`) and needs the manage scope. 404 `no_qr` says why there is none.",
           operation_id="getBotQr", responses={200: Qr, **error_responses(400, 404)})
def bot_qr(path: BotPath, query: QrQuery) -> Any:
    bot_id = _bot_id(path.bot_id)
    bot = _get(bot_id)
    exists, payload, issued_at = bots.qr(system().pool, g.tenant_id, bot_id)
    if not exists:
        raise not_found("bot")
    # A stopped session leaves its last QR code on the row; it is stale, as is one left on a paired bot.
    if payload is None or bot["paired"] or bot["desired_state"] != "running":
        raise ApiError(404, "no_qr", no_qr_reason(bot))
    if query.format == "svg":
        response = Response(qr_svg(payload, inline=False), mimetype="image/svg+xml")
    elif query.format == "text":
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


@operation(blueprint, "post", "/bots/<bot_id>/pair-code", scope="manage", summary="Pair by code instead of QR",
           description="Waits up to 15 s for the running session's answer. 409 `pair_code_failed`: the session could"
                       " not get one (WhatsApp's reason in the message); 504 `supervisor_timeout`: no supervisor"
                       " answered (start the bot first).", operation_id="requestPairCode",
           responses={200: PairCode, **error_responses(400, 404, 409, 504)})
def bot_pair_code(path: BotPath, body: PairCodeRequest) -> Any:
    bot_id = _bot_id(path.bot_id)
    code = request_pair_code(system().pool, g.tenant_id, bot_id, body.phone, _pair_code_timeout())
    audit.note("bot.pair_code", "bot", bot_id)
    return jsonify({"code": code})
