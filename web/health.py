"""Health and metrics: ``/healthz`` (the process is alive), ``/readyz`` (the pool reaches the
database through a real query within a short time), ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

from typing import Any

import gevent
from flask import Blueprint, Flask, Response, jsonify

from core.metrics import CONTENT_TYPE
from web.auth import system

blueprint = Blueprint("health", __name__)

READY_TIMEOUT = 2.0


@blueprint.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz() -> Any:
    pool = system().pool
    try:
        pool.ping(READY_TIMEOUT)
    except BaseException as exc:  # any failure means not ready; Timeout is a BaseException
        if isinstance(exc, gevent.GreenletExit):
            raise
        reason = " ".join(str(exc).split()) or type(exc).__name__
        stats = pool.stats()
        if stats.get("last_connect_error"):
            reason += f" (last connect error: {stats['last_connect_error']})"
        response = jsonify({"status": "unavailable", "reason": reason})
        response.status_code = 503
        return response
    return jsonify({"status": "ready"})


@blueprint.get("/metrics")
def metrics() -> Any:
    m = system().metrics
    m.refresh_process_gauges()
    return Response(m.render(), mimetype=CONTENT_TYPE.split(";")[0], headers={"Content-Type": CONTENT_TYPE})


def create_health_app(system: Any) -> Flask:
    """Only these three routes, for a process that supervises bots and serves no web UI or API
    (``run.py supervisor`` with ``HEALTH_PORT``): its liveness, its pool and its metrics (greenlets,
    threads, sessions) are what an operator watches on it."""
    app = Flask("wabot-health", static_folder=None)
    app.extensions["wabot"] = system
    app.register_blueprint(blueprint)
    return app
