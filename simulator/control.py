"""The simulator's HTTP control API: a thin JSON layer over ``Simulator``'s Python methods.

Served by gevent's ``WSGIServer`` on the port after the transport port (7301 by default). Every
answer is JSON; errors are ``{"error": "..."}`` with 400 (bad input), 404 (unknown bot) or 409 (the
bot is not in a state where that makes sense). See ``docs/simulator.md`` for the endpoint list.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify, request

if TYPE_CHECKING:
    from simulator.server import Simulator


def create_app(sim: Simulator) -> Flask:
    from simulator.server import SimulatorError

    app = Flask("simulator.control")

    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        return data if isinstance(data, dict) else {}

    @app.errorhandler(SimulatorError)
    def simulator_error(exc: SimulatorError) -> Any:
        return jsonify(error=str(exc)), exc.status

    @app.errorhandler(ValueError)
    @app.errorhandler(TypeError)
    @app.errorhandler(KeyError)
    def bad_input(exc: Exception) -> Any:
        return jsonify(error=f"bad request: {exc}"), 400

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(sim.health())

    @app.get("/bots")
    def bots() -> Any:
        return jsonify(bots=sim.bots())

    @app.get("/bots/<bot_id>")
    def bot(bot_id: str) -> Any:
        return jsonify(sim.bot_state(bot_id))

    @app.get("/bots/<bot_id>/qr.svg")
    def qr_svg(bot_id: str) -> Any:
        # For demos: the current QR as an image a person could look at (segno renders it).
        import io

        import segno

        qr = sim.bot_state(bot_id)["qr"]
        if qr is None:
            raise SimulatorError(409, "the bot is not showing a QR code")
        out = io.BytesIO()
        segno.make(qr).save(out, kind="svg", scale=4)
        return Response(out.getvalue(), mimetype="image/svg+xml")

    @app.post("/bots/<bot_id>/scan")
    def scan(bot_id: str) -> Any:
        data = body()
        return jsonify(jid=sim.scan(bot_id, code=data.get("code"), phone=data.get("phone")))

    @app.post("/bots/<bot_id>/pair-code-enter")
    def pair_code_enter(bot_id: str) -> Any:
        return jsonify(jid=sim.enter_pair_code(bot_id, code=body().get("code")))

    @app.post("/bots/<bot_id>/inbound")
    def inbound(bot_id: str) -> Any:
        data = body()
        media = data.get("media")
        if media is not None:
            media = {**media, "data": base64.b64decode(media.get("data_base64", ""), validate=True)}
        message_id = sim.inbound(bot_id, data["from"], data.get("text", ""), message_id=data.get("id"), media=media)
        return jsonify(id=message_id)

    @app.post("/bots/<bot_id>/phone-send")
    def phone_send(bot_id: str) -> Any:
        data = body()
        return jsonify(id=sim.phone_send(bot_id, data["to"], data.get("text", ""), message_id=data.get("id")))

    @app.post("/bots/<bot_id>/refuse-sends")
    def refuse_sends(bot_id: str) -> Any:
        data = body()
        extra = {"error": str(data["error"])} if "error" in data else {}
        sim.refuse_sends(bot_id, int(data.get("times", 1)), **extra)
        return jsonify(ok=True)

    def inject_args(data: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": data["kind"],
            "code": data.get("code"),
            "expires_in": data.get("expires_in"),
            "times": data.get("times", 1),
        }

    @app.post("/bots/<bot_id>/inject")
    def inject(bot_id: str) -> Any:
        sim.inject(bot_id, **inject_args(body()))
        return jsonify(ok=True)

    @app.post("/inject")
    def inject_all() -> Any:
        sim.inject(None, **inject_args(body()))
        return jsonify(ok=True)

    @app.get("/bots/<bot_id>/outbox")
    def outbox(bot_id: str) -> Any:
        return jsonify(messages=sim.outbox(bot_id, to=request.args.get("to")))

    @app.get("/bots/<bot_id>/outbox/<message_id>")
    def outbox_message(bot_id: str, message_id: str) -> Any:
        for record in sim.outbox(bot_id):
            if record["id"] == message_id:
                return jsonify(record)
        raise SimulatorError(404, f"bot {bot_id!r} sent no message {message_id!r}")

    @app.post("/outage")
    def outage() -> Any:
        sim.outage()
        return jsonify(ok=True)

    @app.post("/recover")
    def recover() -> Any:
        sim.recover()
        return jsonify(ok=True)

    @app.post("/hang")
    def hang() -> Any:
        sim.hang(bool(body().get("on", True)))
        return jsonify(ok=True)

    @app.post("/config")
    def config() -> Any:
        data = body()
        changes: dict[str, Any] = {}
        if "qr_rotate" in data:
            changes["qr_rotate"] = float(data["qr_rotate"])
        if "receipt_delay" in data:
            changes["receipt_delay"] = data["receipt_delay"]
        sim.configure(**changes)
        return jsonify(qr_rotate=sim.qr_rotate, receipt_delay=list(sim.receipt_delay))

    return app
